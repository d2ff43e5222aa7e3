//! Cancel safety for backends: undo an attempt whose future was dropped mid-flight.
//!
//! A request that was sent may be carried out by the server although the future waiting
//! for its reply was dropped (a `select!`, a timeout, an aborted task). For a lock attempt
//! that would leave a grant nobody holds, blocking every other contender for a whole TTL.
//! [`UndoOnDrop`] arms an undo (usually a compare-and-delete by owner token) before the
//! request goes out and runs it in the background if the attempt never finished.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Runs an undo in the background if dropped before [`disarm`](Self::disarm).
///
/// # Behavior
/// - Build it just before sending the request, with the undo as a future (which does
///   nothing until it is run); call [`disarm`](Self::disarm) once the reply has been handled
///   (granted and returned, or not granted).
/// - Dropped while armed, it spawns the undo on the current tokio runtime. Outside a runtime
///   the undo cannot run: the grant then lasts its TTL, which is the backstop every backend
///   promises anyway.
/// - The undo must be safe to run whether or not the server carried out the request (a
///   compare-and-delete on the owner token is).
#[must_use = "dropping it at once runs the undo"]
pub struct UndoOnDrop {
    undo: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl UndoOnDrop {
    /// Arms `undo`.
    pub fn new(undo: impl Future<Output = ()> + Send + 'static) -> Self {
        Self { undo: Some(Box::pin(undo)) }
    }

    /// The attempt finished: nothing to undo.
    pub fn disarm(mut self) {
        self.undo = None;
    }
}

impl std::fmt::Debug for UndoOnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UndoOnDrop").field("armed", &self.undo.is_some()).finish()
    }
}

impl Drop for UndoOnDrop {
    fn drop(&mut self) {
        if let Some(undo) = self.undo.take() {
            spawn_detached(undo);
        }
    }
}

/// Spawns `fut` on the current tokio runtime, if there is one, and forgets it.
///
/// Returns `false` (and drops `fut`) when called outside a runtime.
pub fn spawn_detached(fut: impl Future<Output = ()> + Send + 'static) -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(fut);
            true
        }
        Err(_) => false,
    }
}

/// The pauses after which an undo looks again for a grant it did not find: 50 ms, 250 ms
/// and 1 s after the previous look.
///
/// A request that was cancelled, or failed, may still be carried out after its undo: the undo
/// can overtake it when the two travel on different connections (etcd's client spreads
/// requests over members; an HTTP client opens connections as it likes). Backends whose
/// requests are ordered on one connection (Redis, ZooKeeper) do not need it.
pub const LATE_GRANT_RECHECKS: [Duration; 3] =
    [Duration::from_millis(50), Duration::from_millis(250), Duration::from_secs(1)];

/// The pauses of an undo that starts at once: zero, then [`LATE_GRANT_RECHECKS`], then `last`
/// when given (a backend whose requests may be delayed up to a request timeout looks once more
/// after it).
pub fn late_grant_pauses(last: Option<Duration>) -> impl Iterator<Item = Duration> {
    std::iter::once(Duration::ZERO).chain(LATE_GRANT_RECHECKS).chain(last)
}

/// Runs `undo` after each pause in `pauses` (a zero pause runs it at once) until it reports
/// that it removed what it looked for; returns whether it did.
///
/// # Behavior
/// `undo` must be safe to repeat and must never remove a later grant: a compare-and-delete on
/// the cancelled attempt's owner token is.
pub async fn undo_after<F, Fut>(pauses: impl IntoIterator<Item = Duration>, mut undo: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for pause in pauses {
        tokio::time::sleep(pause).await;
        if undo().await {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn runs_only_when_dropped_armed() {
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        UndoOnDrop::new(async move { r.store(true, Ordering::SeqCst) }).disarm();
        tokio::task::yield_now().await;
        assert!(!ran.load(Ordering::SeqCst), "a disarmed undo ran");

        let (tx, rx) = tokio::sync::oneshot::channel();
        let armed = UndoOnDrop::new(async move {
            let _ = tx.send(());
        });
        drop(armed);
        tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .expect("the undo of a dropped, armed guard did not run")
            .expect("the undo was dropped without running");
    }
}
