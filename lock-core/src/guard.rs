//! The guard: owns a lease, renews it if asked, signals loss, releases it.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::LockBackend;
use crate::error::{Error, Result};
use crate::lease::{FencingToken, Lease};
use crate::outcome::{ExtendOutcome, ReleaseOutcome};
use crate::signal::{LossReason, LossSignal};

mod renew;
mod state;

use renew::renew_loop;

/// How a guard renews its lease.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RenewPolicy {
    pub(crate) auto_renew: bool,
    pub(crate) max_hold: Option<Duration>,
}

/// Everything a guard and its renewal task share. A service may hold thousands of guards, so
/// this is one allocation with its signals inline, and the renewal task's idle state is small.
struct Shared {
    backend: Arc<dyn LockBackend>,
    /// The lease, whose `valid_until` moves on every extend.
    lease: Mutex<Lease>,
    /// Notified when `valid_until` moves, when the guard stops renewal, and when this guard's
    /// loss fires: the one thing an idle renewal task waits on, besides its timer.
    changed: Notify,
    fence: FencingToken,
    key: String,
    lost: LossSignal,
    /// Set when renewal stopped because of the hold cap; the expiry then reports it.
    capped: AtomicBool,
    /// The instant the hold cap releases the lock, once renewal has reached it: from then on
    /// the guard no longer claims the lock, and the cap's task releases it, then fires the loss.
    cap_at: OnceLock<Instant>,
    /// Set once a release reached the server (by the user, a drop, or the hold cap), so a
    /// second one sends nothing.
    released: AtomicBool,
    /// Set once renewal (and the watchdog) must stop; waiters wait on `changed`.
    stopped: AtomicBool,
    watchdog: OnceLock<()>,
    /// Serialises extends (user and renewal), so the server applies them in the order their
    /// results are recorded.
    extend_lock: tokio::sync::Mutex<()>,
    /// The guard's span (`distlock.guard`): renewal, extends, the release and the loss event
    /// are its children.
    span: tracing::Span,
    /// The client's renewal batcher, where the backend extends in batches.
    batcher: Option<crate::batch::Batcher>,
    /// When the lock was granted (for a queue, when the wait ended, not when the request
    /// that joined it was sent): the hold cap and the "held" metric count from it.
    granted_at: Instant,
}

impl crate::held::Alive for Shared {
    fn alive(&self) -> bool {
        self.check_now()
    }
}

/// What `acquire` hands you: the right to act under the lock while it lasts.
///
/// # Behavior
/// - [`is_held`](Guard::is_held) is true only while the lease is valid: before `valid_until`,
///   with no renewal failure and no session loss.
/// - [`lost`](Guard::lost) resolves as soon as the lock is lost: renewal found it taken or
///   expired, renewal kept failing until `valid_until`, the backend session ended, or
///   `valid_until` was reached without renewal. Loss is never silent.
/// - With auto-renewal the lease is extended about every TTL/3, retried with backoff on
///   transient errors, and stopped by the optional cap on total hold time.
/// - **Drop** stops renewal and releases the lock in the background on the current tokio
///   runtime, without blocking the thread. Outside a runtime (or if the runtime is shutting
///   down) nothing can be sent: the lock then expires after its TTL, which is always the
///   backstop. Call [`release`](Guard::release) to know the outcome, or
///   [`detach`](Guard::detach) to keep the lock past the guard.
#[must_use = "dropping a guard releases the lock"]
pub struct Guard {
    shared: Arc<Shared>,
    renewal: Option<JoinHandle<()>>,
    finished: bool,
    /// This task's entries in its client's registry of held grants, removed with the guard.
    held: Vec<crate::held::HeldEntry>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("backend", &self.shared.backend.name())
            .field("lease", &self.shared.lease())
            .field("held", &self.is_held())
            .field("auto_renew", &self.renewal.is_some())
            .finish()
    }
}

impl Guard {
    /// A guard on `lease`, granted at `granted_at` (the hold cap counts from it).
    pub(crate) fn new(
        backend: Arc<dyn LockBackend>,
        lease: Lease,
        policy: RenewPolicy,
        batcher: Option<crate::batch::Batcher>,
        granted_at: Instant,
    ) -> Self {
        let span = tracing::info_span!(
            "distlock.guard",
            backend = backend.name(),
            key = %lease.key(),
            mode = ?lease.mode(),
            fencing_token = lease.fencing_token().get(),
        );
        let shared = Arc::new(Shared {
            fence: lease.fencing_token(),
            key: lease.key().full().to_owned(),
            backend,
            lease: Mutex::new(lease),
            changed: Notify::new(),
            lost: LossSignal::new(),
            capped: AtomicBool::new(false),
            cap_at: OnceLock::new(),
            released: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            watchdog: OnceLock::new(),
            extend_lock: tokio::sync::Mutex::new(()),
            span,
            batcher,
            granted_at,
        });
        let renewal =
            policy.auto_renew.then(|| tokio::runtime::Handle::try_current().ok()).flatten().map(|rt| {
                let span = tracing::debug_span!(parent: &shared.span, "distlock.renewal");
                rt.spawn(renew_loop(shared.clone(), policy.max_hold).instrument(span))
            });
        if policy.auto_renew && renewal.is_none() {
            // Outside a tokio runtime (a lease resumed from synchronous code) nothing can renew:
            // the guard says so at once rather than panicking.
            tracing::warn!(parent: &shared.span, backend = shared.backend.name(), key = %shared.key, "auto-renewal needs a tokio runtime; none is running");
            shared.fire(LossReason::RenewalFailed);
        }
        if renewal.is_some() {
            let _ = shared.watchdog.set(());
        }
        Self { shared, renewal, finished: false, held: Vec::new() }
    }

