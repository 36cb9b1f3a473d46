//! Console sessions: who logged in with the site's API token, and the
//! CSRF token each of their actions must carry.
//!
//! A session is created by presenting the API token once (`POST
//! /console/login`); the browser then holds only a random session id in an
//! `HttpOnly`, `SameSite=Strict` cookie (`offsite_SITE`) that scripts cannot read, and the
//! page holds the session's CSRF token in memory. An action (any method but
//! GET/HEAD) made with the cookie must send that CSRF token in
//! `X-CSRF-Token`: a page of another origin can make the browser send the
//! cookie (SameSite aside) but cannot read the token. Sessions live in
//! memory: a daemon restart logs every console out, which is what an
//! operator expects of a restarted service and saves keeping secrets on
//! disk.
//!
//! A session ends at logout, after [`IDLE_TIMEOUT`] without a request, or
//! [`MAX_AGE`] after login, whichever comes first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use subtle::ConstantTimeEq;

/// A session unused this long ends (the operator logs in again).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after login whatever its use.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest is dropped beyond (a token holder
/// could otherwise grow the map without bound by logging in in a loop).
const MAX_SESSIONS: usize = 256;

/// The header an action carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Where "now" comes from: the system's monotonic clock, or a fake one in
/// tests that move time by hand.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// One logged-in console.
#[derive(Debug, Clone)]
struct Session {
    csrf: String,
    created: Instant,
    last_used: Instant,
}

/// A session the cookie named, as the request may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The session's CSRF token, for `GET /console/session`.
    pub csrf: String,
    /// Seconds until the session ends if it is not used again.
    pub expires_in: u64,
}

/// Why a cookie does not let a request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No such session: never was, logged out, expired, or the daemon
    /// restarted.
    NoSession,
    /// An action without the session's CSRF token, or with another one.
    BadCsrf,
}

/// The sessions of one site's console.
#[derive(Debug)]
pub struct Sessions {
    clock: Box<dyn Clock>,
    by_id: Mutex<HashMap<String, Session>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::new(Box::new(SystemClock))
    }
}

impl Sessions {
    /// An empty set of sessions that reads time from `clock`.
    pub fn new(clock: Box<dyn Clock>) -> Sessions {
        Sessions {
            clock,
            by_id: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the map cannot leave a session half
        // written (every change is one insert or remove), so the map
        // stays usable.
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session (the caller has checked the API token): returns its
    /// id, for the cookie, and its CSRF token, for the page.
    pub fn create(&self) -> (String, String) {
        let now = self.clock.now();
        let id = random_token();
        let csrf = random_token();
        let mut map = self.lock();
        map.retain(|_, s| alive(s, now));
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                created: now,
                last_used: now,
            },
        );
        (id, csrf)
    }

    /// Lets a request with session `id` through: any request when the
    /// session is alive, and an action (`action`) only with the session's
    /// CSRF token. A request that passes counts as use.
    pub fn check(&self, id: &str, action: bool, csrf: Option<&str>) -> Result<Granted, Denied> {
        let now = self.clock.now();
        let mut map = self.lock();
        let Some(session) = map.get_mut(id) else {
            return Err(Denied::NoSession);
        };
        if !alive(session, now) {
            map.remove(id);
            return Err(Denied::NoSession);
        }
        if action {
            let matches =
                csrf.is_some_and(|c| bool::from(c.as_bytes().ct_eq(session.csrf.as_bytes())));
            if !matches {
                return Err(Denied::BadCsrf);
            }
        }
        session.last_used = now;
        Ok(Granted {
            csrf: session.csrf.clone(),
            expires_in: remaining(session, now).as_secs(),
        })
    }

    /// Whether session `id` is alive, without counting this as use (a
    /// live view that only watches must not keep a session from idling
    /// out).
    pub fn is_alive(&self, id: &str) -> bool {
        let now = self.clock.now();
        self.lock().get(id).is_some_and(|s| alive(s, now))
    }

    /// Ends session `id` (logout); ending an unknown one is not an error.
    pub fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Sessions alive now.
    pub fn count(&self) -> usize {
        let now = self.clock.now();
        self.lock().values().filter(|s| alive(s, now)).count()
    }
}

fn alive(s: &Session, now: Instant) -> bool {
    !remaining(s, now).is_zero()
}

/// Time left before `s` ends: the sooner of the idle and the age limit.
fn remaining(s: &Session, now: Instant) -> Duration {
    let idle_end = s.last_used + IDLE_TIMEOUT;
    let age_end = s.created + MAX_AGE;
    idle_end.min(age_end).saturating_duration_since(now)
}

