//! The fair queue, in the layout of etcd's Go `concurrency.Mutex`: each contender's key
//! `<prefix><name>/<lease id in hex>`, served in create-revision order; a waiter counts the
//! deletions of the keys older than its own off one watch of the prefix (behind a long queue,
//! it watches only the contender just before its own), keeps its lease alive while it waits,
//! and queues again on a new lease if that one is lost.

use std::collections::HashSet;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{
    AcquireRequest, BackendErrorKind, Error, FencingToken, Instant, Lease, LossSignal, Mode, OwnerToken,
    Result,
};

use crate::backend::{EtcdBackend, Held, OwnLease};
use crate::error::{map_err, timeout, NAME};
use crate::grants;
use crate::keepalive::{ttl_secs, KeepAlive, KeptLease};
use crate::layout::{is_contender, PAGE};
use crate::metadata::{holds, lock_value};
use crate::rpc::pb::{Compare, RangeRequest, RangeResponse, RequestOp, TxnRequest, WatchCreateRequest};
use crate::rpc::{EventType, KeyValue, SilenceProbe, WatchStream};
use crate::session::Session;
use crate::undo::Undo;

/// One attempt's queue entry: its key, lease and local slot. Dropped before [`won`] or
/// [`undo`] (a cancelled acquire), it cleans up in the background.
///
/// [`won`]: QueueEntry::won
/// [`undo`]: QueueEntry::undo
pub(crate) struct QueueEntry {
    backend: Option<EtcdBackend>,
    name: String,
    pub(crate) pfx: String,
    pub(crate) my_key: String,
    pub(crate) owner: OwnerToken,
    /// What the attempt is for: the lock, or another primitive (see `grants`).
    pub(crate) mode: Mode,
    /// The value the attempt puts: for the lock its owner token and holder metadata (see
    /// `metadata.rs`), for the other primitives theirs (see `grants`).
    pub(crate) value: Vec<u8>,
    pub(crate) lease: i64,
    /// The attempt's TTL: how long a per-lock lease that cannot be revoked may live.
    ttl: Duration,
    pub(crate) session: Option<Arc<Session>>,
    /// In session mode, the key whose existence says this attempt was undone: every put of
    /// the attempt compares its absence, so a put still on its way when the undo wrote it is
    /// refused (see `undo.rs`).
    pub(crate) marker: Option<String>,
    /// Whether its last put was sent comparing the marker (markers can be off for a backend):
    /// only then does its undo write the marker.
    pub(crate) put_checked: std::sync::atomic::AtomicBool,
}

/// What one round of waiting found out.
pub(crate) enum Round {
    /// No older key is left and ours is there: the lock is ours.
    Mine,
    /// Our key is gone, or our lease was lost (expired, revoked, or its session ended) while
    /// we waited: the place in the queue is lost.
    Lost,
    /// Look again, at the revision of the deletion that woke us if there was one.
    Again(Option<i64>),
}

/// How a queued attempt ended.
pub(crate) enum Waited {
    /// The lock is ours: the fencing token, when the grant's validity starts, the granted TTL.
    Won(i64, Instant, Duration),
    /// The attempt's lease was lost, or its key deleted, while it waited (a process paused
    /// past its TTL, a lease revoked from outside): it never gets the lock on that lease; the
    /// caller queues again with a fresh one.
    Lost,
}

