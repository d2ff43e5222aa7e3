//! The guard's renewal and loss mechanics under injected faults, on tokio's paused clock: a
//! fault layer wraps the real in-memory backend and makes `extend` fail, hang or stand still.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{
    async_trait, AcquireRequest, Attempt, BackendErrorKind, Capabilities, Error, ExtendOutcome, Instant,
    Lease, LockBackend, LockClient, LockInfo, LockKey, LossReason, ReleaseOutcome, Result,
};
use lock_local::MemoryBackend;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Pass,
    /// The next N extends fail with a retryable error.
    Transient(u32),
    /// Every extend fails with an error that is not retryable.
    Fatal,
    /// Extends never answer.
    Hang,
    /// Extends succeed but report the same `valid_until` (a lease renewed elsewhere).
    StandStill,
    /// Extends take this long, then succeed.
    Slow(Duration),
    /// Extends renew with the full TTL whatever TTL is asked for (a session lease, which
    /// cannot be shortened).
    Session,
    /// Extends are applied, then their reply is lost (a retryable error).
    AppliedReplyLost,
    /// Extends are applied, then never answer.
    AppliedThenHang,
}

#[derive(Debug)]
struct Faulty {
    inner: MemoryBackend,
    mode: Mutex<Mode>,
    extends: AtomicUsize,
    release_delay: Mutex<Duration>,
    /// What reached the backend, in order: `extend` (sent), `extended` (answered), `release`.
    log: Mutex<Vec<&'static str>>,
}

impl Faulty {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryBackend::new(),
            mode: Mutex::new(Mode::Pass),
            extends: AtomicUsize::new(0),
            release_delay: Mutex::new(Duration::ZERO),
            log: Mutex::new(Vec::new()),
        })
    }
    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
}

#[async_trait]
impl LockBackend for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.inner.try_acquire(req).await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        self.extends.fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap().push("extend");
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Pass => self.inner.extend(lease, ttl).await,
            Mode::Transient(n) => {
                *self.mode.lock().unwrap() = if n <= 1 { Mode::Pass } else { Mode::Transient(n - 1) };
                Err(Error::backend_msg("faulty", BackendErrorKind::Connection, "injected transient failure"))
            }
            Mode::Fatal => {
                Err(Error::backend_msg("faulty", BackendErrorKind::Auth, "injected fatal failure"))
            }
            Mode::Hang => std::future::pending().await,
            Mode::StandStill => Ok(ExtendOutcome::Extended { valid_until: lease.valid_until() }),
            Mode::Session => self.inner.extend(lease, TTL).await,
            Mode::AppliedReplyLost => {
                self.inner.extend(lease, ttl).await?;
                Err(Error::backend_msg("faulty", BackendErrorKind::Connection, "injected lost reply"))
            }
            Mode::AppliedThenHang => {
                self.inner.extend(lease, ttl).await?;
                std::future::pending().await
            }
            Mode::Slow(d) => {
                tokio::time::sleep(d).await;
                let r = self.inner.extend(lease, ttl).await;
                self.log.lock().unwrap().push("extended");
                r
            }
        }
    }
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        self.log.lock().unwrap().push("release");
        let delay = *self.release_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.inner.release(lease).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.inner.inspect(key).await
    }
}

fn client(b: &Arc<Faulty>) -> LockClient {
    LockClient::from_arc(b.clone())
}

const TTL: Duration = Duration::from_secs(3);

#[tokio::test(start_paused = true)]
async fn transient_renewal_failures_are_retried_and_the_lock_is_kept() {
    let b = Faulty::new();
    let g = client(&b).lock("k").ttl(TTL).auto_renew().acquire().await.unwrap();
    b.set(Mode::Transient(3));
    let lost = tokio::time::timeout(TTL * 4, g.lost()).await;
    assert!(lost.is_err(), "lost after transient failures: {lost:?}");
    assert!(g.is_held());
    assert!(b.extends.load(Ordering::SeqCst) >= 4, "the failures were not retried");
    assert_eq!(g.release().await.unwrap(), ReleaseOutcome::Released);
}

