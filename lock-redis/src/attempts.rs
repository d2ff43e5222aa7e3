//! What both backends do around their attempts: the waiting acquire (try first, subscribe
//! only when the lock is held, then lock-core's loop) and the undo of an attempt that failed
//! after the server may have carried it out.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lock_core::cancel::undo_after;
use lock_core::{Attempt, Error, Instant, Lease, LockKey, Result, UndoOnDrop};
use tokio::sync::Notify;

use crate::node::MAX_POLL;
use crate::notify::Subscription;

/// A waiting acquire, common to both backends.
///
/// 1. Tries at once, without a subscription: a free lock costs one request.
/// 2. Only when the lock is held (or the try failed retryably) subscribes to the release
///    channels through `subscribe(bound)`, which waits for the confirmations at most `bound`:
///    `confirm`, cut to what is left of the deadline. A slow or unresponsive pub/sub
///    connection therefore never pushes the acquire past its deadline; unconfirmed, the
///    waiter still polls (at least every 250 ms and at the holder's expiry).
/// 3. Runs lock-core's loop, which registers the wake-ups before each attempt and so attempts
///    once more right after subscribing: a release between step 1 and the subscription is
///    seen by that attempt, one after it by the notification.
///
/// Returns by the deadline plus at most one attempt (each bounded by the request timeout).
///
/// If it ends without the lock after an attempt failed with an error (which the server may
/// have carried out anyway), or is dropped, `undo` (a release by owner token) runs in the
/// background: no later attempt will reuse the owner token then, so it cannot release a
/// grant this acquire returned.
pub(crate) async fn acquire_waiting<S, SF, A, AF>(
    key: &LockKey,
    deadline: Instant,
    confirm: Duration,
    subscribe: S,
    mut attempt: A,
    undo: impl Future<Output = ()> + Send + 'static,
) -> Result<Lease>
where
    S: FnOnce(Duration) -> SF,
    SF: Future<Output = Vec<Subscription>>,
    A: FnMut() -> AF,
    AF: Future<Output = Result<Attempt>>,
{
    let start = Instant::now();
    let undo = UndoOnDrop::new(undo);
    let failed = AtomicBool::new(false);
    let mut noted = || {
        let fut = attempt();
        let failed = &failed;
        async move {
            let r = fut.await;
            if r.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            r
        }
    };
    let result = async {
        let (last_err, expires_in) = match noted().await {
            Ok(Attempt::Acquired(lease)) => return Ok(lease),
            Ok(Attempt::Held { expires_in }) => (None, expires_in),
            Err(e) if e.is_retryable() => (Some(e), None),
            Err(e) => return Err(e),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(last_err.unwrap_or_else(|| timed_out(key, start)));
        }
        // A subscription that is slow to be confirmed (the subscriber connection down or
        // reconnecting) is waited for no longer than the waiter would poll, nor past the
        // holder's expiry: the waiter goes on without it, polling, and is woken by messages
        // once it is in place.
        let bound = confirm.min(left).min(MAX_POLL).min(expires_in.unwrap_or(MAX_POLL));
        let subs = subscribe(bound).await;
        let wakers: Vec<&Notify> = subs.iter().flat_map(Subscription::wakers).collect();
        lock_core::wait_for_lock(&wakers, key, deadline, MAX_POLL, &mut noted).await
    }
    .await;
    match result {
        Ok(lease) => {
            undo.disarm();
            Ok(lease)
        }
        Err(e) => {
            if failed.load(Ordering::SeqCst) {
                drop(undo); // runs the undo in the background
            } else {
                undo.disarm();
            }
            Err(match e {
                Error::WaitTimedOut { .. } => timed_out(key, start),
                e => e,
            })
        }
    }
}

fn timed_out(key: &LockKey, start: Instant) -> Error {
    Error::WaitTimedOut { key: key.full().to_owned(), waited: start.elapsed() }
}

