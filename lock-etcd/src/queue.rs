//! The fair queue, in the layout of etcd's Go `concurrency.Mutex`: each contender's key
//! `<prefix><name>/<lease id in hex>`, served in create-revision order; a waiter watches only
//! the key just before its own. Also the owner-checked reads and deletes the queue is built
//! from, and the undo of an attempt that did not win.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{AcquireRequest, BackendErrorKind, Error, FencingToken, Instant, Lease, OwnerToken, Result};

use crate::backend::{EtcdBackend, Held};
use crate::error::{map_err, timeout, NAME};
use crate::keepalive::{ttl_secs, KeepAlive};
use crate::rpc::pb::{Compare, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest};
use crate::rpc::{EventType, WatchStream};
use crate::session::Session;

/// One attempt's queue entry: its key, lease and local slot. Dropped before [`won`] or
/// [`undo`] (a cancelled acquire), it cleans up in the background.
///
/// [`won`]: QueueEntry::won
/// [`undo`]: QueueEntry::undo
pub(crate) struct QueueEntry {
    backend: Option<EtcdBackend>,
    name: String,
    pfx: String,
    my_key: String,
    owner: OwnerToken,
    lease: i64,
    session: Option<Arc<Session>>,
}

/// What one round of waiting found out.
enum Round {
    /// No older key is left and ours is there: the lock is ours.
    Mine,
    /// Our key is gone (the lease expired or was revoked while we waited).
    Gone,
    /// Look again, at the revision of the deletion that woke us if there was one.
    Again(Option<i64>),
    /// The session lease was lost while we waited: an error, not retried.
    SessionLost,
}

impl QueueEntry {
    pub(crate) fn new(
        backend: &EtcdBackend,
        req: &AcquireRequest,
        lease: i64,
        session: Option<Arc<Session>>,
    ) -> Self {
        let pfx = backend.etcd_prefix(&req.key);
        Self {
            backend: Some(backend.clone()),
            name: req.key.full().to_owned(),
            my_key: format!("{pfx}{lease:x}"),
            pfx,
            owner: req.owner,
            lease,
            session,
        }
    }

    /// Undoes the attempt now; `in_flight` when its last request may not have been carried
    /// out yet (it failed). Stays armed until the undo is done, so a cancelled undo still
    /// finishes in the background.
    pub(crate) async fn undo(mut self, in_flight: bool) {
        if let Some(b) = self.backend.clone() {
            b.undo(&self.name, &self.my_key, self.owner, self.lease, &self.session, in_flight).await;
        }
        self.backend = None;
    }

    /// The attempt won the lock (granted `granted` from `sent`, fencing token `my_rev`): the
    /// lease. In session mode the key is registered with the session's key watch, so its
    /// deletion reaches this grant's guard.
    pub(crate) fn won(
        mut self,
        req: &AcquireRequest,
        my_rev: i64,
        granted: Duration,
        sent: Instant,
    ) -> Lease {
        self.backend = None;
        let session = self.session.take();
        let signal = session.as_ref().map(|s| s.keys.add(self.my_key.as_bytes(), my_rev));
        let base = Lease::new(req.key.clone(), req.owner, FencingToken::new(my_rev as u64), granted, sent);
        let lease = match (&session, &signal) {
            (Some(s), Some(sig)) => base.with_valid_until(s.valid_until()).with_session(sig.clone()),
            _ => base,
        };
        let held = Held {
            etcd_key: std::mem::take(&mut self.my_key),
            signal,
            lease: Mutex::new((self.lease, ttl_secs(granted))),
            session,
        };
        lease.with_backend_data(Arc::new(held))
    }

    fn wait_timed_out(&self) -> Error {
        Error::WaitTimedOut { key: self.pfx.trim_end_matches('/').to_owned(), waited: Duration::ZERO }
    }
}

impl Drop for QueueEntry {
    fn drop(&mut self) {
        if let Some(b) = self.backend.take() {
            let (name, key, owner, lease, session) = (
                std::mem::take(&mut self.name),
                std::mem::take(&mut self.my_key),
                self.owner,
                self.lease,
                self.session.take(),
            );
            lock_core::cancel::spawn_detached(async move {
                b.undo(&name, &key, owner, lease, &session, true).await
            });
        }
    }
}