#[tokio::test(start_paused = true)]
async fn a_fatal_renewal_error_fires_renewal_failed_at_once() {
    let b = Faulty::new();
    let g = client(&b).lock("k").ttl(TTL).auto_renew().acquire().await.unwrap();
    b.set(Mode::Fatal);
    let start = Instant::now();
    let reason = g.lost().await;
    assert_eq!(reason, LossReason::RenewalFailed);
    // At the first renewal (about TTL/3), long before the lease would run out.
    assert!(start.elapsed() < TTL / 2, "took {:?}", start.elapsed());
    assert!(!g.is_held());
}

#[tokio::test(start_paused = true)]
async fn a_hung_renewal_fires_at_valid_until_and_not_before() {
    let b = Faulty::new();
    let g = client(&b).lock("k").ttl(TTL).auto_renew().acquire().await.unwrap();
    let until = g.valid_until();
    b.set(Mode::Hang);
    let sig = g.loss_signal();
    let reason = g.lost().await;
    assert!(Instant::now() >= until, "loss fired {:?} early", until - Instant::now());
    assert!(Instant::now() < until + Duration::from_millis(50));
    assert!(matches!(reason, LossReason::RenewalFailed | LossReason::Expired), "{reason:?}");
    assert!(sig.is_fired(), "the cloneable loss signal did not fire");
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_cannot_move_valid_until_is_not_polled_in_a_loop() {
    let b = Faulty::new();
    b.set(Mode::StandStill);
    let g = client(&b).lock("k").ttl(TTL).auto_renew().acquire().await.unwrap();
    let reason = g.lost().await;
    assert!(matches!(reason, LossReason::Expired | LossReason::RenewalFailed), "{reason:?}");
    let calls = b.extends.load(Ordering::SeqCst);
    assert!(calls < 40, "{calls} extends within one TTL: renewal spun");
}

#[tokio::test(start_paused = true)]
async fn a_user_extend_is_not_undone_by_renewal() {
    let b = Faulty::new();
    let g = client(&b).lock("k").ttl(TTL).auto_renew().acquire().await.unwrap();
    g.extend(TTL * 10).await.unwrap();
    tokio::time::sleep(TTL * 3).await;
    assert!(g.valid_until() > Instant::now() + TTL * 5, "renewal went back to the old TTL");
    assert!(g.is_held());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_release_still_releases_in_the_background() {
    let b = Faulty::new();
    let locks = client(&b);
    let g = locks.lock("k").ttl(Duration::from_secs(60)).acquire().await.unwrap();
    *b.release_delay.lock().unwrap() = Duration::from_secs(1);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), g.release()).await.is_err(),
        "release was not slow"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        locks.inspect("k").await.unwrap().is_none(),
        "a cancelled release left the lock held for its TTL"
    );
}

#[tokio::test(start_paused = true)]
async fn no_renewal_is_sent_after_a_release() {
    // Renewal is due at TTL/3 (1 s) and each extend takes 200 ms: release before, at, during
    // and after one. The release never waits on an idle renewal task, and no extend reaches
    // the backend once the release has.
    for at_ms in [0, 500, 999, 1000, 1001, 1100, 1199, 1200, 1250] {
        let b = Faulty::new();
        b.set(Mode::Slow(Duration::from_millis(200)));
        let locks = client(&b);
        let g = locks.lock("k").ttl(TTL).auto_renew().acquire().await.unwrap();
        tokio::time::sleep(Duration::from_millis(at_ms)).await;
        assert_eq!(g.release().await.unwrap(), ReleaseOutcome::Released, "release at {at_ms} ms");
        tokio::time::sleep(TTL * 3).await;
        let log = b.log.lock().unwrap().clone();
        let release = log.iter().position(|e| *e == "release").unwrap();
        assert_eq!(log.iter().filter(|e| **e == "release").count(), 1, "release at {at_ms} ms: {log:?}");
        assert!(
            !log[release..].contains(&"extend"),
            "release at {at_ms} ms: an extend followed the release: {log:?}"
        );
        assert!(locks.inspect("k").await.unwrap().is_none(), "release at {at_ms} ms left the lock");
    }
}

