//! Exponential backoff with full jitter and a deadline: the default wait for backends that
//! cannot be notified, and the retry pace of renewal.

use std::time::Duration;

use tokio::time::Instant;

use std::future::Future;

use tokio::sync::Notify;

use crate::backend::{AcquireRequest, Attempt, LockBackend, WakeMode};
use crate::error::{Error, Result};
use crate::key::LockKey;
use crate::lease::Lease;

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
        Some(d) => (now + delay).min(d),
        None => now + delay,
    };
    tokio::time::sleep_until(wake).await;
    true
}

/// The default waiting acquire: attempts with [`LockBackend::try_acquire`] and sleeps with
/// jittered backoff between attempts, never past the holder's remaining TTL, the backend's
/// polling interval, or `deadline`. Makes a last attempt at the deadline.
///
/// # Errors
/// [`Error::Timeout`] at the deadline. Retryable backend errors are retried until the deadline
/// (the last one is returned then); others are returned at once.
pub async fn poll_acquire<B: LockBackend + ?Sized>(
    backend: &B,
    req: &AcquireRequest,
    deadline: Instant,
) -> Result<Lease> {
    let max = match backend.capabilities().wake {
        WakeMode::Poll { max_interval } => max_interval,
        WakeMode::Notify => Duration::from_millis(250),
    };
    wait_for_lock(&[], &req.key, deadline, max, || backend.try_acquire(req)).await
}

/// The waiting loop every backend shares: register for wake-ups, attempt, and sleep until a
/// wake-up, the holder's expiry, a jittered backoff step (at most `max_poll`), or `deadline`.
///
/// # Behavior
/// - Each `Notify` in `wakers` is registered *before* each attempt, so a release signalled
///   between the attempt and the sleep is not missed (`notify_waiters` semantics).
/// - Without wake-ups (or when one is lost) the loop still retries at the holder's expiry and
///   at least every `max_poll`, so a foreign holder or an expired one cannot stall it.
/// - Retryable errors are retried until `deadline`; others return at once.
///
/// # Errors
/// [`Error::Timeout`] at the deadline (or the last retryable error, if the last attempt
/// failed); non-retryable errors of `attempt`.
pub async fn wait_for_lock<F, Fut>(
    wakers: &[&Notify],
    key: &LockKey,
    deadline: Instant,
    max_poll: Duration,
    mut attempt: F,
) -> Result<Lease>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt>>,
{
    let start = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(2).min(max_poll), max_poll);
    loop {
        let mut notified: Vec<_> = wakers.iter().map(|n| Box::pin(n.notified())).collect();
        for n in &mut notified {
            n.as_mut().enable();
        }
        let (expires_in, last_err) = match attempt().await {
            Ok(Attempt::Acquired(lease)) => return Ok(lease),
            Ok(Attempt::Held { expires_in }) => (expires_in, None),
            Err(e) if e.is_retryable() => (None, Some(e)),
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(last_err
                .unwrap_or_else(|| Error::Timeout { key: key.full().to_owned(), waited: now - start }));
        }
        let mut delay = backoff.next_delay();
        if let Some(left) = expires_in {
            // Wake right when the holder's grant runs out, plus a hair for server-side expiry.
            delay = delay.min(left + Duration::from_millis(1));
        }
        let sleep = tokio::time::sleep_until((now + delay).min(deadline));
        if notified.is_empty() {
            sleep.await;
        } else {
            tokio::select! {
                _ = futures::future::select_all(notified) => backoff.reset(),
                _ = sleep => {}
            }
        }
    }
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
