//! Semaphores, laid out as Curator's `InterProcessSemaphoreV2`, so that distlock and Curator
//! share the permits of one path.
//!
//! The semaphore `pool/db` is the node `<prefix>/pool/db#semaphore` with two children:
//! - `locks`: an `InterProcessMutex` (the lock's queue, `_c_<uuid>-lock-<sequence>` nodes)
//!   that guards the creation of leases;
//! - `leases`: one EPHEMERAL_SEQUENTIAL child `_c_<uuid>-lease-<sequence>` per permit,
//!   carrying the holder's metadata.
//!
//! A contender takes the mutex, creates its lease node, and holds as soon as at most N lease
//! nodes exist (its own included); until then it waits, still holding the mutex, with a watch
//! on the children of `leases`; then it releases the mutex. So at most one contender waits
//! among the leases, the others queue on the mutex in arrival order, and a contender begins to
//! hold only when it sees at most N leases while no other lease can be made: never more than N
//! holders. The fencing token is the lease node's czxid: leases are made one at a time, in the
//! order permits are granted, so tokens rise across all permits.
//!
//! The number of permits is Curator's client-side setting. distlock stores the number its
//! clients use as the data of the semaphore's node (`{"permits":N}`, which Curator ignores)
//! and checks it under the mutex: a client asking for another number while leases exist gets
//! [`Error::PermitsMismatch`]; with no leases it writes its own. A Curator client that uses
//! another number is not detected.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{AcquireRequest, Attempt, Error, Instant, Lease, LockKey, LossReason, Result};

use crate::children::{semaphore_dir, semaphore_mutex, Queue, Rule};
use crate::error::{unavailable, zk_err};
use crate::queue::Joined;
use crate::session::Session;
use crate::ZkBackend;

/// The semaphore node's data for `limit` permits.
fn permits_data(limit: u32) -> String {
    format!("{{\"permits\":{limit}}}")
}

/// The number of permits the semaphore node's data names, if any.
pub(crate) fn stored_permits(data: &[u8]) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    v.get("permits")?.as_u64().and_then(|n| u32::try_from(n).ok())
}

impl ZkBackend {
    /// One attempt at a permit: the mutex without waiting, then a permit if one is free.
    pub(crate) async fn try_permit(&self, req: &AcquireRequest, limit: u32) -> Result<Attempt> {
        let m = semaphore_mutex(&self.inner.opts.prefix, &req.key);
        let mj = self.join_queue(req, &m, &[], None).await?;
        let order = self.contenders(&mj.s, &m.dir).await?;
        let Some(pos) = order.iter().position(|n| *n == mj.child.name) else {
            drop(mj.undo);
            return Err(unavailable("the semaphore's mutex node vanished as it was made; try again"));
        };
        if self.contender_ahead(&mj.s, &m.dir, &order[..pos], Rule::First).await? {
            // Another contender is making or waiting for a lease: no permit for us now.
            drop(mj.undo);
            return Ok(Attempt::Held { expires_in: None });
        }
        match self.take_permit(&mj.s, req, limit, None).await {
            Ok(Some(lease)) => {
                // Nothing awaited between the grant and its return, so that a call dropped now
                // cannot lose the lease (and with it the permit): the mutex node goes in the
                // background.
                drop(mj.undo);
                Ok(Attempt::Acquired(lease))
            }
            other => {
                self.leave(mj).await;
                Ok(match other? {
                    Some(lease) => Attempt::Acquired(lease),
                    None => Attempt::Held { expires_in: None },
                })
            }
        }
    }

    /// One turn for a permit, waiting until `deadline`: the mutex, then a permit. `retry`: an
    /// earlier try failed; what it left of ours is deleted first.
    pub(crate) async fn permit_once(
        &self,
        req: &AcquireRequest,
        limit: u32,
        deadline: Instant,
        retry: bool,
    ) -> Result<Lease> {
        if retry {
            // Until they are gone, a node of ours left in the mutex's queue would keep the
            // next one (and every other contender) waiting: a failed lookup fails this try.
            let s = self.session().await?;
            self.delete_ours_on(&s, &self.places(req)).await?;
        }
        let m = semaphore_mutex(&self.inner.opts.prefix, &req.key);
        // A node a failed create left is not deleted in the background (that delete, looking
        // until the session ends, could take the next try's node, made under the same owner
        // token): the next try's clean-up above, or the acquire's own at its end, deletes it.
        let mj = self.join_queue(req, &m, &[], Some(false)).await?;
        let mj = self.wait_turn(mj, &m, &req.key, deadline).await?;
        let got = self.take_permit(&mj.s, req, limit, Some(deadline)).await;
        self.leave(mj).await;
        got?.ok_or_else(|| Error::WaitTimedOut {
            key: req.key.full().to_owned(),
            waited: std::time::Duration::ZERO,
        })
    }