#[tokio::test(start_paused = true)]
async fn a_hold_cap_ends_the_lock_with_max_hold_reached() {
    let b = Faulty::new();
    let locks = client(&b);
    let start = Instant::now();
    let g = locks.lock("k").ttl(TTL).auto_renew().max_hold(Duration::from_secs(7)).acquire().await.unwrap();
    let reason = g.lost().await;
    assert_eq!(reason, LossReason::MaxHoldReached);
    let held = start.elapsed();
    assert!(held >= Duration::from_secs(6) && held <= Duration::from_secs(7), "held {held:?}");
    // The loss fires at the client's valid_until, a drift margin before the server lets go;
    // by the cap the server must have let go.
    tokio::time::sleep_until(start + Duration::from_secs(7) + Duration::from_millis(10)).await;
    assert!(locks.lock("k").try_acquire().await.unwrap().is_some(), "the lock outlived its cap");
}

/// The hold cap's last extend (the one that makes the grant end at the cap) is retried as any
/// renewal is: one transient error gave the lock up at the last renewal's `valid_until`, up to
/// a third of a TTL before the cap, and reported it as the cap.
#[tokio::test(start_paused = true)]
async fn a_transient_error_on_the_caps_last_extend_is_retried() {
    let b = Faulty::new();
    let locks = client(&b);
    let start = Instant::now();
    let g = locks.lock("k").ttl(TTL).auto_renew().max_hold(Duration::from_secs(10)).acquire().await.unwrap();
    // Renewals come about every 0.99 s (a third of what is left of the TTL), the seventh at
    // 6.93 s; the cap's last extend is due at 7 s, a TTL before the cap.
    while b.extends.load(Ordering::SeqCst) < 7 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = b.extends.load(Ordering::SeqCst);
    b.set(Mode::Transient(1));
    let reason = g.lost().await;
    let held = start.elapsed();
    assert_eq!(reason, LossReason::MaxHoldReached);
    assert!(held >= Duration::from_millis(9950), "released {held:?} in, before the 10 s cap");
    assert!(b.extends.load(Ordering::SeqCst) >= before + 2, "the cap's last extend was not retried");
}

#[test]
fn dropping_a_guard_outside_a_runtime_does_not_panic() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let b = Faulty::new();
    let g = rt.block_on(client(&b).lock("k").ttl(TTL).acquire()).unwrap();
    drop(rt);
    drop(g); // no runtime: logged, the TTL is the backstop
}

/// A hold cap too large to add to an `Instant` means "no cap": the renewal task must not die
/// on the overflow (it used to panic, so nothing renewed and no loss signal ever fired).
#[tokio::test(start_paused = true)]
async fn an_unbounded_hold_cap_keeps_renewing() {
    let b = Faulty::new();
    let g = client(&b).lock("k").ttl(TTL).max_hold(Duration::MAX).auto_renew().acquire().await.unwrap();
    let signal = g.loss_signal();
    tokio::time::sleep(TTL * 5).await;
    assert!(g.is_held(), "the lock was not renewed past its TTL");
    assert!(!signal.is_fired());
    assert!(b.extends.load(Ordering::SeqCst) >= 5, "renewal did not run");
    assert_eq!(g.release().await.unwrap(), ReleaseOutcome::Released);
}

/// If the renewal task ends for any reason but a release (here a panic in the backend's
/// extend), the loss signal fires: loss is never silent.
#[tokio::test(start_paused = true)]
async fn a_renewal_task_that_dies_fires_the_loss() {
    #[derive(Debug)]
    struct Panicky(MemoryBackend);
    #[async_trait]
    impl LockBackend for Panicky {
        fn name(&self) -> &'static str {
            "panicky"
        }
        fn capabilities(&self) -> Capabilities {
            self.0.capabilities()
        }
        async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
            self.0.try_acquire(req).await
        }
        async fn extend(&self, _: &Lease, _: Duration) -> Result<ExtendOutcome> {
            panic!("injected panic in extend")
        }
        async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
            self.0.release(lease).await
        }
        async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
            self.0.inspect(key).await
        }
    }
    let locks = LockClient::new(Panicky(MemoryBackend::new()));
    let g = locks.lock("k").ttl(TTL).auto_renew().acquire().await.unwrap();
    let signal = g.loss_signal();
    let reason = tokio::time::timeout(TTL / 2, signal.fired()).await;
    assert_eq!(reason.ok(), Some(LossReason::RenewalFailed), "the dead renewal task was silent");
    assert!(!g.is_held());
}

