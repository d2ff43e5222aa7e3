//! # lock-etcd: distlock on etcd v3
//!
//! The layout and ordering of etcd's Go `concurrency.Mutex`, so distlock, `etcdctl lock NAME`
//! and Go services using that package exclude one another on the same name:
//!
//! - Each contender puts `<prefix><name>/<lease id in hex>` attached to its lease, in one
//!   transaction that also reads the current owner: the key with the lowest create revision
//!   under `<prefix><name>/`. Contenders are served in the order their keys were created
//!   (a fair queue).
//! - A waiter watches only the key created just before its own (no thundering herd). The
//!   watch is opened at the current revision and the predecessor re-read after the watch is
//!   in place: a watch opened at an older revision lands in etcd's "unsynced" watcher group,
//!   which the server catches up only every 100 ms, and hand-off would wait for it.
//!   When the predecessor's deletion arrives, one read of the revision of that deletion,
//!   served by the member without a quorum round (it has applied that revision, since it
//!   reported it), says whether an older key is left and whether the waiter's own key is still
//!   there: the hand-off costs the releaser's delete and that one read.
//! - **Fencing token** = the create revision of the holder's key. etcd's revision is one
//!   counter for the whole cluster that every write raises by one, never reused (compaction
//!   drops old revisions but never lowers the counter), and a later holder's key is created
//!   after the earlier holder's key was created, so its create revision is strictly greater.
//! - The value of our keys is the owner token (Go's Mutex writes an empty value); release and
//!   extend compare it, so a stale holder never deletes or extends a newer grant.
//!
//! ## Leases
//! [`LeaseMode::Session`] (the default): one lease per client, kept alive by one keep-alive
//! stream about every TTL/3 and shared by all the client's locks. Renewing them costs one
//! request per lock at its first renewal and none after: from then on one watch stream per
//! session (one watcher per held key, deletions only) fires a lock's own loss signal when its
//! key is deleted by anyone. A lock released before its first renewal costs no watcher. When the lease is lost
//! (keep-alive failing past the TTL, revoked, or reported gone by the server) every guard on
//! it gets its loss signal. A lock lasts as long as the session: the lock's own TTL is not
//! used, the session TTL bounds how long a crashed holder blocks others, and the capabilities
//! say so (`session_leases`, not `per_lock_ttl`). Locks of one client on the same name are
//! queued inside the client (they would share one key), then on etcd.
//!
//! [`LeaseMode::PerLock`]: a lease per grant with the lock's TTL (whole seconds), extended by
//! keep-alive, or swapped for a new lease when the TTL changes.
//!
//! ## Failures
//! Requests that are safe to repeat (compare-and-delete, compare-and-put, reads) are retried
//! through leader elections within the request timeout. A release whose first try landed but
//! whose reply was lost with the old leader reports `NotHeld` on the retry: the key is gone
//! either way.
//!
//! A cancelled attempt (its future dropped) deletes its queue key in the background. The
//! client spreads requests over the endpoints, so that delete can overtake the attempt's own
//! put: in session mode a put found missing is looked for again 50 ms, 250 ms and 1 s later
//! (`lock_core::cancel::LATE_GRANT_RECHECKS`),
//! and the client's next attempt on the name deletes a key of its session that no live
//! attempt owns before it queues. In per-lock mode the attempt's lease is revoked, so a late
//! put fails.
//!
//! ## Options
//! [`EtcdOptions`]: several endpoints, user/password auth, TLS with a private CA
//! (`https://` endpoints, feature `tls`, on by default), key prefix, timeouts, session TTL,
//! lease mode. Requests that are safe to repeat are retried through leader elections within
//! the request timeout.

mod keywatch;
mod options;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseGrantOptions, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
};
use lock_core::{
    async_trait, drift_margin, AcquireRequest, Attempt, BackendErrorKind, Capabilities, Error, ExtendOutcome,
    FencingToken, Instant, Lease, LockBackend, LockInfo, LockKey, OwnerToken, ReleaseOutcome, Result,
    WakeMode,
};
use tokio::sync::Notify;

pub use options::{EtcdOptions, LeaseMode};
use session::Session;

const NAME: &str = "etcd";

