//! The API users write against: one shape for every backend.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::LockBackend;
use crate::capabilities::Capabilities;
use crate::election::Election;
use crate::error::{Error, Result};
use crate::guard::{Guard, RenewPolicy};
use crate::held::HeldByTasks;
use crate::key::{KeyError, LockKey, Namespace};
use crate::lease::{FencingToken, Lease, OwnerToken};
use crate::metadata::Metadata;
use crate::mode::Mode;
use crate::multi::MultiLockBuilder;
use crate::observe;
use crate::outcome::{AcquireRequest, Attempt, ExtendOutcome, LockInfo, ReleaseOutcome};

/// The TTL used when a lock names none: 30 seconds.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// A handle on one backend, with a key namespace and defaults. Cheap to clone.
///
/// ```
/// # async fn demo(locks: lock_core::LockClient) -> lock_core::Result<()> {
/// use std::time::Duration;
/// let guard = locks
///     .lock("jobs/nightly")
///     .ttl(Duration::from_secs(30))
///     .wait(Duration::from_secs(10))
///     .auto_renew()
///     .acquire()
///     .await?;
/// println!("fencing token {}", guard.fencing_token());
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LockClient {
    backend: Arc<dyn LockBackend>,
    caps: Capabilities,
    namespace: Namespace,
    default_ttl: Duration,
    pub(crate) held: HeldByTasks,
    batcher: crate::batch::Batcher,
}

impl LockClient {
    /// A client over `backend`, with no namespace and a 30 s default TTL.
    pub fn new(backend: impl LockBackend) -> Self {
        Self::from_arc(Arc::new(backend))
    }

    /// A client over a shared backend.
    pub fn from_arc(backend: Arc<dyn LockBackend>) -> Self {
        let caps = backend.capabilities();
        Self {
            backend,
            caps,
            namespace: Namespace::default(),
            default_ttl: DEFAULT_TTL,
            held: HeldByTasks::default(),
            batcher: crate::batch::Batcher::default(),
        }
    }

    /// Prefixes every key of this client with `namespace/`.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] when the namespace breaks a key rule.
    pub fn with_namespace(mut self, namespace: &str) -> Result<Self> {
        self.namespace = Namespace::new(namespace)?;
        Ok(self)
    }

    /// This client's namespace (`""` for none).
    pub fn namespace(&self) -> &str {
        self.namespace.as_str()
    }

    /// `prefix` (a name prefix) under this client's namespace: the prefix of full keys, as the
    /// backend's listing and fencing counters name them.
    pub fn full_prefix(&self, prefix: &str) -> String {
        match self.namespace.as_str() {
            "" => prefix.to_owned(),
            ns => format!("{ns}/{prefix}"),
        }
    }

