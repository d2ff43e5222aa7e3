//! Undoing an attempt that did not win, and the owner-checked deletes and reads that undo,
//! release and extend are built from.
//!
//! An undo compares the attempt's owner token (or revokes the attempt's own per-lock lease),
//! so it never touches a later grant. An attempt whose request failed may have been carried
//! out with its reply lost, or may still be: its undo goes on in the background until it
//! reaches etcd (while the session lives; for a per-lock lease, until the lease has surely run
//! out), so the grant does not block others for the life of the session or the lease. A
//! revoked per-lock lease refuses a put that comes later; in session mode the attempt's undo
//! marker does (every put of the attempt compares its absence).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lock_core::cancel::{spawn_detached, undo_after, LATE_GRANT_RECHECKS};
use lock_core::{Backoff, Instant, Lease, LockKey, OwnerToken, Result};

use crate::backend::{token_rev, EtcdBackend, Held};
use crate::error::permission_denied;
use crate::metadata::owned_by;
use crate::rpc::pb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
};
use crate::session::Session;

/// What undoing one attempt needs.
#[derive(Clone)]
pub(crate) struct Undo {
    /// The lock's name (its local slot in session mode).
    pub(crate) name: String,
    /// The attempt's queue key.
    pub(crate) key: String,
    pub(crate) owner: OwnerToken,
    /// Its lease (a per-lock lease is revoked; a session's is not).
    pub(crate) lease: i64,
    /// The attempt's TTL: how long its per-lock lease may live unrevoked.
    pub(crate) ttl: Duration,
    pub(crate) session: Option<Arc<Session>>,
    /// The key is the attempt's own (named by its owner token, see `grants`): it is deleted
    /// whatever its value; the lock's key is deleted only while it holds the owner token.
    pub(crate) by_key: bool,
    /// In session mode, the attempt's undo marker (see [`EtcdBackend::undo_marker`]).
    pub(crate) marker: Option<String>,
}

/// How long an undo marker lives before it is deleted (unless its session ends first): a put
/// held back longer than that by a member (stopped, then resumed) could still be applied.
pub(crate) const MARKER_LIFE: Duration = Duration::from_secs(120);

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}

impl EtcdBackend {
    /// Undoes a failed or abandoned attempt: its queue key, its per-lock lease, its local
    /// slot. `in_flight` when its last request may have been carried out unseen (it failed
    /// or was cancelled).
    pub(crate) async fn undo(&self, u: &Undo, in_flight: bool) {
        match &u.session {
            None => self.undo_per_lock(u.lease, u.ttl).await,
            Some(s) => self.undo_on_session(u, s, in_flight).await,
        }
    }

    /// Revokes the attempt's lease: its key goes with it, and a late put attached to it
    /// fails, so no second look is needed. A revoke that cannot reach etcd is repeated in the
    /// background until it does, or until the lease has surely run out (twice its TTL, as a
    /// leader change restarts the count, and an election).
    async fn undo_per_lock(&self, lease: i64, ttl: Duration) {
        if self.try_revoke(lease).await.is_ok() {
            return;
        }
        let until = lock_core::lease::add_saturating(
            Instant::now(),
            ttl.saturating_mul(2).saturating_add(Duration::from_secs(10)),
        );
        let b = self.clone();
        spawn_detached(async move {
            let mut backoff = backoff();
            while Instant::now() < until {
                backoff.sleep_until_deadline(Some(until)).await;
                if b.try_revoke(lease).await.is_ok() {
                    tracing::debug!(lease, "revoked the lease of a failed attempt");
                    return;
                }
            }
        });
    }

    /// The key whose existence says that `owner`'s attempt on `key` was undone:
    /// `<prefix><name>#undo/<owner token>`, beside the name's other primitives (so a role that
    /// may use them may use it; no queue, listing or Go client reads it as a grant: its last
    /// segment is no lease id). Every put of a session-mode attempt compares its absence.
    pub(crate) fn undo_marker(&self, key: &LockKey, owner: OwnerToken) -> String {
        format!("{}{}#undo/{owner}", self.inner.opts.prefix, key.full())
    }