impl QueueEntry {
    pub(crate) fn new(
        backend: &EtcdBackend,
        req: &AcquireRequest,
        lease: i64,
        session: Option<Arc<Session>>,
    ) -> Self {
        let (pfx, my_key, value) = match req.mode {
            Mode::Exclusive => {
                let pfx = backend.etcd_prefix(&req.key);
                let mut my_key = String::with_capacity(pfx.len() + 16);
                my_key.push_str(&pfx);
                let _ = write!(my_key, "{lease:x}");
                (pfx, my_key, lock_value(req.owner, &req.metadata))
            }
            mode => {
                let (pfx, key) = backend.grant_key(&req.key, mode, req.owner);
                (pfx, key, grants::encode(mode, &req.metadata))
            }
        };
        let marker = session.as_ref().map(|_| backend.undo_marker(&req.key, req.owner));
        Self {
            backend: Some(backend.clone()),
            name: req.key.full().to_owned(),
            my_key,
            pfx,
            owner: req.owner,
            mode: req.mode,
            value,
            lease,
            ttl: req.ttl,
            session,
            marker,
            put_checked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Records whether its put is sent comparing its marker.
    pub(crate) fn set_put_checked(&self, checked: bool) {
        self.put_checked.store(checked && self.marker.is_some(), std::sync::atomic::Ordering::Relaxed);
    }

    /// What the attempt's put compares: its key is new and, in session mode with `markers`,
    /// the attempt was not undone.
    pub(crate) fn when_new(&self, markers: bool) -> Vec<Compare> {
        let mut c = vec![Compare::create_revision_is(self.my_key.as_str(), 0)];
        c.extend(self.marker.as_deref().filter(|_| markers).map(|m| Compare::create_revision_is(m, 0)));
        c
    }

    /// What undoing this attempt needs.
    fn undo_parts(&self) -> Undo {
        Undo {
            name: self.name.clone(),
            key: self.my_key.clone(),
            owner: self.owner,
            lease: self.lease,
            ttl: self.ttl,
            session: self.session.clone(),
            by_key: self.by_key(),
            marker: self
                .marker
                .clone()
                .filter(|_| self.put_checked.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }

    /// Whether the attempt's key is its own (named by its owner token: every primitive but
    /// the lock), so that the key's existence at its create revision says it is ours.
    pub(crate) fn by_key(&self) -> bool {
        self.mode != Mode::Exclusive
    }

    /// Undoes the attempt now; `in_flight` when its last request may not have been carried
    /// out yet (it failed). Stays armed until the undo is done, so a cancelled undo still
    /// finishes in the background.
    pub(crate) async fn undo(mut self, in_flight: bool) {
        if let Some(b) = self.backend.clone() {
            b.undo(&self.undo_parts(), in_flight).await;
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
        let backend = self.backend.take();
        let session = self.session.take();
        let signal = session.as_ref().map(|s| s.keys.add(self.my_key.as_bytes(), my_rev));
        // After the key-watch entry: a slot found abandoned fires that entry's signal.
        if let (Some(b), Some(_), Mode::Exclusive) = (backend, &session, req.mode) {
            b.inner.local.mark_granted(&self.name, self.owner, my_rev);
        }
        let base = Lease::new(req.key.clone(), req.owner, FencingToken::new(my_rev as u64), granted, sent)
            .with_mode(req.mode);
        let lease = match (&session, &signal) {
            (Some(s), Some(sig)) => base.with_valid_until(s.valid_until()).with_session(sig.clone()),
            _ => base,
        };
        let held = Held {
            etcd_key: std::mem::take(&mut self.my_key),
            signal,
            lease: Mutex::new(OwnLease {
                id: self.lease,
                asked: ttl_secs(req.ttl),
                granted: ttl_secs(granted),
            }),
            session,
        };
        lease.with_backend_data(Arc::new(held))
    }

    pub(crate) fn wait_timed_out(&self) -> Error {
        Error::WaitTimedOut { key: self.pfx.trim_end_matches('/').to_owned(), waited: Duration::ZERO }
    }
}

impl Drop for QueueEntry {
    fn drop(&mut self) {
        if let Some(b) = self.backend.take() {
            let undo = self.undo_parts();
            lock_core::cancel::spawn_detached(async move { b.undo(&undo, true).await });
        }
    }
}

/// The most keys older than its own under the prefix (nested locks' keys included) that a lock
/// waiter reads in a round (see [`EtcdBackend::count_down_round`]); behind more, when fewer
/// than [`FAN_OUT`] of them are contenders, it watches its predecessor.
const COUNT_DOWN_MAX: i64 = 64;

/// The most contenders ahead of it with which a lock waiter counts down on a watch of the
/// whole prefix. A waiter further back watches only the contender `FAN_OUT + 1` places ahead
/// of it (its gate) and counts down once that one is gone: a release's event reaches the
/// first `FAN_OUT` waiters and one gated waiter, not every waiter.
const FAN_OUT: usize = 4;

/// Completes when the waiter's lease is lost: `loss` fired, or the session ran past its TTL
/// by our clock with no renewal (its keep-alive stopped: nobody else would say so).
pub(crate) async fn lease_lost(loss: &LossSignal, session: Option<&Session>) {
    let past_ttl = async {
        match session {
            Some(s) => {
                while s.alive() {
                    tokio::time::sleep_until(s.valid_until()).await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = loss.fired() => {}
        _ = past_ttl => {}
    }
}

impl EtcdBackend {
    /// Puts our key (unless it exists) and reads who holds, in one transaction. Returns our
    /// create revision and whether the attempt holds now, or `None` when the lock's key exists
    /// with another owner's value.
    pub(crate) async fn enqueue(&self, e: &QueueEntry) -> Result<Option<(i64, bool)>> {
        if e.by_key() {
            return self.enqueue_grant(e).await.map(Some);
        }
        Ok(self.enqueue_lock(e).await?.map(|(mine, owner)| (mine, mine == owner)))
    }

    /// What a lock attempt's transaction does when its key is new: put the key (its value the
    /// owner token and holder metadata), read the queue's oldest keys (the owner is the oldest
    /// contender among them; keys of nested locks are skipped, see `layout`). The read is the
    /// second operation.
    pub(crate) fn lock_ops(e: &QueueEntry) -> [RequestOp; 2] {
        [RequestOp::put(e.my_key.as_str(), e.value.clone(), e.lease), Self::oldest_keys(e)]
    }

    /// A read of the oldest keys of the entry's queue, inside a transaction.
    fn oldest_keys(e: &QueueEntry) -> RequestOp {
        let oldest = RangeRequest::prefix(e.pfx.as_str()).oldest_first().with_limit(PAGE);
        RequestOp::range(oldest.without_values())
    }

    /// [`enqueue`](Self::enqueue) for the lock: (our create revision, the owner's).
    async fn enqueue_lock(&self, e: &QueueEntry) -> Result<Option<(i64, i64)>> {
        let my_key = e.my_key.as_str();
        // Built for each attempt: cheaper than a copy kept for a retry that seldom comes.
        let txn = |markers: bool| {
            TxnRequest::when(e.when_new(markers))
                .and_then(Self::lock_ops(e))
                .or_else([RequestOp::range(RangeRequest::key(my_key)), Self::oldest_keys(e)])
        };
        // A key of ours with another owner token is an orphan: the callers hold the name's
        // local slot (session mode) or a fresh lease (per-lock mode), so no live attempt or
        // guard of this client owns it. It is the put of a cancelled attempt that reached the
        // server after that attempt's undo (etcd serves one connection's requests
        // concurrently, so they can overtake each other). Delete it and queue afresh.
        for _ in 0..3 {
            let resp = self.put_txn(|m| e.set_put_checked(m), txn).await?;
            let my_rev = if resp.succeeded {
                resp.revision()
            } else {
                match resp.first_kv(0) {
                    Some(kv) if holds(&kv.value, e.owner) => kv.create_revision,
                    Some(kv) => {
                        tracing::debug!(key = my_key, "deleting the orphan queue key of a cancelled attempt");
                        self.delete_at_revision(my_key, kv.create_revision).await?;
                        continue;
                    }
                    // The key is not there, yet the transaction did not put it: the attempt's
                    // undo marker is (it was undone). Never a live attempt's case: each undo
                    // ends its owner token's use on this name.
                    None => return Err(undone()),
                }
            };
            let owner_rev = self.owner_rev(&e.pfx, resp.range(1), my_rev).await?;
            return Ok(Some((my_rev, owner_rev)));
        }
        Ok(None)
    }

    /// The create revision of the owner (the oldest contender), from the transaction's read
    /// of the oldest keys and, when that page held only keys of nested locks, the pages after
    /// it (keys up to `my_rev`, which is among them). 0 when none is found: not ours.
    pub(crate) async fn owner_rev(
        &self,
        pfx: &str,
        read: Option<&RangeResponse>,
        my_rev: i64,
    ) -> Result<i64> {
        let Some(r) = read else { return Ok(0) };
        if let Some(kv) = r.kvs.iter().find(|kv| is_contender(pfx, kv)) {
            return Ok(kv.create_revision);
        }
        match r.kvs.last() {
            // From the page's last revision on: the page may end among keys of one revision.
            Some(last) if r.more => {
                let found = self.oldest_contender(pfx, last.create_revision, my_rev).await?;
                Ok(found.map_or(0, |kv| kv.create_revision))
            }
            _ => Ok(0),
        }
    }

    /// Queues for the lock and waits until `deadline`. When the attempt's lease is lost while
    /// it waits, it is undone and the request queues again on a new lease, with a new owner
    /// token (so that a late undo of the lost attempt, which compares its token, can never
    /// touch the new one).
    pub(crate) async fn wait_in_queue(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let mut req = std::borrow::Cow::Borrowed(req);
        loop {
            let (sent, lease, granted, session) = self.lease_and_slot(&req, deadline).await?;
            let entry = QueueEntry::new(self, &req, lease, session);
            match self.queue_and_wait(&entry, sent, granted, deadline).await {
                Ok(Waited::Won(my_rev, sent, granted)) => return Ok(entry.won(&req, my_rev, granted, sent)),
                Ok(Waited::Lost) => {
                    entry.undo(true).await;
                    if Instant::now() >= deadline {
                        return Err(Error::WaitTimedOut {
                            key: req.key.full().to_owned(),
                            waited: Duration::ZERO,
                        });
                    }
                    tracing::info!(backend = NAME, key = %req.key, "lease lost while waiting; queueing again");
                    req.to_mut().owner = OwnerToken::random();
                }
                // A request that failed (a member going away, an election, a lease revoked
                // from outside) is undone by owner token and the request queues again, until
                // the deadline.
                Err(e) if (e.is_retryable() || crate::error::lease_gone(&e)) && Instant::now() < deadline => {
                    entry.undo(true).await;
                    tracing::debug!(backend = NAME, error = %e, "queueing failed; queueing again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    req.to_mut().owner = OwnerToken::random();
                }
                Err(e) => {
                    entry.undo(true).await;
                    return Err(e);
                }
            }
        }
    }

    /// Queues `e` and waits for the lock until `deadline`. A per-lock lease is kept alive
    /// while it waits (through failing members and broken streams, until the server says it
    /// is gone).
    pub(crate) async fn queue_and_wait(
        &self,
        e: &QueueEntry,
        sent: Instant,
        granted: Duration,
        deadline: Instant,
    ) -> Result<Waited> {
        let Some((my_rev, now)) = self.enqueue(e).await? else {
            return Err(Error::backend_msg(
                NAME,
                BackendErrorKind::Other,
                "queue key held by another owner of this session",
            ));
        };
        if now {
            return Ok(Waited::Won(my_rev, sent, granted));
        }
        let session = e.session.as_deref();
        let t = self.inner.opts.request_timeout;
        let keep = session
            .is_none()
            .then(|| KeepAlive(KeptLease::start(self.client().clone(), (e.lease, granted, sent), false, t)));
        let loss = match (session, &keep) {
            (Some(s), _) => s.loss.clone(),
            (None, Some(k)) => k.0.loss.clone(),
            (None, None) => LossSignal::new(),
        };
        // A waiter whose lease was lost while it waited never gets the lock on it.
        if !self.wait_for_predecessors(e, my_rev, &loss, deadline).await? {
            if let Some(s) = session {
                self.check_session(s).await;
            }
            return Ok(Waited::Lost);
        }
        if session.is_some_and(|s| !s.alive()) {
            return Ok(Waited::Lost);
        }
        if session.is_some() {
            return Ok(Waited::Won(my_rev, sent, granted));
        }
        // The per-lock lease was kept alive while we waited: measure its validity from a
        // keep-alive sent now, not from before the wait (repeated until the deadline: the
        // lock is ours, a member that does not answer must not cost it).
        loop {
            let at = Instant::now();
            match self.keep_alive_once(e.lease).await {
                Ok(ttl) if ttl > 0 => return Ok(Waited::Won(my_rev, at, Duration::from_secs(ttl as u64))),
                Ok(_) => return Ok(Waited::Lost),
                Err(err) if err.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// After a waiter lost its place on session `s`: whether the session's lease is gone. A
    /// waiter that counts deletions sees its own key's deletion (the lease revoked or expired)
    /// before the session's keep-alive finds the lease gone; queueing again on that lease would
    /// fail, so the session is marked lost now and the next attempt opens a new one. A key
    /// deleted by someone else leaves a live lease, and the session is kept.
    async fn check_session(&self, s: &Session) {
        if !s.alive() {
            return;
        }
        match self.keep_alive_once(s.id).await {
            Ok(ttl) if ttl <= 0 => {
                s.loss.fire(lock_core::LossReason::SessionLost);
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(backend = NAME, error = %err, "could not check the session's lease"),
        }
    }

    /// Waits until no contender created before `my_rev` is left under the entry's prefix, in
    /// rounds (see [`wait_round`](Self::wait_round)). Returns `false` if our own key is gone
    /// or `loss` (the lease's) fired.
    async fn wait_for_predecessors(
        &self,
        e: &QueueEntry,
        my_rev: i64,
        loss: &LossSignal,
        deadline: Instant,
    ) -> Result<bool> {
        // The revision of the deletion that woke us, for the next read.
        let mut at: Option<i64> = None;
        loop {
            if loss.is_fired() {
                return Ok(false);
            }
            match self.wait_round(e, my_rev, at.take(), loss, deadline).await {
                Ok(Round::Mine) => return Ok(true),
                Ok(Round::Lost) => return Ok(false),
                Ok(Round::Again(rev)) => at = rev,
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

    /// One round. The lock's waiter counts the older keys' deletions down
    /// ([`count_down_round`](Self::count_down_round)); behind a long queue, or after a
    /// deletion woke it (`at`, the deletion's revision), it reads the queue (at `at`) and
    /// watches the one contender just before its own from the current revision, re-read once
    /// the watch is in place, so that a deletion is never missed and never delayed; after
    /// that deletion the next round's read decides, of its revision. The other primitives:
    /// see `grants.rs`.
    async fn wait_round(
        &self,
        e: &QueueEntry,
        my_rev: i64,
        at: Option<i64>,
        loss: &LossSignal,
        deadline: Instant,
    ) -> Result<Round> {
        if e.by_key() {
            return self.grant_round(e, my_rev, loss, deadline).await;
        }
        if at.is_none() {
            if let Some(round) = self.count_down_round(e, my_rev, loss, deadline).await? {
                return Ok(round);
            }
        }
        let (pred, mine) = match (self.queue_view(&e.pfx, &e.my_key, e.owner, my_rev, at).await, at) {
            (Ok(v), _) => v,
            // A member behind the one that reported the deletion has not applied its
            // revision yet (or it was compacted away): read the current state instead.
            (Err(_), Some(_)) => return Ok(Round::Again(None)),
            (Err(err), None) => return Err(err),
        };
        if !mine {
            return Ok(Round::Lost);
        }
        let Some(pred) = pred else {
            // Read at the predecessor's deletion, a past revision: our key may have gone
            // since (its lease revoked, or expired). One linearizable read says whether it
            // is still there before the lock is taken on it.
            if at.is_some() && self.key_lease(&e.my_key, my_rev).await?.is_none() {
                return Ok(Round::Lost);
            }
            return Ok(Round::Mine);
        };
        let Some(mut ws) = self.watch_predecessor(e, &pred, my_rev, deadline).await? else {
            return Ok(Round::Again(None));
        };
        self.next_deletion(e, &mut ws, loss, deadline, look_again).await
    }

    /// One round of the lock's waiting by count-down: a watch of the deletions under the
    /// prefix, opened at the current revision, then one transaction that reads our key and
    /// the names of the keys older than ours; the watch's events count the older contenders
    /// off. No key older than ours can appear later, so when none is left the lock is ours,
    /// with no further read: the hand-off costs the woken waiter no request (Go's Mutex, and
    /// etcd's lock service inside the server, read the queue again after each deletion). Our
    /// own key's deletion (its lease expired or was revoked) comes on the same ordered stream
    /// before any later event, so a waiter whose lease was lost never counts down to the lock.
    ///
    /// The watch comes first and at the current revision: one opened at the read's revision
    /// would, once anything else was written meanwhile, land in etcd's unsynced watchers,
    /// which the server catches up only every 100 ms. Deletions up to the read's revision are
    /// in the read already and their events are skipped: the member serving the watch may be
    /// behind the one that answered the read, and an old deletion of a key created again
    /// since (a session's key of the same name) must not count the new one off.
    ///
    /// The price: every deletion under the prefix (nested locks' too) reaches every waiter
    /// that counts down, so only a waiter with at most [`FAN_OUT`] contenders ahead does; one
    /// further back waits [`behind_gate`](Self::behind_gate). `None` when more than
    /// [`COUNT_DOWN_MAX`] keys are older than ours and fewer than `FAN_OUT + 1` of the newest
    /// of them are contenders: the round then watches the predecessor alone.
    async fn count_down_round(
        &self,
        e: &QueueEntry,
        my_rev: i64,
        loss: &LossSignal,
        deadline: Instant,
    ) -> Result<Option<Round>> {
        let Some(mut ws) =
            self.open_watch(e, WatchCreateRequest::deletions_under(e.pfx.as_str(), 0), deadline).await?
        else {
            return Ok(Some(Round::Again(None)));
        };
        let older = RangeRequest::prefix(e.pfx.as_str())
            .with_max_create_revision((my_rev - 1).max(1))
            .newest_first()
            .with_limit(COUNT_DOWN_MAX)
            .without_values();
        let txn = TxnRequest::when([])
            .and_then([RequestOp::range(RangeRequest::key(e.my_key.as_str())), RequestOp::range(older)]);
        let resp = self.call("txn", || self.client().txn(txn.clone())).await?;
        let mine =
            resp.first_kv(0).is_some_and(|kv| kv.create_revision == my_rev && holds(&kv.value, e.owner));
        if !mine {
            return Ok(Some(Round::Lost));
        }
        let Some(read) = resp.range(1) else { return Ok(None) };
        // The contenders older than ours, newest first.
        let ahead: Vec<&KeyValue> =
            read.kvs.iter().filter(|kv| kv.create_revision < my_rev && is_contender(&e.pfx, kv)).collect();
        if let Some(gate) = ahead.get(FAN_OUT) {
            let gate = gate.key.clone();
            // Only the gate's deletion matters now: closing the stream ends the prefix's watch.
            drop(ws);
            return self.behind_gate(e, &gate, my_rev, loss, deadline).await.map(Some);
        }
        // etcd applies the limit after the revision filter: `more` says more are older.
        if read.more {
            return Ok(None);
        }
        let mut older: HashSet<Vec<u8>> = ahead.iter().map(|kv| kv.key.clone()).collect();
        if older.is_empty() {
            return Ok(Some(Round::Mine));
        }
        let read_at = resp.revision();
        let count_down =
            |deleted: &[&KeyValue]| count_off(&mut older, 1, e.my_key.as_bytes(), read_at, deleted);
        self.next_deletion(e, &mut ws, loss, deadline, count_down).await.map(Some)
    }

    /// Waits behind a long queue: watches the deletion of `gate` alone, the contender
    /// [`FAN_OUT`]` + 1` places ahead (re-read once the watch is in place, as a predecessor
    /// is), then the next round counts down. Keys usually leave the queue oldest first, so by
    /// then at most `FAN_OUT` contenders are ahead; a gate deleted out of turn (its lease
    /// lost) only makes the next round pick another.
    async fn behind_gate(
        &self,
        e: &QueueEntry,
        gate: &[u8],
        my_rev: i64,
        loss: &LossSignal,
        deadline: Instant,
    ) -> Result<Round> {
        let Some(mut ws) = self.watch_predecessor(e, gate, my_rev, deadline).await? else {
            return Ok(Round::Again(None));
        };
        self.next_deletion(e, &mut ws, loss, deadline, |_| Some(Round::Again(None))).await
    }

    /// Opens the watch `w` and waits (a request timeout at most) for the server to confirm it.
    /// `None`, after a short pause, when the stream ended first or the server refused the
    /// watch (after a new login: an expired auth token): the round starts again.
    pub(crate) async fn open_watch(
        &self,
        e: &QueueEntry,
        w: WatchCreateRequest,
        deadline: Instant,
    ) -> Result<Option<WatchStream>> {
        let t = self.inner.opts.request_timeout;
        // Opening a watch is safe to repeat; an expired auth token is renewed in `call`.
        let mut ws = self.call("watch", || self.client().watch(w.clone())).await?;
        let created =
            tokio::time::timeout(t, ws.message()).await.map_err(|_| timeout("watch", t))?.map_err(map_err)?;
        let refused = match &created {
            None => false,
            Some(r) if r.canceled => true,
            Some(_) => return Ok(Some(ws)),
        };
        if refused {
            // etcd refuses a watch (a reply both created and cancelled) whose stream carries an
            // auth token that expired: the waiter sent nothing with its token while it waited.
            // A watch taken as set up would never report the deletion it waits for.
            let reason = created.map(|r| r.cancel_reason).unwrap_or_default();
            if !self.client().has_credentials() {
                return Err(Error::backend_msg(
                    NAME,
                    BackendErrorKind::Auth,
                    format!("etcd refused a watch: {reason}"),
                ));
            }
            tracing::debug!(backend = NAME, %reason, "etcd refused a watch; logging in again");
            self.client().refresh_token().await.map_err(map_err)?;
        }
        if Instant::now() >= deadline {
            return Err(e.wait_timed_out());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(None)
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
        let Some(ws) = self.open_watch(e, WatchCreateRequest::deletions_of(pred, 0), deadline).await? else {
            return Ok(None);
        };
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

    /// Waits on `ws` until `decide` makes something of a batch of deletion events (the
    /// lock's [`look_again`]: `Again` with the deletion's revision), or `Again` without a
    /// revision when the watch broke, was cancelled, or fell silent; `Lost` when our lease
    /// was lost meanwhile.
    ///
    /// A member that stops answering (paused, partitioned) leaves its streams open and silent:
    /// every [`PROBE_EVERY`](crate::rpc::PROBE_EVERY) the stream is asked for a progress report, and a stream that does
    /// not answer within the request timeout is given up, so the next round reads the queue
    /// and watches again through a member that answers.
    pub(crate) async fn next_deletion(
        &self,
        e: &QueueEntry,
        ws: &mut WatchStream,
        loss: &LossSignal,
        deadline: Instant,
        mut decide: impl FnMut(&[&KeyValue]) -> Option<Round>,
    ) -> Result<Round> {
        let lost = lease_lost(loss, e.session.as_deref());
        tokio::pin!(lost);
        let mut probe = SilenceProbe::new(self.inner.opts.request_timeout);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(probe.at()) => {
                    if !probe.due(ws) {
                        tracing::debug!(backend = NAME, "the watch stream fell silent; watching again");
                        return Ok(Round::Again(None));
                    }
                }
                msg = ws.message() => {
                    probe.heard();
                    let Ok(Some(resp)) = msg else { return Ok(Round::Again(None)) };
                    if resp.canceled {
                        return Ok(Round::Again(None));
                    }
                    let deleted: Vec<&KeyValue> = resp
                        .events
                        .iter()
                        .filter(|ev| ev.r#type() == EventType::Delete)
                        .filter_map(|ev| ev.kv.as_ref())
                        .collect();
                    if deleted.is_empty() {
                        continue;
                    }
                    if let Some(round) = decide(&deleted) {
                        return Ok(round);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Err(e.wait_timed_out()),
                _ = &mut lost => return Ok(Round::Lost),
            }
        }
    }
}

/// Counts a batch of deletion events off `older`, the names of the keys older than ours
/// (`mine`) that a read at revision `read_at` found: `Lost` when our own key is deleted,
/// `Mine` when fewer than `limit` older keys are left (1 for the lock, `N` for a semaphore),
/// `None` to wait on. Deletions up to `read_at` are in the read already and are skipped: the
/// member serving the watch may be behind the one that answered the read, and an old deletion
/// of a key created again since (a session's key of the same name) must not count the new one
/// off, nor an old deletion of our own key's name end our wait.
pub(crate) fn count_off(
    older: &mut HashSet<Vec<u8>>,
    limit: usize,
    mine: &[u8],
    read_at: i64,
    deleted: &[&KeyValue],
) -> Option<Round> {
    for kv in deleted.iter().filter(|kv| kv.mod_revision > read_at) {
        if kv.key == mine {
            return Some(Round::Lost);
        }
        older.remove(&kv.key);
    }
    (older.len() < limit).then_some(Round::Mine)
}

/// What a deletion of a watched predecessor means: look again, at the revision of the
/// deletion.
pub(crate) fn look_again(deleted: &[&KeyValue]) -> Option<Round> {
    let rev = deleted.iter().map(|kv| kv.mod_revision).max()?;
    Some(Round::Again((rev > 0).then_some(rev)))
}

/// An attempt found undone (its undo marker there): queue again under a new owner token.
pub(crate) fn undone() -> Error {
    Error::backend_msg(
        NAME,
        BackendErrorKind::Unavailable,
        "the attempt was undone meanwhile; queueing again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deleted(key: &str, rev: i64) -> KeyValue {
        KeyValue { key: key.as_bytes().to_vec(), mod_revision: rev, ..Default::default() }
    }

    #[test]
    fn the_count_down_skips_deletions_the_read_already_reflects() {
        let mut older: HashSet<Vec<u8>> = ["p/a", "p/b"].iter().map(|k| k.as_bytes().to_vec()).collect();
        // Read at 10. An old deletion of `p/a` (before it was created again) and of our own
        // name, from a member behind the reader: neither counts.
        let stale = [deleted("p/a", 7), deleted("p/me", 8)];
        assert!(count_off(&mut older, 1, b"p/me", 10, &stale.iter().collect::<Vec<_>>()).is_none());
        assert_eq!(older.len(), 2);
        let a = deleted("p/a", 11);
        assert!(count_off(&mut older, 1, b"p/me", 10, &[&a]).is_none());
        let b = deleted("p/b", 12);
        assert!(matches!(count_off(&mut older, 1, b"p/me", 10, &[&b]), Some(Round::Mine)));
        // Our own key deleted after the read: the place is lost, whatever else the batch holds.
        let mut older: HashSet<Vec<u8>> = [b"p/a".to_vec()].into();
        let batch = [deleted("p/me", 11), deleted("p/a", 12)];
        assert!(matches!(
            count_off(&mut older, 1, b"p/me", 10, &batch.iter().collect::<Vec<_>>()),
            Some(Round::Lost)
        ));
        // A semaphore of 2: holds once fewer than 2 older keys are left.
        let mut older: HashSet<Vec<u8>> =
            ["p/a", "p/b", "p/c"].iter().map(|k| k.as_bytes().to_vec()).collect();
        let c = deleted("p/c", 11);
        assert!(count_off(&mut older, 2, b"p/me", 10, &[&c]).is_none());
        let b = deleted("p/b", 12);
        assert!(matches!(count_off(&mut older, 2, b"p/me", 10, &[&b]), Some(Round::Mine)));
    }
}
