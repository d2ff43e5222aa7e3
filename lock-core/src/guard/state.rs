//! What a guard and its renewal task share ([`Shared`]): the lease, the loss signal, the
//! stop flag, and the extend and release that every path (user, renewal, drop, hold cap) goes
//! through.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::renew::or_pending;
use super::Shared;
use crate::error::Result;
use crate::lease::Lease;
use crate::observe;
use crate::outcome::{ExtendOutcome, ReleaseOutcome};
use crate::signal::{LossReason, LossSignal};

impl Shared {
    pub(super) fn locked(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn lease(&self) -> Lease {
        self.locked().clone()
    }

    pub(super) fn valid_until(&self) -> Instant {
        self.locked().valid_until()
    }

    /// The lease's TTL and `valid_until`, without copying the lease.
    pub(super) fn ttl_and_valid_until(&self) -> (Duration, Instant) {
        let l = self.locked();
        (l.ttl(), l.valid_until())
    }

    pub(super) fn set_extended(&self, ttl: Duration, valid_until: Instant) {
        self.locked().set_extended(ttl, valid_until);
        self.changed.notify_waiters();
    }

    pub(super) fn fire(&self, reason: LossReason) {
        if self.lost.fire(reason) {
            observe::lost(self.backend.name(), reason);
            tracing::warn!(parent: &self.span, backend = self.backend.name(), key = %self.key, %reason, "lock lost");
            self.changed.notify_waiters();
        }
    }

    /// Stops renewal (and the watchdog) for good.
    pub(super) fn stop(&self) {
        if !self.stopped.swap(true, Ordering::AcqRel) {
            self.changed.notify_waiters();
        }
    }

    pub(super) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Resolves once [`stop`](Self::stop) was called.
    pub(super) async fn stopped(&self) {
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

    pub(super) fn expiry_reason(&self) -> LossReason {
        if self.capped.load(Ordering::Acquire) {
            LossReason::MaxHoldReached
        } else {
            LossReason::Expired
        }
    }

    /// Whether the hold cap's release time has come.
    pub(super) fn cap_reached(&self) -> bool {
        self.cap_at.get().is_some_and(|at| Instant::now() >= *at)
    }

    /// Checks the session and the clock; fires the signal if either says the lock is gone.
    pub(super) fn check_now(&self) -> bool {
        if self.lost.is_fired() {
            return false;
        }
        if self.cap_reached() {
            // The cap's task releases the lock and then fires the loss (MaxHoldReached). Its
            // release may fire the lease's own signal first (a session backend's, for the
            // deleted key): that is not the reason.
            return false;
        }
        // The lease's signal carries its own reason (session lost, or the grant deleted); it
        // counts within the hold cap's last TTL too, until the cap.
        let lease_lost = {
            let l = self.locked();
            l.session().filter(|s| s.is_fired()).map(|s| s.reason().unwrap_or(LossReason::SessionLost))
        };
        if let Some(reason) = lease_lost {
            self.fire(reason);
            return false;
        }
        // Before the cap (checked above), the grant's `valid_until` still counts: the cap's
        // time is at most the `valid_until` it saw, but a user's shorter extend since may
        // have ended the grant before it.
        if Instant::now() >= self.valid_until() {
            self.fire(self.expiry_reason());
            return false;
        }
        true
    }

    /// Resolves when the lock is lost: the signal fires, the session ends, or `valid_until`
    /// passes without renewal.
    pub(super) async fn lost(&self) -> LossReason {
        let session = self.locked().session().cloned();
        loop {
            if let Some(r) = self.lost.reason() {
                return r;
            }
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let until = self.valid_until();
            tokio::select! {
                r = self.lost.fired() => return r,
                r = or_pending(session.as_ref().map(LossSignal::fired)) => {
                    if self.cap_reached() {
                        // The cap's own release fired it: its task fires the reason.
                        return self.lost.fired().await;
                    }
                    self.fire(r);
                }
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(until) => {
                    if self.cap_reached() {
                        // The cap's task releases the lock and fires the loss, by
                        // `valid_until` at the latest.
                        return self.lost.fired().await;
                    }
                    if self.valid_until() <= Instant::now() {
                        self.fire(self.expiry_reason());
                    }
                }
            }
        }
    }

    /// One extend, serialised with every other extend of this guard; records the result.
    pub(super) async fn extend(&self, ttl: Duration) -> Result<ExtendOutcome> {
        let _one_at_a_time = self.extend_lock.lock().await;
        self.extend_locked(ttl, None).await
    }

    /// An extend for renewal, with `ttl` or (`None`) the lease's TTL as it is once the extend
    /// lock is had (a user's extend just before sets the TTL renewal goes on with): none is
    /// sent once renewal stopped, so none can follow a release (which stops renewal, then
    /// waits for an extend in flight, under the same lock). A stopped renewal waits here until
    /// its task drops it.
    pub(super) async fn renew(&self, ttl: Option<Duration>) -> Result<ExtendOutcome> {
        let one_at_a_time = self.extend_lock.lock().await;
        if self.is_stopped() {
            drop(one_at_a_time);
            return std::future::pending().await;
        }
        let ttl = ttl.unwrap_or_else(|| self.locked().ttl());
        self.extend_locked(ttl, self.batcher.as_ref()).await
    }

    pub(super) async fn extend_locked(
        &self,
        ttl: Duration,
        batcher: Option<&crate::batch::Batcher>,
    ) -> Result<ExtendOutcome> {
        // A shortening extend may take effect even if its outcome stays unknown (see
        // `Lease::limit_for_extend`); those waiting for `valid_until` look again.
        let lease = {
            let mut l = self.locked();
            if l.limit_for_extend(ttl) {
                self.changed.notify_waiters();
            }
            l.clone()
        };
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

    pub(super) async fn release(&self) -> Result<ReleaseOutcome> {
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
        let held = self.granted_at.elapsed();
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
