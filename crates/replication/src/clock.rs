//! Where the decisions that depend on time read it: the lag of a group
//! (and so its health against the RPO), the timestamps that lag is
//! measured from (a PIT's cut, an idle confirmation), and how long a sync
//! group's write has waited for the replica (its link-loss policy). A
//! daemon reads the system's clocks; the crate's tests put a [`FakeClock`]
//! in and move it by hand, so "two RPOs without a PIT" or "the suspend
//! timeout passed" is a step of a test, not a wait.

use std::time::Instant;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A source of wall-clock time.
pub(crate) trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn wall(&self) -> OffsetDateTime;

    /// The monotonic clock, for how long something waited.
    fn now(&self) -> Instant;

    /// The current time in RFC 3339, as the catalog records instants.
    fn rfc3339(&self) -> String {
        self.wall()
            .format(&Rfc3339)
            .unwrap_or_else(|_| offsite_catalog::now_rfc3339())
    }

    /// Whole seconds from `rfc3339` to now; 0 for an instant in the future
    /// or one that does not parse.
    fn age_seconds(&self, rfc3339: &str) -> u64 {
        match OffsetDateTime::parse(rfc3339, &Rfc3339) {
            Ok(t) => (self.wall() - t).whole_seconds().max(0) as u64,
            Err(_) => 0,
        }
    }
}

/// The system's clock.
#[derive(Debug, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn wall(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    /// The catalog's own format, byte for byte.
    fn rfc3339(&self) -> String {
        offsite_catalog::now_rfc3339()
    }
}

/// A clock that stands still until a test moves it.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct FakeClock {
    /// Wall time and monotonic time, moved together.
    now: std::sync::Mutex<(OffsetDateTime, Instant)>,
}

#[cfg(test)]
impl FakeClock {
    /// A clock at the system's current time (whole seconds, so the RFC
    /// 3339 form round-trips exactly).
    pub(crate) fn new() -> FakeClock {
        let now = OffsetDateTime::now_utc();
        FakeClock {
            now: std::sync::Mutex::new((now.replace_nanosecond(0).unwrap_or(now), Instant::now())),
        }
    }

    /// Moves the clock forward by `by`.
    pub(crate) fn advance(&self, by: std::time::Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        now.0 += by;
        now.1 += by;
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn wall(&self) -> OffsetDateTime {
        self.now.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn now(&self) -> Instant {
        self.now.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_clock_moves_only_when_told() {
        let c = FakeClock::new();
        let (t0, i0) = (c.rfc3339(), c.now());
        assert_eq!(c.age_seconds(&t0), 0);
        assert_eq!(c.now(), i0);
        c.advance(std::time::Duration::from_secs(90));
        assert_eq!(c.age_seconds(&t0), 90);
        assert_eq!(c.now() - i0, std::time::Duration::from_secs(90));
        assert_eq!(c.age_seconds(&c.rfc3339()), 0);
        assert_eq!(c.age_seconds("not a time"), 0);
    }
}