/// Durations too large to add to an `Instant` saturate: no panic anywhere on the client.
#[tokio::test(start_paused = true)]
async fn huge_durations_saturate() {
    let locks = client(&Faulty::new());
    let lease = locks
        .lease_from_parts(
            "k",
            lock_core::OwnerToken::random(),
            lock_core::FencingToken::new(1),
            Duration::MAX,
        )
        .unwrap();
    assert!(lease.valid_until() <= Instant::now() + Duration::from_secs(1));
    let l = lock_core::Lease::new(
        LockKey::new("k").unwrap(),
        lock_core::OwnerToken::random(),
        lock_core::FencingToken::new(1),
        Duration::MAX,
        Instant::now(),
    );
    assert!(l.valid_until() > Instant::now() + Duration::from_secs(365 * 86_400));
    let g = locks.lock("w").ttl(TTL).wait(Duration::MAX).acquire().await.unwrap();
    assert!(matches!(locks.lock("w").ttl(Duration::MAX).acquire().await, Err(Error::InvalidTtl { .. })));
    drop(g);
}

/// At the hold cap the lock is released (also where extend cannot shorten the grant, as on a
/// session lease), then the loss fires: whoever waits for the signal finds the lock free.
#[tokio::test(start_paused = true)]
async fn the_hold_cap_releases_the_lock_then_fires() {
    let b = Faulty::new();
    let locks = client(&b);
    let start = Instant::now();
    let g = locks.lock("k").ttl(TTL).max_hold(TTL * 2).auto_renew().acquire().await.unwrap();
    b.set(Mode::Session);
    let signal = g.loss_signal();
    let reason = tokio::time::timeout(TTL * 4, signal.fired()).await.expect("the cap never ended the lock");
    assert_eq!(reason, LossReason::MaxHoldReached);
    let held_for = start.elapsed();
    // At the cap, or at `valid_until` when the lease (renewed with its full TTL) ends a drift
    // margin before it.
    assert!(held_for >= TTL * 2 - TTL / 10 && held_for <= TTL * 2, "{held_for:?}");
    assert!(!g.is_held());
    assert_eq!(locks.inspect("k").await.unwrap(), None, "the lock was not released at the cap");
    assert_eq!(b.log.lock().unwrap().last(), Some(&"release"));
    // The user's own release afterwards sends nothing and says the lock is no longer held.
    assert_eq!(g.release().await.unwrap(), ReleaseOutcome::NotHeld);
    assert_eq!(b.log.lock().unwrap().iter().filter(|e| **e == "release").count(), 1);
}

