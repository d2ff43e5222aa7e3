//! Locks on several names at once, taken all-or-nothing.
//!
//! A [`MultiLockBuilder`] (from [`LockClient::lock_all`](crate::LockClient::lock_all)) takes every
//! name in a canonical order (sorted by full key), so two multi-locks over overlapping names never
//! deadlock; where the backend claims [`Capabilities::atomic_multi_key`](crate::Capabilities),
//! a first attempt takes them all in one atomic request. The [`MultiGuard`] holds one grant per
//! name: it renews them together, is lost when any of them is lost, and releases them all.
//! Nothing is left behind on failure or cancellation: grants already taken are released (in the
//! background if the future is dropped).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::backend::LockBackend;
use crate::cancel::UndoOnDrop;
use crate::capabilities::Capabilities;
use crate::client::{LockBuilder, Many};
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::key::{KeyError, LockKey};
use crate::lease::{FencingToken, Lease, OwnerToken};
use crate::mode::Mode;
use crate::observe;
use crate::outcome::{AcquireRequest, Attempt, ExtendOutcome, LockInfo, ReleaseOutcome};

/// Describes a lock on several names before it is taken; see the [module docs](self).
pub type MultiLockBuilder = LockBuilder<Many>;

/// What a multi-key acquire hands you: one guard over every name's grant.
///
/// # Behavior
/// - Renewal ([`auto_renew`](LockBuilder::auto_renew)) extends every grant; the guard is lost as
///   soon as any grant is (renewal finds it gone, or its session ends).
/// - [`fencing_tokens`](Self::fencing_tokens) gives each name's token: pass the right one with
///   each write to each protected resource. [`Guard::fencing_token`] (through `Deref`) is the
///   highest of them.
/// - Release, drop and [`run`](Self::run) act on every grant.
#[derive(Debug)]
#[must_use = "dropping a guard releases the locks"]
pub struct MultiGuard {
    guard: Guard,
    tokens: Vec<(String, FencingToken)>,
    /// Each name as it was given, with its full key.
    names: Vec<(String, String)>,
}

impl MultiGuard {
    /// Every name's full key and fencing token, in canonical (sorted) order.
    pub fn fencing_tokens(&self) -> &[(String, FencingToken)] {
        &self.tokens
    }

    /// The fencing token of one name: its full key, or the name as it was given to
    /// [`lock_all`](crate::LockClient::lock_all) (under the client's namespace).
    pub fn fencing_token_of(&self, key: &str) -> Option<FencingToken> {
        let full = match self.tokens.iter().find(|(k, _)| k == key) {
            Some((_, t)) => return Some(*t),
            None => self.names.iter().find(|(name, _)| name == key).map(|(_, full)| full.as_str())?,
        };
        self.tokens.iter().find(|(k, _)| k == full).map(|(_, t)| *t)
    }

    /// Releases every grant; `Released` only if each one was still held.
    ///
    /// # Errors
    /// The first backend error; the other grants are still released (the failed one expires
    /// after its TTL).
    pub async fn release(self) -> Result<ReleaseOutcome> {
        self.guard.release().await
    }

    /// Runs `work` while every lock is held, then releases them; `Error::Lost` (and `work`
    /// dropped) as soon as any is lost.
    ///
    /// # Errors
    /// As [`Guard::run`].
    pub async fn run<F: std::future::Future>(self, work: F) -> Result<F::Output> {
        self.guard.run(work).await
    }

    /// The guard over the combined grant.
    pub fn into_guard(self) -> Guard {
        self.guard
    }
}

impl std::ops::Deref for MultiGuard {
    type Target = Guard;

    fn deref(&self) -> &Guard {
        &self.guard
    }
}