fn expired() -> Error {
    Error::backend_msg(
        NAME,
        BackendErrorKind::Unavailable,
        "the lease expired while waiting; the queue entry is gone",
    )
}

impl EtcdBackend {
    /// Puts our key (unless it exists) and reads the owner, in one transaction.
    /// Returns (our create revision, owner's create revision), or `None`
    /// when the key exists with another owner's value.
    pub(crate) async fn enqueue(&self, e: &QueueEntry) -> Result<Option<(i64, i64)>> {
        let (my_key, owner) = (e.my_key.as_str(), e.owner.to_string());
        let owner_get =
            || RequestOp::range(RangeRequest::prefix(e.pfx.as_str()).oldest_first().with_limit(1));
        let txn = TxnRequest::when([Compare::create_revision_is(my_key, 0)])
            .and_then([RequestOp::put(my_key, owner.as_str(), e.lease), owner_get()])
            .or_else([RequestOp::range(RangeRequest::key(my_key)), owner_get()]);
        // A key of ours with another owner token is an orphan: the callers hold the name's
        // local slot (session mode) or a fresh lease (per-lock mode), so no live attempt or
        // guard of this client owns it. It is the put of a cancelled attempt that reached the
        // server after that attempt's undo (etcd serves one connection's requests
        // concurrently, so they can overtake each other). Delete it and queue afresh.
        for _ in 0..3 {
            let resp = self.call("txn", || self.client().txn(txn.clone())).await?;
            let my_rev = if resp.succeeded {
                resp.revision()
            } else {
                match resp.first_kv(0) {
                    Some(kv) if kv.value == owner.as_bytes() => kv.create_revision,
                    Some(kv) => {
                        tracing::debug!(key = my_key, "deleting the orphan queue key of a cancelled attempt");
                        self.delete_at_revision(my_key, kv.create_revision).await?;
                        continue;
                    }
                    None => resp.revision(),
                }
            };
            let owner_rev = resp.first_kv(1).map_or(my_rev, |kv| kv.create_revision);
            return Ok(Some((my_rev, owner_rev)));
        }
        Ok(None)
    }

    /// Queues `e` and waits for the lock until `deadline`: (fencing token, when the grant's
    /// validity starts, granted TTL). A per-lock lease is kept alive while it waits.
    pub(crate) async fn queue_and_wait(
        &self,
        e: &QueueEntry,
        sent: Instant,
        granted: Duration,
        deadline: Instant,
    ) -> Result<(i64, Instant, Duration)> {
        let Some((my_rev, owner_rev)) = self.enqueue(e).await? else {
            return Err(Error::backend_msg(
                NAME,
                BackendErrorKind::Other,
                "queue key held by another owner of this session",
            ));
        };
        if my_rev == owner_rev {
            return Ok((my_rev, sent, granted));
        }
        let session = e.session.as_deref();
        // A per-lock lease must outlive the wait: keep it alive until we hold the lock.
        let keep = session.is_none().then(|| KeepAlive::start(self.client().clone(), e.lease, granted));
        let mine = self.wait_for_predecessors(e, my_rev, deadline).await?;
        // A waiter whose lease expired while it waited gets an error, never the lock.
        if !mine || session.is_some_and(|s| !s.alive()) {
            return Err(expired());
        }
        drop(keep);
        if session.is_some() {
            return Ok((my_rev, sent, granted));
        }
        // The per-lock lease was kept alive while we waited: measure its validity from a
        // keep-alive sent now, not from before the wait.
        let at = Instant::now();
        match self.keep_alive_once(e.lease).await? {
            ttl if ttl > 0 => Ok((my_rev, at, Duration::from_secs(ttl as u64))),
            _ => Err(expired()),
        }
    }