pub(crate) fn map_err(e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    let kind = match &e {
        E::TransportError(_) | E::IoError(_) | E::LeaseKeepAliveError(_) | E::WatchError(_) => {
            BackendErrorKind::Connection
        }
        E::GRpcStatus(s) => {
            use tonic::Code;
            match s.code() {
                Code::Unavailable | Code::Aborted | Code::Internal | Code::Unknown => {
                    BackendErrorKind::Unavailable
                }
                Code::DeadlineExceeded | Code::Cancelled => BackendErrorKind::RequestTimedOut,
                Code::ResourceExhausted => BackendErrorKind::Throttled,
                Code::Unauthenticated | Code::PermissionDenied => BackendErrorKind::Auth,
                _ => BackendErrorKind::Other,
            }
        }
        _ => BackendErrorKind::Other,
    };
    Error::backend(NAME, kind, e.to_string(), e)
}

/// Whether `e` says the auth token is no longer valid (a new login fixes it), not that the
/// user lacks a permission.
pub(crate) fn token_expired(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unauthenticated)
}

pub(crate) fn timeout(what: &str, d: Duration) -> Error {
    Error::backend_msg(NAME, BackendErrorKind::RequestTimedOut, format!("{what}: no reply within {d:?}"))
}

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
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    opts: EtcdOptions,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// Session mode: which local owner holds or is queued for a name (one key per session).
    local: Mutex<HashMap<String, LocalSlot>>,
}

struct LocalSlot {
    owner: OwnerToken,
    session: i64,
    released: Arc<Notify>,
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

/// What one of our leases carries.
#[derive(Debug)]
struct Held {
    etcd_key: String,
    /// Session mode: fires when this grant's key is deleted or the session is lost.
    signal: Option<lock_core::LossSignal>,
    /// (lease id, granted TTL in seconds); per-lock leases change on a TTL change.
    lease: Mutex<(i64, i64)>,
    session: Option<Arc<Session>>,
}

fn ttl_secs(d: Duration) -> i64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1) as i64
}

impl EtcdBackend {
    /// Connects to the cluster at `endpoints` with default options (session leases, 10 s TTL).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for bad options; a retryable connection error when no endpoint
    /// answers.
    pub async fn connect<S: AsRef<str>>(endpoints: &[S]) -> Result<Self> {
        Self::connect_with(EtcdOptions::new(endpoints)).await
    }