impl LockBuilder<Many> {
    fn requests(&self) -> Result<Vec<AcquireRequest>> {
        if self.target.names.is_empty() {
            return Err(KeyError::NoKeys.into());
        }
        self.check_policy()?;
        let backend = self.client.backend().name();
        self.client.capabilities().validate_ttl(backend, self.ttl)?;
        let mut keys =
            self.target.names.iter().map(|n| self.client.key(n)).collect::<Result<Vec<LockKey>>>()?;
        keys.sort();
        if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Err(KeyError::Duplicate(w[0].full().to_owned()).into());
        }
        if self.waits() {
            for k in &keys {
                self.client.held.check(k.full(), Mode::Exclusive)?;
            }
        }
        // One owner token and one metadata for all the grants: they are one holder's.
        let owner = OwnerToken::random();
        let metadata = self.metadata()?;
        Ok(keys
            .into_iter()
            .map(|key| AcquireRequest {
                key,
                ttl: self.ttl,
                owner,
                mode: Mode::Exclusive,
                metadata: metadata.clone(),
            })
            .collect())
    }

    /// Takes every lock, waiting up to the configured wait; all or nothing.
    ///
    /// # Behavior
    /// Input is validated before anything is sent (at least one name, no name twice). Names are
    /// taken in canonical order; a name that stays held past the deadline releases the ones
    /// taken before, all at once (the error comes one release's time after the deadline, not
    /// one per name). A name taken early whose grant expired while a later one was waited for
    /// (nothing renews them before the guard exists) is not handed out: everything is given
    /// back and taken again while the wait lasts; so is everything when a later name is not had
    /// before the first name's hold cap ([`max_hold`](LockBuilder::max_hold), counted from the
    /// first grant) comes. Where the backend takes every name in one
    /// atomic request, that try comes first, and when it ends past the deadline (refused, or
    /// with a retryable error such as a request timeout) its answer is the result: no name is
    /// then asked for one at a time. Cancel safe: dropping the future releases
    /// what was taken, in the background, even midway through giving it back.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] (including [`KeyError::NoKeys`] and [`KeyError::Duplicate`]),
    /// [`Error::InvalidTtl`]; [`Error::WaitTimedOut`] when a name stayed held; backend errors.
    pub async fn acquire(self) -> Result<MultiGuard> {
        let reqs = self.requests()?;
        let backend = self.client.backend().clone();
        let start = Instant::now();
        // The hold cap binds the wait for later names: the first is held meanwhile (a cap
        // comes with renewal: `requests` refused one without).
        let cap = self.policy.max_hold;
        let res = take_all(&backend, self.client.capabilities(), &reqs, self.deadline(start), cap).await;
        observe::acquire(backend.name(), observe::acquire_outcome(&res), start.elapsed());
        let (leases, granted_at) = res?;
        let tokens: Vec<(String, FencingToken)> =
            leases.iter().map(|l| (l.key().full().to_owned(), l.fencing_token())).collect();
        let lease = combine(&reqs, leases);
        let multi: Arc<dyn LockBackend> = Arc::new(MultiBackend { inner: backend });
        let guard = Guard::new(multi, lease, self.policy, None, granted_at);
        let held: Vec<_> =
            tokens.iter().map(|(k, _)| self.client.held.enter(k, Mode::Exclusive, guard.probe())).collect();
        let names = self
            .target
            .names
            .iter()
            .filter_map(|n| self.client.key(n).ok().map(|k| (n.clone(), k.full().to_owned())))
            .collect();
        Ok(MultiGuard { guard: guard.with_held(held), tokens, names })
    }

    /// One attempt, no waiting: `Ok(None)` when any name is held (nothing is left taken).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), but a held name is `Ok(None)`.
    pub async fn try_acquire(self) -> Result<Option<MultiGuard>> {
        match self.wait(Duration::ZERO).acquire().await {
            Ok(g) => Ok(Some(g)),
            Err(Error::WaitTimedOut { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Takes every lock of `reqs` (canonical order): one atomic try where the backend offers it,
/// then one name at a time, releasing what was taken if one cannot be had. Returns the grants
/// and when the first of them was granted (the hold cap counts from it: the first name is held
/// while the later ones are waited for). With a hold cap `cap`, a round whose later names are
/// not all had before the cap of its first comes gives everything back and starts again (it
/// would hand out a guard already past its cap).
async fn take_all(
    backend: &Arc<dyn LockBackend>,
    caps: &Capabilities,
    reqs: &[AcquireRequest],
    deadline: Option<Instant>,
    cap: Option<Duration>,
) -> Result<(Vec<Lease>, Instant)> {
    let start = Instant::now();
    let held = || Error::WaitTimedOut { key: reqs[0].key.full().to_owned(), waited: start.elapsed() };
    if caps.atomic_multi_key {
        match backend.try_acquire_all(reqs).await {
            Ok(Some(leases)) => return Ok((leases, Instant::now())),
            // Without a wait, or with its deadline passed during the try: no name-by-name round
            // after it (each would add a request).
            Ok(None) if deadline.is_none_or(|d| Instant::now() >= d) => return Err(held()),
            Ok(None) => {}
            // A retryable error with time left to wait: go on one name at a time, as a
            // single name's wait would retry. Past the deadline, the error is the answer: a
            // round after it would add one attempt per name, each up to a request timeout
            // against a server that stopped answering.
            Err(e) if e.is_retryable() && deadline.is_some_and(|d| Instant::now() < d) => {}
            Err(e) => return Err(e),
        }
    }
    // Released in the background if this future is dropped before it returns.
    let taken: Arc<Mutex<Vec<Lease>>> = Arc::default();
    let undo = UndoOnDrop::new(release_all(backend.clone(), taken.clone()));
    let mut first = !caps.atomic_multi_key;
    loop {
        // Each round after the first request under a new owner token: a copy of an earlier
        // round's request (or of its undo, or of the atomic try), delayed in the network and
        // carried out late, must not grant or release by the token of this round's grants.
        let round: Vec<AcquireRequest>;
        let reqs = if std::mem::take(&mut first) {
            reqs
        } else {
            let owner = OwnerToken::random();
            round = reqs.iter().map(|r| AcquireRequest { owner, ..r.clone() }).collect();
            &round[..]
        };
        match take_in_turn(backend, reqs, deadline, cap, &taken, &held).await {
            Ok(Some(first_at)) if locked(&taken).iter().all(|l| l.valid_until() > Instant::now()) => {
                undo.disarm();
                return Ok((std::mem::take(&mut *locked(&taken)), first_at));
            }
            // A name taken early expired while a later one was waited for (someone else may
            // hold it now), or its hold cap came first: give everything back and start again,
            // while the wait lasts.
            Ok(_) => {
                release_all(backend.clone(), taken.clone()).await;
                if deadline.is_none_or(|d| Instant::now() >= d) {
                    undo.disarm();
                    return Err(held());
                }
            }
            Err(e) => {
                release_all(backend.clone(), taken.clone()).await;
                undo.disarm();
                return Err(match e {
                    Error::WaitTimedOut { key, .. } => Error::WaitTimedOut { key, waited: start.elapsed() },
                    other => other,
                });
            }
        }
    }
}

/// One pass over `reqs` in order, each grant pushed onto `taken`; the first failure ends it.
/// Returns when the first name was granted, or `None` when the hold cap `cap` of the first
/// came before the later names were all had.
async fn take_in_turn(
    backend: &Arc<dyn LockBackend>,
    reqs: &[AcquireRequest],
    deadline: Option<Instant>,
    cap: Option<Duration>,
    taken: &Mutex<Vec<Lease>>,
    held: &impl Fn() -> Error,
) -> Result<Option<Instant>> {
    let mut first_at = None;
    for req in reqs {
        // Waited for until the deadline, or until the first name's cap if that comes sooner.
        let capped = first_at.zip(cap).and_then(|(f, c): (Instant, Duration)| f.checked_add(c));
        let got = match deadline {
            Some(d) => match capped.filter(|c| *c < d) {
                // Ended by the cap (timed out, or the last retryable error of the wait):
                // the round starts again.
                Some(c) => match backend.acquire(req, c).await {
                    Err(Error::WaitTimedOut { .. }) => return Ok(None),
                    Err(e) if e.is_retryable() && Instant::now() >= c => return Ok(None),
                    got => got,
                },
                None => backend.acquire(req, d).await,
            },
            None => match backend.try_acquire(req).await {
                Ok(Attempt::Acquired(l)) => Ok(l),
                Ok(Attempt::Held { .. }) => Err(held()),
                Err(e) => Err(e),
            },
        };
        locked(taken).push(got?);
        first_at.get_or_insert_with(Instant::now);
    }
    let first_at = first_at.unwrap_or_else(Instant::now);
    Ok(match cap.and_then(|c| first_at.checked_add(c)) {
        Some(end) if end <= Instant::now() => None,
        _ => Some(first_at),
    })
}

fn locked(v: &Mutex<Vec<Lease>>) -> std::sync::MutexGuard<'_, Vec<Lease>> {
    v.lock().unwrap_or_else(|p| p.into_inner())
}

/// Releases the grants in `taken` all at once (one release's time, however many), leaving it
/// empty. Each grant leaves `taken` only once its release is done: dropped midway, what is left
/// (the grants in flight included) is still there for the undo that releases it in the
/// background.
async fn release_all(backend: Arc<dyn LockBackend>, taken: Arc<Mutex<Vec<Lease>>>) {
    let leases = locked(&taken).clone();
    let releases = leases.into_iter().map(|l| {
        let (backend, taken) = (&backend, &taken);
        async move {
            if let Err(e) = backend.release(&l).await {
                tracing::warn!(backend = backend.name(), key = %l.key(), error = %e, "release of a multi-key part failed; it expires after its TTL");
            }
            locked(taken).retain(|t| !(t.key() == l.key() && t.owner() == l.owner()));
        }
    });
    futures::future::join_all(releases).await;
}

/// The parts of a multi-key lease.
#[derive(Debug)]
struct Parts {
    leases: Mutex<Vec<Lease>>,
    /// The combined loss signal of the parts' sessions, fired on release so its watcher ends.
    session: Option<crate::signal::LossSignal>,
}

/// One lease standing for every part: the first key, the highest token, the earliest validity.
fn combine(reqs: &[AcquireRequest], leases: Vec<Lease>) -> Lease {
    let fence = leases.iter().map(Lease::fencing_token).max().unwrap_or(FencingToken::new(0));
    let sent = leases.iter().map(Lease::acquired_at).min().unwrap_or_else(Instant::now);
    let valid_until = leases.iter().map(Lease::valid_until).min().unwrap_or(sent);
    let session = crate::signal::any_of(leases.iter().filter_map(|l| l.session().cloned()).collect());
    // The grants' owner token (a new one if the atomic try failed and the names were taken
    // one at a time).
    let owner = leases.first().map_or(reqs[0].owner, Lease::owner);
    let mut lease =
        Lease::new(reqs[0].key.clone(), owner, fence, reqs[0].ttl, sent).with_valid_until(valid_until);
    if let Some(s) = &session {
        lease = lease.with_session(s.clone());
    }
    lease.with_backend_data(Arc::new(Parts { leases: Mutex::new(leases), session }))
}

/// The names (full keys) and modes a lease holds: each part's of a multi-key lease, else its
/// own.
pub(crate) fn held_names(lease: &Lease) -> Vec<(String, Mode)> {
    match lease.backend_data::<Parts>() {
        Some(p) => {
            let parts = p.leases.lock().unwrap_or_else(|e| e.into_inner());
            parts.iter().map(|l| (l.key().full().to_owned(), l.mode())).collect()
        }
        None => vec![(lease.key().full().to_owned(), lease.mode())],
    }
}

/// The backend that serves `lease`: `backend` itself, or, for a multi-key lease (detached
/// from a [`MultiGuard`]'s guard), every part through it.
pub(crate) fn serving(backend: &Arc<dyn LockBackend>, lease: &Lease) -> Arc<dyn LockBackend> {
    if lease.backend_data::<Parts>().is_some() {
        Arc::new(MultiBackend { inner: backend.clone() })
    } else {
        backend.clone()
    }
}

/// The backend a [`MultiGuard`]'s guard talks to: every extend and release goes to each part.
#[derive(Debug)]
struct MultiBackend {
    inner: Arc<dyn LockBackend>,
}

impl MultiBackend {
    fn parts(lease: &Lease) -> Result<&Parts> {
        lease.backend_data::<Parts>().ok_or_else(|| Error::InvalidConfig("not a multi-key lease".into()))
    }
}

#[async_trait]
impl LockBackend for MultiBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn try_acquire(&self, _: &AcquireRequest) -> Result<Attempt> {
        Err(Error::Unsupported {
            backend: self.name(),
            capability: "acquiring through a multi-key guard".into(),
        })
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let parts = Self::parts(lease)?;
        let current = locked(&parts.leases).clone();
        let results = futures::future::join_all(current.iter().map(|l| self.inner.extend(l, ttl))).await;
        let mut until: Option<Instant> = None;
        let (mut not_held, mut error) = (false, None);
        {
            let mut leases = locked(&parts.leases);
            for (l, r) in leases.iter_mut().zip(results) {
                match r {
                    Ok(ExtendOutcome::Extended { valid_until }) => {
                        l.set_extended(ttl, valid_until);
                        until = Some(until.map_or(valid_until, |u| u.min(valid_until)));
                    }
                    Ok(ExtendOutcome::NotHeld) => not_held = true,
                    Err(e) => error = error.or(Some(e)),
                }
            }
        }
        match (not_held, error, until) {
            (true, _, _) => Ok(ExtendOutcome::NotHeld),
            (false, Some(e), _) => Err(e),
            (false, None, Some(valid_until)) => Ok(ExtendOutcome::Extended { valid_until }),
            (false, None, None) => Ok(ExtendOutcome::NotHeld),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let parts = Self::parts(lease)?;
        let leases = locked(&parts.leases).clone();
        let results = futures::future::join_all(leases.iter().map(|l| self.inner.release(l))).await;
        let mut outcome = Ok(ReleaseOutcome::Released);
        for r in results {
            match r {
                Ok(ReleaseOutcome::Released) => {}
                Ok(ReleaseOutcome::NotHeld) => {
                    if outcome.is_ok() {
                        outcome = Ok(ReleaseOutcome::NotHeld);
                    }
                }
                Err(e) => {
                    if outcome.is_ok() {
                        outcome = Err(e);
                    }
                }
            }
        }
        if let Some(s) = &parts.session {
            s.fire(crate::LossReason::NotHeld);
        }
        outcome
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.inner.inspect(key).await
    }
}
