//! Watches: a waiter watches only the child just before its own, so a release wakes one
//! waiter (no herd); a held lock's watcher fires its loss signal when its child is deleted by
//! someone else or the session is lost.

use std::sync::{Arc, Weak};
use std::time::Duration;

use lock_core::{AcquireRequest, Error, FencingToken, Instant, Lease, LossReason, LossSignal, Result};
use zookeeper_client::EventType;

use crate::backend::Held;
use crate::children::Child;
use crate::error::unavailable;
use crate::session::Session;
use crate::ZkBackend;

impl ZkBackend {
    /// One turn in the queue: our child, then waiting for each contender ahead of it in turn.
    pub(crate) async fn acquire_once(
        &self,
        req: &AcquireRequest,
        deadline: Instant,
        retry: bool,
    ) -> Result<Lease> {
        let sent = Instant::now();
        let (s, dir, child, undo) = self.join_queue(req, Some(retry)).await?;
        let start = Instant::now();
        loop {
            let order = self.contenders(&s, &dir).await?;
            let Some(pos) = order.iter().position(|n| *n == child.name) else {
                // Our child is gone: the session was lost, or someone deleted it.
                undo.disarm();
                return Err(Error::Lost { key: req.key.full().to_owned(), reason: LossReason::SessionLost });
            };
            // The nearest contender ahead of ours (directories of nested locks are skipped).
            let Some(watcher) = self.watch_contender_ahead(&s, &dir, &order[..pos]).await? else {
                let lease = self.won(&s, req, child, sent)?;
                undo.disarm();
                return Ok(lease);
            };
            tokio::select! {
                _ = watcher.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = s.call(|c| c.delete(&child.path, None)).await;
                    undo.disarm();
                    return Err(Error::WaitTimedOut { key: req.key.full().to_owned(), waited: start.elapsed() });
                }
                _ = s.lost.fired() => {
                    return Err(Error::Lost { key: req.key.full().to_owned(), reason: LossReason::SessionLost });
                }
            }
        }
    }

    /// The lease of a won child, with a watcher that fires its loss signal when the child is
    /// deleted by someone else or the session is lost.
    pub(crate) fn won(
        &self,
        s: &Arc<Session>,
        req: &AcquireRequest,
        child: Child,
        sent: Instant,
    ) -> Result<Lease> {
        if !s.is_live() {
            // Disconnected past the grace, or lost: the child may already be gone.
            return Err(unavailable(
                "the session was disconnected past its grace when the lock was reached; try again",
            ));
        }
        let signal = LossSignal::new();
        tokio::spawn(watch_child(Arc::downgrade(s), child.path.clone(), signal.clone()));
        Ok(Lease::new(req.key.clone(), req.owner, FencingToken::new(child.czxid as u64), req.ttl, sent)
            .with_valid_until(s.valid_until())
            .with_session(signal)
            .with_backend_data(Arc::new(Held { path: child.path, session: Arc::downgrade(s) })))
    }
}

/// Fires `signal` when the child at `path` is deleted (by our release, by someone else, or
/// with the session) or the session is lost. After our own release nobody listens any more.
async fn watch_child(session: Weak<Session>, path: String, signal: LossSignal) {
    loop {
        let Some(s) = session.upgrade() else {
            // The backend (and its session) is gone: so is the child.
            signal.fire(LossReason::SessionLost);
            return;
        };
        let lost = s.lost.clone();
        // Boxed, like the retry pause below, and reduced to the watcher before the wait: the
        // request's state exists only while it runs, so a held lock's task stays small.
        let watched = Box::pin(async {
            let client = s.client.clone();
            drop(s);
            match client.check_and_watch_stat(&path).await {
                Ok((None, _)) => Ok(None),
                Ok((Some(_), watcher)) => Ok(Some(watcher)),
                Err(e) => Err(e),
            }
        });
        let watched = tokio::select! {
            w = watched => w,
            _ = lost.fired() => { signal.fire(LossReason::SessionLost); return; }
        };
        match watched {
            Ok(None) => {
                signal.fire(LossReason::NotHeld);
                return;
            }
            Ok(Some(watcher)) => {
                tokio::select! {
                    ev = watcher.changed() => {
                        if ev.event_type == EventType::NodeDeleted {
                            signal.fire(LossReason::NotHeld);
                            return;
                        }
                    }
                    _ = lost.fired() => { signal.fire(LossReason::SessionLost); return; }
                }
            }
            Err(_) => {
                tokio::select! {
                    _ = lost.fired() => { signal.fire(LossReason::SessionLost); return; }
                    _ = Box::pin(tokio::time::sleep(Duration::from_millis(200))) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each held lock has one of these tasks: it stays small while it waits.
    #[test]
    fn a_held_locks_watcher_is_small() {
        let task = watch_child(Weak::new(), String::new(), LossSignal::new());
        let size = std::mem::size_of_val(&task);
        eprintln!("watch_child future: {size} bytes");
        assert!(size <= 480, "a held lock's watcher task grew to {size} bytes");
    }
}
