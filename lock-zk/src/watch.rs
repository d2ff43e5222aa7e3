//! Watches: a waiter watches only the nearest contender ahead of it that keeps it waiting (the
//! node just before its own; for a reader, the nearest writer ahead), so a release wakes one
//! waiter (no herd); a held grant's watcher fires its loss signal when its node is deleted by
//! someone else or the session is lost.

use std::sync::{Arc, Weak};
use std::time::Duration;

use lock_core::{
    AcquireRequest, Error, FencingToken, Instant, Lease, LockKey, LossReason, LossSignal, Result,
};
use zookeeper_client::EventType;

use crate::backend::Held;
use crate::children::{Child, Queue};
use crate::error::unavailable;
use crate::queue::Joined;
use crate::session::Session;
use crate::ZkBackend;

impl ZkBackend {
    /// One turn in the queue of `req`'s primitive: our node, then waiting for each contender
    /// ahead of it that keeps it waiting, in turn.
    pub(crate) async fn acquire_once(
        &self,
        req: &AcquireRequest,
        deadline: Instant,
        retry: bool,
    ) -> Result<Lease> {
        let sent = Instant::now();
        let q = self.queue(&req.key, req.mode);
        let j = self.join_queue(req, &q, &Self::node_data(req), Some(retry)).await?;
        let j = self.wait_turn(j, &q, &req.key, deadline).await?;
        // Disarmed either way: when the grant cannot be given (the session is disconnected
        // past its grace), the retry adopts this node, and a delete from here could land
        // behind that adoption; the caller's clean-up deletes it if no retry comes.
        j.undo.disarm();
        self.won(&j.s, req, j.child, sent)
    }

    /// Waits until nothing in `q` keeps our node waiting any more (then it holds), or until
    /// `deadline` (our node is deleted: [`Error::WaitTimedOut`]), or until the session is lost.
    pub(crate) async fn wait_turn(
        &self,
        j: Joined,
        q: &Queue,
        key: &LockKey,
        deadline: Instant,
    ) -> Result<Joined> {
        let start = Instant::now();
        let lost = || Error::Lost { key: key.full().to_owned(), reason: LossReason::SessionLost };
        // A failed read returns with our node's undo disarmed: the caller queues again on the
        // same node (found by its uuid), or its own clean-up deletes it when no retry comes.
        // Deleted here in the background, it could go behind the retry that adopted it.
        let given_back = |j: Joined, e: Error| {
            j.undo.disarm();
            Err(e)
        };
        loop {
            let order = match self.contenders(&j.s, &q.dir).await {
                Ok(order) => order,
                Err(e) => return given_back(j, e),
            };
            let Some(pos) = order.iter().position(|n| *n == j.child.name) else {
                // Our node is gone: the session was lost, or someone deleted it.
                j.undo.disarm();
                return Err(lost());
            };
            // The nearest contender ahead that keeps us waiting (directories of nested locks
            // are skipped).
            let watcher = match self.watch_contender_ahead(&j.s, &q.dir, &order[..pos], q.rule).await {
                Ok(w) => w,
                Err(e) => return given_back(j, e),
            };
            let Some(watcher) = watcher else {
                return Ok(j);
            };
            tokio::select! {
                _ = watcher.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    // One lost with its connection goes on in the background (`delete_surely`).
                    let _ = j.s.delete_surely(&j.child.path, Some(Duration::ZERO)).await;
                    j.undo.disarm();
                    return Err(Error::WaitTimedOut { key: key.full().to_owned(), waited: start.elapsed() });
                }
                _ = j.s.lost.fired() => return Err(lost()),
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
        let path: Arc<str> = Arc::from(child.path);
        s.hold(&self.inner.opts.prefix, path.clone(), signal.clone(), sent);
        Ok(Lease::new(req.key.clone(), req.owner, FencingToken::new(child.czxid as u64), req.ttl, sent)
            .with_mode(req.mode)
            .with_valid_until(s.valid_until())
            .with_session(signal)
            .with_backend_data(Arc::new(Held { path, session: Arc::downgrade(s) })))
    }
}

/// How long a held grant goes before its node is watched. A grant released sooner (under
/// load, most are) costs no watch request, which would otherwise sit in the session's queue
/// ahead of its release; a deletion by someone else in that time is seen when the watch is
/// set (the node is found gone), so its loss signal fires at most this much later.
const WATCH_AFTER: Duration = Duration::from_millis(100);

/// Fires `signal` when the child at `path` is deleted (by our release, by someone else, or
/// with the session) or the session is lost. After our own release nobody listens any more.
/// The way a session holding few grants watches them (see `held.rs`).
pub(crate) async fn watch_child(session: Weak<Session>, path: Arc<str>, signal: LossSignal) {
    let _counted = Counted(session.clone());
    {
        let Some(s) = session.upgrade() else {
            signal.fire(LossReason::SessionLost);
            return;
        };
        let lost = s.lost.clone();
        drop(s);
        let settled = Box::pin(async {
            tokio::select! {
                // Released (its signal fired) or lost before the watch was due: nothing to watch.
                _ = signal.fired() => true,
                _ = lost.fired() => { signal.fire(LossReason::SessionLost); true }
                _ = tokio::time::sleep(WATCH_AFTER) => false,
            }
        });
        if settled.await {
            return;
        }
    }
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

/// Tells the session's registry, however [`watch_child`] ends, that one node-by-node watcher
/// fewer runs.
struct Counted(Weak<Session>);

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(s) = self.0.upgrade() {
            s.held.per_node_ended();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each held lock has one of these tasks: it stays small while it waits.
    #[test]
    fn a_held_locks_watcher_is_small() {
        let task = watch_child(Weak::new(), Arc::from(""), LossSignal::new());
        let size = std::mem::size_of_val(&task);
        eprintln!("watch_child future: {size} bytes");
        assert!(size <= 480, "a held lock's watcher task grew to {size} bytes");
    }
}