    /// The TTL used by locks that name none.
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl
    }

    /// Sets the TTL used by locks that name none.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] when the backend would refuse it.
    pub fn with_default_ttl(mut self, ttl: Duration) -> Result<Self> {
        self.caps.validate_ttl(self.backend.name(), ttl)?;
        self.default_ttl = ttl;
        Ok(self)
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The backend's capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The renewal batcher guards share, where the backend renews in batches.
    pub(crate) fn batcher(&self) -> Option<crate::batch::Batcher> {
        self.caps.batch_extend.then(|| self.batcher.clone())
    }

    /// The backend itself.
    pub fn backend(&self) -> &Arc<dyn LockBackend> {
        &self.backend
    }

    /// Validates `name` under this client's namespace and the backend's key limit.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] naming the rule broken.
    pub fn key(&self, name: &str) -> Result<LockKey> {
        let key = LockKey::with_namespace(&self.namespace, name)?;
        if key.full().len() > self.caps.max_key_len {
            return Err(KeyError::TooLong { len: key.full().len(), max: self.caps.max_key_len }.into());
        }
        Ok(key)
    }

    /// Starts describing a lock on `name`; nothing is sent until
    /// [`acquire`](LockBuilder::acquire), [`try_acquire`](LockBuilder::try_acquire) or
    /// [`run`](LockBuilder::run).
    pub fn lock(&self, name: &str) -> LockBuilder {
        self.builder(name, Mode::Exclusive)
    }

    /// Starts describing one permit of the semaphore `name`, which has `permits` permits: at
    /// most `permits` holders at once. The guard is a lock guard in every way (fencing token,
    /// renewal, loss signal, release).
    ///
    /// # Behavior
    /// Fencing tokens strictly increase per semaphore name across all its permits. Every
    /// holder of one semaphore must ask for the same number of permits: a client that asks for
    /// another number than the current holders use gets [`Error::PermitsMismatch`], never a
    /// permit. The semaphore `name` is independent of the lock `name`.
    ///
    /// # Errors
    /// At `acquire`: [`Error::InvalidPermits`] for zero permits or more than the backend allows
    /// ([`MAX_PERMITS`](crate::MAX_PERMITS) at most); [`Error::Unsupported`] where the backend
    /// has no semaphores; the errors of [`LockBuilder::acquire`].
    ///
    /// ```
    /// # async fn demo(locks: lock_core::LockClient) -> lock_core::Result<()> {
    /// let permit = locks.semaphore("pool/db", 8).wait(std::time::Duration::from_secs(5)).acquire().await?;
    /// // at most 8 holders run this at once
    /// permit.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, name: &str, permits: u32) -> LockBuilder {
        self.builder(name, Mode::Permit { limit: permits })
    }

    /// Starts describing the read side of the read-write lock `name`: shared with other
    /// readers, excluded by a writer.
    ///
    /// # Behavior
    /// A reader's fencing token is at least the last writer's; a writer's is greater than every
    /// earlier reader's and writer's. Where the backend claims
    /// [`Capabilities::writer_preference`], a waiting writer blocks new readers. The read-write
    /// lock `name` is independent of the lock `name`.
    ///
    /// # Errors
    /// At `acquire`: [`Error::Unsupported`] where the backend has no read-write locks; the
    /// errors of [`LockBuilder::acquire`].
    pub fn read_lock(&self, name: &str) -> LockBuilder {
        self.builder(name, Mode::Read)
    }

    /// Starts describing the write side of the read-write lock `name`: excludes readers and
    /// other writers. See [`read_lock`](Self::read_lock).
    pub fn write_lock(&self, name: &str) -> LockBuilder {
        self.builder(name, Mode::Write)
    }

    /// Starts describing a lock on several names at once, taken all-or-nothing (see
    /// [`MultiLockBuilder`]).
    pub fn lock_all<I, S>(&self, names: I) -> MultiLockBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.builder_for(Many { names: names.into_iter().map(|n| n.as_ref().to_owned()).collect() })
    }

    fn builder(&self, name: &str, mode: Mode) -> LockBuilder {
        self.builder_for(One { name: name.to_owned(), mode })
    }

    pub(crate) fn builder_mode(&self, name: &str, mode: Mode) -> LockBuilder {
        self.builder(name, mode)
    }

    fn builder_for<T>(&self, target: T) -> LockBuilder<T> {
        LockBuilder {
            client: self.clone(),
            target,
            ttl: self.default_ttl,
            wait: None,
            policy: RenewPolicy::default(),
            value: None,
        }
    }

    /// Every grant held under `prefix` (a name prefix under this client's namespace; `""` for
    /// all of the namespace), locks and every other primitive, with metadata, fencing token and
    /// remaining TTL, read page by page with the store's own range reads.
    ///
    /// # Errors
    /// [`Error::Unsupported`] where the backend cannot list; backend errors.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, LockInfo)>> {
        if !self.caps.listing {
            return Err(Error::Unsupported {
                backend: self.backend.name(),
                capability: "listing locks".into(),
            });
        }
        let full = self.full_prefix(prefix);
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.backend.list(&full, cursor, 1000).await?;
            out.extend(page.entries);
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// The election `name`: campaign for leadership, proclaim, observe the leader (see
    /// [`Election`]).
    pub fn election(&self, name: &str) -> Election {
        Election::new(self.clone(), name)
    }

    /// Every holder of `name` in the primitive of `mode` (the permits of a semaphore; the
    /// readers and the writer of a read-write lock; the lock's one holder), with its mode.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Unsupported`] where the backend cannot list the holders
    /// of that primitive; backend errors.
    pub async fn holders(&self, name: &str, mode: Mode) -> Result<Vec<LockInfo>> {
        let key = self.key(name)?;
        self.caps.validate_mode(self.backend.name(), mode)?;
        if mode == Mode::Exclusive {
            return Ok(self.backend.inspect(&key).await?.into_iter().collect());
        }
        self.backend.holders(&key, mode).await
    }

    /// Who holds `name`, if anyone.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; backend errors.
    pub async fn inspect(&self, name: &str) -> Result<Option<LockInfo>> {
        let key = self.key(name)?;
        self.backend.inspect(&key).await
    }

    /// Releases a lease kept with [`Guard::detach`] (or rebuilt by an operator tool); a
    /// multi-key lease, every name.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn release_lease(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        crate::multi::serving(&self.backend, lease).release(lease).await
    }

    /// Extends a detached lease so that it lasts `ttl` from now.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`]; [`Error::NotHeld`] when the grant is gone; backend errors.
    pub async fn extend_lease(&self, lease: &mut Lease, ttl: Duration) -> Result<()> {
        self.caps.validate_ttl(self.backend.name(), ttl)?;
        lease.limit_for_extend(ttl);
        match crate::multi::serving(&self.backend, lease).extend(lease, ttl).await? {
            ExtendOutcome::Extended { valid_until } => {
                lease.set_extended(ttl, valid_until);
                Ok(())
            }
            ExtendOutcome::NotHeld => Err(Error::NotHeld { key: lease.key().full().to_owned() }),
        }
    }

    /// Rebuilds a lease from what an operator tool printed when it took the lock (name, owner
    /// token, fencing token), so it can be released or extended from another process.
    ///
    /// The rebuilt lease's `valid_until` is unknown and set to now: it can be released or
    /// extended, but [`resume`](Self::resume) it only after a successful extend.
    ///
    /// # Errors
    /// [`Error::InvalidKey`].
    pub fn lease_from_parts(
        &self,
        name: &str,
        owner: OwnerToken,
        fence: FencingToken,
        ttl: Duration,
    ) -> Result<Lease> {
        let key = self.key(name)?;
        Ok(Lease::new(key, owner, fence, ttl, Instant::now()).with_valid_until(Instant::now()))
    }

    /// Puts a detached lease back under a guard (renewing it if `auto_renew`). A multi-key
    /// lease's guard renews and releases every name, as the
    /// [`MultiGuard`](crate::MultiGuard)'s did. The guard counts as held by the calling task:
    /// a wait of this task for one of its names is refused with [`Error::AlreadyHeld`], as
    /// for a guard it acquired (it would wait for itself).
    pub fn resume(&self, lease: Lease, auto_renew: bool) -> Guard {
        let backend = crate::multi::serving(&self.backend, &lease);
        // The batcher renews one grant per lease: a multi-key lease goes through its parts.
        let batcher = if Arc::ptr_eq(&backend, &self.backend) { self.batcher() } else { None };
        // Granted before it was detached: when its request was sent is the best known.
        let granted_at = lease.acquired_at();
        let names = crate::multi::held_names(&lease);
        let guard =
            Guard::new(backend, lease, RenewPolicy { auto_renew, max_hold: None }, batcher, granted_at);
        let held: Vec<_> = names.iter().map(|(k, mode)| self.held.enter(k, *mode, guard.probe())).collect();
        guard.with_held(held)
    }
}