/// Undoes a failed non-waiting attempt: runs `release` (which reports whether it got an
/// answer) once now, so that a grant the server made is gone when the error is returned, and,
/// if it got no answer, or this is dropped while it waits for one (a caller's timeout around
/// `try_acquire`), in the background as [`undo_later`] does.
pub(crate) async fn undo_now<R, RF, K>(release: R, ttl: Duration, keep: K)
where
    R: Fn() -> RF + Send + Sync + 'static,
    RF: Future<Output = bool> + Send,
    K: Send + 'static,
{
    let now = release();
    let in_background = UndoOnDrop::new(async move { undo_later(release, ttl, keep).await });
    if now.await {
        in_background.disarm();
    }
}

/// Arms `release` to run once in the background if the returned guard is dropped before
/// [`UndoOnDrop::disarm`]: the undo of one request in flight.
pub(crate) fn arm<R, RF>(release: R) -> UndoOnDrop
where
    R: FnOnce() -> RF + Send + 'static,
    RF: Future<Output = bool> + Send,
{
    UndoOnDrop::new(async move {
        release().await;
    })
}

/// [`undo_now`] for the background: the first release at once, then after each of
/// [`lock_core::cancel::LATE_GRANT_RECHECKS`], until one is answered; then, while none is,
/// once a second until the grant's `ttl` has passed (zero: not at all). A server that does
/// not answer may be a primary that died with the grant replicated: its replica, promoted by
/// Sentinel or the Cluster tens of seconds later, would keep the grant for its whole TTL
/// (`release` looks the node up on each call, so it reaches the new primary; it answers
/// `true` once the backend is dropped, which ends this). `keep` (the backend) is held
/// through the quick rechecks only: a client dropped right after a failed attempt still has
/// its grant undone, and one dropped for good is not kept open for a TTL.
pub(crate) async fn undo_later<R, RF, K>(release: R, ttl: Duration, keep: K)
where
    R: Fn() -> RF,
    RF: Future<Output = bool>,
{
    let until = lock_core::lease::add_saturating(Instant::now(), ttl);
    if undo_after(lock_core::cancel::late_grant_pauses(None), &release).await {
        return;
    }
    drop(keep);
    while Instant::now() < until {
        tokio::time::sleep(UNANSWERED_UNDO_PAUSE).await;
        if release().await {
            return;
        }
    }
}

/// How often [`undo_later`] asks again once the rechecks went unanswered.
const UNANSWERED_UNDO_PAUSE: Duration = Duration::from_secs(1);

/// Withdraws what a waiting acquire that gave up left on the server (a writer's intent, a
/// waiter's place in the queue) now rather than when it lapses: `withdraw` runs on its own
/// task, waited for only within the documented bound of a waiting acquire (`deadline` plus one
/// request `timeout`), then left to finish in the background.
pub(crate) async fn withdraw_within<F>(deadline: Instant, timeout: Duration, withdraw: F)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let budget =
        lock_core::lease::add_saturating(deadline, timeout).saturating_duration_since(Instant::now());
    let _ = tokio::time::timeout(budget, tokio::spawn(withdraw)).await;
}

/// How long a waiting writer's intent lasts unless its next attempt refreshes it: twice the
/// longest gap between two attempts (a poll and one attempt's round of `round`).
pub(crate) fn intent_ttl(round: Duration) -> Duration {
    MAX_POLL.saturating_add(round).saturating_mul(2)
}

/// The acquire script's third argument for `req`: the number of permits of a semaphore, the
/// intent of a waiting writer in ms (0: none).
pub(crate) fn extra(req: &lock_core::AcquireRequest, intent: Option<Duration>) -> u64 {
    match req.mode {
        lock_core::Mode::Permit { limit } => u64::from(limit),
        lock_core::Mode::Write => intent.map_or(0, crate::node::ttl_ms),
        _ => 0,
    }
}
