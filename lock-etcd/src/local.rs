//! Session mode's local slots: a session has one queue key per name (`<prefix><name>/<lease
//! id>`), so the client's own tasks that want the same name queue here, inside the process,
//! and only the slot's owner queues on etcd. Also a waiting attempt's lease and slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lock_core::{AcquireRequest, Backoff, Error, Instant, OwnerToken, Result};
use tokio::sync::Notify;

use crate::backend::EtcdBackend;
use crate::error::NAME;
use crate::rpc::pb::RangeRequest;
use crate::session::Session;
use crate::undo::MARKER_LIFE as HOLD_BACK;

struct LocalSlot {
    owner: OwnerToken,
    session: i64,
    /// What the slot's release signals; made when a first task waits for it.
    released: Option<Arc<Notify>>,
    /// A release of the owner's grant is under way (see [`LocalSlots::start_release`]).
    releasing: bool,
    /// When the release's plain delete was sent, until it is answered: unanswered, it may
    /// still be applied late (a member that stalled with it), and delete whatever key of
    /// this session then has the name.
    plain_sent: Option<Instant>,
    /// The owner won the lock: the create revision of its key (see
    /// [`LocalSlots::granted_owner`]).
    granted: Option<i64>,
    /// When a task of this process last asked etcd whether that grant's key is still there.
    looked: Option<Instant>,
}

/// Which local owner holds or queues for each name, per session.
#[derive(Default, Clone)]
pub(crate) struct LocalSlots(Arc<Mutex<HashMap<String, LocalSlot>>>);

impl LocalSlots {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, LocalSlot>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the slot of `name` for `owner` on session `session`. When another local owner
    /// of the same session holds or queues for it, returns the `Notify` its release signals.
    pub(crate) fn claim(&self, name: &str, owner: OwnerToken, session: i64) -> Result<(), Arc<Notify>> {
        let mut local = self.lock();
        match local.get_mut(name) {
            Some(slot) if slot.owner != owner && slot.session == session => {
                Err(slot.released.get_or_insert_with(Arc::default).clone())
            }
            Some(slot) => {
                // Ours already, or left by a lost session (whose keys are named by its own
                // lease, out of reach of its late deletes): the waiters stay with the slot.
                if slot.owner != owner {
                    slot.releasing = false;
                    slot.plain_sent = None;
                    slot.granted = None;
                    slot.looked = None;
                }
                (slot.owner, slot.session) = (owner, session);
                Ok(())
            }
            None => {
                let slot = LocalSlot {
                    owner,
                    session,
                    released: None,
                    releasing: false,
                    plain_sent: None,
                    granted: None,
                    looked: None,
                };
                local.insert(name.to_owned(), slot);
                Ok(())
            }
        }
    }

    /// `owner`, which has the slot of `name`, won the lock with a key created at `created`.
    pub(crate) fn mark_granted(&self, name: &str, owner: OwnerToken, created: i64) {
        if let Some(s) = self.lock().get_mut(name).filter(|s| s.owner == owner) {
            s.granted = Some(created);
        }
    }

    /// The owner of the slot of `name` on session `session` if it won the lock and no
    /// release of its grant has started here: a slot whose key is then found gone was let go
    /// from elsewhere (a detached lease released by another process, or its key deleted from
    /// outside), and no release of this process will free it.
    /// Returns it with its key's create revision, at most once per `every` per slot (a try
    /// refused by the slot asks each time, and a poll of tries must not add a read each).
    pub(crate) fn granted_owner(
        &self,
        name: &str,
        session: i64,
        every: Duration,
    ) -> Option<(OwnerToken, i64)> {
        let mut local = self.lock();
        let s = local.get_mut(name).filter(|s| s.session == session && !s.releasing)?;
        let created = s.granted?;
        let now = Instant::now();
        if s.looked.is_some_and(|at| now < at + every) {
            return None;
        }
        s.looked = Some(now);
        Some((s.owner, created))
    }

    /// Frees the slot of `name` that `owner` won and whose key is gone (see
    /// [`granted_owner`](Self::granted_owner)), if nothing changed meanwhile. A later release
    /// of that grant here finds the slot not its own and deletes by create revision, so it
    /// cannot touch the key of the next grant.
    pub(crate) fn free_abandoned(&self, name: &str, owner: OwnerToken, created: i64) {
        let mut local = self.lock();
        if local.get(name).is_some_and(|s| s.owner == owner && s.granted == Some(created) && !s.releasing) {
            if let Some(released) = local.remove(name).and_then(|slot| slot.released) {
                released.notify_waiters();
            }
        }
    }

    /// Whether `owner` has the slot of `name` and no release of its grant is under way yet;
    /// marks one as under way. The first release of a grant may then delete its key plainly
    /// (the slot keeps the session's other attempts off the key until it is freed); a second
    /// one running alongside must compare, since the first may free the slot and a new grant
    /// of the session put the key again before the second's delete lands.
    pub(crate) fn start_release(&self, name: &str, owner: OwnerToken) -> bool {
        match self.lock().get_mut(name) {
            Some(s) if s.owner == owner && !s.releasing => {
                s.releasing = true;
                s.plain_sent = Some(Instant::now());
                true
            }
            _ => false,
        }
    }

    /// The plain delete [`start_release`](Self::start_release) allowed was answered: it
    /// cannot be applied later.
    pub(crate) fn plain_answered(&self, name: &str, owner: OwnerToken) {
        if let Some(s) = self.lock().get_mut(name).filter(|s| s.owner == owner) {
            s.plain_sent = None;
        }
    }