/// Describes a lock before it is taken: TTL, waiting, renewal. Made by [`LockClient::lock`],
/// [`LockClient::semaphore`], [`LockClient::read_lock`], [`LockClient::write_lock`] (one name,
/// `T` = [`One`]) and [`LockClient::lock_all`] (several names, `T` = [`Many`]).
#[derive(Debug, Clone)]
#[must_use = "a lock builder does nothing until acquire, try_acquire or run"]
pub struct LockBuilder<T = One> {
    pub(crate) client: LockClient,
    pub(crate) target: T,
    pub(crate) ttl: Duration,
    pub(crate) wait: Option<Duration>,
    pub(crate) policy: RenewPolicy,
    pub(crate) value: Option<String>,
}

/// What a [`LockBuilder`] takes: one name, as a lock, a permit or a read or write lock.
#[derive(Debug, Clone)]
pub struct One {
    name: String,
    mode: Mode,
}

/// What a [`MultiLockBuilder`] takes: several names, all or nothing.
#[derive(Debug, Clone)]
pub struct Many {
    pub(crate) names: Vec<String>,
}

impl<T> LockBuilder<T> {
    /// The lease's TTL (default: the client's, 30 s unless changed). A crashed holder blocks
    /// others for at most this long (plus the backend's stated margin).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Wait up to `wait` for the lock when it is held. Without it, `acquire` makes one attempt.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Wait as long as it takes.
    pub fn wait_forever(mut self) -> Self {
        self.wait = Some(Duration::MAX);
        self
    }

