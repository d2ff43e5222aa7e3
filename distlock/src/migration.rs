//! Moving a fleet from one backend to another: a lock held on two backends at once
//! ([`MigrationBackend`]), and fencing counters carried over so that tokens never go down at
//! the cut-over ([`migrate_tokens`]).

use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, Error, ExtendOutcome, Instant, Lease, LockBackend,
    LockInfo, LockKey, LossSignal, OwnerToken, ReleaseOutcome, Result, UndoOnDrop, WakeMode,
};

/// Which backend's fencing tokens a [`MigrationBackend`] hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Primary {
    /// The backend being left.
    Old,
    /// The backend being moved to.
    New,
}

/// Holds every lock on two backends: first on the old, then on the new, always in that order.
///
/// # Behavior
/// - **Acquire** takes the old backend's lock, then the new one's with the same owner token; if
///   the new one cannot be had, the old one is released before the attempt reports. Since
///   every migrating process takes them in the same order, two of them never deadlock, and a
///   process still on the old backend alone, or already on the new one alone, is excluded.
/// - While a waiting acquire waits for the new backend, it keeps the old grant alive
///   (extending it about every third of its validity left), so the lease it returns is fresh;
///   if the old grant is lost meanwhile, the attempt starts again. Every attempt has a new
///   owner token, so a backend's cleanup of an earlier attempt never touches a later one.
/// - **Cancel safe at every await**: from the moment the old grant is had until it is combined
///   or released, dropping the future releases it in the background.
/// - **Fencing tokens** are the primary backend's. Tokens of two backends are unrelated: when
///   the primary changes, the protected resource must accept the new backend's sequence (see
///   the migration playbook in the README).
/// - **Extend** extends both and reports `NotHeld` if either grant is gone (even when the
///   other backend failed); **release** releases both (both are attempted even if one fails)
///   and reports `NotHeld` if either grant was found gone, else the primary's outcome (an
///   error of the secondary's release is logged; that grant expires with its TTL).
/// - `valid_until` is the earlier of the two grants'; capabilities are what both can do.
/// - **Owner token**: the new grant is asked for under the token the old one was granted
///   with, and the lease carries it, so a lease rebuilt elsewhere from key and owner releases
///   both. A new backend that switched tokens during its own wait (after a lost reply) grants
///   under another: the lease then carries the primary's, and such a rebuilt lease releases
///   that grant only (the other expires with its TTL); the guard itself releases both.
#[derive(Debug, Clone)]
pub struct MigrationBackend {
    old: Arc<dyn LockBackend>,
    new: Arc<dyn LockBackend>,
    primary: Primary,
    carry_tokens: bool,
}

/// Arms the release of the old backend's grant, for when the future taking the new one is
/// dropped: the old grant is then released in the background instead of lasting its TTL.
fn release_on_drop(backend: &Arc<dyn LockBackend>, lease: &Lease) -> UndoOnDrop {
    let (backend, lease) = (backend.clone(), lease.clone());
    UndoOnDrop::new(async move {
        let _ = backend.release(&lease).await;
    })
}

/// Keeps `lease` alive on `backend` (extending it about every third of its validity left, and
/// retrying failures until `valid_until`); returns once it is lost.
async fn keep_alive(backend: &dyn LockBackend, lease: &mut Lease) {
    loop {
        let now = Instant::now();
        let left = lease.valid_until().saturating_duration_since(now);
        tokio::time::sleep(left / 3).await;
        match backend.extend(lease, lease.ttl()).await {
            Ok(ExtendOutcome::Extended { valid_until }) => lease.set_extended(lease.ttl(), valid_until),
            Ok(ExtendOutcome::NotHeld) => return,
            Err(e) if e.is_retryable() && Instant::now() < lease.valid_until() => {
                tracing::debug!(key = %lease.key(), error = %e, "migration lock: renewing the old grant failed; retrying");
            }
            Err(_) => return,
        }
        if Instant::now() >= lease.valid_until() {
            return;
        }
    }
}

/// The two grants behind a migration lease. Each moves forward on every extend, since a
/// backend may check a grant's own `valid_until` (DynamoDB refuses to extend a grant its
/// holder must already consider expired).
#[derive(Debug)]
struct Parts {
    grants: std::sync::Mutex<(Lease, Lease)>,
    /// The combined session signal, when both grants have one: fired on release, so the task
    /// that watches the two ends with the lock.
    both: Option<LossSignal>,
}

