//! [`EtcdBackend`]: the connection, the session, and the [`LockBackend`] impl, which strings
//! the mechanisms of the other files together.

use std::borrow::Cow;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{
    async_trait, drift_margin, AcquireRequest, Attempt, Backoff, Capabilities, Error, ExtendOutcome, Instant,
    Lease, LockBackend, LockInfo, LockKey, Metadata, Mode, ObserveStream, ReleaseOutcome, Result, WakeMode,
};
use tonic::Status;

use crate::error::{map_err, timeout, token_expired, NAME};
use crate::keepalive::ttl_secs;
use crate::local::LocalSlots;
use crate::options::{EtcdOptions, LeaseMode};
use crate::queue::QueueEntry;
use crate::rpc::pb::RangeRequest;
use crate::rpc::{self, pb};
use crate::session::Session;
use crate::undo::Whose;

/// Locks on an etcd v3 cluster.
///
/// # Behavior
/// See the [crate docs](crate): Go `concurrency.Mutex` layout, fair queue, predecessor-only
/// watches opened at the current revision, fencing token = create revision, session or
/// per-lock leases. A dropped waiting acquire deletes its queue key (in the background if
/// need be). Dropping the last handle on a backend revokes its session lease, releasing its
/// locks at once.
#[derive(Clone)]
pub struct EtcdBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: rpc::Client,
    pub(crate) opts: EtcdOptions,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// Session mode: which local owner holds or is queued for a name (one key per session).
    pub(crate) local: LocalSlots,
    /// Session mode: attempts carry undo markers (see `undo.rs`); off once the user's role
    /// may not read a marker's key.
    pub(crate) markers: std::sync::atomic::AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(s) = self.session.get_mut().take() {
            let client = self.client.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn(async move { s.close(&client).await });
                }
                Err(_) => s.abandon(),
            }
        }
    }
}

impl std::fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdBackend").field("options", &self.inner.opts).finish()
    }
}

/// What one of our leases carries. A grant's key is ours while it exists at its create
/// revision, the fencing token: extend, a TTL change and the other primitives' release compare
/// that alone (one comparison; a cancelled attempt's late put of the lock's key, its other
/// writer, has a later one); the lock's release needs no comparison and checks the revision
/// of the key it deleted (`undo.rs`, `delete_own_key`). A lease rebuilt without this (by an
/// operator) is matched by its owner token.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) etcd_key: String,
    /// Session mode: fires when this grant's key is deleted or the session is lost.
    pub(crate) signal: Option<lock_core::LossSignal>,
    /// The etcd lease the key is on (a per-lock lease is replaced when a renewal asks for
    /// another TTL).
    pub(crate) lease: Mutex<OwnLease>,
    pub(crate) session: Option<Arc<Session>>,
}

