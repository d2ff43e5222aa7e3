//! # lock-zk: distlock on ZooKeeper
//!
//! The lock recipe of ZooKeeper's documentation, laid out as Apache Curator's
//! `InterProcessMutex` lays it out, so that distlock and Curator exclude each other on the
//! same path.
//!
//! ```no_run
//! # async fn demo() -> lock_core::Result<()> {
//! let backend = lock_zk::ZkBackend::connect(lock_zk::ZkOptions::new("10.0.0.1:2181,10.0.0.2:2181/app")).await?;
//! let locks = lock_core::LockClient::new(backend);
//! let guard = locks.lock("jobs/nightly").auto_renew().acquire().await?;
//! // ... write with guard.fencing_token() ...
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Layout and order
//! - A lock named `jobs/nightly` is the directory `<prefix>/jobs/nightly` (default prefix
//!   `/distlock`). Directories are created as **container nodes**, which the server removes
//!   once they are empty, so lock parents do not pile up. Path segments that ZooKeeper cannot
//!   name (empty, `.`, `..`, or holding characters outside `[A-Za-z0-9_.:@~-]`) are
//!   percent-encoded.
//! - Each contender creates an EPHEMERAL_SEQUENTIAL child named as Curator's protected mode
//!   names it: `_c_<uuid>-lock-<10-digit sequence>`, where the uuid is the attempt's owner
//!   token. The contender with the lowest sequence holds the lock; every other one watches
//!   only the child just before its own, so a release wakes one waiter (no herd).
//! - Children are ordered by the 10-digit sequence suffix ZooKeeper appends, so children
//!   written by other recipes in the same directory are ordered rightly too.
//! - **Interoperability**: Apache Curator's `InterProcessMutex` on the same path (tested
//!   against Curator 5.4 from Debian's `libcurator-recipes-java`). kazoo's `Lock` names its
//!   children `<uuid>__lock__<sequence>` and by default orders only those, so a default
//!   kazoo `Lock` does **not** exclude distlock or Curator on the same path (tested). Built
//!   with `extra_lock_patterns=["-lock-"]` it orders our children by their sequence too, and
//!   kazoo and distlock exclude each other, hand-off included (tested). Curator never orders
//!   kazoo's children rightly (it sorts names without `lock-` whole), so do not mix kazoo
//!   with Curator on one path.
//! - A create whose reply was lost (the connection broke) is recovered by finding our own
//!   child by its uuid, so no orphan blocks the queue.
//!
//! ## Fencing tokens
//! The token is the **czxid** of the holder's child: the zxid of the transaction that
//! created it. zxids strictly increase across the whole ensemble, leader changes included
//! (the epoch is the high half), and holders are served in creation order, so every later
//! holder's child was created by a later transaction and has a greater czxid. The token also
//! keeps growing when an empty directory is removed and created again, where the sequence
//! numbers restart.
//!
//! ## Sessions and TTLs
//! One session per backend, shared by all its locks. **The lock API's TTL does not apply**:
//! a lock lasts as long as the session that created its child, so the session timeout
//! ([`ZkOptions::session_timeout`]) is every lock's lease, and the capabilities say
//! `session_leases` and not `per_lock_ttl`.
//! - While connected, a lock's `valid_until` is half a session timeout ahead.
//! - On a disconnect, `valid_until` stops at half a session timeout after it. The client
//!   notices a silent connection within 2/5 of the timeout (plus a tick of 1/20), and the
//!   server expires a session only a whole timeout after it last heard from it, so the
//!   session's nodes are certainly alive for that long. Re-connected in time (same session),
//!   the locks are kept; otherwise, at that bound, `is_held()` turns false and every lock's
//!   loss signal fires. Session expiry, failed authentication, or the client closing fire
//!   it at once. A lock whose child is deleted by someone else fires its own signal.
//! - A crashed holder blocks others until the server expires its session: up to one session
//!   timeout.
//! - A waiter whose session ends (or whose connection breaks) while it waits queues again, on
//!   a new session if need be, until its deadline: it never holds on a lost session.
//!
//! ## Cancel safety
//! A dropped waiting acquire deletes its child, in the background if need be; release
//! deletes it; empty directories are removed by the server (container nodes, ZooKeeper
//! 3.5.3 and later).

