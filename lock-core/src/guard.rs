//! The guard: owns a lease, renews it if asked, signals loss, releases it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Capabilities, ExtendOutcome, LockBackend, ReleaseOutcome};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::lease::{FencingToken, Lease};
use crate::observe;
use crate::signal::{LossReason, LossSignal};

/// How a guard renews its lease.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RenewPolicy {
    pub(crate) auto_renew: bool,
    pub(crate) max_hold: Option<Duration>,
}

struct Shared {
    backend: Arc<dyn LockBackend>,
    caps: Capabilities,
    lease: Mutex<Lease>,
    fence: FencingToken,
    key: String,
    valid_until: watch::Sender<Instant>,
    lost: LossSignal,
    /// Set when renewal stopped because of the hold cap; the expiry then reports it.
    capped: AtomicBool,
    stop: CancellationToken,
    watchdog: OnceLock<()>,
}

impl Shared {
    fn lease(&self) -> Lease {
        match self.lease.lock() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_extended(&self, ttl: Duration, valid_until: Instant) {
        match self.lease.lock() {
            Ok(mut l) => l.set_extended(ttl, valid_until),
            Err(poisoned) => poisoned.into_inner().set_extended(ttl, valid_until),
        }
        self.valid_until.send_replace(valid_until);
    }

    fn fire(&self, reason: LossReason) {
        if self.lost.fire(reason) {
            observe::lost(self.backend.name(), reason);
            tracing::warn!(backend = self.backend.name(), key = %self.key, %reason, "lock lost");
        }
    }

    fn expiry_reason(&self) -> LossReason {
        if self.capped.load(Ordering::Acquire) {
            LossReason::MaxHoldReached
        } else {
            LossReason::Expired
        }
    }

    /// Checks the session and the clock; fires the signal if either says the lock is gone.
    fn check_now(&self) -> bool {
        if self.lost.is_fired() {
            return false;
        }
        let lease_session_lost =
            self.lease.lock().ok().and_then(|l| l.session().map(LossSignal::is_fired)).unwrap_or(false);
        if lease_session_lost {
            self.fire(LossReason::SessionLost);
            return false;
        }
        if Instant::now() >= *self.valid_until.borrow() {
            self.fire(self.expiry_reason());
            return false;
        }
        true
    }

    /// Resolves when the lock is lost: the signal fires, the session ends, or `valid_until`
    /// passes without renewal.
    async fn lost(&self) -> LossReason {
        let session = self.lease().session().cloned();
        let mut rx = self.valid_until.subscribe();
        loop {
            if let Some(r) = self.lost.reason() {
                return r;
            }
            let until = *rx.borrow_and_update();
            tokio::select! {
                r = self.lost.fired() => return r,
                _ = async { match &session { Some(s) => { s.fired().await; } None => std::future::pending().await } } => {
                    self.fire(LossReason::SessionLost);
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                _ = tokio::time::sleep_until(until) => {
                    if *self.valid_until.borrow() <= Instant::now() {
                        self.fire(self.expiry_reason());
                    }
                }
            }
        }
    }

    async fn release(&self) -> Result<ReleaseOutcome> {
        self.stop.cancel();
        let lease = self.lease();
        let res = self.backend.release(&lease).await;
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
        caps: Capabilities,
        lease: Lease,
        policy: RenewPolicy,
    ) -> Self {
        let (valid_until, _) = watch::channel(lease.valid_until());
        let shared = Arc::new(Shared {
            fence: lease.fencing_token(),
            key: lease.key().full().to_owned(),
            backend,
            caps,
            lease: Mutex::new(lease),
            valid_until,
            lost: LossSignal::new(),
            capped: AtomicBool::new(false),
            stop: CancellationToken::new(),
            watchdog: OnceLock::new(),
        });
        let renewal = policy.auto_renew.then(|| tokio::spawn(renew_loop(shared.clone(), policy.max_hold)));
        if renewal.is_some() {
            let _ = shared.watchdog.set(());
        }
        Self { shared, renewal, finished: false }
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
        *self.shared.valid_until.borrow()
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

    /// A cloneable signal that fires when the lock is lost, for tasks that cannot borrow the
    /// guard. Watching `valid_until` needs a task: the renewal task when auto-renewal is on,
    /// otherwise a small watchdog started on first call.
    pub fn loss_signal(&self) -> LossSignal {
        if self.shared.watchdog.set(()).is_ok() {
            // The task ends when the lock is lost or the guard is released, dropped or detached.
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let stop = shared.stop.clone();
                tokio::select! {
                    _ = shared.lost() => {}
                    _ = stop.cancelled() => {}
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
        crate::client::validate_ttl(&self.shared.caps, self.shared.backend.name(), ttl)?;
        let lease = self.shared.lease();
        match self.shared.backend.extend(&lease, ttl).await? {
            ExtendOutcome::Extended { valid_until } => {
                self.shared.set_extended(ttl, valid_until);
                Ok(())
            }
            ExtendOutcome::NotHeld => {
                self.shared.fire(LossReason::NotHeld);
                Err(Error::NotHeld { key: self.shared.key.clone() })
            }
        }
    }

    /// Stops renewal and releases the lock, reporting what happened.
    ///
    /// # Behavior
    /// Renewal is stopped (and awaited) before the release is sent, so no renewal can follow
    /// it. [`ReleaseOutcome::NotHeld`] means the grant had already expired or been taken.
    ///
    /// # Errors
    /// Backend errors; the lock then expires after its TTL.
    pub async fn release(mut self) -> Result<ReleaseOutcome> {
        self.finished = true;
        self.shared.stop.cancel();
        if let Some(h) = self.renewal.take() {
            let _ = h.await;
        }
        self.shared.release().await
    }

    /// Keeps the lock past the guard: stops renewal and returns the lease without releasing.
    ///
    /// The lock then lasts until its TTL runs out, unless it is released with
    /// [`LockClient::release_lease`](crate::LockClient::release_lease) or taken back under a
    /// guard with [`LockClient::resume`](crate::LockClient::resume).
    pub fn detach(mut self) -> Lease {
        self.finished = true;
        self.shared.stop.cancel();
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

impl Drop for Guard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.shared.stop.cancel();
        let shared = self.shared.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let _ = shared.release().await;
                });
            }
            Err(_) => {
                tracing::warn!(
                    backend = self.shared.backend.name(),
                    key = %self.shared.key,
                    "guard dropped outside a tokio runtime; the lock will expire after its TTL"
                );
            }
        }
    }
}

async fn renew_loop(shared: Arc<Shared>, max_hold: Option<Duration>) {
    let backend = shared.backend.name();
    let stop = shared.stop.clone();
    let first = shared.lease();
    let hold_until = max_hold.map(|m| first.acquired_at() + m);
    let min_ttl = shared.caps.min_ttl;
    let mut last_sent = first.acquired_at();
    loop {
        let lease = shared.lease();
        let period = lease.ttl() / 3;
        let next = last_sent + period;
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = shared.lost() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let ttl = lease.ttl();
        if let Some(h) = hold_until {
            let left = h.saturating_duration_since(Instant::now());
            if left < ttl {
                // The next full renewal would pass the cap: one last extend that ends the grant
                // at the cap (if the backend accepts so short a TTL), then stop renewing.
                shared.capped.store(true, Ordering::Release);
                tracing::debug!(backend, key = %shared.key, "hold cap reached; renewal stops");
                if left >= min_ttl.max(Duration::from_millis(1)) {
                    let sent = Instant::now();
                    match shared.backend.extend(&lease, left).await {
                        Ok(ExtendOutcome::Extended { valid_until }) => {
                            observe::renewal(backend, "ok");
                            shared.set_extended(left, valid_until.min(sent + left));
                        }
                        Ok(ExtendOutcome::NotHeld) => {
                            observe::renewal(backend, "not_held");
                            shared.fire(LossReason::NotHeld);
                        }
                        Err(_) => observe::renewal(backend, "error"),
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = shared.lost() => {}
                }
                return;
            }
        }
        let mut backoff =
            Backoff::new(period / 8 + Duration::from_millis(1), period / 2 + Duration::from_millis(1));
        loop {
            let sent = Instant::now();
            if sent >= shared.lease().valid_until() {
                shared.fire(LossReason::RenewalFailed);
                return;
            }
            let res = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                r = shared.backend.extend(&lease, ttl) => r,
            };
            match res {
                Ok(ExtendOutcome::Extended { valid_until }) => {
                    observe::renewal(backend, "ok");
                    shared.set_extended(ttl, valid_until);
                    last_sent = sent;
                    break;
                }
                Ok(ExtendOutcome::NotHeld) => {
                    observe::renewal(backend, "not_held");
                    shared.fire(LossReason::NotHeld);
                    return;
                }
                Err(e) => {
                    observe::renewal(backend, "error");
                    tracing::warn!(backend, key = %shared.key, error = %e, "renewal failed");
                    if !e.is_retryable() {
                        shared.fire(LossReason::RenewalFailed);
                        return;
                    }
                    let until = shared.lease().valid_until();
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = backoff.sleep_until_deadline(Some(until)) => {}
                    }
                }
            }
        }
    }
}