impl Held {
    pub(crate) fn lease(&self) -> OwnLease {
        *self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An etcd lease a grant's key is on, with the TTL (in seconds) it was asked for and the one
/// etcd granted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OwnLease {
    pub(crate) id: i64,
    pub(crate) asked: i64,
    pub(crate) granted: i64,
}

impl OwnLease {
    /// Whether a renewal asking for `ttl` can keep this lease: etcd would grant the same TTL.
    /// It raises a TTL below its minimum to the minimum, so when this lease's TTL was raised,
    /// any TTL up to its grant comes out the same (comparing with the TTL asked for would
    /// replace the lease at every renewal that asks for the lease's TTL, and comparing with
    /// the grant, at every one that asks for the first TTL again).
    pub(crate) fn renews(&self, ttl: Duration) -> bool {
        let t = ttl_secs(ttl);
        t == self.granted || (self.granted > self.asked && t < self.granted)
    }
}

/// Refuses a name that would share a primitive's queue prefix (`<name>#semaphore/`,
/// `#rwlock/`, `#election/`) or the undo markers' (`<name>#undo/`): one that ends in such a
/// suffix, or holds it followed by `/`. A lock `a#election/x` would otherwise be the leader of
/// election `a`, and a lock `a#undo` would queue among `a`'s markers.
///
/// # Errors
/// [`Error::Unsupported`] naming the reserved part.
pub(crate) fn not_reserved(key: &LockKey) -> Result<()> {
    let name = key.full();
    for suffix in ["#semaphore", "#rwlock", "#election", "#undo"] {
        // Ends in it, or holds it followed by `/`: some segment of the name ends in it.
        if name.split('/').any(|segment| segment.ends_with(suffix)) {
            return Err(Error::Unsupported {
                backend: NAME,
                capability: format!(
                    "the name '{name}': '{suffix}' is reserved for primitives' queues and undo markers on etcd"
                ),
            });
        }
    }
    Ok(())
}

/// How long past two leases a crashed holder may block others, for a cluster with etcd's
/// default election timeout (1 s, heartbeat 100 ms): the election after the leader dies (up
/// to two election timeouts, as raft randomises it), the election timeout a new leader adds to
/// every lease (1 s), etcd's expiry check (every 500 ms), and 1.5 s for the revoke's commit,
/// the waiter's wake-up and a loaded machine. Measured through distlock on a loaded 2-core
/// machine, with the leader killed just before a 3 s lease would end: at most 3.6 s past two
/// leases. A larger election timeout needs a larger margin (three times the difference more).
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// A validity of `granted` from `sent`, less the drift margin.
fn valid_until(sent: Instant, granted: i64) -> Instant {
    let g = Duration::from_secs(granted.max(0) as u64);
    lock_core::lease::add_saturating(sent, g.saturating_sub(drift_margin(g)))
}

impl EtcdBackend {
    /// Validates `options` and connects (session leases with a 10 s TTL unless the options
    /// say otherwise).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for bad options; a retryable connection error when no endpoint
    /// answers; an auth error for refused credentials.
    pub async fn connect(options: EtcdOptions) -> Result<Self> {
        options.validate()?;
        let client = rpc::Client::connect(&options).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                opts: options,
                session: tokio::sync::Mutex::new(None),
                local: LocalSlots::default(),
                markers: std::sync::atomic::AtomicBool::new(true),
            }),
        })
    }

    /// The etcd prefix that holds the queue of `key`: `<prefix><name>/`.
    pub fn etcd_prefix(&self, key: &LockKey) -> String {
        let (prefix, name) = (self.inner.opts.prefix.as_str(), key.full());
        let mut p = String::with_capacity(prefix.len() + name.len() + 1);
        p.push_str(prefix);
        p.push_str(name);
        p.push('/');
        p
    }

    /// The session lease's TTL as asked for, in whole seconds: the same before and after a
    /// session opens (a client states its capabilities once). etcd grants at least that, more
    /// only when its minimum lease TTL (1.5 election timeouts, 2 s by default; the TTL asked
    /// is at least 2 s) is above it, which the session logs as a warning.
    fn session_timeout(&self) -> Duration {
        Duration::from_secs(ttl_secs(self.inner.opts.session_ttl) as u64)
    }

    /// The underlying client (for tests and benchmarks).
    #[doc(hidden)]
    pub fn raw_client(&self) -> rpc::Client {
        self.inner.client.clone()
    }

    pub(crate) fn client(&self) -> &rpc::Client {
        &self.inner.client
    }

    /// The current session's lease id, if a session is open.
    pub async fn session_lease(&self) -> Option<i64> {
        self.inner.session.lock().await.as_ref().filter(|s| s.alive()).map(|s| s.id)
    }

    /// Stops keeping the session alive without revoking it, as a crashed process would: its
    /// locks are freed when its TTL runs out. For tests.
    #[doc(hidden)]
    pub async fn abandon_session(&self) {
        if let Some(s) = self.inner.session.lock().await.take() {
            s.abandon();
        }
    }

    /// Revokes the session lease (releasing every lock of this client at once).
    pub async fn close(&self) {
        if let Some(s) = self.inner.session.lock().await.take() {
            s.close(self.client()).await;
        }
    }

    /// Runs one request, retrying retryable failures (a leader election, a member going away)
    /// until the request timeout. Only for requests that are safe to repeat.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        call_on(self.client(), what, f).await
    }

    async fn session(&self) -> Result<Arc<Session>> {
        let mut cur = self.inner.session.lock().await;
        if let Some(s) = cur.as_ref().filter(|s| s.alive()) {
            return Ok(s.clone());
        }
        if let Some(old) = cur.take() {
            // Past its TTL by our clock: its guards already count it lost. Say so, and revoke it
            // so a late keep-alive cannot keep its keys alive behind our back.
            old.loss.fire(lock_core::LossReason::SessionLost);
            let client = self.inner.client.clone();
            tokio::spawn(async move { old.close(&client).await });
        }
        let opts = &self.inner.opts;
        let s = Session::start(self.client(), opts.session_ttl, opts.request_timeout).await?;
        *cur = Some(s.clone());
        Ok(s)
    }

    /// Lease and key for one attempt: the session's, or a fresh per-lock lease.
    pub(crate) async fn lease_for(
        &self,
        req: &AcquireRequest,
    ) -> Result<(i64, Duration, Option<Arc<Session>>)> {
        match self.inner.opts.mode {
            LeaseMode::Session => {
                let s = self.session().await?;
                Ok((s.id, s.ttl, Some(s)))
            }
            LeaseMode::PerLock => {
                let (id, secs) = self.grant(req.ttl).await?;
                Ok((id, Duration::from_secs(secs as u64), None))
            }
        }
    }

    /// extend() of a lease rebuilt elsewhere (an operator tool): its etcd lease may be a
    /// session shared by other locks, and is not ours to move or revoke. Reports the life left
    /// in it, if the grant is still this owner's.
    async fn extend_rebuilt(&self, lease: &Lease, sent: Instant) -> Result<ExtendOutcome> {
        let found = match lease.mode() {
            Mode::Exclusive => self.find_key(&self.etcd_prefix(lease.key()), lease.owner()).await?,
            mode => {
                let (_, key) = self.grant_key(lease.key(), mode, lease.owner());
                let r = self.call("get", || self.client().range(RangeRequest::key(key.as_str()))).await?;
                r.kvs
                    .first()
                    .filter(|kv| kv.create_revision as u64 == lease.fencing_token().get())
                    .map(|kv| (key.clone(), kv.lease))
            }
        };
        let Some((_, lease_id)) = found else {
            return Ok(ExtendOutcome::NotHeld);
        };
        match self.time_to_live(lease_id).await? {
            left if left <= 0 => Ok(ExtendOutcome::NotHeld),
            left => Ok(ExtendOutcome::Extended { valid_until: valid_until(sent, left) }),
        }
    }

    /// extend() in session mode: the session's one keep-alive renews every key on it. The
    /// first renewal checks the key once and has the session's key watch report its deletion
    /// from then on; later renewals send nothing.
    async fn extend_on_session(&self, held: &Held, s: &Session, lease: &Lease) -> Result<ExtendOutcome> {
        if !s.alive() || held.signal.as_ref().is_some_and(|x| x.is_fired()) {
            return Ok(ExtendOutcome::NotHeld);
        }
        if s.keys.watch(held.etcd_key.as_bytes()) && !self.held_still(held, lease).await? {
            return Ok(ExtendOutcome::NotHeld);
        }
        Ok(ExtendOutcome::Extended { valid_until: s.valid_until() })
    }

    /// extend() of a per-lock lease: one keep-alive for the same TTL, a new lease for a new
    /// one.
    async fn extend_per_lock(
        &self,
        held: &Held,
        lease: &Lease,
        ttl: Duration,
        sent: Instant,
    ) -> Result<ExtendOutcome> {
        let id = held.lease().id;
        if !self.held_still(held, lease).await? {
            return Ok(ExtendOutcome::NotHeld);
        }
        if !held.lease().renews(ttl) {
            return self.move_to_new_lease(held, lease, ttl, sent).await;
        }
        let granted = self.keep_alive_once(id).await?;
        if granted <= 0 || !self.held_still(held, lease).await? {
            return Ok(ExtendOutcome::NotHeld);
        }
        Ok(ExtendOutcome::Extended { valid_until: valid_until(sent, granted) })
    }

    /// A new TTL: moves the key to a new lease of this grant's own (its create revision, the
    /// fencing token, stays) and revokes the old lease.
    async fn move_to_new_lease(
        &self,
        held: &Held,
        lease: &Lease,
        ttl: Duration,
        sent: Instant,
    ) -> Result<ExtendOutcome> {
        let (key, old_id) = (held.etcd_key.as_str(), held.lease().id);
        let (new_id, new_secs) = self.grant(ttl).await?;
        let txn = pb::TxnRequest::when([pb::Compare::create_revision_is(key, token_rev(lease))])
            .and_then([pb::RequestOp::move_to_lease(key, new_id)]);
        match self.call("txn", || self.client().txn(txn.clone())).await {
            Ok(r) if r.succeeded => {}
            Ok(_) => {
                self.revoke(new_id).await;
                return Ok(ExtendOutcome::NotHeld);
            }
            // The move may have been carried out with its reply lost: where the key is now
            // decides. Unknown, the new lease is left to expire; the next renewal finds the
            // key off the lease it renews and reports the grant lost (`held_still`).
            Err(e) => match self.key_lease(key, token_rev(lease)).await {
                Ok(Some(on)) if on == new_id => {}
                Ok(Some(_)) => {
                    self.revoke(new_id).await;
                    return Err(e);
                }
                Ok(None) => {
                    self.revoke(new_id).await;
                    return Ok(ExtendOutcome::NotHeld);
                }
                Err(_) => return Err(e),
            },
        }
        *held.lease.lock().unwrap_or_else(|p| p.into_inner()) =
            OwnLease { id: new_id, asked: ttl_secs(ttl), granted: new_secs };
        self.revoke(old_id).await;
        Ok(ExtendOutcome::Extended { valid_until: valid_until(sent, new_secs) })
    }

    /// A release whose delete failed. A per-lock lease is revoked, which deletes the key too.
    /// A session outlives this call: the local slot stays (the key is still there) and the
    /// delete is retried in the background while the session lives, the backend has a user
    /// (its last handle dropped closes the session, which takes the key), and the errors are
    /// ones a retry can clear (a refused permission is not: the key then goes with the
    /// session).
    async fn release_failed(&self, held: Option<&Held>, key: String, lease: &Lease) {
        let Some(held) = held else { return };
        if held.session.is_none() {
            self.revoke(held.lease().id).await;
            return;
        }
        let (inner, session) = (Arc::downgrade(&self.inner), held.session.clone());
        let (name, owner, rev) = (lease.key().full().to_owned(), lease.owner(), token_rev(lease));
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            while session.as_ref().is_some_and(|s| s.alive()) {
                let Some(b) = inner.upgrade().map(|inner| EtcdBackend { inner }) else { return };
                match b.delete_at_revision(&key, rev).await {
                    Ok(_) => break,
                    Err(e) if !e.is_retryable() => {
                        tracing::warn!(backend = NAME, key, error = %e, "a failed release cannot be retried; the key goes with the session");
                        return;
                    }
                    Err(_) => {}
                }
                drop(b);
                backoff.sleep_until_deadline(None).await;
            }
            if let Some(inner) = inner.upgrade() {
                inner.local.free(&name, owner);
            }
        });
    }
}

