//! The waiting loop shared by both backends: wake on pub/sub, and still retry at the holder's
//! expiry and on a bounded backoff, so a lost message or a foreign holder cannot stall us.

use std::future::Future;
use std::time::Duration;

use futures::future::select_all;
use lock_core::{Attempt, Backoff, Error, Instant, Lease, LockKey, Result};

use crate::notify::Subscription;

/// The longest sleep between two attempts when no message comes.
pub(crate) const MAX_POLL: Duration = Duration::from_millis(250);

pub(crate) async fn wait_notified<F, Fut>(
    subs: &[Subscription],
    key: &LockKey,
    deadline: Instant,
    mut attempt: F,
) -> Result<Lease>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Attempt>>,
{
    let start = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(5), MAX_POLL);
    loop {
        // Register for wake-ups *before* the attempt, so a release between the attempt and
        // the sleep is not missed.
        let mut notified: Vec<_> = subs.iter().map(|s| Box::pin(s.notify.notified())).collect();
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
            delay = delay.min(left + Duration::from_millis(1));
        }
        let sleep = tokio::time::sleep_until((now + delay).min(deadline));
        if notified.is_empty() {
            sleep.await;
        } else {
            tokio::select! {
                _ = select_all(notified) => backoff.reset(),
                _ = sleep => {}
            }
        }
    }
}