impl Parts {
    fn grants(&self) -> std::sync::MutexGuard<'_, (Lease, Lease)> {
        self.grants.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MigrationBackend {
    /// The client of phase 1 over two configured clients (as [`connect`](crate::connect)
    /// returns them): it takes every lock on both backends, under their namespace, with
    /// `old`'s default TTL, tokens from `primary`, and with `carry_tokens` as
    /// [`carry_tokens`](Self::carry_tokens) says. Prefer it to [`new`](Self::new) over the
    /// clients' backends, which would drop the namespace.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the two clients' namespaces differ: a name would then be
    /// two different locks on the two backends, and a process still on one backend alone
    /// would not exclude a migrating one.
    pub fn client(
        old: &lock_core::LockClient,
        new: &lock_core::LockClient,
        primary: Primary,
        carry_tokens: bool,
    ) -> Result<lock_core::LockClient> {
        same_namespace(old, new)?;
        let both =
            Self::new(old.backend().clone(), new.backend().clone(), primary).carry_tokens(carry_tokens);
        let client = lock_core::LockClient::new(both).with_default_ttl(old.default_ttl())?;
        match old.namespace() {
            "" => Ok(client),
            ns => client.with_namespace(ns),
        }
    }

    /// A migration lock from `old` to `new`, with tokens from `primary`.
    pub fn new(old: Arc<dyn LockBackend>, new: Arc<dyn LockBackend>, primary: Primary) -> Self {
        Self { old, new, primary, carry_tokens: false }
    }

    /// With `Primary::Old`, after every grant also raise the new backend's fencing counter of
    /// the key above the old grant's token (one more request per acquire), so that by the
    /// cut-over every key in use has been carried over, as [`migrate_tokens`] does for all.
    /// Where the new backend cannot raise its counters, the acquire is not failed: a warning is
    /// logged.
    pub fn carry_tokens(mut self, on: bool) -> Self {
        self.carry_tokens = on;
        self
    }

    /// Arms the release of both grants, for a future dropped between taking them and handing
    /// out the combined lease.
    fn release_both_on_drop(&self, a: &Lease, b: &Lease) -> UndoOnDrop {
        let (old, new, a, b) = (self.old.clone(), self.new.clone(), a.clone(), b.clone());
        UndoOnDrop::new(async move {
            let _ = new.release(&b).await;
            let _ = old.release(&a).await;
        })
    }

    /// Carries the old grant's token over to the new backend (see [`carry_tokens`](Self::carry_tokens)).
    async fn carry(&self, req: &AcquireRequest, old_grant: &Lease) {
        if !self.carry_tokens || self.primary != Primary::Old {
            return;
        }
        if let Err(e) = self.new.raise_fencing_counter(&req.key, req.mode, old_grant.fencing_token()).await {
            tracing::warn!(key = %req.key, error = %e, "migration lock: cannot carry the fencing token over to the new backend");
        }
    }

    fn combine(&self, req: &AcquireRequest, a: Lease, b: Lease) -> Lease {
        // Both grants' owner token as a rule (the new one is asked for under the old one's);
        // the primary's if a backend granted under another.
        let (fence, owner) = match self.primary {
            Primary::Old => (a.fencing_token(), a.owner()),
            Primary::New => (b.fencing_token(), b.owner()),
        };
        let valid_until = a.valid_until().min(b.valid_until());
        let sent = a.acquired_at().min(b.acquired_at());
        // Either backend's session ending loses the lock: watch both, until the release.
        let mut both = None;
        let session = match (a.session().cloned(), b.session().cloned()) {
            (Some(x), Some(y)) => {
                let signal = LossSignal::new();
                let fire = signal.clone();
                tokio::spawn(async move {
                    let reason = tokio::select! {
                        r = x.fired() => r,
                        r = y.fired() => r,
                        _ = fire.fired() => return,
                    };
                    fire.fire(reason);
                });
                both = Some(signal.clone());
                Some(signal)
            }
            (x, y) => x.or(y),
        };
        let mut lease =
            Lease::new(req.key.clone(), owner, fence, req.ttl, sent).with_valid_until(valid_until);
        if let Some(s) = session {
            lease = lease.with_session(s);
        }
        lease.with_backend_data(Arc::new(Parts { grants: std::sync::Mutex::new((a, b)), both }))
    }

    /// The two sub-leases of `lease` (rebuilt from key and owner for a lease made elsewhere).
    fn parts(&self, lease: &Lease) -> (Lease, Lease) {
        match lease.backend_data::<Parts>() {
            Some(p) => p.grants().clone(),
            None => (lease.clone(), lease.clone()),
        }
    }
}

#[async_trait]
impl LockBackend for MigrationBackend {
    fn name(&self) -> &'static str {
        "migration"
    }