    /// Renew the lease in the background, about every TTL/3, while the guard lives.
    pub fn auto_renew(mut self) -> Self {
        self.policy.auto_renew = true;
        self
    }

    /// Stop renewing once the lock has been held this long, counted from the grant (not from
    /// the start of the wait; for several names, from the first name's grant); the lock is then released and the loss signal fires with
    /// [`LossReason::MaxHoldReached`](crate::LossReason). A lease of its own is shortened to end
    /// at the cap; a session's lease (etcd session mode, ZooKeeper) is renewed up to it. The
    /// grant's moment is taken as the acquire's answer arrives: a reply delayed by `D` lets
    /// the store hold the lock up to `D` past the cap.
    ///
    /// # Errors
    /// The acquire fails with [`Error::InvalidConfig`] without
    /// [`auto_renew`](Self::auto_renew): a lock that is not renewed already ends at its TTL.
    pub fn max_hold(mut self, max: Duration) -> Self {
        self.policy.max_hold = Some(max);
        self
    }

    /// A value of yours stored with the grant's holder metadata (at most
    /// [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN) bytes), shown by `inspect`, `holders` and
    /// `list`; the grant always carries this host, process, program and time.
    pub fn value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// The holder metadata of a request: this process, now, and the value.
    pub(crate) fn metadata(&self) -> Result<Arc<Metadata>> {
        let m = Metadata::current();
        Ok(Arc::new(match &self.value {
            Some(v) => m.with_value(v.clone())?,
            None => m,
        }))
    }

