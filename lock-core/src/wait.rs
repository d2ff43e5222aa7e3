//! The waiting loop every backend shares, and a sleep to an instant that may not be set.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::key::LockKey;
use crate::lease::Lease;
use crate::outcome::Attempt;

/// Sleeps until `at`; with `None`, never completes (a branch of a `select!` that has nothing
/// to wait for yet).
pub async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The waiting loop every backend shares: register for wake-ups, attempt, and sleep until a
/// wake-up, the holder's expiry, a jittered backoff step (at most `max_poll`), or `deadline`.
///
/// # Behavior
/// - Each `Notify` in `wakers` is registered *before* each attempt, so a release signalled
///   between the attempt and the sleep is not missed (`notify_waiters` semantics).
/// - Without wake-ups (or when one is lost) the loop still retries at the holder's expiry and
///   at least every `max_poll`, so a foreign holder or an expired one cannot stall it. The
///   polls back off from 2 ms to `max_poll` and a wake-up does not bring them back down.
/// - Retryable errors are retried until `deadline`; others return at once.
///
/// # Errors
/// [`Error::WaitTimedOut`] at the deadline (or the last retryable error, if the last attempt
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
                .unwrap_or_else(|| Error::WaitTimedOut { key: key.full().to_owned(), waited: now - start }));
        }
        let mut delay = backoff.next_delay();
        if let Some(left) = expires_in {
            // Wake right when the holder's grant runs out, plus a hair for server-side expiry.
            delay = delay.min(left.saturating_add(Duration::from_millis(1)));
        }
        let sleep = tokio::time::sleep_until(crate::lease::add_saturating(now, delay).min(deadline));
        if notified.is_empty() {
            sleep.await;
        } else {
            tokio::select! {
                // The polls are only the fallback for lost wake-ups and for holders that
                // expire or never signal: a waiter woken and beaten to the lock waits for the
                // next wake-up, polling no harder than before (many waiters polling at 2 ms
                // after every wake-up were most of a busy server's load).
                _ = futures::future::select_all(notified) => {}
                _ = sleep => {}
            }
        }
    }
}
