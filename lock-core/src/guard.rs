//! The guard: owns a lease, renews it if asked, signals loss, releases it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::LockBackend;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::lease::{FencingToken, Lease};
use crate::observe;
use crate::outcome::{ExtendOutcome, ReleaseOutcome};
use crate::signal::{LossReason, LossSignal};

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
}

impl Shared {
    fn locked(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lease(&self) -> Lease {
        self.locked().clone()
    }

    fn valid_until(&self) -> Instant {
        self.locked().valid_until()
    }

    /// The lease's TTL and `valid_until`, without copying the lease.
    fn ttl_and_valid_until(&self) -> (Duration, Instant) {
        let l = self.locked();
        (l.ttl(), l.valid_until())
    }

    fn set_extended(&self, ttl: Duration, valid_until: Instant) {
        self.locked().set_extended(ttl, valid_until);
        self.changed.notify_waiters();
    }

    fn fire(&self, reason: LossReason) {
        if self.lost.fire(reason) {
            observe::lost(self.backend.name(), reason);
            tracing::warn!(parent: &self.span, backend = self.backend.name(), key = %self.key, %reason, "lock lost");
            self.changed.notify_waiters();
        }
    }

    /// Stops renewal (and the watchdog) for good.
    fn stop(&self) {
        if !self.stopped.swap(true, Ordering::AcqRel) {
            self.changed.notify_waiters();
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Resolves once [`stop`](Self::stop) was called.
    async fn stopped(&self) {
        loop {
            // Registered before the check, so a `stop` between the two is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            changed.await;
        }
    }

    fn expiry_reason(&self) -> LossReason {
        if self.capped.load(Ordering::Acquire) {
            LossReason::MaxHoldReached
        } else {
            LossReason::Expired
        }
    }

    /// Whether the hold cap's release time has come.
    fn cap_reached(&self) -> bool {
        self.cap_at.get().is_some_and(|at| Instant::now() >= *at)
    }

    /// Checks the session and the clock; fires the signal if either says the lock is gone.
    fn check_now(&self) -> bool {
        if self.lost.is_fired() {
            return false;
        }
        if self.cap_at.get().is_some() {
            // The cap's task releases the lock and then fires the loss; until it does, the
            // guard stops claiming the lock at the cap, and does not fire early.
            return !self.cap_reached();
        }
        // The lease's signal carries its own reason (session lost, or the grant deleted).
        let lease_lost = {
            let l = self.locked();
            l.session().filter(|s| s.is_fired()).map(|s| s.reason().unwrap_or(LossReason::SessionLost))
        };
        if let Some(reason) = lease_lost {
            self.fire(reason);
            return false;
        }
        if Instant::now() >= self.valid_until() {
            self.fire(self.expiry_reason());
            return false;
        }
        true
    }

    /// Resolves when the lock is lost: the signal fires, the session ends, or `valid_until`
    /// passes without renewal.
    async fn lost(&self) -> LossReason {
        let session = self.locked().session().cloned();
        loop {
            if let Some(r) = self.lost.reason() {
                return r;
            }
            if self.cap_at.get().is_some() {
                // The cap's task releases the lock, then fires the signal: wait for it.
                return self.lost.fired().await;
            }
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let until = self.valid_until();
            tokio::select! {
                r = self.lost.fired() => return r,
                r = session_fired(&session) => self.fire(r),
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(until) => {
                    if self.valid_until() <= Instant::now() {
                        self.fire(self.expiry_reason());
                    }
                }
            }
        }
    }

    /// One extend, serialised with every other extend of this guard; records the result.
    async fn extend(&self, ttl: Duration) -> Result<ExtendOutcome> {
        let _one_at_a_time = self.extend_lock.lock().await;
        self.extend_locked(ttl, None).await
    }

    /// An extend for renewal: none is sent once renewal stopped, so none can follow a release
    /// (which stops renewal, then waits for an extend in flight, under the same lock). A
    /// stopped renewal waits here until its task drops it.
    async fn renew(&self, ttl: Duration) -> Result<ExtendOutcome> {
        let one_at_a_time = self.extend_lock.lock().await;
        if self.is_stopped() {
            drop(one_at_a_time);
            return std::future::pending().await;
        }
        self.extend_locked(ttl, self.batcher.as_ref()).await
    }

    async fn extend_locked(
        &self,
        ttl: Duration,
        batcher: Option<&crate::batch::Batcher>,
    ) -> Result<ExtendOutcome> {
        let lease = self.lease();
        let span = tracing::debug_span!(parent: &self.span, "distlock.extend", ttl_ms = ttl.as_millis() as u64, outcome = tracing::field::Empty);
        let res = match batcher {
            Some(b) => b.extend(&self.backend, lease, ttl).instrument(span.clone()).await,
            None => self.backend.extend(&lease, ttl).instrument(span.clone()).await,
        };
        span.record("outcome", observe::extend_outcome(&res));
        if let Ok(ExtendOutcome::Extended { valid_until }) = res {
            self.set_extended(ttl, valid_until);
        }
        res
    }

    async fn release(&self) -> Result<ReleaseOutcome> {
        self.stop();
        // A renewal's extend in flight ends first (its task drops it as soon as it sees the
        // stop); any later one sees the stop and sends nothing. An idle renewal task is not
        // waited for: it ends on its own.
        let _no_extend = self.extend_lock.lock().await;
        if self.released.load(Ordering::Acquire) {
            // The hold cap released it already.
            return Ok(ReleaseOutcome::NotHeld);
        }
        let lease = self.lease();
        let span =
            tracing::debug_span!(parent: &self.span, "distlock.release", outcome = tracing::field::Empty);
        let res = self.backend.release(&lease).instrument(span.clone()).await;
        span.record("outcome", observe::release_outcome(res.as_ref().ok().copied()));
        if res.is_ok() {
            self.released.store(true, Ordering::Release);
        }
        let held = lease.acquired_at().elapsed();
        observe::release(self.backend.name(), res.as_ref().ok().copied(), held);
        match &res {
            Ok(outcome) => {
                tracing::debug!(backend = self.backend.name(), key = %self.key, ?outcome, "lock released")
            }
            Err(e) => {
                tracing::warn!(backend = self.backend.name(), key = %self.key, error = %e, "release failed; the lock will expire after its TTL")
            }
        }
        res
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
    pub(crate) fn new(
        backend: Arc<dyn LockBackend>,
        lease: Lease,
        policy: RenewPolicy,
        batcher: Option<crate::batch::Batcher>,
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
        });
        let renewal = policy.auto_renew.then(|| {
            let span = tracing::debug_span!(parent: &shared.span, "distlock.renewal");
            tokio::spawn(renew_loop(shared.clone(), policy.max_hold).instrument(span))
        });
        if renewal.is_some() {
            let _ = shared.watchdog.set(());
        }
        Self { shared, renewal, finished: false, held: Vec::new() }
    }

    /// Whether the guard still holds its lock, for its client's registry of held grants.
    pub(crate) fn probe(&self) -> crate::held::Probe {
        let shared = self.shared.clone();
        Arc::new(move || shared.check_now())
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
        if self.shared.watchdog.set(()).is_ok() {
            // The task ends when the lock is lost or the guard is released, dropped or detached.
            let shared = self.shared.clone();
            tokio::spawn(async move {
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

    /// Stops renewal and releases the lock, reporting what happened.
    ///
    /// # Behavior
    /// Renewal is stopped before the release is sent (an extend already in flight is let
    /// finish or dropped first), so no renewal can follow it. [`ReleaseOutcome::NotHeld`] means the grant had already expired or been taken.
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
    /// guard with [`LockClient::resume`](crate::LockClient::resume).
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

/// Resolves when the lease's session signal fires; never without one.
async fn session_fired(session: &Option<LossSignal>) -> LossReason {
    match session {
        Some(s) => s.fired().await,
        None => std::future::pending().await,
    }
}

/// Renews the lease until the guard stops it or the lock is lost.
///
/// The next renewal is due once a third of the validity left has passed (about every TTL/3),
/// recomputed whenever `valid_until` changes (a user's `extend` included).
/// Every extend races `valid_until`: if it has not succeeded by then, the loss signal fires.
/// With a hold cap, the lease is shortened to end at the cap as soon as a full TTL would pass
/// it, and renewal stops.
///
/// While it waits for the next renewal this task holds only a few wake-up registrations and
/// one timer; the renewal itself and the hold cap run boxed, so their larger state exists
/// only while they run.
async fn renew_loop(shared: Arc<Shared>, max_hold: Option<Duration>) {
    // However this task ends (a panic in a backend, a runtime shutting down), the loss fires
    // unless renewal was stopped on purpose.
    let _silent_end = FireUnlessStopped(&shared);
    // A cap too large to add to an `Instant` is no cap.
    let hold_until = max_hold.and_then(|m| shared.locked().acquired_at().checked_add(m));
    // Only a session-based lease has a session to watch: boxed, so the others pay nothing.
    let mut session = shared.locked().session().cloned().map(|s| Box::pin(async move { s.fired().await }));
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if shared.is_stopped() || shared.lost.is_fired() {
            return;
        }
        let (ttl, valid_until) = shared.ttl_and_valid_until();
        // Renew once a third of the validity left has passed (about every TTL/3), and never
        // sooner: a backend that cannot move `valid_until` on every extend (a session kept
        // alive elsewhere) is then asked at a falling pace, not in a loop. `due` never passes
        // `valid_until`, so the expiry is raced by the renewal below.
        let now = Instant::now();
        let mut due = now + valid_until.saturating_duration_since(now).min(ttl) / 3;
        if let Some(h) = hold_until {
            due = due.min(h.checked_sub(ttl).unwrap_or(h));
        }
        tokio::select! {
            biased;
            _ = &mut changed => continue,
            r = async {
                match &mut session {
                    Some(s) => s.as_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                shared.fire(r);
                return;
            }
            _ = tokio::time::sleep_until(due) => {}
        }
        if let Some(h) = hold_until {
            let left = h.saturating_duration_since(Instant::now());
            if left <= ttl {
                Box::pin(cap_hold(&shared, left)).await;
                return;
            }
        }
        if !Box::pin(renew_once(&shared, ttl)).await {
            return;
        }
    }
}

/// Fires the loss with [`LossReason::RenewalFailed`] when dropped while renewal was not stopped
/// on purpose: the renewal task ending any other way must not leave the lock silently unrenewed.
struct FireUnlessStopped<'a>(&'a Shared);

impl Drop for FireUnlessStopped<'_> {
    fn drop(&mut self) {
        if !self.0.is_stopped() && !self.0.lost.is_fired() {
            self.0.fire(LossReason::RenewalFailed);
        }
    }
}

/// One renewal, retried with backoff on retryable errors until `valid_until`. Returns whether
/// renewal goes on (false: stopped, or the lock is lost and the signal fired).
async fn renew_once(shared: &Shared, ttl: Duration) -> bool {
    let backend = shared.backend.name();
    let mut backoff = Backoff::new(ttl / 24 + Duration::from_millis(1), ttl / 6 + Duration::from_millis(1));
    // Whether an extend failed with an error: reaching `valid_until` is then a failed renewal,
    // otherwise an expiry (a session backend whose extends cannot move `valid_until` while
    // it is disconnected reaches it without any error).
    let mut failed = false;
    loop {
        let until = shared.valid_until();
        let res = tokio::select! {
            biased;
            _ = shared.stopped() => return false,
            _ = tokio::time::sleep_until(until) => {
                shared.fire(if failed { LossReason::RenewalFailed } else { shared.expiry_reason() });
                return false;
            }
            r = shared.renew(ttl) => r,
        };
        match res {
            Ok(ExtendOutcome::Extended { .. }) => {
                observe::renewal(backend, "ok");
                return true;
            }
            Ok(ExtendOutcome::NotHeld) => {
                observe::renewal(backend, "not_held");
                shared.fire(LossReason::NotHeld);
                return false;
            }
            Err(e) => {
                failed = true;
                observe::renewal(backend, "error");
                tracing::warn!(backend, key = %shared.key, error = %e, "renewal failed");
                if !e.is_retryable() {
                    shared.fire(LossReason::RenewalFailed);
                    return false;
                }
                tokio::select! {
                    _ = shared.stopped() => return false,
                    _ = backoff.sleep_until_deadline(Some(until)) => {}
                }
            }
        }
    }
}

/// The hold cap is reached within one TTL. One last extend makes the grant end at the cap on
/// the server (when the backend accepts so short a TTL; a session lease cannot be shortened),
/// so the cap holds even if this process stalls. Then, at the cap (or at `valid_until`, if
/// that comes first), the guard stops claiming the lock, releases it so that others can take
/// it at once, and fires the loss with `MaxHoldReached`.
async fn cap_hold(shared: &Shared, left: Duration) {
    let backend = shared.backend.name();
    shared.capped.store(true, Ordering::Release);
    tracing::debug!(backend, key = %shared.key, "hold cap reached; renewal stops");
    let cap = crate::lease::add_saturating(Instant::now(), left);
    // The backend's minimum TTL may exceed what is left: then the grant ends that much past
    // the cap on the server, but this guard still releases it at the cap.
    let last = left.max(shared.backend.capabilities().min_ttl).max(Duration::from_millis(1));
    if last < shared.lease().ttl() {
        let until = shared.lease().valid_until();
        let res = tokio::select! {
            biased;
            _ = shared.stopped() => return,
            _ = tokio::time::sleep_until(until) => None,
            r = shared.renew(last) => Some(r),
        };
        match res {
            Some(Ok(ExtendOutcome::Extended { .. })) => observe::renewal(backend, "ok"),
            Some(Ok(ExtendOutcome::NotHeld)) => {
                observe::renewal(backend, "not_held");
                shared.fire(LossReason::NotHeld);
                return;
            }
            Some(Err(_)) => observe::renewal(backend, "error"),
            None => {}
        }
    }
    let at = cap.min(shared.valid_until());
    let _ = shared.cap_at.set(at);
    shared.changed.notify_waiters();
    tokio::select! {
        biased;
        _ = shared.stopped() => return,
        _ = tokio::time::sleep_until(at) => {}
    }
    // Released first, then the loss: whoever waits for the signal finds the lock free.
    if let Err(e) = Box::pin(shared.release()).await {
        tracing::warn!(backend, key = %shared.key, error = %e, "release at the hold cap failed; the lock expires after its TTL");
    }
    shared.fire(LossReason::MaxHoldReached);
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
        let g = Guard::new(Arc::new(Nothing), lease, RenewPolicy::default(), None);
        let task = renew_loop(g.shared.clone(), None);
        let (shared, task) = (std::mem::size_of::<Shared>(), std::mem::size_of_val(&task));
        eprintln!("Shared: {shared} bytes; renewal task future: {task} bytes");
        assert!(shared <= 384, "the guard's shared state grew to {shared} bytes");
        assert!(task <= 384, "the renewal task's future grew to {task} bytes");
        g.detach();
    }
}