/// A shortening extend whose outcome stays unknown (its reply lost, or the call given up) may
/// have been applied: the guard must not claim the lock past what the shorter TTL gives, or it
/// would still say held while the server has let another client in.
#[tokio::test(start_paused = true)]
async fn a_shortening_extend_of_unknown_outcome_is_trusted_only_that_long() {
    for mode in [Mode::AppliedReplyLost, Mode::AppliedThenHang] {
        let b = Faulty::new();
        let locks = client(&b);
        let g = locks.lock("k").ttl(Duration::from_secs(30)).acquire().await.unwrap();
        b.set(mode);
        let r = tokio::time::timeout(Duration::from_millis(100), g.extend(Duration::from_secs(1))).await;
        assert!(!matches!(r, Ok(Ok(()))), "{mode:?}: the extend reported success: {r:?}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The server applied the shorter TTL: the grant is gone there.
        assert!(locks.inspect("k").await.unwrap().is_none(), "{mode:?}: the grant outlived its new TTL");
        assert!(!g.is_held(), "{mode:?}: the guard still claims a lock the server let go");
        let lost = tokio::time::timeout(Duration::from_millis(10), g.lost()).await;
        assert!(lost.is_ok(), "{mode:?}: no loss signal");
    }
}

/// The same for a detached lease extended by `LockClient::extend_lease`.
#[tokio::test(start_paused = true)]
async fn a_detached_lease_shortened_with_unknown_outcome_is_trusted_only_that_long() {
    let b = Faulty::new();
    let locks = client(&b);
    let g = locks.lock("k").ttl(Duration::from_secs(30)).acquire().await.unwrap();
    let mut lease = g.detach();
    b.set(Mode::AppliedReplyLost);
    assert!(locks.extend_lease(&mut lease, Duration::from_secs(1)).await.is_err());
    assert!(lease.remaining() <= Duration::from_secs(1), "still trusted for {:?}", lease.remaining());
}

/// A backend whose grants belong to a session (its loss signal, fired by the test).
#[derive(Debug)]
struct WithSession {
    inner: MemoryBackend,
    session: lock_core::LossSignal,
    /// Extends never answer.
    hang: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl LockBackend for WithSession {
    fn name(&self) -> &'static str {
        "with-session"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        Ok(match self.inner.try_acquire(req).await? {
            Attempt::Acquired(l) => Attempt::Acquired(l.with_session(self.session.clone())),
            other => other,
        })
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.extend(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        self.inner.release(lease).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.inner.inspect(key).await
    }
}

/// A session lost while a renewal is in flight (its extend unanswered) reaches the loss
/// signal's clones at once, not at `valid_until`: the renewal watches the session too.
#[tokio::test(start_paused = true)]
async fn a_session_lost_during_a_renewal_fires_the_signal_at_once() {
    let session = lock_core::LossSignal::new();
    let b =
        Arc::new(WithSession { inner: MemoryBackend::new(), session: session.clone(), hang: true.into() });
    let locks = LockClient::from_arc(b);
    let g = locks.lock("k").ttl(TTL).auto_renew().acquire().await.unwrap();
    let signal = g.loss_signal();
    // The first renewal is due at a third of the TTL: be inside it.
    tokio::time::sleep(TTL / 2).await;
    session.fire(LossReason::SessionLost);
    let reason = tokio::time::timeout(Duration::from_millis(10), signal.fired()).await;
    assert_eq!(reason.ok(), Some(LossReason::SessionLost), "the loss signal waited for valid_until");
}

/// A session's lease is renewed up to its hold cap; a renewal still retrying when the cap
/// comes (its extend unanswered) is ended by it: the lock is released and the loss fires at
/// the cap, not at the session's `valid_until` (the guard claimed the lock past its cap).
#[tokio::test(start_paused = true)]
async fn the_hold_cap_ends_a_renewal_in_flight_on_a_sessions_lease() {
    let session = lock_core::LossSignal::new();
    let b =
        Arc::new(WithSession { inner: MemoryBackend::new(), session: session.clone(), hang: true.into() });
    let locks = LockClient::from_arc(b);
    let start = tokio::time::Instant::now();
    let g = locks.lock("k").ttl(TTL).auto_renew().max_hold(TTL / 2).acquire().await.unwrap();
    let reason = g.lost().await;
    let at = start.elapsed();
    assert_eq!(reason, LossReason::MaxHoldReached);
    assert!(at <= TTL / 2 + Duration::from_millis(5), "the loss came {at:?} in, past the {:?} cap", TTL / 2);
    assert!(locks.lock("k").try_acquire().await.unwrap().is_some(), "the lock was not released at the cap");
}

/// Before the hold cap (a session's lease is renewed up to it), a lost session is still
/// reported at once: the guard stops claiming a lock others may hold.
#[tokio::test(start_paused = true)]
async fn a_session_lost_in_the_hold_caps_last_ttl_is_reported() {
    let session = lock_core::LossSignal::new();
    let b =
        Arc::new(WithSession { inner: MemoryBackend::new(), session: session.clone(), hang: false.into() });
    let locks = LockClient::from_arc(b);
    let g = locks.lock("k").ttl(TTL).auto_renew().max_hold(TTL * 3 / 2).acquire().await.unwrap();
    // Past where a lease of its own would have been capped (half a TTL in).
    tokio::time::sleep(TTL * 3 / 4).await;
    assert!(g.is_held());
    session.fire(LossReason::SessionLost);
    assert!(!g.is_held(), "the guard still claims a lock whose session is gone");
    let reason = tokio::time::timeout(Duration::from_millis(10), g.lost()).await;
    assert_eq!(reason.ok(), Some(LossReason::SessionLost));
}

/// A detached lease resumed with auto-renewal from synchronous code (no runtime) does not
/// panic: nothing can renew it, and the guard says it is lost.
#[test]
fn resuming_with_auto_renewal_outside_a_runtime_does_not_panic() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let b = Faulty::new();
    let locks = client(&b);
    let lease = rt.block_on(locks.lock("k").ttl(TTL).acquire()).unwrap().detach();
    let g = locks.resume(lease, true);
    assert!(!g.is_held(), "a guard nothing renews claims its lock");
    let _ = g.loss_signal();
    drop(g); // no runtime for the release: logged, the TTL is the backstop
    drop(rt);
}

/// A release at the hold cap that hangs (a partition) does not hold the loss back past the
/// grant: the signal fires by `valid_until` at the latest, so work cancelled on it stops
/// before another client can take the lock.
#[tokio::test(start_paused = true)]
async fn a_hanging_release_at_the_hold_cap_does_not_hold_the_loss_back() {
    let b = Faulty::new();
    let locks = client(&b);
    let g = locks.lock("k").ttl(TTL).auto_renew().max_hold(Duration::from_secs(7)).acquire().await.unwrap();
    *b.release_delay.lock().unwrap() = Duration::from_secs(30);
    let reason = tokio::time::timeout(Duration::from_secs(8), g.lost()).await;
    assert_eq!(reason, Ok(LossReason::MaxHoldReached), "the loss waited for the cap's release");
    assert!(!g.is_held());
}

/// Within the hold cap's last TTL, a user's extend that ends the grant before the cap ends the
/// guard's claim with it: `is_held` and `lost` follow `valid_until`, not only the cap.
#[tokio::test(start_paused = true)]
async fn a_short_extend_in_the_hold_caps_last_ttl_ends_the_claim_at_its_valid_until() {
    let b = Faulty::new();
    let locks = client(&b);
    let start = Instant::now();
    let g = locks.lock("k").ttl(TTL).auto_renew().max_hold(Duration::from_secs(7)).acquire().await.unwrap();
    let signal = g.loss_signal();
    // The cap's last TTL starts at 4 s.
    tokio::time::sleep_until(start + Duration::from_millis(4500)).await;
    assert!(g.is_held());
    g.extend(Duration::from_millis(100)).await.expect("extend");
    // The copy of the loss signal fires at the grant's new `valid_until`, by itself (the
    // renewal task, waiting for the cap, fired it only at the cap, 6.97 s).
    let copy = tokio::time::timeout(Duration::from_millis(500), signal.fired()).await;
    assert!(copy.is_ok(), "the loss signal's copy waited for the cap past the grant's valid_until");
    let lost = tokio::time::timeout(Duration::from_millis(500), g.lost()).await;
    assert!(lost.is_ok(), "lost() waited for the cap past the grant's valid_until");
    assert!(!g.is_held(), "the guard claims a grant that ended at 4.6 s");
    // The store lets go a drift margin after the client's `valid_until`.
    tokio::time::sleep_until(start + Duration::from_millis(4700)).await;
    assert!(!g.is_held());
    assert!(locks.lock("k").try_acquire().await.unwrap().is_some(), "the grant was still there");
}

/// A renewal that comes due while a user's extend is in flight waits for it, then renews
/// with the TTL that extend set, not the one it saw before.
#[tokio::test(start_paused = true)]
async fn a_renewal_behind_a_user_extend_renews_with_its_ttl() {
    let b = Faulty::new();
    let start = Instant::now();
    let g = client(&b).lock("k").ttl(TTL).auto_renew().acquire().await.unwrap();
    b.set(Mode::Slow(Duration::from_millis(200)));
    // Renewal is due at 1 s, while this extend is in flight (0.9 s to 1.1 s).
    tokio::time::sleep_until(start + Duration::from_millis(900)).await;
    g.extend(TTL * 10).await.unwrap();
    tokio::time::sleep_until(start + Duration::from_millis(1500)).await;
    assert_eq!(g.lease().ttl(), TTL * 10, "the renewal went back to the TTL it saw before the extend");
    assert!(g.valid_until() > Instant::now() + TTL * 5);
}

/// A hold cap that comes exactly one TTL after a renewal (the cap a whole number of TTLs
/// plus renewal periods away) still ends the lock at the cap, not at the last renewal's
/// `valid_until` up to a third of a TTL before it.
#[tokio::test(start_paused = true)]
async fn a_hold_cap_one_ttl_after_a_renewal_ends_the_lock_at_the_cap() {
    let b = Faulty::new();
    let locks = client(&b);
    let start = Instant::now();
    let cap = Duration::from_millis(6_948);
    let g = locks.lock("k").ttl(TTL).auto_renew().max_hold(cap).acquire().await.unwrap();
    let reason = g.lost().await;
    assert_eq!(reason, LossReason::MaxHoldReached);
    let held = start.elapsed();
    assert!(held >= cap - Duration::from_millis(100) && held <= cap, "held {held:?} under a {cap:?} cap");
}

/// A loss signal asked for outside a runtime first (no watchdog can start there) still gets
/// its watchdog when asked for again inside one: it fires at `valid_until`.
#[test]
fn a_loss_signal_first_asked_for_outside_a_runtime_still_fires_at_valid_until() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let locks = LockClient::new(MemoryBackend::new());
    let g = rt.block_on(locks.lock("k").ttl(Duration::from_millis(300)).acquire()).unwrap();
    let _outside = g.loss_signal();
    let fired =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), g.loss_signal().fired()).await });
    assert_eq!(fired, Ok(LossReason::Expired), "the signal never fired at valid_until");
}