    /// Whether the guard still holds its lock, for its client's registry of held grants.
    pub(crate) fn probe(&self) -> crate::held::Probe {
        self.shared.clone()
    }

    /// Records the guard in its client's registry of what each task holds.
    pub(crate) fn with_held(mut self, entries: impl IntoIterator<Item = crate::held::HeldEntry>) -> Self {
        self.held.extend(entries);
        self
    }

    /// The fencing token of this grant: pass it with every write to the protected resource.
    pub fn fencing_token(&self) -> FencingToken {
        self.shared.fence
    }

    /// A copy of the lease, with the current `valid_until`.
    pub fn lease(&self) -> Lease {
        self.shared.lease()
    }

    /// The full key of the lock.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The instant past which the lock must not be trusted (moves forward on renewal).
    pub fn valid_until(&self) -> Instant {
        self.shared.valid_until()
    }

    /// Whether the lock is still ours: not lost, session alive, and `valid_until` not reached.
    pub fn is_held(&self) -> bool {
        self.shared.check_now()
    }

    /// Resolves when the lock is lost, with the reason; never resolves while it is held.
    ///
    /// # Behavior
    /// Fires on renewal failure, session loss, or `valid_until` reached without renewal. It is
    /// level-triggered: called after the loss, it resolves at once.
    pub async fn lost(&self) -> LossReason {
        self.shared.lost().await
    }

    /// Resolves when the lease is within `margin` of its `valid_until` without having been
    /// renewed (or is lost): the moment to stop work that must not outlive the lock, before
    /// the loss itself.
    ///
    /// # Behavior
    /// Recomputed whenever renewal moves `valid_until`, so with auto-renewal it resolves only
    /// when renewal is falling behind (like amazon-dynamodb-lock-client's session monitor).
    /// Level-triggered: called when already that close, it resolves at once. [`lost`](Self::lost)
    /// still says when the lock is actually gone.
    pub async fn expiring(&self, margin: Duration) {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.shared.lost.is_fired() {
                return;
            }
            let at = self.shared.valid_until().checked_sub(margin).unwrap_or_else(Instant::now);
            if Instant::now() >= at {
                return;
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(at) => {}
            }
        }
    }

    /// A cloneable signal that fires when the lock is lost, for tasks that cannot borrow the
    /// guard. Watching `valid_until` needs a task: the renewal task when auto-renewal is on,
    /// otherwise a small watchdog started on first call.
    pub fn loss_signal(&self) -> LossSignal {
        // Outside a runtime no watchdog can start: a later call inside one starts it.
        if tokio::runtime::Handle::try_current().is_ok() && self.shared.watchdog.set(()).is_ok() {
            // The task ends when the lock is lost or the guard is released, dropped or detached.
            // Outside a runtime there is no watchdog: the signal then fires on the guard's
            // own events (a loss it observes, a session's end) but not at `valid_until`.
            let shared = self.shared.clone();
            crate::cancel::spawn_detached(async move {
                tokio::select! {
                    _ = shared.lost() => {}
                    _ = shared.stopped() => {}
                }
            });
        }
        self.shared.lost.clone()
    }

    /// Extends the lease so that it lasts `ttl` from now, and renews with `ttl` from then on.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] for a TTL the backend refuses; [`Error::NotHeld`] when the grant
    /// is gone (the loss signal fires too); backend errors.
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        let caps = self.shared.backend.capabilities();
        caps.validate_ttl(self.shared.backend.name(), ttl)?;
        match self.shared.extend(ttl).await? {
            ExtendOutcome::Extended { .. } => Ok(()),
            ExtendOutcome::NotHeld => {
                self.shared.fire(LossReason::NotHeld);
                Err(Error::NotHeld { key: self.shared.key.clone() })
            }
        }
    }

    /// Fires the loss signal with `reason`: a request on the grant (an election's proclaim)
    /// found it gone.
    pub(crate) fn fire_lost(&self, reason: LossReason) {
        self.shared.fire(reason);
    }

    /// Stops renewal and releases the lock, reporting what happened.
    ///
    /// # Behavior
    /// Renewal is stopped before the release is sent (an extend already in flight is let
    /// finish or dropped first), so this guard sends no renewal after it. A renewal already
    /// handed to a batch ([`crate::batch`]) cannot be recalled and may reach the server after
    /// the release; extends compare the owner token, so it finds the grant gone and changes
    /// nothing. [`ReleaseOutcome::NotHeld`] means the grant had already expired or been taken.
    ///
    /// # Errors
    /// Backend errors; the lock then expires after its TTL.
    pub async fn release(mut self) -> Result<ReleaseOutcome> {
        self.finished = true;
        // If this future is dropped before the release completes, the release goes on in the
        // background, as for a dropped guard.
        let mut pending = PendingRelease(Some(self.shared.clone()));
        // The renewal task ends on its own once stopped; the release does not wait for it.
        drop(self.renewal.take());
        let res = self.shared.release().await;
        pending.0 = None;
        res
    }

    /// Keeps the lock past the guard: stops renewal and returns the lease without releasing.
    ///
    /// The lock then lasts until its TTL runs out, unless it is released with
    /// [`LockClient::release_lease`](crate::LockClient::release_lease) or taken back under a
    /// guard with [`LockClient::resume`](crate::LockClient::resume). The lease of a multi-key
    /// guard ([`MultiGuard::into_guard`](crate::MultiGuard::into_guard)) stands for every
    /// name: those calls release, extend and renew them all.
    pub fn detach(mut self) -> Lease {
        self.finished = true;
        self.shared.stop();
        self.shared.lease()
    }

    /// Runs `work` while the lock is held, then releases the lock.
    ///
    /// # Behavior
    /// If the lock is lost before `work` finishes, `work` is dropped (cancelled at its next
    /// await point) and [`Error::Lost`] is returned. The lock is released afterwards either way.
    ///
    /// # Errors
    /// [`Error::Lost`] when the lock was lost first. A failed release after successful work is
    /// logged, not returned: the lock then expires after its TTL.
    pub async fn run<F: Future>(self, work: F) -> Result<F::Output> {
        let out = {
            let lost = self.lost();
            tokio::pin!(lost);
            tokio::select! {
                biased;
                reason = &mut lost => Err(Error::Lost { key: self.shared.key.clone(), reason }),
                v = work => Ok(v),
            }
        };
        let _ = self.release().await;
        out
    }
}