    /// A hold cap needs renewal: without it the lock ends at its TTL, and nothing would
    /// release it at the cap (it was ignored without a word).
    pub(crate) fn check_policy(&self) -> Result<()> {
        if self.policy.max_hold.is_some() && !self.policy.auto_renew {
            return Err(Error::InvalidConfig(
                "max_hold needs auto_renew: without renewal the lock already ends at its TTL (set a shorter ttl instead)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether an acquire waits when the lock is held.
    pub(crate) fn waits(&self) -> bool {
        self.wait.is_some_and(|w| !w.is_zero())
    }

    /// The deadline of a waiting acquire that starts at `start`, if it waits.
    pub(crate) fn deadline(&self, start: Instant) -> Option<Instant> {
        self.wait.filter(|w| !w.is_zero()).map(|w| crate::lease::add_saturating(start, w))
    }
}

impl LockBuilder<One> {
    fn request(&self) -> Result<AcquireRequest> {
        let key = self.client.key(&self.target.name)?;
        self.check_policy()?;
        let backend = self.client.backend.name();
        self.client.caps.validate_mode(backend, self.target.mode)?;
        self.client.caps.validate_ttl(backend, self.ttl)?;
        if self.waits() {
            // Only a wait can wait for itself; one attempt just finds the lock held.
            self.client.held.check(key.full(), self.target.mode)?;
        }
        let (ttl, mode, metadata) = (self.ttl, self.target.mode, self.metadata()?);
        Ok(AcquireRequest { key, ttl, owner: OwnerToken::random(), mode, metadata })
    }

    fn guard(&self, lease: Lease) -> Guard {
        let mode = lease.mode();
        let guard = Guard::new(
            self.client.backend.clone(),
            lease,
            self.policy,
            self.client.batcher(),
            Instant::now(),
        );
        let entry = self.client.held.enter(guard.key(), mode, guard.probe());
        guard.with_held([entry])
    }

    /// Takes the lock, waiting up to the configured wait.
    ///
    /// # Behavior
    /// Input is validated before anything is sent. With a wait, returns as soon as the lock can
    /// be had (promise 5). Cancel safe: dropping the future leaves nothing behind beyond the TTL.
    ///
    /// # Errors
    /// [`Error::InvalidKey`], [`Error::InvalidTtl`]; [`Error::WaitTimedOut`] when the lock stayed
    /// held (at once without a wait); backend errors.
    pub async fn acquire(self) -> Result<Guard> {
        let req = self.request()?;
        let backend = self.client.backend.name();
        let start = Instant::now();
        let span = tracing::info_span!(
            "distlock.acquire",
            backend,
            key = %req.key,
            mode = ?req.mode,
            wait_ms = self.wait.map(|w| w.as_millis().min(u128::from(u64::MAX)) as u64),
            outcome = tracing::field::Empty,
            fencing_token = tracing::field::Empty,
        );
        let attempt = async {
            match self.deadline(start) {
                Some(deadline) => self.client.backend.acquire(&req, deadline).await,
                None => match self.client.backend.try_acquire(&req).await {
                    Ok(Attempt::Acquired(lease)) => Ok(lease),
                    Ok(Attempt::Held { .. }) => {
                        Err(Error::WaitTimedOut { key: req.key.full().to_owned(), waited: Duration::ZERO })
                    }
                    Err(e) => Err(e),
                },
            }
        };
        let res = attempt.instrument(span.clone()).await;
        let elapsed = start.elapsed();
        span.record("outcome", observe::acquire_outcome(&res));
        if let Ok(lease) = &res {
            span.record("fencing_token", lease.fencing_token().get());
        }
        observe::acquire(backend, observe::acquire_outcome(&res), elapsed);
        match res {
            Ok(lease) => {
                tracing::debug!(backend, key = %req.key, fence = %lease.fencing_token(), ?elapsed, "lock acquired");
                Ok(self.guard(lease))
            }
            Err(e) => {
                tracing::debug!(backend, key = %req.key, error = %e, "acquire did not succeed");
                Err(e)
            }
        }
    }

    /// One attempt, no waiting: `Ok(None)` when someone else holds the lock.
    ///
    /// # Errors
    /// [`Error::InvalidKey`], [`Error::InvalidTtl`]; backend errors.
    pub async fn try_acquire(self) -> Result<Option<Guard>> {
        match self.wait(Duration::ZERO).acquire().await {
            Ok(g) => Ok(Some(g)),
            Err(Error::WaitTimedOut { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the lock, runs `work` with a copy of the lease while it is held, then releases.
    ///
    /// # Behavior
    /// If the lock is lost before `work` finishes, `work` is dropped and [`Error::Lost`] is
    /// returned. The lock is released afterwards either way. Combine with
    /// [`auto_renew`](Self::auto_renew) for work longer than the TTL.
    ///
    /// ```
    /// # async fn demo(locks: lock_core::LockClient) -> lock_core::Result<()> {
    /// let rows = locks
    ///     .lock("reports/daily")
    ///     .auto_renew()
    ///     .run(|lease| async move {
    ///         // write with lease.fencing_token() so a stale holder is rejected
    ///         lease.fencing_token().get()
    ///     })
    ///     .await?;
    /// # let _ = rows; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Those of [`acquire`](Self::acquire), and [`Error::Lost`].
    pub async fn run<F, Fut>(self, work: F) -> Result<Fut::Output>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future,
    {
        let guard = self.acquire().await?;
        let lease = guard.lease();
        guard.run(work(lease)).await
    }
}