    /// Frees the slot of `name` if `owner` has it, waking the tasks waiting for it. While a
    /// plain delete of the slot's key may still be applied (sent, never answered: it failed,
    /// or its release was cut), the slot stays taken until [`HOLD_BACK`] after it was sent: a
    /// new grant of the session would put the same key, and that late delete remove it under
    /// its holder (whose loss would be seen at its next renewal, after another client took
    /// the name).
    pub(crate) fn free(&self, name: &str, owner: OwnerToken) {
        let mut local = self.lock();
        let Some(slot) = local.get(name).filter(|s| s.owner == owner) else { return };
        if let Some(until) = slot.plain_sent.map(|sent| sent + HOLD_BACK).filter(|u| *u > Instant::now()) {
            let (slots, held) = (self.clone(), name.to_owned());
            let later = async move {
                tokio::time::sleep_until(until).await;
                if let Some(s) = slots.lock().get_mut(&held).filter(|s| s.owner == owner) {
                    s.plain_sent = None;
                }
                slots.free(&held, owner);
            };
            if lock_core::cancel::spawn_detached(later) {
                tracing::debug!(backend = NAME, key = name, "a release's plain delete went unanswered; the name stays taken here until it can no longer land");
                return;
            }
        }
        if let Some(released) = local.remove(name).and_then(|slot| slot.released) {
            released.notify_waiters();
        }
    }
}

impl EtcdBackend {
    /// For a waiting acquire: the lease, and in session mode the name's local slot, waiting
    /// while another task of this client holds or queues for the name. Returns when the
    /// attempt started, the lease, its TTL and the session. Retryable failures are retried
    /// until `deadline`.
    pub(crate) async fn lease_and_slot(
        &self,
        req: &AcquireRequest,
        deadline: Instant,
    ) -> Result<(Instant, i64, Duration, Option<Arc<Session>>)> {
        let name = req.key.full();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            let sent = Instant::now();
            let (lease, granted, session) = match self.lease_for(req).await {
                Ok(got) => got,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tracing::debug!(backend = NAME, error = %e, "no lease yet; retrying");
                    backoff.sleep_until_deadline(Some(deadline)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Only the lock's key is shared by a session's attempts (see `grants`).
            if let Some(s) = session.as_ref().filter(|_| req.mode == lock_core::Mode::Exclusive) {
                if let Err(released) = self.inner.local.claim(name, req.owner, s.id) {
                    // Another task of this client holds or queues for the name: wait for it.
                    let notified = released.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    match self.inner.local.claim(name, req.owner, s.id) {
                        Ok(()) => {}
                        // Freed and claimed by another task in between: wait on its slot's
                        // signal instead (this one will not be given again).
                        Err(again) if !Arc::ptr_eq(&again, &released) => continue,
                        Err(_) => {
                            tokio::select! {
                                _ = &mut notified => {}
                                _ = tokio::time::sleep_until(deadline) => {
                                    return Err(Error::WaitTimedOut { key: name.to_owned(), waited: Duration::ZERO });
                                }
                                _ = tokio::time::sleep(s.ttl) => {
                                    self.free_if_abandoned(req, s).await;
                                }
                            }
                            continue;
                        }
                    }
                }
            }
            return Ok((sent, lease, granted, session));
        }
    }

    /// Frees the name's slot if its owner won the lock and the session's key for the name is
    /// gone (see [`LocalSlots::granted_owner`]); says whether it did. A waiting acquire asks
    /// after each session TTL it waited for the slot, a try each time the slot refuses it. A
    /// failed read leaves the slot as it is.
    pub(crate) async fn free_if_abandoned(&self, req: &AcquireRequest, s: &Session) -> bool {
        let name = req.key.full();
        let Some((owner, created)) = self.inner.local.granted_owner(name, s.id, s.ttl) else { return false };
        let key = format!("{}{:x}", self.etcd_prefix(&req.key), s.id);
        let read = self.call("get", || self.client().range(RangeRequest::key(key.as_str()).without_values()));
        // Gone, or another key at its place (a late put of an attempt of ours, an orphan the
        // next claimant's enqueue deletes): the grant is not there.
        if !read.await.is_ok_and(|r| r.kvs.first().is_none_or(|kv| kv.create_revision != created)) {
            return false;
        }
        tracing::debug!(
            backend = NAME,
            key = name,
            "the grant holding this name's local slot is gone from etcd; freeing the slot"
        );
        // Its guard, if one is still here, must learn it lost the lock before another task
        // of this session puts the same key (whose key-watch entry would replace its own).
        s.keys.released(key.as_bytes(), created);
        self.inner.local.free_abandoned(name, owner, created);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_of_two_releases_of_a_grant_may_delete_plainly() {
        let slots = LocalSlots::default();
        let (a, b) = (OwnerToken::random(), OwnerToken::random());
        assert!(slots.claim("n", a, 1).is_ok());
        assert!(slots.start_release("n", a), "the first release");
        assert!(!slots.start_release("n", a), "a second release alongside the first");
        slots.free("n", a);
        assert!(!slots.start_release("n", a), "a release after the slot was freed");
        assert!(slots.claim("n", b, 1).is_ok());
        assert!(!slots.start_release("n", a), "a stale release of a grant whose slot was taken again");
        assert!(slots.start_release("n", b), "the new grant's release");
    }
}