/// The create revision of a grant's key: its fencing token.
pub(crate) fn token_rev(lease: &Lease) -> i64 {
    i64::try_from(lease.fencing_token().get()).unwrap_or(i64::MAX)
}

#[async_trait]
impl LockBackend for EtcdBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A crashed holder blocks others for at most two leases plus a margin of 5 s: without
    /// lease checkpointing a new leader renews every lease to its full TTL (see the crate
    /// docs, "Honest limits"). In session mode the lease is the session's TTL as asked for
    /// (see `session_timeout`).
    fn capabilities(&self) -> Capabilities {
        let c = Capabilities::new()
            .with_max_permits(lock_core::MAX_PERMITS)
            .with_read_write(true)
            .with_writer_preference(true)
            .with_elections(true)
            .with_holder_metadata(true)
            .with_listing(true)
            // One page: a queue must be read whole to tell its holders (list.rs).
            .with_listing_pages(false)
            .with_atomic_multi_key(true)
            .with_fair_queueing(true)
            .with_wake(WakeMode::Notify)
            .with_ttl_granularity(Duration::from_secs(1))
            .with_expiry_ttls(2)
            .with_expiry_margin(EXPIRY_MARGIN);
        match self.inner.opts.mode {
            LeaseMode::Session => {
                c.with_session_timeout(self.session_timeout()).with_min_ttl(Duration::from_millis(1))
            }
            LeaseMode::PerLock => c.with_min_ttl(Duration::from_secs(2)),
        }
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        not_reserved(&req.key)?;
        let sent = Instant::now();
        let (lease, granted, session) = self.lease_for(req).await?;
        if let Some(s) = session.as_ref().filter(|_| req.mode == Mode::Exclusive) {
            let name = req.key.full();
            if self.inner.local.claim(name, req.owner, s.id).is_err()
                && !(self.free_if_abandoned(req, s).await
                    && self.inner.local.claim(name, req.owner, s.id).is_ok())
            {
                return Ok(Attempt::Held { expires_in: None });
            }
        }
        let entry = QueueEntry::new(self, req, lease, session);
        match self.enqueue(&entry).await {
            Ok(Some((my_rev, true))) => Ok(Attempt::Acquired(entry.won(req, my_rev, granted, sent))),
            Ok(_) => {
                entry.undo(false).await;
                Ok(Attempt::Held { expires_in: None })
            }
            Err(e) => {
                entry.undo(true).await;
                Err(e)
            }
        }
    }

    /// One transaction puts every name's queue key and reads every queue (see `multi.rs`).
    async fn try_acquire_all(&self, reqs: &[AcquireRequest]) -> Result<Option<Vec<Lease>>> {
        reqs.iter().try_for_each(|r| not_reserved(&r.key))?;
        self.try_lock_all(reqs).await
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        not_reserved(&req.key)?;
        let start = Instant::now();
        // Returns by the deadline plus at most one request timeout (a request sent just before
        // the deadline); an attempt cut there is undone in the background.
        let hard = lock_core::lease::add_saturating(deadline, self.inner.opts.request_timeout);
        match tokio::time::timeout_at(hard, self.wait_in_queue(req, deadline)).await {
            Ok(Err(Error::WaitTimedOut { .. })) | Err(_) => {
                Err(Error::WaitTimedOut { key: req.key.full().to_owned(), waited: start.elapsed() })
            }
            Ok(res) => res,
        }
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let sent = Instant::now();
        let Some(held) = lease.backend_data::<Held>() else {
            return self.extend_rebuilt(lease, sent).await;
        };
        match held.session.as_ref() {
            Some(s) => self.extend_on_session(held, s, lease).await,
            None => self.extend_per_lock(held, lease, ttl, sent).await,
        }
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let (name, owner) = (lease.key().full(), lease.owner());
        let held = lease.backend_data::<Held>();
        // Revoke only a per-lock lease this process granted; a lease found by its owner token
        // may be another process's session, shared by its other locks.
        let rev = token_rev(lease);
        let (key, own_lease, whose) = match (held, lease.mode()) {
            (Some(h), mode) => {
                // A plain delete only by the first release while this grant has the name's
                // slot: a release of an earlier lease (repeated, or of a detached lease, or
                // one running alongside the first) must not delete the key a later grant of
                // this session holds under the same name.
                let own = mode == Mode::Exclusive
                    && (h.session.is_none() || self.inner.local.start_release(name, owner));
                let whose = if own { Whose::OwnKey(rev) } else { Whose::Created(rev) };
                (Cow::Borrowed(h.etcd_key.as_str()), h.session.is_none().then(|| h.lease().id), whose)
            }
            (None, Mode::Exclusive) => match self.find_key(&self.etcd_prefix(lease.key()), owner).await? {
                Some((k, _)) => (Cow::Owned(k), None, Whose::Owner(owner)),
                None => {
                    self.inner.local.free(name, owner);
                    return Ok(ReleaseOutcome::NotHeld);
                }
            },
            (None, mode) => {
                (Cow::Owned(self.grant_key(lease.key(), mode, owner).1), None, Whose::Created(rev))
            }
        };
        if let Some(s) = held.and_then(|h| h.session.as_ref()) {
            s.keys.released(key.as_bytes(), rev);
        }
        let deleted = match whose {
            Whose::OwnKey(rev) => self.delete_own_key(&key, rev).await.map(|(deleted, answered)| {
                if answered {
                    self.inner.local.plain_answered(name, owner);
                }
                deleted
            }),
            Whose::Created(rev) => self.delete_at_revision(&key, rev).await,
            Whose::Owner(owner) => self.delete_if_ours(&key, owner).await,
        };
        match deleted {
            Ok(deleted) => {
                match own_lease {
                    Some(id) => self.revoke(id).await,
                    None => self.inner.local.free(name, owner),
                }
                Ok(if deleted { ReleaseOutcome::Released } else { ReleaseOutcome::NotHeld })
            }
            Err(e) => {
                self.release_failed(held, key.into_owned(), lease).await;
                Err(e)
            }
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.inspect_lock(key).await
    }

    async fn list(&self, prefix: &str, cursor: Option<String>, limit: usize) -> Result<lock_core::ListPage> {
        self.list_grants(prefix, cursor, limit).await
    }

    async fn holders(&self, key: &LockKey, mode: Mode) -> Result<Vec<LockInfo>> {
        self.grant_holders(key, mode).await
    }

    /// Proclaim (and holder metadata) for the primitives other than the lock: one transaction
    /// that compares the key's create revision and rewrites its value, keeping its lease.
    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<ExtendOutcome> {
        self.rewrite_value(lease, metadata).await
    }

    async fn observe(&self, key: &LockKey, mode: Mode) -> Result<Option<ObserveStream>> {
        match mode {
            Mode::Leader => self.observe_leader(key).await.map(Some),
            _ => Ok(None),
        }
    }
}