    /// Connects with options.
    ///
    /// # Errors
    /// As [`EtcdBackend::connect`].
    pub async fn connect_with(opts: EtcdOptions) -> Result<Self> {
        opts.validate()?;
        let mut co = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_timeout(opts.request_timeout);
        if let Some((u, p)) = &opts.user {
            co = co.with_user(u.clone(), p.clone());
        }
        #[cfg(feature = "tls")]
        if opts.uses_tls() {
            let mut tls = etcd_client::TlsOptions::new();
            tls = match &opts.tls_ca {
                Some(pem) => tls.ca_certificate(etcd_client::Certificate::from_pem(pem)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &opts.tls_identity {
                tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            }
            co = co.with_tls(tls);
        }
        let wait = opts.connect_timeout + Duration::from_millis(500);
        // With TLS, bare `host:port` endpoints are dialled as https://.
        let endpoints: Vec<String> = opts
            .endpoints
            .iter()
            .map(|e| if opts.uses_tls() && !e.contains("://") { format!("https://{e}") } else { e.clone() })
            .collect();
        let mut client = tokio::time::timeout(wait, Client::connect(endpoints, Some(co)))
            .await
            .map_err(|_| timeout("connect", wait))?
            .map_err(map_err)?;
        // The channel connects lazily: make sure someone answers.
        tokio::time::timeout(wait, client.status())
            .await
            .map_err(|_| timeout("status", wait))?
            .map_err(map_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                opts,
                session: tokio::sync::Mutex::new(None),
                local: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The etcd prefix that holds the queue of `key`: `<prefix><name>/`.
    pub fn etcd_prefix(&self, key: &LockKey) -> String {
        format!("{}{}/", self.inner.opts.key_prefix, key.full())
    }

    /// The underlying client (for tests and benchmarks).
    #[doc(hidden)]
    pub fn raw_client(&self) -> Client {
        self.inner.client.clone()
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
            s.close(&self.inner.client).await;
        }
    }

    /// Runs one request, retrying retryable failures (a leader election, a member going away)
    /// until the request timeout. Only for requests that are safe to repeat.
    async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let t = self.inner.opts.request_timeout;
        let deadline = Instant::now() + t;
        let mut backoff = lock_core::Backoff::new(Duration::from_millis(10), Duration::from_millis(300));
        let mut reauthenticated = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match tokio::time::timeout(left, f(self.inner.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    // An auth token expires (etcd's simple tokens after 5 idle minutes, JWTs
                    // at their TTL): log in again once with the configured user, and repeat.
                    if !reauthenticated && self.inner.opts.user.is_some() && token_expired(&e) {
                        reauthenticated = true;
                        if self.inner.client.refresh_token().await.is_ok() {
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
                Err(_) => return Err(timeout(what, t)),
            }
        }
    }

    fn local(&self) -> MutexGuard<'_, HashMap<String, LocalSlot>> {
        self.inner.local.lock().unwrap_or_else(|p| p.into_inner())
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
        let s =
            Session::start(&self.inner.client, self.inner.opts.session_ttl, self.inner.opts.request_timeout)
                .await?;
        *cur = Some(s.clone());
        Ok(s)
    }

    /// One keep-alive of lease `id`: the TTL the server granted (0 when the lease is gone).
    async fn keep_alive_once(&self, id: i64) -> Result<i64> {
        let t = self.inner.opts.request_timeout;
        let (mut keeper, mut stream) =
            tokio::time::timeout(t, self.inner.client.lease_client().keep_alive(id))
                .await
                .map_err(|_| timeout("keep-alive", t))?
                .map_err(map_err)?;
        keeper.keep_alive().await.map_err(map_err)?;
        match tokio::time::timeout(t, stream.message()).await.map_err(|_| timeout("keep-alive", t))? {
            Ok(r) => Ok(r.map(|r| r.ttl()).unwrap_or(0)),
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => Ok(0),
            Err(e) => Err(map_err(e)),
        }
    }

    /// The seconds lease `id` has left (0 or less when it is gone), without renewing it.
    async fn time_to_live(&self, id: i64) -> Result<i64> {
        self.call("lease ttl", |mut c| async move { c.lease_time_to_live(id, None).await })
            .await
            .map(|r| r.ttl())
    }

    async fn grant(&self, ttl: Duration) -> Result<(i64, i64)> {
        let t = self.inner.opts.request_timeout;
        let r = tokio::time::timeout(
            t,
            self.inner.client.lease_client().grant(ttl_secs(ttl), None::<LeaseGrantOptions>),
        )
        .await
        .map_err(|_| timeout("lease grant", t))?
        .map_err(map_err)?;
        Ok((r.id(), r.ttl()))
    }

    async fn revoke(&self, id: i64) {
        let _ = self.inner.client.lease_client().revoke(id).await;
    }

    /// Claims the local slot of `name` for `owner` (session mode). `false` when another local
    /// owner of the same session holds or queues for it.
    fn claim_local(
        &self,
        name: &str,
        owner: OwnerToken,
        session: i64,
    ) -> std::result::Result<(), Arc<Notify>> {
        let mut local = self.local();
        match local.get(name) {
            Some(slot) if slot.owner != owner && slot.session == session => Err(slot.released.clone()),
            _ => {
                let released = local.get(name).map(|s| s.released.clone()).unwrap_or_default();
                local.insert(name.to_owned(), LocalSlot { owner, session, released });
                Ok(())
            }
        }
    }

    fn free_local(&self, name: &str, owner: OwnerToken) {
        let mut local = self.local();
        if local.get(name).is_some_and(|s| s.owner == owner) {
            if let Some(slot) = local.remove(name) {
                slot.released.notify_waiters();
            }
        }
    }

    /// Puts our key (unless it exists) and reads the owner, in one transaction.
    /// Returns (our create revision, owner's create revision), or `None`
    /// when the key exists with another owner's value.
    async fn enqueue(
        &self,
        pfx: &str,
        my_key: &str,
        lease: i64,
        owner: OwnerToken,
    ) -> Result<Option<(i64, i64)>> {
        let owner_get = || {
            TxnOp::get(
                pfx,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Create, SortOrder::Ascend)
                        .with_limit(1),
                ),
            )
        };
        let txn = Txn::new()
            .when([Compare::create_revision(my_key, CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(my_key, owner.to_string(), Some(PutOptions::new().with_lease(lease))),
                owner_get(),
            ])
            .or_else([TxnOp::get(my_key, None), owner_get()]);
        // A key of ours with another owner token is an orphan: the callers hold the name's
        // local slot (session mode) or a fresh lease (per-lock mode), so no live attempt or
        // guard of this client owns it. It is the put of a cancelled attempt that reached the
        // server after that attempt's undo (etcd serves one connection's requests
        // concurrently, so they can overtake each other). Delete it and queue afresh.
        for _ in 0..3 {
            let resp = self
                .call("txn", |mut c| {
                    let t = txn.clone();
                    async move { c.txn(t).await }
                })
                .await?;
            let header = resp.header().map(|h| h.revision()).unwrap_or(0);
            let ops = resp.op_responses();
            let first_rev = |i: usize| match ops.get(i) {
                Some(TxnOpResponse::Get(g)) => {
                    g.kvs().first().map(|kv| (kv.create_revision(), kv.value().to_vec()))
                }
                _ => None,
            };
            let my_rev = if resp.succeeded() {
                header
            } else {
                match first_rev(0) {
                    Some((rev, value)) if value == owner.to_string().as_bytes() => rev,
                    Some((rev, _)) => {
                        tracing::debug!(key = my_key, "deleting the orphan queue key of a cancelled attempt");
                        self.delete_at_revision(my_key, rev).await?;
                        continue;
                    }
                    None => header,
                }
            };
            let owner_rev = first_rev(1).map(|(r, _)| r).unwrap_or(my_rev);
            return Ok(Some((my_rev, owner_rev)));
        }
        Ok(None)
    }

    /// Deletes `key` if it is still the key created at revision `rev`.
    async fn delete_at_revision(&self, key: &str, rev: i64) -> Result<bool> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, rev)])
            .and_then([TxnOp::delete(key, None)]);
        let resp = self
            .call("txn", |mut c| {
                let t = txn.clone();
                async move { c.txn(t).await }
            })
            .await?;
        Ok(resp.succeeded())
    }

    /// Deletes `key` if its value is still `owner`; true if it did.
    async fn delete_if_ours(&self, key: &str, owner: OwnerToken) -> Result<bool> {
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, owner.to_string())])
            .and_then([TxnOp::delete(key, None)]);
        let resp = self
            .call("txn", |mut c| {
                let t = txn.clone();
                async move { c.txn(t).await }
            })
            .await?;
        Ok(resp.succeeded())
    }

    /// Whether `key` still holds `owner`.
    async fn still_ours(&self, key: &str, owner: OwnerToken) -> Result<bool> {
        let r = self.call("get", |mut c| async move { c.get(key, None).await }).await?;
        Ok(r.kvs().first().is_some_and(|kv| kv.value() == owner.to_string().as_bytes()))
    }

    /// Finds the key under `pfx` whose value is `owner` (for a lease rebuilt by an operator).
    async fn find_key(&self, pfx: &str, owner: OwnerToken) -> Result<Option<(String, i64)>> {
        let r = self
            .call("get", |mut c| {
                let o = GetOptions::new().with_prefix();
                async move { c.get(pfx, Some(o)).await }
            })
            .await?;
        let want = owner.to_string();
        Ok(r.kvs()
            .iter()
            .find(|kv| kv.value() == want.as_bytes())
            .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease())))
    }

    /// Lease and key for one attempt: the session's, or a fresh per-lock lease.
    async fn lease_for(&self, req: &AcquireRequest) -> Result<(i64, Duration, Option<Arc<Session>>)> {
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
        self.free_local(name, owner);
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

    /// Opens a watch for deletions of `key` from the current revision, through [`call`]
    /// (opening a watch is safe to repeat; an expired auth token is renewed there).
    ///
    /// [`call`]: Self::call
    async fn watch_deletions(&self, key: &[u8]) -> Result<etcd_client::WatchStream> {
        self.call("watch", |c| {
            let key = key.to_vec();
            async move {
                c.watch_client()
                    .watch(key, Some(WatchOptions::new().with_filters([WatchFilterType::NoPut])))
                    .await
            }
        })
        .await
    }

    /// The queue as a waiter sees it, in one read: the key created just before `my_rev`
    /// under `pfx` (if any), and whether `my_key` still holds `owner`.
    ///
    /// With `at`, the read is of that revision and served by the member without a quorum
    /// round (a serializable read): the state just after the event that woke the waiter,
    /// which every member that reported the event has applied.
    async fn queue_view(
        &self,
        pfx: &str,
        my_key: &str,
        my_rev: i64,
        owner: OwnerToken,
        at: Option<i64>,
    ) -> Result<(Option<Vec<u8>>, bool)> {
        // The two newest keys created up to ours: ours first, then the one just before it.
        let mut opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_max_create_revision(my_rev)
            .with_limit(2);
        if let Some(rev) = at {
            opts = opts.with_revision(rev).with_serializable();
        }
        let r = self
            .call("get", |mut c| {
                let o = opts.clone();
                async move { c.get(pfx, Some(o)).await }
            })
            .await?;
        let kvs = r.kvs();
        let mine = kvs.first().is_some_and(|kv| {
            kv.key() == my_key.as_bytes()
                && kv.create_revision() == my_rev
                && kv.value() == owner.to_string().as_bytes()
        });
        Ok((if mine { kvs.get(1) } else { kvs.first() }.map(|kv| kv.key().to_vec()), mine))
    }

    /// Waits until no key created before `my_rev` is left under `pfx`: watch the one just
    /// before ours from the current revision, then re-read it, so a deletion is never missed
    /// and never delayed. Returns `false` if our own key is gone (the lease expired or was
    /// revoked while we waited).
    ///
    /// After the watched deletion one read decides, of the revision of that deletion: no
    /// older key left and ours still there means the lock is ours as of that revision.
    async fn wait_for_predecessors(
        &self,
        pfx: &str,
        my_key: &str,
        my_rev: i64,
        owner: OwnerToken,
        deadline: Instant,
        session: Option<&Session>,
    ) -> Result<bool> {
        let t = self.inner.opts.request_timeout;
        // A member that died, or an election, fails a read or a watch with a retryable error:
        // waiting goes on (through the other members) until the deadline, as the trait asks.
        macro_rules! or_retry {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        tracing::debug!(backend = NAME, error = %e, "retrying while waiting for the lock");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
        }
        // The revision of the deletion that woke us, for the next read.
        let mut at: Option<i64> = None;
        loop {
            let view = match (self.queue_view(pfx, my_key, my_rev, owner, at).await, at.take()) {
                (Ok(v), _) => Ok(v),
                // A member behind the one that reported the deletion has not applied its
                // revision yet (or it was compacted away): read the current state instead.
                (Err(_), Some(_)) => continue,
                (Err(e), None) => Err(e),
            };
            let (pred, mine) = or_retry!(view);
            if !mine {
                return Ok(false);
            }
            let Some(pred) = pred else { return Ok(true) };
            let mut ws = or_retry!(self.watch_deletions(&pred).await);
            // Wait until the watch exists, then re-read: a deletion before this point shows in
            // the read, one after it arrives on the watch.
            let created = or_retry!(tokio::time::timeout(t, ws.message())
                .await
                .map_err(|_| timeout("watch", t))
                .and_then(|r| r.map_err(map_err)));
            if created.is_none() {
                if Instant::now() >= deadline {
                    return Err(Error::WaitTimedOut {
                        key: pfx.trim_end_matches('/').to_owned(),
                        waited: Duration::ZERO,
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            // The predecessor is still ahead of us only if it exists with a create revision
            // below ours: a key of the same name created again (by another task of the same
            // session) is behind us, and waiting for it would deadlock.
            let still = or_retry!(
                self.call("get", |mut c| {
                    let k = pred.clone();
                    async move { c.get(k, Some(GetOptions::new().with_keys_only())).await }
                })
                .await
            );
            if still.kvs().first().is_none_or(|kv| kv.create_revision() >= my_rev) {
                continue;
            }
            loop {
                tokio::select! {
                    msg = ws.message() => match msg {
                        Ok(Some(resp)) => {
                            if resp.canceled() {
                                break;
                            }
                            let deleted = resp
                                .events()
                                .iter()
                                .filter(|e| e.event_type() == EventType::Delete)
                                .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
                                .max();
                            if let Some(rev) = deleted {
                                at = (rev > 0).then_some(rev);
                                break;
                            }
                        }
                        // The stream broke: re-read and watch again.
                        _ => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(Error::WaitTimedOut { key: pfx.trim_end_matches('/').to_owned(), waited: Duration::ZERO });
                    }
                    _ = async { match session { Some(s) => { s.loss.fired().await; } None => std::future::pending().await } } => {
                        return Err(Error::backend_msg(NAME, BackendErrorKind::Unavailable, "the session lease was lost while waiting for the lock"));
                    }
                }
            }
        }
    }
}

/// Keeps a per-lock lease alive while its owner waits in the queue; stops on drop.
struct KeepAlive(tokio_util::sync::CancellationToken);

impl KeepAlive {
    fn start(client: Client, id: i64, ttl: Duration) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let Ok((mut keeper, mut stream)) = client.lease_client().keep_alive(id).await else { return };
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(ttl / 3) => {}
                }
                if keeper.keep_alive().await.is_err() || !matches!(stream.message().await, Ok(Some(_))) {
                    return;
                }
            }
        });
        Self(stop)
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// One attempt's queue entry: its key, lease and local slot. Dropped before [`won`] or
/// [`undo`] (a cancelled acquire), it cleans up in the background.
///
/// [`won`]: QueueEntry::won
/// [`undo`]: QueueEntry::undo
struct QueueEntry {
    backend: Option<EtcdBackend>,
    name: String,
    pfx: String,
    my_key: String,
    owner: OwnerToken,
    lease: i64,
    session: Option<Arc<Session>>,
}

impl QueueEntry {
    fn new(backend: &EtcdBackend, req: &AcquireRequest, lease: i64, session: Option<Arc<Session>>) -> Self {
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
    async fn undo(mut self, in_flight: bool) {
        if let Some(b) = self.backend.clone() {
            b.undo(&self.name, &self.my_key, self.owner, self.lease, &self.session, in_flight).await;
        }
        self.backend = None;
    }

    /// The attempt won the lock (granted `granted` from `sent`, fencing token `my_rev`): the
    /// lease. In session mode the key is registered with the session's key watch, so its
    /// deletion reaches this grant's guard.
    fn won(mut self, req: &AcquireRequest, my_rev: i64, granted: Duration, sent: Instant) -> Lease {
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

#[async_trait]
impl LockBackend for EtcdBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.fair_queueing = true;
        c.wake = WakeMode::Notify;
        c.ttl_granularity = Duration::from_secs(1);
        c.expiry_margin = Duration::from_millis(1500);
        match self.inner.opts.mode {
            LeaseMode::Session => {
                c.session_leases = true;
                c.per_lock_ttl = false;
                c.min_ttl = Duration::from_millis(1);
                c.expiry_margin += self.inner.opts.session_ttl;
            }
            LeaseMode::PerLock => {
                c.min_ttl = Duration::from_secs(2);
            }
        }
        c
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let name = req.key.full();
        let sent = Instant::now();
        let (lease, granted, session) = self.lease_for(req).await?;
        if let Some(s) = &session {
            if self.claim_local(name, req.owner, s.id).is_err() {
                return Ok(Attempt::Held { expires_in: None });
            }
        }
        let entry = QueueEntry::new(self, req, lease, session);
        match self.enqueue(&entry.pfx, &entry.my_key, lease, req.owner).await {
            Ok(Some((my_rev, owner_rev))) if my_rev == owner_rev => {
                Ok(Attempt::Acquired(entry.won(req, my_rev, granted, sent)))
            }
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

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let name = req.key.full();
        let start = Instant::now();
        let sent;
        let (lease, granted, session) = loop {
            let attempt_sent = Instant::now();
            let (lease, granted, session) = self.lease_for(req).await?;
            if let Some(s) = &session {
                if let Err(released) = self.claim_local(name, req.owner, s.id) {
                    // Another task of this client holds or queues for the name: wait for it.
                    let notified = released.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if self.claim_local(name, req.owner, s.id).is_err() {
                        tokio::select! {
                            _ = &mut notified => {}
                            _ = tokio::time::sleep_until(deadline) => {
                                return Err(Error::WaitTimedOut { key: name.to_owned(), waited: start.elapsed() });
                            }
                            _ = tokio::time::sleep(s.ttl) => {}
                        }
                        continue;
                    }
                }
            }
            sent = attempt_sent;
            break (lease, granted, session);
        };
        let entry = QueueEntry::new(self, req, lease, session);
        let result = async {
            let (pfx, my_key, session) = (&entry.pfx, &entry.my_key, entry.session.as_deref());
            let Some((my_rev, owner_rev)) = self.enqueue(pfx, my_key, lease, req.owner).await? else {
                return Err(Error::backend_msg(
                    NAME,
                    BackendErrorKind::Other,
                    "queue key held by another owner of this session",
                ));
            };
            if my_rev == owner_rev {
                return Ok((my_rev, sent, granted));
            }
            let expired = || {
                Error::backend_msg(
                    NAME,
                    BackendErrorKind::Unavailable,
                    "the lease expired while waiting; the queue entry is gone",
                )
            };
            // A per-lock lease must outlive the wait: keep it alive until we hold the lock.
            let keep = session.is_none().then(|| KeepAlive::start(self.inner.client.clone(), lease, granted));
            let mine = self.wait_for_predecessors(pfx, my_key, my_rev, req.owner, deadline, session).await?;
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
            match self.keep_alive_once(lease).await? {
                ttl if ttl > 0 => Ok((my_rev, at, Duration::from_secs(ttl as u64))),
                _ => Err(expired()),
            }
        }
        .await;
        match result {
            Ok((my_rev, sent, granted)) => Ok(entry.won(req, my_rev, granted, sent)),
            Err(e) => {
                entry.undo(true).await;
                match e {
                    Error::WaitTimedOut { .. } => {
                        Err(Error::WaitTimedOut { key: name.to_owned(), waited: start.elapsed() })
                    }
                    other => Err(other),
                }
            }
        }
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let sent = Instant::now();
        let Some(held) = lease.backend_data::<Held>() else {
            // A lease rebuilt elsewhere (an operator tool): its etcd lease may be a session
            // shared by other locks, and is not ours to move or revoke. Report the life left in
            // it, if the grant is still this owner's.
            let Some((_, lease_id)) = self.find_key(&self.etcd_prefix(lease.key()), lease.owner()).await?
            else {
                return Ok(ExtendOutcome::NotHeld);
            };
            let left = self.time_to_live(lease_id).await?;
            if left <= 0 {
                return Ok(ExtendOutcome::NotHeld);
            }
            let g = Duration::from_secs(left as u64);
            return Ok(ExtendOutcome::Extended { valid_until: sent + g.saturating_sub(drift_margin(g)) });
        };
        let key = held.etcd_key.clone();
        if let Some(s) = held.session.as_ref() {
            // Session mode: the session's one keep-alive renews every key on it. The first
            // renewal checks the key once and has the session's key watch report its deletion
            // from then on; later renewals send nothing.
            if !s.alive() || held.signal.as_ref().is_some_and(|x| x.is_fired()) {
                return Ok(ExtendOutcome::NotHeld);
            }
            if s.keys.watch(key.as_bytes()) && !self.still_ours(&key, lease.owner()).await? {
                return Ok(ExtendOutcome::NotHeld);
            }
            return Ok(ExtendOutcome::Extended { valid_until: s.valid_until() });
        }
        let (id, secs) = *held.lease.lock().unwrap_or_else(|p| p.into_inner());
        if !self.still_ours(&key, lease.owner()).await? {
            return Ok(ExtendOutcome::NotHeld);
        }
        if secs == ttl_secs(ttl) {
            // Same TTL: one keep-alive.
            let granted = self.keep_alive_once(id).await?;
            if granted <= 0 || !self.still_ours(&key, lease.owner()).await? {
                return Ok(ExtendOutcome::NotHeld);
            }
            let g = Duration::from_secs(granted as u64);
            return Ok(ExtendOutcome::Extended { valid_until: sent + g.saturating_sub(drift_margin(g)) });
        }
        // A new TTL: move the key to a new lease of this grant's own (its create revision,
        // the fencing token, stays).
        let (new_id, new_secs) = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::value(key.as_str(), CompareOp::Equal, lease.owner().to_string())])
            .and_then([TxnOp::put(
                key.as_str(),
                lease.owner().to_string(),
                Some(PutOptions::new().with_lease(new_id)),
            )]);
        let ok = self
            .call("txn", |mut c| {
                let t = txn.clone();
                async move { c.txn(t).await }
            })
            .await?
            .succeeded();
        if !ok {
            self.revoke(new_id).await;
            return Ok(ExtendOutcome::NotHeld);
        }
        *held.lease.lock().unwrap_or_else(|p| p.into_inner()) = (new_id, new_secs);
        self.revoke(id).await;
        let g = Duration::from_secs(new_secs as u64);
        Ok(ExtendOutcome::Extended { valid_until: sent + g.saturating_sub(drift_margin(g)) })
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let name = lease.key().full();
        let owner = lease.owner();
        let held = lease.backend_data::<Held>();
        // Revoke only a per-lock lease this process granted; a lease found by its owner token
        // may be another process's session, shared by its other locks.
        let (key, own_lease) = match held {
            Some(h) => (
                h.etcd_key.clone(),
                h.session.is_none().then(|| h.lease.lock().unwrap_or_else(|p| p.into_inner()).0),
            ),
            None => match self.find_key(&self.etcd_prefix(lease.key()), owner).await? {
                Some((k, _)) => (k, None),
                None => {
                    self.free_local(name, owner);
                    return Ok(ReleaseOutcome::NotHeld);
                }
            },
        };
        if let Some(s) = held.and_then(|h| h.session.as_ref()) {
            s.keys.released(key.as_bytes());
        }
        match self.delete_if_ours(&key, owner).await {
            Ok(deleted) => {
                match own_lease {
                    Some(id) => self.revoke(id).await,
                    None => self.free_local(name, owner),
                }
                Ok(if deleted { ReleaseOutcome::Released } else { ReleaseOutcome::NotHeld })
            }
            Err(e) => {
                if let Some(id) = own_lease {
                    // Revoking the grant's own lease deletes the key too.
                    self.revoke(id).await;
                } else if held.is_some_and(|h| h.session.is_some()) {
                    // The session outlives this call: keep the local slot (the key is still
                    // there) and retry the delete in the background until the session ends.
                    let (b, key, name) = (self.clone(), key.clone(), name.to_owned());
                    let session = held.and_then(|h| h.session.clone());
                    tokio::spawn(async move {
                        let mut backoff =
                            lock_core::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
                        while session.as_ref().is_some_and(|s| s.alive()) {
                            if b.delete_if_ours(&key, owner).await.is_ok() {
                                break;
                            }
                            backoff.sleep_until_deadline(None).await;
                        }
                        b.free_local(&name, owner);
                    });
                }
                Err(e)
            }
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        let pfx = self.etcd_prefix(key);
        let t = self.inner.opts.request_timeout;
        let opts =
            GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1);
        let r = self
            .call("get", |mut c| {
                let (o, p) = (opts.clone(), pfx.clone());
                async move { c.get(p, Some(o)).await }
            })
            .await?;
        let Some(kv) = r.kvs().first() else { return Ok(None) };
        let owner = std::str::from_utf8(kv.value()).ok().and_then(OwnerToken::parse_hex);
        let left = if kv.lease() != 0 {
            tokio::time::timeout(t, self.inner.client.lease_client().time_to_live(kv.lease(), None))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|r| r.ttl())
                .filter(|ttl| *ttl >= 0)
                .map(|ttl| Duration::from_secs(ttl as u64))
        } else {
            None
        };
        Ok(Some(LockInfo::new(Some(FencingToken::new(kv.create_revision() as u64)), owner, left)))
    }
}