mod options;
mod session;

use std::sync::{Arc, Weak};
use std::time::Duration;

use lock_core::{
    async_trait, AcquireRequest, Attempt, BackendErrorKind, Capabilities, Error, ExtendOutcome, FencingToken,
    Instant, Lease, LockBackend, LockInfo, LockKey, LossReason, LossSignal, OwnerToken, ReleaseOutcome,
    Result, UndoOnDrop, WakeMode,
};
use tokio::sync::Mutex;
use zookeeper_client::{Acls, Client, CreateMode, EventType};

pub use crate::options::ZkOptions;
use crate::session::Session;

const NAME: &str = "zookeeper";

/// Locks in a ZooKeeper ensemble. Cheap to clone; clones share one session.
///
/// # Behavior
/// See the [crate documentation](crate): Curator's layout and order, czxid fencing tokens,
/// one session per backend whose timeout is every lock's lease.
#[derive(Clone)]
pub struct ZkBackend {
    inner: Arc<Inner>,
}

struct Inner {
    opts: ZkOptions,
    session: Mutex<Arc<Session>>,
    /// The session timeout the server agreed (it clamps the requested one to 2 to 20 ticks);
    /// later sessions ask for the same and get the same.
    negotiated: Duration,
}

impl std::fmt::Debug for ZkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkBackend").field("opts", &self.inner.opts).finish_non_exhaustive()
    }
}

/// What a lease of this backend remembers: its child's path and the session that owns it.
#[derive(Debug)]
struct Held {
    path: String,
    session: Weak<Session>,
}

/// A contender's child: the path, its sequence name, its czxid.
struct Child {
    path: String,
    name: String,
    czxid: i64,
}

impl ZkBackend {
    /// Connects to the ensemble and opens the session.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for unusable options; a retryable connection error when no
    /// server answers within the connect timeout; an auth error when digest auth fails.
    pub async fn connect(opts: ZkOptions) -> Result<Self> {
        validate(&opts)?;
        let session = open(&opts).await?;
        let negotiated = session.timeout();
        Ok(Self { inner: Arc::new(Inner { opts, session: Mutex::new(session), negotiated }) })
    }

    /// The options.
    pub fn options(&self) -> &ZkOptions {
        &self.inner.opts
    }

    /// The current session's id, for operators' logs.
    pub async fn session_id(&self) -> i64 {
        self.inner.session.lock().await.client.session_id().0
    }

    /// The live session, opening a new one if the last one was lost.
    async fn session(&self) -> Result<Arc<Session>> {
        let mut current = self.inner.session.lock().await;
        if current.lost.is_fired() {
            *current = open(&self.inner.opts).await?;
        }
        Ok(current.clone())
    }