/// [`EtcdBackend::call`] on `client` (for tasks that must not hold the backend, whose last
/// handle closes the session): retryable failures are retried until `client`'s request
/// timeout, an expired auth token is renewed once.
pub(crate) async fn call_on<T, F, Fut>(client: &rpc::Client, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Status>>,
{
    let t = client.request_timeout();
    let deadline = lock_core::lease::add_saturating(Instant::now(), t);
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(300));
    let mut reauthenticated = false;
    let mut first = true;
    loop {
        // Each request is bounded by the request timeout on its own (`rpc::Client`): that
        // is the first attempt's bound, and a retry's is what is left of it.
        let attempt = f();
        let sent = if std::mem::take(&mut first) {
            Ok(attempt.await)
        } else {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            tokio::time::timeout(left, attempt).await
        };
        let e = match sent {
            Ok(Ok(v)) => return Ok(v),
            // The client's own bound ran out: say which request it was.
            Ok(Err(e)) if e.code() == tonic::Code::DeadlineExceeded && Instant::now() >= deadline => {
                return Err(timeout(what, t))
            }
            Ok(Err(e)) => e,
            Err(_) => return Err(timeout(what, t)),
        };
        // An auth token expires (etcd's simple tokens after 5 idle minutes, JWTs at their
        // TTL): log in again once with the configured user, and repeat.
        if !reauthenticated && token_expired(&e) {
            reauthenticated = true;
            if client.login_again_after(&e).await {
                tracing::debug!(what, "etcd auth token refreshed");
                continue;
            }
        }
        let err = map_err(e);
        if err.is_retryable() && Instant::now() < deadline {
            tracing::debug!(what, error = %err, "etcd request failed; retrying");
            backoff.sleep_until_deadline(Some(deadline)).await;
            continue;
        }
        return Err(err);
    }
}