    /// Waits until no key created before `my_rev` is left under the entry's prefix: watch the
    /// one just before ours from the current revision, then re-read it, so a deletion is never
    /// missed and never delayed. Returns `false` if our own key is gone (the lease expired or
    /// was revoked while we waited).
    ///
    /// After the watched deletion one read decides, of the revision of that deletion: no
    /// older key left and ours still there means the lock is ours as of that revision.
    async fn wait_for_predecessors(&self, e: &QueueEntry, my_rev: i64, deadline: Instant) -> Result<bool> {
        // The revision of the deletion that woke us, for the next read.
        let mut at: Option<i64> = None;
        loop {
            match self.wait_round(e, my_rev, at.take(), deadline).await {
                Ok(Round::Mine) => return Ok(true),
                Ok(Round::Gone) => return Ok(false),
                Ok(Round::Again(rev)) => at = rev,
                Ok(Round::SessionLost) => {
                    return Err(Error::backend_msg(
                        NAME,
                        BackendErrorKind::Unavailable,
                        "the session lease was lost while waiting for the lock",
                    ));
                }
                // A member that died, or an election, fails a read or a watch with a retryable
                // error: waiting goes on (through the other members) until the deadline, as the
                // trait asks.
                Err(err) if err.is_retryable() && Instant::now() < deadline => {
                    tracing::debug!(backend = NAME, error = %err, "retrying while waiting for the lock");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// One round: read the queue (at `at` if a deletion woke us), then watch the predecessor
    /// until it is deleted.
    async fn wait_round(
        &self,
        e: &QueueEntry,
        my_rev: i64,
        at: Option<i64>,
        deadline: Instant,
    ) -> Result<Round> {
        let (pred, mine) = match (self.queue_view(e, my_rev, at).await, at) {
            (Ok(v), _) => v,
            // A member behind the one that reported the deletion has not applied its
            // revision yet (or it was compacted away): read the current state instead.
            (Err(_), Some(_)) => return Ok(Round::Again(None)),
            (Err(err), None) => return Err(err),
        };
        if !mine {
            return Ok(Round::Gone);
        }
        let Some(pred) = pred else { return Ok(Round::Mine) };
        let Some(mut ws) = self.watch_predecessor(e, &pred, my_rev, deadline).await? else {
            return Ok(Round::Again(None));
        };
        self.next_deletion(e, &mut ws, deadline).await
    }

    /// The queue as a waiter sees it, in one read: the key created just before `my_rev`
    /// under the entry's prefix (if any), and whether the entry's key still holds its owner.
    ///
    /// With `at`, the read is of that revision and served by the member without a quorum
    /// round (a serializable read): the state just after the event that woke the waiter,
    /// which every member that reported the event has applied.
    async fn queue_view(
        &self,
        e: &QueueEntry,
        my_rev: i64,
        at: Option<i64>,
    ) -> Result<(Option<Vec<u8>>, bool)> {
        // The two newest keys created up to ours: ours first, then the one just before it.
        let read = || {
            let req = RangeRequest::prefix(e.pfx.as_str()).newest_first().with_max_create_revision(my_rev);
            let req = req.with_limit(2);
            match at {
                Some(rev) => req.serializable_at(rev),
                None => req,
            }
        };
        let r = self.call("get", || self.client().range(read())).await?;
        let owner = e.owner.to_string();
        let mine = r.kvs.first().is_some_and(|kv| {
            kv.key == e.my_key.as_bytes() && kv.create_revision == my_rev && kv.value == owner.as_bytes()
        });
        Ok((if mine { r.kvs.get(1) } else { r.kvs.first() }.map(|kv| kv.key.clone()), mine))
    }

    /// Opens a watch for deletions of `pred` from the current revision and, once the server
    /// confirms it, re-reads `pred`: a deletion before this point shows in the read, one after
    /// it arrives on the watch. `None` when the round must start again (the watch stream
    /// ended, or `pred` is gone or not ahead of us).
    async fn watch_predecessor(
        &self,
        e: &QueueEntry,
        pred: &[u8],
        my_rev: i64,
        deadline: Instant,
    ) -> Result<Option<WatchStream>> {
        let t = self.inner.opts.request_timeout;
        // Opening a watch is safe to repeat; an expired auth token is renewed in `call`.
        let mut ws =
            self.call("watch", || self.client().watch(WatchCreateRequest::deletions_of(pred, 0))).await?;
        let created =
            tokio::time::timeout(t, ws.message()).await.map_err(|_| timeout("watch", t))?.map_err(map_err)?;
        if created.is_none() {
            if Instant::now() >= deadline {
                return Err(e.wait_timed_out());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Ok(None);
        }
        // The predecessor is still ahead of us only if it exists with a create revision
        // below ours: a key of the same name created again (by another task of the same
        // session) is behind us, and waiting for it would deadlock.
        let still =
            self.call("get", || self.client().range(RangeRequest::key(pred).without_values())).await?;
        if still.kvs.first().is_none_or(|kv| kv.create_revision >= my_rev) {
            return Ok(None);
        }
        Ok(Some(ws))
    }

    /// Waits on `ws` for the predecessor's deletion: `Again` with its revision, or `Again`
    /// without one when the watch broke or was cancelled; `SessionLost` when the session lease
    /// was lost meanwhile.
    async fn next_deletion(&self, e: &QueueEntry, ws: &mut WatchStream, deadline: Instant) -> Result<Round> {
        let session_lost = async {
            match e.session.as_deref() {
                Some(s) => {
                    s.loss.fired().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(session_lost);
        loop {
            tokio::select! {
                msg = ws.message() => {
                    let Ok(Some(resp)) = msg else { return Ok(Round::Again(None)) };
                    if resp.canceled {
                        return Ok(Round::Again(None));
                    }
                    let deleted = resp
                        .events
                        .iter()
                        .filter(|ev| ev.r#type() == EventType::Delete)
                        .filter_map(|ev| ev.kv.as_ref().map(|kv| kv.mod_revision))
                        .max();
                    if let Some(rev) = deleted {
                        return Ok(Round::Again((rev > 0).then_some(rev)));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Err(e.wait_timed_out()),
                _ = &mut session_lost => return Ok(Round::SessionLost),
            }
        }
    }

    /// Deletes `key` if it is still the key created at revision `rev`.
    async fn delete_at_revision(&self, key: &str, rev: i64) -> Result<bool> {
        let txn =
            TxnRequest::when([Compare::create_revision_is(key, rev)]).and_then([RequestOp::delete(key)]);
        Ok(self.call("txn", || self.client().txn(txn.clone())).await?.succeeded)
    }

    /// Deletes `key` if its value is still `owner`; true if it did.
    pub(crate) async fn delete_if_ours(&self, key: &str, owner: OwnerToken) -> Result<bool> {
        let txn =
            TxnRequest::when([Compare::value_is(key, owner.to_string())]).and_then([RequestOp::delete(key)]);
        Ok(self.call("txn", || self.client().txn(txn.clone())).await?.succeeded)
    }

    /// Whether `key` still holds `owner`.
    pub(crate) async fn still_ours(&self, key: &str, owner: OwnerToken) -> Result<bool> {
        let r = self.call("get", || self.client().range(RangeRequest::key(key))).await?;
        Ok(r.kvs.first().is_some_and(|kv| kv.value == owner.to_string().as_bytes()))
    }

    /// Finds the key under `pfx` whose value is `owner` (for a lease rebuilt by an operator):
    /// the key and its lease.
    pub(crate) async fn find_key(&self, pfx: &str, owner: OwnerToken) -> Result<Option<(String, i64)>> {
        let r = self.call("get", || self.client().range(RangeRequest::prefix(pfx))).await?;
        let want = owner.to_string();
        Ok(r.kvs
            .iter()
            .find(|kv| kv.value == want.as_bytes())
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.lease)))
    }

    /// Undoes a failed or abandoned attempt: our queue key, a per-lock lease, the local slot.
    ///
    /// With `in_flight` (the attempt was cancelled or its request failed, so its put may still
    /// reach the server after this delete), a session key that was not there is looked for
    /// again a few times in the background. A per-lock lease needs no second look: once it
    /// is revoked, a late put attached to it fails.
    async fn undo(
        &self,
        name: &str,
        my_key: &str,
        owner: OwnerToken,
        lease: i64,
        session: &Option<Arc<Session>>,
        in_flight: bool,
    ) {
        let deleted = matches!(self.delete_if_ours(my_key, owner).await, Ok(true));
        if session.is_none() {
            self.revoke(lease).await;
            return;
        }
        self.inner.local.free(name, owner);
        if in_flight && !deleted {
            // Compared by owner token, so this never deletes the key of a later attempt.
            let (b, key) = (self.clone(), my_key.to_owned());
            lock_core::cancel::spawn_detached(async move {
                let late = lock_core::cancel::undo_after(lock_core::cancel::LATE_GRANT_RECHECKS, || async {
                    matches!(b.delete_if_ours(&key, owner).await, Ok(true))
                })
                .await;
                if late {
                    tracing::debug!(key, "deleted the late queue key of a cancelled attempt");
                }
            });
        }
    }
}