/// 32 random bytes from the thread's CSPRNG (ChaCha seeded by the OS), in
/// hex: unguessable ids and CSRF tokens.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The value of cookie `name` in a `Cookie` header, if present.
pub fn cookie_value<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock tests move by hand.
    #[derive(Debug, Clone)]
    struct FakeClock {
        start: Instant,
        offset_ms: Arc<AtomicU64>,
    }

    impl FakeClock {
        fn new() -> FakeClock {
            FakeClock {
                start: Instant::now(),
                offset_ms: Arc::new(AtomicU64::new(0)),
            }
        }
        fn advance(&self, d: Duration) {
            self.offset_ms
                .fetch_add(d.as_millis() as u64, Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.start + Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
        }
    }

    fn sessions() -> (Sessions, FakeClock) {
        let clock = FakeClock::new();
        (Sessions::new(Box::new(clock.clone())), clock)
    }

    #[test]
    fn a_new_session_lets_reads_and_actions_with_its_token_through() {
        let (s, _) = sessions();
        let (id, csrf) = s.create();
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        assert!(s.check(&id, false, None).is_ok());
        let granted = s.check(&id, true, Some(&csrf)).unwrap();
        assert_eq!(granted.csrf, csrf);
        assert_eq!(granted.expires_in, IDLE_TIMEOUT.as_secs());
    }

    #[test]
    fn an_action_without_or_with_a_wrong_csrf_token_is_refused() {
        let (s, _) = sessions();
        let (id, csrf) = s.create();
        assert_eq!(s.check(&id, true, None), Err(Denied::BadCsrf));
        assert_eq!(s.check(&id, true, Some("00")), Err(Denied::BadCsrf));
        let (_, other) = s.create();
        assert_eq!(s.check(&id, true, Some(&other)), Err(Denied::BadCsrf));
        // A refused action does not end the session.
        assert!(s.check(&id, true, Some(&csrf)).is_ok());
    }

    #[test]
    fn unknown_and_ended_sessions_are_refused() {
        let (s, _) = sessions();
        assert_eq!(s.check("nope", false, None), Err(Denied::NoSession));
        let (id, _) = s.create();
        s.end(&id);
        assert_eq!(s.check(&id, false, None), Err(Denied::NoSession));
        s.end(&id);
    }

    #[test]
    fn an_idle_session_expires_and_use_keeps_it_alive() {
        let (s, clock) = sessions();
        let (id, _) = s.create();
        clock.advance(IDLE_TIMEOUT - Duration::from_secs(1));
        assert!(s.check(&id, false, None).is_ok());
        clock.advance(IDLE_TIMEOUT - Duration::from_secs(1));
        assert!(
            s.check(&id, false, None).is_ok(),
            "use restarted the idle timer"
        );
        // Watching (the live stream) does not count as use.
        clock.advance(IDLE_TIMEOUT - Duration::from_secs(1));
        assert!(s.is_alive(&id));
        clock.advance(Duration::from_secs(1));
        assert!(!s.is_alive(&id));
        assert_eq!(s.check(&id, false, None), Err(Denied::NoSession));
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn a_session_ends_at_its_maximum_age_however_busy() {
        let (s, clock) = sessions();
        let (id, _) = s.create();
        let step = Duration::from_secs(600);
        let mut elapsed = Duration::ZERO;
        while elapsed + step < MAX_AGE {
            clock.advance(step);
            elapsed += step;
            assert!(s.check(&id, false, None).is_ok());
        }
        let left = s.check(&id, false, None).unwrap().expires_in;
        assert!(left <= step.as_secs());
        clock.advance(step);
        assert_eq!(s.check(&id, false, None), Err(Denied::NoSession));
    }

    #[test]
    fn sessions_are_bounded_and_the_oldest_goes_first() {
        let (s, clock) = sessions();
        let (first, _) = s.create();
        for _ in 0..MAX_SESSIONS {
            clock.advance(Duration::from_millis(1));
            s.create();
        }
        assert_eq!(s.count(), MAX_SESSIONS);
        assert_eq!(s.check(&first, false, None), Err(Denied::NoSession));
    }

    #[test]
    fn ids_and_tokens_do_not_repeat() {
        let (s, _) = sessions();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let (id, csrf) = s.create();
            assert!(seen.insert(id));
            assert!(seen.insert(csrf));
        }
    }

    #[test]
    fn cookie_values_are_found_among_others() {
        let name = "offsite_site-a";
        let h = "a=1; offsite_site-a=abc; offsite_site-b=def";
        assert_eq!(cookie_value(h, name), Some("abc"));
        assert_eq!(cookie_value(h, "offsite_site-b"), Some("def"));
        assert_eq!(cookie_value("offsite_site-a=x", name), Some("x"));
        assert_eq!(cookie_value("xoffsite_site-a=x", name), None);
        assert_eq!(cookie_value("", name), None);
    }
}
