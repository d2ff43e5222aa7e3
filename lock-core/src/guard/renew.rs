//! The renewal task of a guard: renews the lease about every TTL/3 until the guard stops it,
//! the lock is lost, or the hold cap is reached.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use std::sync::atomic::Ordering;

use super::Shared;
use crate::backoff::Backoff;
use crate::observe;
use crate::outcome::ExtendOutcome;
use crate::signal::LossReason;

/// Renews the lease until the guard stops it or the lock is lost.
///
/// The next renewal is due once a third of the validity left has passed (about every TTL/3),
/// recomputed whenever `valid_until` changes (a user's `extend` included).
/// Every extend races `valid_until`: if it has not succeeded by then, the loss signal fires.
/// With a hold cap (counted from the grant; a multi-key lock's from its first name's), a lease
/// of its own is shortened to end at the cap as soon as a full TTL would pass it, and renewal
/// stops; a session's lease is renewed up to the cap and released there.
///
/// While it waits for the next renewal this task holds only a few wake-up registrations and
/// one timer; the renewal itself and the hold cap run boxed, so their larger state exists
/// only while they run.
pub(super) async fn renew_loop(shared: Arc<Shared>, max_hold: Option<Duration>) {
    // However this task ends (a panic in a backend, a runtime shutting down), the loss fires
    // unless renewal was stopped on purpose.
    let _silent_end = FireUnlessStopped(&shared);
    // Held from the grant: a lease's `acquired_at` is when the request that won it was sent,
    // which on a queue (ZooKeeper, etcd) is before the whole wait. A cap too large to add to an
    // `Instant` is no cap.
    let hold_until = max_hold.and_then(|m| shared.granted_at.checked_add(m));
    // Only a session-based lease has a session to watch: boxed, so the others pay nothing.
    let mut session = shared.locked().session().cloned().map(|s| Box::pin(async move { s.fired().await }));
    // How long before the cap the hold is capped: a lease of its own is shortened to end at the
    // cap once a full TTL would pass it; a session's lease cannot be shortened (its TTL is not
    // the lock's), so it is renewed as usual up to the cap and released there.
    let session_lease = session.is_some();
    let lead = move |ttl: Duration| if session_lease { Duration::ZERO } else { ttl };
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
            due = due.min(h.checked_sub(lead(ttl)).unwrap_or(h));
        }
        tokio::select! {
            biased;
            _ = &mut changed => continue,
            r = or_pending(session.as_mut()) => {
                shared.fire(r);
                return;
            }
            _ = tokio::time::sleep_until(due) => {}
        }
        if let Some(h) = hold_until {
            let left = h.saturating_duration_since(Instant::now());
            if left <= lead(ttl) {
                Box::pin(cap_hold(&shared, left)).await;
                return;
            }
        }
        // The session is watched during the renewal too: its loss must not wait for an extend
        // that does not answer (the renewal would only give up at `valid_until`). On a
        // session's lease, whose `valid_until` runs past the cap, the cap ends a renewal that
        // is still retrying when it comes.
        let cap_during = hold_until.filter(|_| session_lease);
        let renewed = tokio::select! {
            biased;
            r = or_pending(session.as_mut()) => {
                shared.fire(r);
                return;
            }
            _ = or_pending(cap_during.map(tokio::time::sleep_until)) => {
                Box::pin(cap_hold(&shared, Duration::ZERO)).await;
                return;
            }
            ok = Box::pin(renew_once(&shared, ttl, None)) => ok,
        };
        if !renewed {
            return;
        }
    }
}

/// Resolves as `f` does; never without one (a branch of `select!` that is off). A plain
/// function, not an `async fn`: that would keep `f` twice in its state (the argument and the
/// future awaited), and the renewal task's idle state is kept small.
pub(super) fn or_pending<F: std::future::Future>(
    f: Option<F>,
) -> impl std::future::Future<Output = F::Output> {
    match f {
        Some(f) => futures::future::Either::Left(f),
        None => futures::future::Either::Right(std::future::pending()),
    }
}