    fn capabilities(&self) -> Capabilities {
        let (a, b) = (self.old.capabilities(), self.new.capabilities());
        let wake = match (a.wake, b.wake) {
            (WakeMode::Notify, WakeMode::Notify) => WakeMode::Notify,
            (WakeMode::Poll { max_interval }, WakeMode::Notify)
            | (WakeMode::Notify, WakeMode::Poll { max_interval }) => WakeMode::Poll { max_interval },
            (WakeMode::Poll { max_interval: x }, WakeMode::Poll { max_interval: y }) => {
                WakeMode::Poll { max_interval: x.max(y) }
            }
            _ => WakeMode::Poll { max_interval: Duration::from_millis(250) },
        };
        let c = Capabilities::new()
            .with_fair_queueing(a.fair_queueing && b.fair_queueing)
            .with_wake(wake)
            .with_ttl_granularity(a.ttl_granularity.max(b.ttl_granularity))
            .with_min_ttl(a.min_ttl.max(b.min_ttl))
            .with_max_ttl(a.max_ttl.min(b.max_ttl))
            .with_max_key_len(a.max_key_len.min(b.max_key_len))
            // A crashed holder blocks others until both stores let go: the longer of the two.
            .with_expiry_ttls(a.expiry_ttls.max(b.expiry_ttls))
            .with_expiry_margin(a.expiry_margin.max(b.expiry_margin));
        let session = |c: &Capabilities| c.session_timeout.filter(|_| c.session_leases);
        match (session(&a), session(&b)) {
            (Some(x), Some(y)) => c.with_session_timeout(x.max(y)),
            (Some(t), None) | (None, Some(t)) => c.with_session_timeout(t),
            (None, None) if a.session_leases || b.session_leases => c.with_session_leases(),
            (None, None) => c,
        }
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let a = match self.old.try_acquire(req).await? {
            Attempt::Acquired(l) => l,
            held => return Ok(held),
        };
        // Armed until the old grant is combined or released: dropped at any await from here
        // on, the old grant is released in the background.
        let undo = release_on_drop(&self.old, &a);
        // The new grant under the old one's owner token (a backend may have asked with another).
        let req = &AcquireRequest { owner: a.owner(), ..req.clone() };
        let res = self.new.try_acquire(req).await;
        if let Ok(Attempt::Acquired(b)) = res {
            let both = self.release_both_on_drop(&a, &b);
            undo.disarm();
            self.carry(req, &a).await;
            both.disarm();
            return Ok(Attempt::Acquired(self.combine(req, a, b)));
        }
        let _ = self.old.release(&a).await;
        undo.disarm();
        res
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let start = Instant::now();
        let mut attempt = req.clone();
        loop {
            let mut a = self.old.acquire(&attempt, deadline).await?;
            // Armed until the old grant is combined or released (see try_acquire).
            let undo = release_on_drop(&self.old, &a);
            // A waiting acquire may have been granted under a fresh owner token (lock-core's
            // polling asks with one after its first attempt): the new grant is asked for under
            // the same one, so that the lease's owner is both grants' (a lease rebuilt from key
            // and owner then releases both).
            attempt.owner = a.owner();
            // Wait for the new backend while keeping the old grant alive; if the old grant is
            // lost meanwhile, this attempt ends and the next one starts afresh.
            let res = tokio::select! {
                r = self.new.acquire(&attempt, deadline) => Some(r),
                () = keep_alive(self.old.as_ref(), &mut a) => None,
            };
            match res {
                Some(Ok(b)) => {
                    let both = self.release_both_on_drop(&a, &b);
                    undo.disarm();
                    self.carry(&attempt, &a).await;
                    both.disarm();
                    return Ok(self.combine(&attempt, a, b));
                }
                Some(Err(e)) if !matches!(e, Error::WaitTimedOut { .. }) => {
                    let _ = self.old.release(&a).await;
                    undo.disarm();
                    return Err(e);
                }
                _ => {
                    let _ = self.old.release(&a).await;
                    undo.disarm();
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::WaitTimedOut { key: req.key.full().to_owned(), waited: start.elapsed() });
            }
            // A new owner token for every attempt: a backend's background cleanup of the last
            // one (ZooKeeper deletes a timed-out child by its owner's uuid) never touches it.
            attempt.owner = OwnerToken::random();
        }
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let (a, b) = self.parts(lease);
        let (ra, rb) = tokio::join!(self.old.extend(&a, ttl), self.new.extend(&b, ttl));
        match (ra, rb) {
            (
                Ok(ExtendOutcome::Extended { valid_until: x }),
                Ok(ExtendOutcome::Extended { valid_until: y }),
            ) => {
                if let Some(p) = lease.backend_data::<Parts>() {
                    let mut g = p.grants();
                    g.0.set_extended(ttl, x);
                    g.1.set_extended(ttl, y);
                }
                Ok(ExtendOutcome::Extended { valid_until: x.min(y) })
            }
            // A grant found gone is the answer, whatever the other backend said: an error
            // there (retried by the renewal until `valid_until`) must not hide the loss.
            (Ok(ExtendOutcome::NotHeld), _) | (_, Ok(ExtendOutcome::NotHeld)) => Ok(ExtendOutcome::NotHeld),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let (a, b) = self.parts(lease);
        // New first (reverse order of acquisition), then old; both are always attempted.
        let rb = self.new.release(&b).await;
        let ra = self.old.release(&a).await;
        if let Some(both) = lease.backend_data::<Parts>().and_then(|p| p.both.as_ref()) {
            both.fire(lock_core::LossReason::NotHeld);
        }
        let (primary, other) = match self.primary {
            Primary::Old => (ra, rb),
            Primary::New => (rb, ra),
        };
        match (primary, other) {
            (Err(e), _) => Err(e),
            (Ok(p), Err(e)) => {
                tracing::warn!(key = %lease.key(), error = %e, "migration lock: release on the secondary backend failed; it expires with its TTL");
                Ok(p)
            }
            // Either grant found gone (expired, or taken) means the lock was not held
            // throughout: the secondary's grant is what kept the other side's processes out.
            (Ok(ReleaseOutcome::Released), Ok(ReleaseOutcome::Released)) => Ok(ReleaseOutcome::Released),
            (Ok(_), Ok(_)) => Ok(ReleaseOutcome::NotHeld),
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        match self.primary {
            Primary::Old => self.old.inspect(key).await,
            Primary::New => self.new.inspect(key).await,
        }
    }
}

/// What [`migrate_tokens`] did (or, in a dry run, would do) for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenMove {
    /// The key's full name.
    pub key: String,
    /// The primitive whose counter it is.
    pub mode: lock_core::Mode,
    /// The last token the old backend issued for it.
    pub old: lock_core::FencingToken,
    /// The new backend's counter after raising it (`None` in a dry run).
    pub new: Option<lock_core::FencingToken>,
}

/// Refuses two clients of a migration whose namespaces differ.
///
/// # Errors
/// [`Error::InvalidConfig`] naming both namespaces.
pub fn same_namespace(old: &lock_core::LockClient, new: &lock_core::LockClient) -> Result<()> {
    if old.namespace() == new.namespace() {
        return Ok(());
    }
    Err(Error::InvalidConfig(format!(
        "the old backend's namespace '{}' and the new one's '{}' differ: the same name would be two different locks",
        old.namespace(),
        new.namespace()
    )))
}

/// Raises, for every key under `prefix` that the old backend has issued tokens for, the new
/// backend's fencing counter above the old one's last token: the first grant on the new
/// backend is then fenced above every grant on the old one, and resources that check tokens
/// need no epoch bump at the cut-over.
///
/// # Behavior
/// Reads the old backend's counters page by page ([`LockBackend::fencing_counters`]) and raises
/// each on the new one ([`LockBackend::raise_fencing_counter`]), which never lowers a counter:
/// running it twice, or while the fleet still takes locks on both, is safe. Run it after every
/// process takes its locks on both backends (phase 1 of the playbook) and before any takes them
/// on the new one alone. With `dry_run`, reads only.
///
/// # Errors
/// [`Error::Unsupported`] where the old backend has no per-key counters (etcd, ZooKeeper: one
/// store-wide counter) or the new one cannot raise its counters; backend errors (a run that
/// failed half-way can simply be run again).
pub async fn migrate_tokens(
    old: &dyn LockBackend,
    new: &dyn LockBackend,
    prefix: &str,
    dry_run: bool,
) -> Result<Vec<TokenMove>> {
    let mut moves = Vec::new();
    let mut cursor = None;
    loop {
        let page = old.fencing_counters(prefix, cursor, 1000).await?;
        for (key, mode, token) in page.counters {
            let new_after = if dry_run {
                None
            } else {
                Some(new.raise_fencing_counter(&LockKey::from_full(&key)?, mode, token).await?)
            };
            moves.push(TokenMove { key, mode, old: token, new: new_after });
        }
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(moves),
        }
    }
}
