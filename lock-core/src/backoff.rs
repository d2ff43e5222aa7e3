//! Exponential backoff with full jitter and a deadline: the pace of polling waiters and of
//! renewal retries.

use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff with full jitter ("AWS architecture blog" style): the n-th sleep is a
/// uniform random duration in `[0, min(max, initial * 2^n)]`, but never less than `floor`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    floor: Duration,
    attempt: u32,
}

impl Backoff {
    /// Backoff starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), floor: Duration::from_millis(1), attempt: 0 }
    }

    /// Sets the shortest sleep (default 1 ms), so that a run of tiny random draws cannot spin.
    pub fn with_floor(mut self, floor: Duration) -> Self {
        self.floor = floor.min(self.max);
        self
    }

    /// The next sleep.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        let cap = exp.min(self.max);
        let nanos = cap.as_nanos().min(u64::MAX as u128) as u64;
        let jittered = Duration::from_nanos(if nanos == 0 { 0 } else { rand::random_range(0..=nanos) });
        jittered.max(self.floor)
    }

    /// Starts again from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps for the next delay, but not past `deadline`. Returns `false` without sleeping
    /// when the deadline has already passed.
    pub async fn sleep_until_deadline(&mut self, deadline: Option<Instant>) -> bool {
        let delay = self.next_delay();
        sleep_capped(delay, deadline).await
    }
}

async fn sleep_capped(delay: Duration, deadline: Option<Instant>) -> bool {
    // Shared by `Backoff::sleep_until_deadline`.
    let now = Instant::now();
    let wake = match deadline {
        Some(d) if d <= now => return false,
        Some(d) => crate::lease::add_saturating(now, delay).min(d),
        None => crate::lease::add_saturating(now, delay),
    };
    tokio::time::sleep_until(wake).await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(80), "{d:?}");
            assert!(d >= Duration::from_millis(1));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_respects_deadline() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10))
            .with_floor(Duration::from_secs(10));
        let start = Instant::now();
        let deadline = start + Duration::from_millis(50);
        assert!(b.sleep_until_deadline(Some(deadline)).await);
        assert_eq!(Instant::now(), deadline);
        assert!(!b.sleep_until_deadline(Some(deadline)).await);
    }
}