    /// Deletes our node of a queue we only pass through (the semaphore's mutex).
    async fn leave(&self, j: Joined) {
        // A delete whose connection was lost goes on in the background (`delete_surely`);
        // the undo stays armed only while this call may be dropped.
        let _ = j.s.delete_surely(&j.child.path, Some(Duration::ZERO)).await;
        j.undo.disarm();
    }

    /// Holding the semaphore's mutex: checks the number of permits, makes our lease node and
    /// waits (until `deadline`; not at all without one: `None`) until at most `limit` lease
    /// nodes exist.
    async fn take_permit(
        &self,
        s: &Arc<Session>,
        req: &AcquireRequest,
        limit: u32,
        deadline: Option<Instant>,
    ) -> Result<Option<Lease>> {
        let q = self.queue(&req.key, req.mode);
        self.check_permits(s, &req.key, &q, limit).await?;
        let sent = Instant::now();
        // Only a single try deletes a lease node a failed create left in the background; a
        // waiting acquire's next try (the same owner token) deletes it first (see
        // `permit_once`), and a background delete could take that try's node.
        let made = deadline.is_none().then(|| self.undo_create(vec![(q.dir.clone(), q.stem(req.owner))]));
        let child = self.enqueue(s, &q, req.owner, &Self::node_data(req), false).await?;
        if let Some(made) = made {
            made.disarm();
        }
        let undo = self.undo(s, &child.path);
        let start = Instant::now();
        loop {
            let listed = match deadline {
                Some(_) => s.call(|c| c.list_and_watch_children(&q.dir)).await.map(|(n, w)| (n, Some(w))),
                None => s.call(|c| c.list_children(&q.dir)).await.map(|n| (n, None)),
            };
            let (names, watcher) = match listed {
                Ok(l) => l,
                Err(zookeeper_client::Error::NoNode) => (Vec::new(), None),
                Err(e) => return Err(zk_err("list", &q.dir, e)),
            };
            if !names.contains(&child.name) {
                // The lease went with its session as it was made: nothing is held; a new
                // session can try again (retryable, as a lock's vanished node is).
                undo.disarm();
                return Err(crate::error::unavailable(
                    "the permit's lease vanished as it was made (its session ended); try again",
                ));
            }
            // Curator's rule: every child of `leases` counts.
            if names.len() <= limit as usize {
                let lease = self.won(s, req, child, sent)?;
                undo.disarm();
                return Ok(Some(lease));
            }
            let (Some(deadline), Some(watcher)) = (deadline, watcher) else {
                let _ = s.delete_surely(&child.path, Some(Duration::ZERO)).await;
                undo.disarm();
                return Ok(None);
            };
            tokio::select! {
                _ = watcher.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = s.delete_surely(&child.path, Some(Duration::ZERO)).await;
                    undo.disarm();
                    return Err(Error::WaitTimedOut { key: req.key.full().to_owned(), waited: start.elapsed() });
                }
                _ = s.lost.fired() => {
                    return Err(Error::Lost { key: req.key.full().to_owned(), reason: LossReason::SessionLost });
                }
            }
        }
    }

    /// Holding the semaphore's mutex: the number of permits distlock's holders use is `limit`,
    /// or there are no holders and it becomes `limit`.
    ///
    /// # Errors
    /// [`Error::PermitsMismatch`] when leases exist and the stored number is another.
    async fn check_permits(&self, s: &Session, key: &LockKey, leases: &Queue, limit: u32) -> Result<()> {
        let sem = semaphore_dir(&self.inner.opts.prefix, key);
        let (data, stat) = match s.call(|c| c.get_data(&sem)).await {
            Ok(d) => d,
            Err(zookeeper_client::Error::NoNode) => return Err(unavailable("the semaphore's node vanished")),
            Err(e) => return Err(zk_err("read", &sem, e)),
        };
        let stored = stored_permits(&data);
        if stored == Some(limit) {
            return Ok(());
        }
        if let Some(held) = stored {
            let holders = match s.call(|c| c.list_children(&leases.dir)).await {
                Ok(names) => names,
                Err(zookeeper_client::Error::NoNode) => Vec::new(),
                Err(e) => return Err(zk_err("list", &leases.dir, e)),
            };
            if !holders.is_empty() {
                return Err(Error::PermitsMismatch { key: key.full().to_owned(), asked: limit, held });
            }
        }
        match s.call(|c| c.set_data(&sem, permits_data(limit).as_bytes(), Some(stat.version))).await {
            Ok(_) => Ok(()),
            Err(zookeeper_client::Error::BadVersion | zookeeper_client::Error::NoNode) => {
                Err(unavailable("the semaphore's node changed meanwhile; try again"))
            }
            Err(e) => Err(zk_err("write", &sem, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_number_of_permits_round_trips_and_foreign_data_is_none() {
        assert_eq!(stored_permits(permits_data(7).as_bytes()), Some(7));
        assert_eq!(stored_permits(b""), None);
        assert_eq!(stored_permits(b"10.0.0.1"), None);
        assert_eq!(stored_permits(b"{\"permits\":-1}"), None);
    }
}
