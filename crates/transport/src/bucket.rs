//! [`TokenBucket`]: the bandwidth limit of bulk traffic.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket in bytes: `rate` bytes per second on average, bursts of
/// up to `burst` bytes. Shared (`Arc`) by every session of what it limits:
/// one per replication group with `--bandwidth`, one for the site default.
///
/// Only bulk messages take tokens ([`crate::SessionSender::send`]); control
/// messages (keepalives, requests, acks) bypass it and are queued ahead of
/// bulk frames, so a throttled transfer never delays them by more than the
/// one frame being written.
///
/// Waiters are served in order: [`TokenBucket::acquire`] reserves its bytes
/// at once (the level may go negative: debt) and sleeps until the debt is
/// repaid, so a chunk larger than the burst passes at the average rate too.
#[derive(Debug)]
pub struct TokenBucket {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rate: f64,
    burst: f64,
    level: f64,
    at: Instant,
}

impl State {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.burst);
        self.at = now;
    }
}

impl TokenBucket {
    /// A full bucket of `burst` bytes refilling at `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64, burst: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = burst as f64;
        Self {
            state: Mutex::new(State {
                rate,
                burst,
                level: burst,
                at: Instant::now(),
            }),
        }
    }

    /// A bucket for `bytes_per_sec` with a burst of a tenth of a second
    /// (at least 256 KiB), the default for `--bandwidth`.
    pub fn with_rate(bytes_per_sec: u64) -> Self {
        Self::new(bytes_per_sec, (bytes_per_sec / 10).max(256 << 10))
    }

    /// Changes the limit; takes effect for the next acquisition.
    pub fn set_rate(&self, bytes_per_sec: u64, burst: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.refill(Instant::now());
        state.rate = bytes_per_sec.max(1) as f64;
        state.burst = burst as f64;
        state.level = state.level.min(state.burst);
    }

    /// The average rate, bytes per second.
    pub fn rate(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rate as u64
    }

    /// Takes `bytes` tokens, waiting until the bucket has paid for them.
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Reserves `bytes` at `now`; returns how long the caller must wait.
    fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.refill(now);
        state.level -= bytes as f64;
        if state.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.level / state.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tokio timers round sleeps up to the millisecond.
    fn assert_about(elapsed: Duration, expected: Duration) {
        assert!(
            elapsed >= expected && elapsed <= expected + Duration::from_millis(2),
            "{elapsed:?} instead of {expected:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limits_the_average_rate_after_the_burst() {
        let bucket = TokenBucket::new(1 << 20, 64 << 10);
        let started = Instant::now();
        for _ in 0..32 {
            bucket.acquire(16 << 10).await; // 512 KiB in all
        }
        // 64 KiB pass at once, the other 448 KiB at 1 MiB/s.
        assert_about(started.elapsed(), Duration::from_micros(437_500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_larger_than_the_burst_waits_its_share() {
        let bucket = TokenBucket::new(1000, 100);
        let started = Instant::now();
        bucket.acquire(1100).await;
        assert_about(started.elapsed(), Duration::from_secs(1));
        bucket.acquire(500).await;
        assert_about(started.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_share_the_rate() {
        let bucket = std::sync::Arc::new(TokenBucket::new(10_000, 0));
        let started = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let bucket = bucket.clone();
                tokio::spawn(async move { bucket.acquire(5_000).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_about(started.elapsed(), Duration::from_secs(2));
        bucket.set_rate(20_000, 0);
        assert_eq!(bucket.rate(), 20_000);
    }
}