/// The TTL of an extend that makes the grant end at `cap`; the backend's minimum TTL may
/// exceed what is left: then the grant ends that much past the cap on the server, but the
/// guard still releases it at the cap.
fn last_ttl(shared: &Shared, cap: Instant) -> Duration {
    let left = cap.saturating_duration_since(Instant::now());
    left.max(shared.backend.capabilities().min_ttl).max(Duration::from_millis(1))
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
/// renewal goes on (false: stopped, or the lock is lost and the signal fired). With `cap`,
/// each try extends the grant to end at the cap (the hold cap's last extend), else by the
/// lease's TTL.
async fn renew_once(shared: &Shared, ttl: Duration, cap: Option<Instant>) -> bool {
    let backend = shared.backend.name();
    let mut backoff = Backoff::new(ttl / 24 + Duration::from_millis(1), ttl / 6 + Duration::from_millis(1));
    // Whether an extend failed with an error: reaching `valid_until` is then a failed renewal,
    // otherwise an expiry (a session backend whose extends cannot move `valid_until` while
    // it is disconnected reaches it without any error).
    let mut failed = false;
    loop {
        let res = tokio::select! {
            biased;
            _ = shared.stopped() => return false,
            _ = expired(shared) => {
                shared.fire(if failed { LossReason::RenewalFailed } else { shared.expiry_reason() });
                return false;
            }
            r = shared.renew(cap.map(|c| last_ttl(shared, c))) => r,
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
                    _ = expired(shared) => {
                        shared.fire(LossReason::RenewalFailed);
                        return false;
                    }
                    _ = backoff.sleep_until_deadline(Some(shared.valid_until())) => {}
                }
            }
        }
    }
}

/// Resolves once `valid_until` has passed, following its changes while it waits: an extend
/// that shortens the grant (a user's, or the hold cap's last one, applied while its reply is
/// still awaited) moves the loss earlier, which a time read once would miss.
async fn expired(shared: &Shared) {
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        tokio::select! {
            _ = tokio::time::sleep_until(shared.valid_until()) => return,
            _ = &mut changed => {}
        }
    }
}

/// The hold cap is `left` away: within one TTL for a lease of its own, reached (zero) for a
/// session's lease. For the former, one last extend makes the grant end at the cap on the
/// server (when the backend accepts so short a TTL), so the cap holds even if this process
/// stalls. Then, at the cap (or at `valid_until`, if
/// that comes first), the guard stops claiming the lock, releases it so that others can take
/// it at once, and fires the loss with `MaxHoldReached` (once released, or at `valid_until`
/// if the release takes longer).
async fn cap_hold(shared: &Shared, left: Duration) {
    let backend = shared.backend.name();
    shared.capped.store(true, Ordering::Release);
    tracing::debug!(backend, key = %shared.key, "hold cap reached; renewal stops");
    let cap = crate::lease::add_saturating(Instant::now(), left);
    // Also when the cap is exactly one TTL away: the grant then ends at the cap, not at the
    // last renewal's `valid_until`, up to a third of a TTL before it. Not when the cap has
    // come (a session's lease, capped at the cap itself, or a cap reached late): the release
    // below comes first, before the loss. Retried as any renewal is: a transient error must
    // not give the lock up early (it was then released at the last `valid_until`, reported
    // as the cap); one that lasts until `valid_until` is a failed renewal.
    if !left.is_zero() && last_ttl(shared, cap) <= shared.lease().ttl() {
        let ttl = shared.lease().ttl();
        // Lost through a failed renewal or at `valid_until`: still released below, at once.
        if !renew_once(shared, ttl, Some(cap)).await
            && (shared.is_stopped() || shared.lost.reason() == Some(LossReason::NotHeld))
        {
            return;
        }
    }
    let _ = shared.cap_at.set(cap.min(shared.valid_until()));
    shared.changed.notify_waiters();
    // Until the cap, or `valid_until` if that comes first, followed as it changes (a user's
    // extend may shorten the grant meanwhile; the loss must not wait for the cap then).
    tokio::select! {
        biased;
        _ = shared.stopped() => return,
        _ = tokio::time::sleep_until(cap) => {}
        _ = expired(shared) => {}
    }
    // Released first, then the loss, where the release is answered before `valid_until`
    // (the cap came before it: a lease that could not be shortened), so that whoever waits
    // for the signal finds the lock free. The loss fires by `valid_until` at the latest,
    // released or not: a release that hangs (a partition) must not hold the signal, and the
    // work it cancels, past the grant. Where the last extend shortened the grant to the cap,
    // `valid_until` is the cap's time, and the loss fires as the release is sent.
    let mut release = Box::pin(shared.release());
    let released = tokio::select! {
        biased;
        r = &mut release => Some(r),
        _ = expired(shared) => None,
    };
    let released = match released {
        Some(r) => r,
        None => {
            shared.fire(LossReason::MaxHoldReached);
            release.await
        }
    };
    if let Err(e) = released {
        tracing::warn!(backend, key = %shared.key, error = %e, "release at the hold cap failed; the lock expires after its TTL");
    }
    shared.fire(LossReason::MaxHoldReached);
}