/// Releases in the background when dropped while still holding its guard state.
struct PendingRelease(Option<Arc<Shared>>);

impl Drop for PendingRelease {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            release_in_background(shared);
        }
    }
}

fn release_in_background(shared: Arc<Shared>) {
    shared.stop();
    let (backend, key) = (shared.backend.name(), shared.key.clone());
    let spawned = crate::cancel::spawn_detached(async move {
        let _ = shared.release().await;
    });
    if !spawned {
        tracing::warn!(
            backend,
            key = %key,
            "guard dropped outside a tokio runtime; the lock will expire after its TTL"
        );
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        release_in_background(self.shared.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::Capabilities;

    #[derive(Debug)]
    struct Nothing;

    #[async_trait::async_trait]
    impl LockBackend for Nothing {
        fn name(&self) -> &'static str {
            "nothing"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        async fn try_acquire(&self, _: &crate::AcquireRequest) -> Result<crate::Attempt> {
            Err(Error::InvalidConfig("unused".into()))
        }
        async fn extend(&self, _: &Lease, _: Duration) -> Result<ExtendOutcome> {
            Ok(ExtendOutcome::NotHeld)
        }
        async fn release(&self, _: &Lease) -> Result<ReleaseOutcome> {
            Ok(ReleaseOutcome::NotHeld)
        }
        async fn inspect(&self, _: &crate::LockKey) -> Result<Option<crate::LockInfo>> {
            Ok(None)
        }
    }

    /// A service may hold thousands of guards: what each costs in this crate stays small.
    #[tokio::test]
    async fn a_held_guard_stays_small() {
        let key = crate::LockKey::new("k").expect("key");
        let lease = Lease::new(
            key,
            crate::OwnerToken::random(),
            FencingToken::new(1),
            Duration::from_secs(30),
            Instant::now(),
        );
        let g = Guard::new(Arc::new(Nothing), lease, RenewPolicy::default(), None, Instant::now());
        let task = renew_loop(g.shared.clone(), None);
        let (shared, task) = (std::mem::size_of::<Shared>(), std::mem::size_of_val(&task));
        eprintln!("Shared: {shared} bytes; renewal task future: {task} bytes");
        assert!(shared <= 384, "the guard's shared state grew to {shared} bytes");
        assert!(task <= 384, "the renewal task's future grew to {task} bytes");
        g.detach();
    }
}