    /// Whether attempts carry undo markers.
    pub(crate) fn markers_on(&self) -> bool {
        self.inner.markers.load(Ordering::Relaxed)
    }

    /// Runs an attempt's put transaction, `build(markers)`, with its undo markers' comparisons
    /// while they are on (`checked(markers)` is told before each send, for the undo). A
    /// transaction refused for a permission is sent again without them; if that one passes,
    /// the role may not read the markers' keys (etcd checks every key a transaction compares),
    /// and markers are turned off for this backend, with a warning: undoing then looks late
    /// for the put instead (see [`undo_looking_late`](Self::undo_looking_late)).
    pub(crate) async fn put_txn(
        &self,
        checked: impl Fn(bool),
        build: impl Fn(bool) -> TxnRequest,
    ) -> Result<TxnResponse> {
        let markers = self.markers_on();
        checked(markers);
        match self.call("txn", || self.client().txn(build(markers))).await {
            Err(e) if markers && permission_denied(&e) => {
                checked(false);
                let again = self.call("txn", || self.client().txn(build(false))).await;
                if again.is_ok() {
                    self.markers_off(&e);
                }
                again
            }
            r => r,
        }
    }

    fn markers_off(&self, e: &lock_core::Error) {
        if self.inner.markers.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, "etcd refused an undo marker's key (the user's role does not cover `<name>#undo/`): a put held back past its undo's looks can then leave a grant for the session's life");
        }
    }

    /// Undoes a session-mode attempt: frees the local slot and deletes its key by owner token.
    /// When its put may still be on its way (`in_flight`: etcd serves one connection's requests
    /// concurrently, the client spreads them over members, and a stopped member can hold one
    /// for any time), the attempt's undo marker is written first, on the session's lease: every
    /// put of the attempt compares its absence, so one that comes later is refused, and one
    /// that came before is deleted by the delete after it. A marker or a delete that cannot
    /// reach etcd is tried again in the background while the session lives; a marker refused
    /// for good (a role that does not cover it) falls back to looking late. The marker is
    /// deleted [`MARKER_LIFE`] later (or goes with the session). Only an attempt whose put
    /// compared the marker has one (`u.marker`).
    async fn undo_on_session(&self, u: &Undo, s: &Arc<Session>, in_flight: bool) {
        let Some(marker) = u.marker.clone().filter(|_| in_flight) else {
            return self.undo_looking_late(u, s, in_flight).await;
        };
        let marked = match self.put_marker(&marker, s.id).await {
            Ok(()) => true,
            Err(e) if !e.is_retryable() => {
                if permission_denied(&e) {
                    self.markers_off(&e);
                }
                return self.undo_looking_late(u, s, in_flight).await;
            }
            Err(_) => false,
        };
        let deleted = self.delete_attempt(u).await.is_ok();
        self.inner.local.free(&u.name, u.owner);
        if marked && deleted {
            self.forget_marker_later(marker, s);
            return;
        }
        let (b, u, s) = (self.clone(), u.clone(), s.clone());
        spawn_detached(async move {
            let mut marked = marked;
            let mut backoff = backoff();
            while s.alive() {
                backoff.sleep_until_deadline(None).await;
                if !marked {
                    match b.put_marker(&marker, s.id).await {
                        Ok(()) => marked = true,
                        Err(e) if !e.is_retryable() => {
                            if permission_denied(&e) {
                                b.markers_off(&e);
                            }
                            return b.undo_looking_late(&u, &s, true).await;
                        }
                        Err(_) => {}
                    }
                }
                // Deleted each round, also before the marker is in (a put applied meanwhile
                // should not wait for it); done once a delete came after the marker.
                match b.delete_attempt(&u).await {
                    Ok(_) if marked => {
                        tracing::debug!(key = u.key, "undid a failed attempt");
                        b.forget_marker_later(marker, &s);
                        return;
                    }
                    Err(e) if !e.is_retryable() => return,
                    _ => {}
                }
            }
        });
    }

    /// The undo without a marker: deletes the attempt's key by owner token and frees the local
    /// slot. When the delete fails, or finds nothing while the put may still be on its way,
    /// the background goes on: the delete is repeated until etcd answers, while the session
    /// lives, then the key is looked for again a few times (`LATE_GRANT_RECHECKS`, then a
    /// request timeout later). A put held back longer than that can still be applied.
    async fn undo_looking_late(&self, u: &Undo, s: &Arc<Session>, in_flight: bool) {
        let first = self.delete_attempt(u).await;
        self.inner.local.free(&u.name, u.owner);
        let reached = match first {
            Ok(true) => return,
            Ok(false) if !in_flight => return,
            Ok(false) => true,
            // Refused for good (a role that does not cover the key): sending it again cannot
            // help, and the key (if any) goes with the session.
            Err(e) if !e.is_retryable() => {
                tracing::warn!(key = u.key, error = %e, "the undo of a failed attempt was refused; its key, if any, goes with the session");
                return;
            }
            Err(_) => false,
        };
        let (b, u, s) = (self.clone(), u.clone(), s.clone());
        spawn_detached(async move {
            let mut reached = reached;
            let mut backoff = backoff();
            while !reached && s.alive() {
                backoff.sleep_until_deadline(None).await;
                match b.delete_attempt(&u).await {
                    Ok(true) => {
                        tracing::debug!(key = u.key, "deleted the queue key of a failed attempt");
                        return;
                    }
                    Ok(false) => reached = true,
                    Err(e) if !e.is_retryable() => return,
                    Err(_) => {}
                }
            }
            // Once more after a request timeout: a member that held the put that long (it
            // stopped answering, then came back) may apply it then. The looks do not keep the
            // backend alive (its last handle dropped revokes the session, and its keys with
            // it), and stop with the session.
            let pauses = LATE_GRANT_RECHECKS.into_iter().chain([b.inner.opts.request_timeout]);
            let weak = Arc::downgrade(&b.inner);
            drop(b);
            let late = undo_after(pauses, || async {
                let Some(inner) = weak.upgrade().filter(|_| s.alive()) else { return true };
                matches!(EtcdBackend { inner }.delete_attempt(&u).await, Ok(true))
            })
            .await;
            if late && s.alive() {
                tracing::debug!(key = u.key, "deleted the late queue key of a cancelled attempt");
            }
        });
    }

    /// Writes an undo marker on the session's lease.
    async fn put_marker(&self, marker: &str, lease: i64) -> Result<()> {
        let put = || self.client().put(PutRequest::new(marker, Vec::new(), lease));
        self.call("put", put).await.map(|_| ())
    }

    /// Deletes `marker` after [`MARKER_LIFE`], unless its session ended (its lease took the
    /// marker with it). Holds the backend and the session weakly: a dropped backend revokes
    /// its session, and a session nobody holds is not kept alive for this.
    fn forget_marker_later(&self, marker: String, s: &Arc<Session>) {
        let (weak, session) = (Arc::downgrade(&self.inner), Arc::downgrade(s));
        spawn_detached(async move {
            tokio::time::sleep(MARKER_LIFE).await;
            let alive = session.upgrade().is_some_and(|s| s.alive());
            let Some(inner) = weak.upgrade().filter(|_| alive) else { return };
            let b = EtcdBackend { inner };
            let del = || b.client().delete_range(DeleteRangeRequest::key(marker.as_str()));
            let _ = b.call("delete", del).await;
        });
    }

    /// Deletes the attempt's key, if it is still the attempt's; true if it did.
    async fn delete_attempt(&self, u: &Undo) -> Result<bool> {
        if !u.by_key {
            return self.delete_if_ours(&u.key, u.owner).await;
        }
        let del = || self.client().delete_range(DeleteRangeRequest::key(u.key.as_str()));
        Ok(self.call("delete", del).await?.deleted > 0)
    }

    /// Deletes `key` if it is still the key created at revision `rev`.
    pub(crate) async fn delete_at_revision(&self, key: &str, rev: i64) -> Result<bool> {
        let txn =
            TxnRequest::when([Compare::create_revision_is(key, rev)]).and_then([RequestOp::delete(key)]);
        Ok(self.call("txn", || self.client().txn(txn.clone())).await?.succeeded)
    }

    /// Deletes the lock's `key` if its value is still `owner`'s; true if it did.
    pub(crate) async fn delete_if_ours(&self, key: &str, owner: OwnerToken) -> Result<bool> {
        let txn = TxnRequest::when(owned_by(key, owner)).and_then([RequestOp::delete(key)]);
        Ok(self.call("txn", || self.client().txn(txn.clone())).await?.succeeded)
    }

    /// Whether the grant of `held` is still there and ours: its key at its create revision,
    /// on the lease `held` renews (a TTL change whose outcome was unknown may have moved it to
    /// another, which nothing renews).
    pub(crate) async fn held_still(&self, held: &Held, lease: &Lease) -> Result<bool> {
        Ok(self.key_lease(&held.etcd_key, token_rev(lease)).await? == Some(held.lease().id))
    }

    /// The lease of `key` if it is still the key created at revision `rev`.
    pub(crate) async fn key_lease(&self, key: &str, rev: i64) -> Result<Option<i64>> {
        let r = self.call("get", || self.client().range(RangeRequest::key(key).without_values())).await?;
        Ok(r.kvs.first().filter(|kv| kv.create_revision == rev).map(|kv| kv.lease))
    }

    /// Deletes a held lock's key with a plain delete, as etcd's own `Mutex.Unlock` does; true
    /// if the key deleted was the grant created at `rev`, and whether the plain delete was
    /// answered.
    ///
    /// Only this client writes that key, so no comparison is needed to spare another holder:
    /// the key's name carries the lease (the session's, or the lock's own), and in session
    /// mode the name's local slot, held until this release ends, admits one attempt of the
    /// session at a time. The one other value the key can have is an orphan of our own: the
    /// put of a cancelled attempt that reached the server after its undo, and after our grant
    /// was deleted (a put never overwrites: it is conditioned on the key's absence). Deleting
    /// it is what its undo meant to do; the release then says the grant was not held. A
    /// plain delete costs etcd less than a transaction's comparison and delete.
    ///
    /// The plain delete is sent once: one whose reply did not come may still be applied late,
    /// so it is not repeated (a repeat that succeeds would let the slot go while the first is
    /// out); the release goes on with deletes that compare the create revision (which log in
    /// again on an expired token), and unless the failure was a refusal that did nothing, the
    /// slot is held back (see [`LocalSlots::free`](crate::local::LocalSlots::free)).
    pub(crate) async fn delete_own_key(&self, key: &str, rev: i64) -> Result<(bool, bool)> {
        match self.client().delete_range(DeleteRangeRequest::key(key).with_prev_kv()).await {
            Ok(r) => Ok((r.prev_kvs.iter().any(|kv| kv.create_revision == rev), true)),
            Err(e) => {
                tracing::debug!(backend = crate::error::NAME, key, error = %e, "a release's plain delete failed; deleting by its create revision");
                // A refusal before anything was done (an expired auth token, a denied
                // permission) cannot land later; anything else (a timeout, a lost
                // connection, a leader change) may.
                let refused = matches!(
                    e.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::OutOfRange
                        | tonic::Code::Unimplemented
                );
                Ok((self.delete_at_revision(key, rev).await?, refused))
            }
        }
    }
}

/// How a release knows the key it deletes is its grant.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Whose {
    /// A held lock's key, which only this client writes (see
    /// [`EtcdBackend::delete_own_key`]), created at this revision.
    OwnKey(i64),
    /// The key created at this revision: a held grant of another primitive, or a key of its
    /// own.
    Created(i64),
    /// The lock's key whose value is this owner's: a grant found by its owner token.
    Owner(OwnerToken),
}