/// A TTL within the drift margin would be lost as soon as granted (`valid_until` at or before
/// the request): the backends whose grants live by their TTL refuse it as `InvalidTtl`, and
/// the shortest they take leaves a grant that is held.
#[tokio::test]
async fn a_ttl_lost_as_soon_as_granted_is_refused() {
    let locks = LockClient::new(MemoryBackend::new());
    for ttl in [Duration::from_millis(1), Duration::from_millis(2)] {
        let e = locks.lock("k").ttl(ttl).acquire().await.map(|g| g.is_held());
        assert!(matches!(e, Err(Error::InvalidTtl { .. })), "{ttl:?}: {e:?}");
    }
    let start = Instant::now();
    let g = locks.lock("k").ttl(lock_core::SHORTEST_TTL).acquire().await.unwrap();
    assert!(g.valid_until() > start, "the shortest TTL taken is born lost");
    g.release().await.unwrap();
}

/// A hold cap without renewal is refused with a typed error, before anything is sent (it was
/// ignored: the lock was neither released at the cap nor reported lost there).
#[tokio::test]
async fn a_hold_cap_without_renewal_is_refused() {
    let locks = LockClient::new(MemoryBackend::new());
    let e = locks.lock("k").ttl(TTL).max_hold(Duration::from_secs(1)).acquire().await.unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(ref m) if m.contains("auto_renew")), "{e:?}");
    let e = locks.lock_all(["a", "b"]).max_hold(Duration::from_secs(1)).acquire().await.unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
    // Nothing was taken.
    locks.lock("k").try_acquire().await.unwrap().expect("k is free").release().await.unwrap();
}