    fn acls(&self) -> Acls<'static> {
        acls_for(&self.inner.opts)
    }

    /// The directory of `key`'s contenders.
    fn dir(&self, key: &LockKey) -> String {
        let mut dir = self.inner.opts.prefix.clone();
        for seg in key.full().split('/') {
            dir.push('/');
            dir.push_str(&encode_segment(seg));
        }
        dir
    }

    /// Creates our child in `dir` (making the directory as containers if needed). A create
    /// whose reply was lost is found again by its uuid.
    async fn enqueue(&self, s: &Session, dir: &str, owner: OwnerToken, adopt: bool) -> Result<Child> {
        let stem = stem(owner);
        // A retry of the same request adopts the child an earlier try created, if any.
        if adopt {
            if let Some(c) = self.find(s, dir, &stem, true).await? {
                return Ok(c);
            }
        }
        let prefix = format!("{dir}/{stem}");
        let acls = self.acls();
        for _ in 0..5 {
            match s.client.create(&prefix, b"", &CreateMode::EphemeralSequential.with_acls(acls)).await {
                Ok((stat, seq)) => {
                    let name = format!("{stem}{seq}");
                    return Ok(Child { path: format!("{dir}/{name}"), name, czxid: stat.czxid });
                }
                Err(zookeeper_client::Error::NoNode) => {
                    match s.client.mkdir(dir, &CreateMode::Container.with_acls(acls)).await {
                        Ok(()) | Err(zookeeper_client::Error::NodeExists) => continue,
                        Err(e) => return Err(zk_err("create lock directory", dir, e)),
                    }
                }
                Err(zookeeper_client::Error::ConnectionLoss) => {
                    if let Some(c) = self.find(s, dir, &stem, true).await? {
                        return Ok(c);
                    }
                }
                Err(e) => return Err(zk_err("create", &prefix, e)),
            }
        }
        Err(Error::backend_msg(
            NAME,
            BackendErrorKind::Unavailable,
            format!("could not create a child in {dir}"),
        ))
    }

    /// Our child in `dir` whose name starts with `stem`, if it exists.
    /// With `mine`, only a child of this session counts (one left by an earlier session of
    /// ours is gone, or about to be, with that session).
    async fn find(&self, s: &Session, dir: &str, stem: &str, mine: bool) -> Result<Option<Child>> {
        let children = match s.client.list_children(dir).await {
            Ok(c) => c,
            Err(zookeeper_client::Error::NoNode) => return Ok(None),
            Err(e) => return Err(zk_err("list", dir, e)),
        };
        for name in children.into_iter().filter(|n| n.starts_with(stem)) {
            let path = format!("{dir}/{name}");
            if let Some(stat) = s.client.check_stat(&path).await.map_err(|e| zk_err("stat", &path, e))? {
                if !mine || stat.ephemeral_owner == s.client.session_id().0 {
                    return Ok(Some(Child { path, name, czxid: stat.czxid }));
                }
            }
        }
        Ok(None)
    }

    /// The names of `dir`'s contenders, in sequence order (empty if `dir` does not exist).
    async fn contenders(&self, s: &Session, dir: &str) -> Result<Vec<String>> {
        let mut children = match s.client.list_children(dir).await {
            Ok(c) => c,
            Err(zookeeper_client::Error::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(zk_err("list", dir, e)),
        };
        children.retain(|n| sequence(n).is_some());
        children.sort_by_key(|n| sequence(n).unwrap_or(u64::MAX));
        Ok(children)
    }

    /// If dropped armed (the create may have been sent), finds our child by its uuid and
    /// deletes it, in the background. Requests of one session are applied in order, so the
    /// lookup sees the create if it was sent.
    fn undo_create(&self, dir: &str, owner: OwnerToken) -> UndoOnDrop {
        let (this, dir) = (self.clone(), dir.to_owned());
        UndoOnDrop::new(async move {
            let Ok(s) = this.session().await else { return };
            if let Ok(Some(c)) = this.find(&s, &dir, &stem(owner), true).await {
                let _ = s.client.delete(&c.path, None).await;
            }
        })
    }

    /// Deletes our child (in the background if this is dropped first).
    fn undo(&self, s: &Arc<Session>, path: &str) -> UndoOnDrop {
        let (client, path) = (s.client.clone(), path.to_owned());
        UndoOnDrop::new(async move {
            let _ = client.delete(&path, None).await;
        })
    }

    /// The lease of a won child, with a watcher that fires its loss signal when the child is
    /// deleted by someone else or the session is lost.
    fn won(&self, s: &Arc<Session>, req: &AcquireRequest, child: Child, sent: Instant) -> Result<Lease> {
        if !s.is_live() {
            // Disconnected past the grace, or lost: the child may already be gone.
            return Err(Error::backend_msg(
                NAME,
                BackendErrorKind::Unavailable,
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

    /// Creates our child for `req` on the live session. Returns the session, the lock's
    /// directory, the child, and the undo that deletes the child unless disarmed.
    ///
    /// `retry`: an earlier try of this request failed; its child, if one was made, is adopted,
    /// and a failure of this one is left to the next retry rather than undone (an undo racing
    /// the retry could delete the retry's child).
    async fn join_queue(
        &self,
        req: &AcquireRequest,
        retry: Option<bool>,
    ) -> Result<(Arc<Session>, String, Child, UndoOnDrop)> {
        let s = self.session().await?;
        let dir = self.dir(&req.key);
        let undo_create = self.undo_create(&dir, req.owner);
        let child = self.enqueue(&s, &dir, req.owner, retry == Some(true)).await;
        if retry.is_some() {
            undo_create.disarm();
            return child.map(|child| {
                let undo = self.undo(&s, &child.path);
                (s, dir, child, undo)
            });
        }
        let child = child?;
        undo_create.disarm();
        let undo = self.undo(&s, &child.path);
        Ok((s, dir, child, undo))
    }

    /// One turn in the queue: our child, then waiting for each predecessor in turn.
    async fn acquire_once(&self, req: &AcquireRequest, deadline: Instant, retry: bool) -> Result<Lease> {
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
            if pos == 0 {
                let lease = self.won(&s, req, child, sent)?;
                undo.disarm();
                return Ok(lease);
            }
            let pred = format!("{dir}/{}", order[pos - 1]);
            let (stat, watcher) =
                s.client.check_and_watch_stat(&pred).await.map_err(|e| zk_err("watch", &pred, e))?;
            if stat.is_none() {
                continue;
            }
            tokio::select! {
                _ = watcher.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = s.client.delete(&child.path, None).await;
                    undo.disarm();
                    return Err(Error::WaitTimedOut { key: req.key.full().to_owned(), waited: start.elapsed() });
                }
                _ = s.lost.fired() => {
                    return Err(Error::Lost { key: req.key.full().to_owned(), reason: LossReason::SessionLost });
                }
            }
        }
    }

    /// The path of `lease`'s child: remembered, or found by its owner token.
    async fn path_of(&self, s: &Session, lease: &Lease) -> Result<Option<String>> {
        if let Some(h) = lease.backend_data::<Held>() {
            return Ok(Some(h.path.clone()));
        }
        Ok(self.find(s, &self.dir(lease.key()), &stem(lease.owner()), false).await?.map(|c| c.path))
    }
}

async fn open(opts: &ZkOptions) -> Result<Arc<Session>> {
    // The idle timeout is left at zookeeper-client's default, 2/5 of the session timeout:
    // the disconnect grace (see `Session::grace`) rests on it. The first connect is bounded
    // by `connect_timeout` below.
    let mut connector = Client::connector().with_session_timeout(opts.session_timeout);
    if let Some((user, password)) = &opts.digest {
        connector = connector.with_auth("digest", format!("{user}:{password}").as_bytes());
    }
    if !opts.close_on_drop {
        connector = connector.with_detached();
    }
    // The chroot is made if it does not exist (as Curator's namespaces are), then entered.
    let (hosts, chroot) = match opts.connect.find('/') {
        Some(i) => (&opts.connect[..i], opts.connect[i..].trim_end_matches('/')),
        None => (opts.connect.as_str(), ""),
    };
    let client = tokio::time::timeout(opts.connect_timeout, connector.connect(hosts))
        .await
        .map_err(|_| {
            Error::backend_msg(
                NAME,
                BackendErrorKind::Connection,
                format!("no ZooKeeper server at {hosts} answered within {:?}", opts.connect_timeout),
            )
        })?
        .map_err(|e| zk_err("connect to", hosts, e))?;
    let client = if chroot.is_empty() {
        client
    } else {
        match client.mkdir(chroot, &CreateMode::Persistent.with_acls(acls_for(opts))).await {
            Ok(()) | Err(zookeeper_client::Error::NodeExists) => {}
            Err(e) => return Err(zk_err("create chroot", chroot, e)),
        }
        client.chroot(chroot).map_err(|_| {
            Error::InvalidConfig(format!("ZooKeeper options: '{chroot}' is not a valid chroot"))
        })?
    };
    Ok(Session::start(client))
}

/// The ACL of every node we create: only its creator with digest auth, anyone without.
fn acls_for(opts: &ZkOptions) -> Acls<'static> {
    if opts.digest.is_some() {
        Acls::creator_all()
    } else {
        Acls::anyone_all()
    }
}

fn validate(opts: &ZkOptions) -> Result<()> {
    let bad = |what: &str| Err(Error::InvalidConfig(format!("ZooKeeper options: {what}")));
    if opts.connect.trim().is_empty() {
        return bad("the connect string is empty (host:port[,host:port][/chroot])");
    }
    if !opts.prefix.starts_with('/') || opts.prefix.ends_with('/') || opts.prefix.contains("//") {
        return bad("the prefix must be an absolute path without a trailing '/' (like /distlock)");
    }
    if opts.session_timeout.is_zero() || opts.connect_timeout.is_zero() {
        return bad("session_timeout and connect_timeout must be positive");
    }
    Ok(())
}

/// The start of the name of `owner`'s child: Curator's protected-mode prefix with the owner
/// token as its uuid, and Curator's lock name.
fn stem(owner: OwnerToken) -> String {
    format!("_c_{}-lock-", uuid::Uuid::from_u128(owner.as_u128()).hyphenated())
}

/// The sequence ZooKeeper appended to `name`: its last 10 digits.
fn sequence(name: &str) -> Option<u64> {
    let tail = name.get(name.len().checked_sub(10)?..)?;
    tail.bytes().all(|b| b.is_ascii_digit()).then(|| tail.parse().ok()).flatten()
}

/// The owner token in a child named `_c_<uuid>-lock-<sequence>`.
fn owner_of(name: &str) -> Option<OwnerToken> {
    let uuid = name.strip_prefix("_c_")?.get(..36)?;
    uuid::Uuid::parse_str(uuid).ok().map(|u| OwnerToken::from_u128(u.as_u128()))
}

/// One key segment as a znode name.
fn encode_segment(seg: &str) -> String {
    match seg {
        "" => return "%".into(),
        "." => return "%2E".into(),
        ".." => return "%2E%2E".into(),
        _ => {}
    }
    let mut out = String::with_capacity(seg.len());
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || b"_.:@~-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn zk_err(op: &str, path: &str, e: zookeeper_client::Error) -> Error {
    use zookeeper_client::Error as Z;
    let kind = match &e {
        Z::ConnectionLoss | Z::NoHosts => BackendErrorKind::Connection,
        Z::Timeout => BackendErrorKind::RequestTimedOut,
        Z::SessionExpired | Z::ClientClosed | Z::SessionMoved => BackendErrorKind::Unavailable,
        Z::Throttled => BackendErrorKind::Throttled,
        Z::NoAuth | Z::AuthFailed => BackendErrorKind::Auth,
        _ => BackendErrorKind::Other,
    };
    Error::backend(NAME, kind, format!("{op} {path}"), e)
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

#[async_trait]
impl LockBackend for ZkBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.fair_queueing = true;
        c.wake = WakeMode::Notify;
        c.session_leases = true;
        c.per_lock_ttl = false;
        c.min_ttl = Duration::from_millis(1);
        // A crashed holder's child lives until the server expires its session: the timeout
        // the server agreed, not the one asked for.
        c.expiry_margin = self.inner.negotiated + Duration::from_millis(1500);
        c
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let sent = Instant::now();
        let (s, dir, child, undo) = self.join_queue(req, None).await?;
        let order = self.contenders(&s, &dir).await?;
        if order.first() == Some(&child.name) {
            let lease = self.won(&s, req, child, sent)?;
            undo.disarm();
            return Ok(Attempt::Acquired(lease));
        }
        drop(undo); // deletes our child in the background
        Ok(Attempt::Held { expires_in: None })
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let start = Instant::now();
        // Until a try succeeds, a child some try left behind (its create's reply lost) is
        // deleted if this call ends without the lock, or is dropped, even between tries.
        let cleanup = self.undo_create(&self.dir(&req.key), req.owner);
        let mut retry = false;
        loop {
            let attempt = self.acquire_once(req, deadline, retry).await;
            retry = true;
            match attempt {
                // The session ended, or the connection broke, while we waited (not while we
                // held): queue again, on a new session if need be, until the deadline.
                Err(e)
                    if (matches!(e, Error::Lost { .. }) || e.is_retryable()) && Instant::now() < deadline =>
                {
                    tracing::debug!(backend = NAME, key = %req.key, error = %e, "queueing again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(lease) => {
                    cleanup.disarm();
                    return Ok(lease);
                }
                Err(e) => {
                    // No further try will come with this owner token: `cleanup` runs now.
                    drop(cleanup);
                    return Err(match e {
                        Error::WaitTimedOut { key, .. } => {
                            Error::WaitTimedOut { key, waited: start.elapsed() }
                        }
                        other => other,
                    });
                }
            }
        }
    }

    async fn extend(&self, lease: &Lease, _ttl: Duration) -> Result<ExtendOutcome> {
        if lease.session().is_some_and(|sig| sig.is_fired()) {
            return Ok(ExtendOutcome::NotHeld);
        }
        // The child lives and dies with the session that created it, never with a newer one.
        if let Some(h) = lease.backend_data::<Held>() {
            return Ok(match h.session.upgrade() {
                Some(s) if s.is_live() => ExtendOutcome::Extended { valid_until: s.valid_until() },
                _ => ExtendOutcome::NotHeld,
            });
        }
        // A lease made elsewhere: its child must exist (its session is not ours to judge).
        let s = self.session().await?;
        if !s.is_live() || self.path_of(&s, lease).await?.is_none() {
            return Ok(ExtendOutcome::NotHeld);
        }
        Ok(ExtendOutcome::Extended { valid_until: s.valid_until() })
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let s = self.session().await?;
        let Some(path) = self.path_of(&s, lease).await? else { return Ok(ReleaseOutcome::NotHeld) };
        match s.client.delete(&path, None).await {
            Ok(()) => Ok(ReleaseOutcome::Released),
            Err(zookeeper_client::Error::NoNode) => Ok(ReleaseOutcome::NotHeld),
            Err(e) => Err(zk_err("delete", &path, e)),
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        let s = self.session().await?;
        let dir = self.dir(key);
        for name in self.contenders(&s, &dir).await? {
            let path = format!("{dir}/{name}");
            if let Some(stat) = s.client.check_stat(&path).await.map_err(|e| zk_err("stat", &path, e))? {
                return Ok(Some(LockInfo::new(
                    Some(FencingToken::new(stat.czxid as u64)),
                    owner_of(&name),
                    None,
                )));
            }
        }
        Ok(None)
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

    #[test]
    fn sequences_and_owners_are_read_from_child_names() {
        let owner = OwnerToken::from_u128(0x1234);
        let name = format!("_c_{}-lock-0000000042", uuid::Uuid::from_u128(owner.as_u128()).hyphenated());
        assert_eq!(sequence(&name), Some(42));
        assert_eq!(owner_of(&name), Some(owner));
        assert_eq!(sequence("x__lock__0000000007"), Some(7));
        assert_eq!(sequence("nightly"), None);
        assert_eq!(owner_of("abc__lock__0000000007"), None);
    }

    #[test]
    fn key_segments_become_valid_znode_names() {
        assert_eq!(encode_segment("jobs"), "jobs");
        assert_eq!(encode_segment(""), "%");
        assert_eq!(encode_segment(".."), "%2E%2E");
        assert_eq!(encode_segment("a b%"), "a%20b%25");
        assert_eq!(encode_segment("ü"), "%C3%BC");
    }

    #[test]
    fn options_are_validated_and_debug_hides_the_password() {
        assert!(validate(&ZkOptions::new("h:2181").prefix("relative")).is_err());
        assert!(validate(&ZkOptions::new("h:2181").prefix("/a/")).is_err());
        validate(&ZkOptions::new("h:2181")).expect("valid");
        let d = format!("{:?}", ZkOptions::new("h:2181").digest("app", "hunter2"));
        assert!(!d.contains("hunter2") && d.contains("app:***"), "{d}");
    }
}
