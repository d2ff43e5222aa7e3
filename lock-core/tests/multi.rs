//! Multi-key locks over the in-memory backend: all or nothing, canonical order, nothing left
//! behind, lost when any part is lost.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lock_core::{Error, KeyError, LockClient, LossReason, ReleaseOutcome};
use lock_local::MemoryBackend;

fn client() -> (MemoryBackend, LockClient) {
    let store = MemoryBackend::new();
    (store.clone(), LockClient::new(store))
}

#[tokio::test]
async fn all_names_are_taken_with_their_own_tokens() {
    let (_, locks) = client();
    let g = locks.lock_all(["b", "a", "c"]).ttl(Duration::from_secs(30)).acquire().await.unwrap();
    let keys: Vec<&str> = g.fencing_tokens().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c"], "not in canonical order");
    for name in ["a", "b", "c"] {
        assert!(locks.lock(name).try_acquire().await.unwrap().is_none(), "{name} is not held");
        let token = locks.inspect(name).await.unwrap().unwrap().fencing_token.unwrap();
        assert_eq!(g.fencing_token_of(name), Some(token));
    }
    assert_eq!(g.release().await.unwrap(), ReleaseOutcome::Released);
    for name in ["a", "b", "c"] {
        assert!(locks.inspect(name).await.unwrap().is_none(), "{name} was left held");
    }
}

#[tokio::test]
async fn one_held_name_means_nothing_is_taken() {
    let (_, locks) = client();
    let b = locks.lock("b").ttl(Duration::from_secs(30)).acquire().await.unwrap();
    assert!(locks.lock_all(["a", "b", "c"]).try_acquire().await.unwrap().is_none());
    // Another client (a task waiting for a name it holds gets AlreadyHeld instead).
    let other = LockClient::from_arc(locks.backend().clone());
    let err = other.lock_all(["a", "b", "c"]).wait(Duration::from_millis(200)).acquire().await.unwrap_err();
    assert!(matches!(err, Error::WaitTimedOut { .. }), "{err:?}");
    for name in ["a", "c"] {
        assert!(locks.inspect(name).await.unwrap().is_none(), "{name} was left behind");
    }
    drop(b);
}

#[tokio::test]
async fn a_dropped_acquire_leaves_nothing_behind() {
    let (_, locks) = client();
    let c = locks.lock("c").ttl(Duration::from_secs(30)).acquire().await.unwrap();
    // a and b are taken, then the acquire (of another client) waits for c and is dropped.
    let other = LockClient::from_arc(locks.backend().clone());
    let attempt = other.lock_all(["a", "b", "c"]).wait(Duration::from_secs(30)).acquire();
    assert!(tokio::time::timeout(Duration::from_millis(200), attempt).await.is_err());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for name in ["a", "b"] {
        while locks.inspect(name).await.unwrap().is_some() {
            assert!(tokio::time::Instant::now() < deadline, "{name} was left behind");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_multi_locks_never_deadlock() {
    let (_, locks) = client();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let locks = locks.clone();
        let names = if i % 2 == 0 { vec!["x", "y", "z"] } else { vec!["z", "y", "x"] };
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                let g = locks
                    .lock_all(&names)
                    .ttl(Duration::from_secs(30))
                    .wait(Duration::from_secs(20))
                    .acquire()
                    .await?;
                tokio::task::yield_now().await;
                g.release().await?;
            }
            Ok::<_, Error>(())
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(tasks)).await;
    for r in all.expect("multi-locks deadlocked") {
        r.unwrap().unwrap();
    }
}

#[tokio::test]
async fn losing_any_part_loses_the_guard() {
    let (store, locks) = client();
    let g = locks.lock_all(["a", "b"]).ttl(Duration::from_millis(600)).auto_renew().acquire().await.unwrap();
    let signal = g.loss_signal();
    // Someone deletes part b behind the guard's back (an operator's forced release).
    let lease_b = {
        let info = locks.inspect("b").await.unwrap().unwrap();
        locks
            .lease_from_parts("b", info.owner.unwrap(), info.fencing_token.unwrap(), Duration::from_secs(1))
            .unwrap()
    };
    assert_eq!(LockClient::new(store).release_lease(&lease_b).await.unwrap(), ReleaseOutcome::Released);
    let reason =
        tokio::time::timeout(Duration::from_secs(5), signal.fired()).await.expect("the loss never fired");
    assert_eq!(reason, LossReason::NotHeld);
    assert!(!g.is_held());
    let _ = g.release().await;
    assert!(locks.inspect("a").await.unwrap().is_none(), "part a was left held");
}

#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let (_, locks) = client();
    let none: [&str; 0] = [];
    assert!(matches!(locks.lock_all(none).acquire().await, Err(Error::InvalidKey(KeyError::NoKeys))));
    assert!(matches!(
        locks.lock_all(["a", "b", "a"]).acquire().await,
        Err(Error::InvalidKey(KeyError::Duplicate(k))) if k == "a"
    ));
    assert!(matches!(locks.lock_all(["a", ""]).acquire().await, Err(Error::InvalidKey(KeyError::Empty))));
    assert!(locks.inspect("a").await.unwrap().is_none());
}

#[tokio::test]
async fn primitives_a_backend_lacks_are_unsupported_and_bad_permits_are_typed() {
    let (_, locks) = client();
    let caps = locks.capabilities().clone();
    if caps.max_permits == 0 {
        let e = locks.semaphore("s", 3).acquire().await.unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported { capability, .. } if capability.contains("semaphore")),
            "{e:?}"
        );
    } else {
        assert!(matches!(
            locks.semaphore("s", 0).acquire().await,
            Err(Error::InvalidPermits { permits: 0, .. })
        ));
        let over = caps.max_permits.min(lock_core::MAX_PERMITS) + 1;
        assert!(matches!(locks.semaphore("s", over).acquire().await, Err(Error::InvalidPermits { .. })));
    }
    if !caps.read_write {
        let e = locks.read_lock("r").acquire().await.unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported { capability, .. } if capability.contains("read-write")),
            "{e:?}"
        );
    }
}

/// A name that ends another name ("b" and "a/b") gets its own token, not the other's.
#[tokio::test]
async fn each_names_token_is_its_own_when_one_name_ends_another() {
    let (_, locks) = client();
    for _ in 0..3 {
        locks.lock("b").acquire().await.unwrap().release().await.unwrap();
    }
    let g = locks.lock_all(["a/b", "b"]).ttl(Duration::from_secs(30)).acquire().await.unwrap();
    for name in ["a/b", "b"] {
        let token = locks.inspect(name).await.unwrap().unwrap().fencing_token.unwrap();
        assert_eq!(g.fencing_token_of(name), Some(token), "{name}");
    }
    g.release().await.unwrap();
}

/// A part taken early that expired while the acquire waited for a later one (and was taken by
/// someone else meanwhile) is not handed out as held: all or nothing.
#[tokio::test(start_paused = true)]
async fn a_part_that_expired_while_waiting_for_the_rest_is_not_handed_out() {
    let (_, locks) = client();
    let other = LockClient::from_arc(locks.backend().clone());
    let third = LockClient::from_arc(locks.backend().clone());
    // b is held until 2 s (no renewal).
    let _b = other.lock("b").ttl(Duration::from_secs(2)).acquire().await.unwrap();
    let multi = tokio::spawn(async move {
        let g = locks
            .lock_all(["a", "b"])
            .ttl(Duration::from_secs(1))
            .wait(Duration::from_secs(5))
            .acquire()
            .await;
        g.map(|g| g.is_held())
    });
    // a, taken at once with a 1 s TTL, expires at 1 s; a third client takes it at 1.5 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a = third.lock("a").ttl(Duration::from_secs(30)).try_acquire().await.unwrap();
    assert!(a.is_some(), "a did not expire");
    match multi.await.unwrap() {
        Err(Error::WaitTimedOut { .. }) => {}
        other => panic!("expected a timeout while the third client holds a, got {other:?}"),
    }
}

/// An acquire dropped while it releases what it took (after a name stayed held) still
/// releases all of it in the background: none is left for its TTL.
#[tokio::test(start_paused = true)]
async fn an_acquire_dropped_while_it_gives_back_what_it_took_leaves_nothing_behind() {
    let store = MemoryBackend::new();
    let locks = LockClient::new(Scripted { slow_release: true, ..Scripted::on(&store) });
    let plain = LockClient::new(store);
    let _c = plain.lock("c").ttl(Duration::from_secs(60)).acquire().await.unwrap();
    let attempt = locks
        .lock_all(["a", "b", "c"])
        .ttl(Duration::from_secs(30))
        .wait(Duration::from_millis(100))
        .acquire();
    // Times out on c at 100 ms, then releases a and b (1 s each, together): dropped midway.
    assert!(tokio::time::timeout(Duration::from_millis(600), attempt).await.is_err());
    tokio::time::sleep(Duration::from_secs(5)).await;
    for name in ["a", "b"] {
        assert!(plain.inspect(name).await.unwrap().is_none(), "{name} was left behind");
    }
}

/// A name that stays held past the deadline ends the acquire within the wait and one
/// release's time, however many names were taken before it: they are given back at once,
/// not one after another. A guard releases its names at once too.
#[tokio::test(start_paused = true)]
async fn a_timed_out_acquire_gives_back_what_it_took_all_at_once() {
    let store = MemoryBackend::new();
    let locks = LockClient::new(Scripted { slow_release: true, ..Scripted::on(&store) });
    let plain = LockClient::new(store);
    let _e = plain.lock("e").ttl(Duration::from_secs(60)).acquire().await.unwrap();
    let start = tokio::time::Instant::now();
    let got = locks
        .lock_all(["a", "b", "c", "d", "e"])
        .ttl(Duration::from_secs(30))
        .wait(Duration::from_millis(100))
        .acquire()
        .await;
    assert!(matches!(got, Err(Error::WaitTimedOut { .. })), "{got:?}");
    // Four releases of a second each: one second, not four.
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1500), "the acquire gave back its names one by one: {took:?}");
    for name in ["a", "b", "c", "d"] {
        assert!(plain.inspect(name).await.unwrap().is_none(), "{name} was left behind");
    }
    // A guard's release too.
    let g = locks.lock_all(["a", "b", "c", "d"]).ttl(Duration::from_secs(30)).acquire().await.unwrap();
    let start = tokio::time::Instant::now();
    assert_eq!(g.release().await.unwrap(), ReleaseOutcome::Released);
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1500), "the guard released its names one by one: {took:?}");
}

/// A retryable error of the atomic first try does not end a waiting acquire: the names are
/// then taken one at a time, as a single name's wait retries, under one owner token.
#[tokio::test]
async fn a_retryable_error_of_the_atomic_try_is_waited_through() {
    let store = MemoryBackend::new();
    let locks = LockClient::new(Scripted { atomic: Some(Atomic::Fails), ..Scripted::on(&store) });
    let g = locks.lock_all(["a", "b"]).wait(Duration::from_secs(2)).acquire().await.unwrap();
    let plain = LockClient::new(store);
    for name in ["a", "b"] {
        let info = plain.inspect(name).await.unwrap().unwrap();
        assert_eq!(info.owner, Some(g.lease().owner()), "{name}'s owner is not the guard's");
    }
    assert_eq!(g.release().await.unwrap(), ReleaseOutcome::Released);
    // Without a wait, the error is the answer.
    assert!(locks.lock_all(["a", "b"]).try_acquire().await.is_err());
}

/// An atomic try that fails retryably past the deadline (a server that stopped answering:
/// the request timed out) is the answer: no name is asked for after it, each of which could
/// take another request timeout.
#[tokio::test(start_paused = true)]
async fn a_retryable_error_of_the_atomic_try_past_the_deadline_is_the_answer() {
    let backend = Scripted { atomic: Some(Atomic::FailsSlowly), ..Scripted::on(&MemoryBackend::new()) };
    let locks = LockClient::new(backend.clone());
    let start = lock_core::Instant::now();
    let res = locks.lock_all(["a", "b", "c"]).wait(Duration::from_secs(1)).acquire().await;
    assert!(matches!(&res, Err(e) if e.is_retryable()), "{:?}", res.map(|g| g.fencing_tokens().to_vec()));
    assert!(start.elapsed() < Duration::from_millis(1600), "{:?}", start.elapsed());
    let seen = backend.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|(k, _)| *k == "all"), "names were asked for past the deadline: {seen:?}");
}

/// The names taken one at a time after the atomic try are asked for under another owner
/// token than that try: a delayed copy of it, or of its undo, cannot touch them.
#[tokio::test]
async fn each_round_of_taking_names_has_its_own_owner_token() {
    let backend = Scripted { atomic: Some(Atomic::Refuses), ..Scripted::on(&MemoryBackend::new()) };
    let locks = LockClient::new(backend.clone());
    let g = locks.lock_all(["a", "b"]).wait(Duration::from_secs(1)).acquire().await.unwrap();
    let seen = backend.seen.lock().unwrap().clone();
    let atomic = seen.iter().find(|(k, _)| *k == "all").unwrap().1;
    let one: Vec<_> = seen.iter().filter(|(k, _)| *k == "one").map(|(_, o)| *o).collect();
    assert_eq!(one.len(), 2, "{seen:?}");
    assert!(one.iter().all(|o| *o != atomic), "a name was asked for under the atomic try's token: {seen:?}");
    assert_eq!(g.lease().owner(), one[0]);
    g.release().await.unwrap();
}

/// Names `a` and `b` taken one at a time with a 4 s hold cap, while another client holds `b`
/// until `b_freed_at`: when the guard was had and when it was lost (since the start), and why.
async fn capped_pair(ttl: Duration, b_freed_at: Duration) -> (Duration, LossReason, Duration) {
    let backend = Scripted::on(&MemoryBackend::new());
    let locks = LockClient::new(backend.clone());
    let other = LockClient::new(backend);
    let b = other.lock("b").ttl(Duration::from_secs(30)).acquire().await.unwrap();
    let start = tokio::time::Instant::now();
    let multi = tokio::spawn(async move {
        let g = locks
            .lock_all(["a", "b"])
            .ttl(ttl)
            .auto_renew()
            .max_hold(Duration::from_secs(4))
            .wait(Duration::from_secs(10))
            .acquire()
            .await
            .unwrap();
        let got = start.elapsed();
        let reason = g.lost().await;
        (got, reason, start.elapsed())
    });
    tokio::time::sleep(b_freed_at).await;
    b.release().await.unwrap();
    multi.await.unwrap()
}

/// A multi-key lock taken one name at a time counts its hold cap from its first name's grant:
/// that name is held while the later ones are waited for (the cap counted from the last name,
/// so the first was held a whole wait past it).
#[tokio::test(start_paused = true)]
async fn a_multi_key_hold_cap_counts_from_the_first_name() {
    // a is taken at once; b is waited for until it is released at 2 s.
    let (_, reason, held) = capped_pair(Duration::from_secs(5), Duration::from_secs(2)).await;
    assert_eq!(reason, LossReason::MaxHoldReached);
    assert!(held <= Duration::from_millis(4100), "a was held {held:?} under a 4 s cap");
}

/// A later name that is not had before the first name's hold cap comes: the round gives back
/// what it took and starts again (it handed out a guard already past its cap, lost at once).
#[tokio::test(start_paused = true)]
async fn a_multi_key_wait_past_the_first_names_cap_starts_again() {
    // b is released at 6 s, past the 4 s cap of a taken at once.
    let (got, reason, lost) = capped_pair(Duration::from_secs(30), Duration::from_secs(6)).await;
    assert_eq!(reason, LossReason::MaxHoldReached);
    assert!(
        lost - got >= Duration::from_secs(1),
        "got at {got:?}, lost at {lost:?}: handed out past its cap"
    );
    assert!(lost <= Duration::from_millis(8100), "lost at {lost:?}: a held past its cap");
}

/// What [`Scripted`]'s atomic multi-key request does.
#[derive(Debug, Clone, Copy)]
enum Atomic {
    /// Fails with a retryable error.
    Fails,
    /// Finds a name held.
    Refuses,
    /// Fails with a retryable error after a second and a half.
    FailsSlowly,
}

/// The in-memory backend with faults: names taken one at a time (`atomic: None`) or an
/// atomic request that fails or refuses, releases that take a second, and the owner token
/// of every request recorded.
#[derive(Debug, Clone)]
struct Scripted {
    inner: MemoryBackend,
    atomic: Option<Atomic>,
    slow_release: bool,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(&'static str, lock_core::OwnerToken)>>>,
}

impl Scripted {
    fn on(store: &MemoryBackend) -> Self {
        Self { inner: store.clone(), atomic: None, slow_release: false, seen: Default::default() }
    }
}

#[lock_core::async_trait]
impl lock_core::LockBackend for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    fn capabilities(&self) -> lock_core::Capabilities {
        self.inner.capabilities().with_atomic_multi_key(self.atomic.is_some())
    }
    async fn try_acquire(&self, req: &lock_core::AcquireRequest) -> lock_core::Result<lock_core::Attempt> {
        self.seen.lock().unwrap().push(("one", req.owner));
        self.inner.try_acquire(req).await
    }
    async fn try_acquire_all(
        &self,
        reqs: &[lock_core::AcquireRequest],
    ) -> lock_core::Result<Option<Vec<lock_core::Lease>>> {
        self.seen.lock().unwrap().push(("all", reqs[0].owner));
        match self.atomic {
            Some(Atomic::Fails) => {
                Err(Error::backend_msg("scripted", lock_core::BackendErrorKind::Connection, "injected"))
            }
            Some(Atomic::Refuses) => Ok(None),
            Some(Atomic::FailsSlowly) => {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                Err(Error::backend_msg("scripted", lock_core::BackendErrorKind::Connection, "injected"))
            }
            None => self.inner.try_acquire_all(reqs).await,
        }
    }
    async fn extend(
        &self,
        lease: &lock_core::Lease,
        ttl: Duration,
    ) -> lock_core::Result<lock_core::ExtendOutcome> {
        self.inner.extend(lease, ttl).await
    }
    async fn release(&self, lease: &lock_core::Lease) -> lock_core::Result<ReleaseOutcome> {
        if self.slow_release {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.inner.release(lease).await
    }
    async fn inspect(&self, key: &lock_core::LockKey) -> lock_core::Result<Option<lock_core::LockInfo>> {
        self.inner.inspect(key).await
    }
}

/// A detached multi-key lease stands for every name: releasing it releases them all, extending
/// it extends them all, and a guard resumed from it renews them all.
#[tokio::test(start_paused = true)]
async fn a_detached_multi_key_lease_covers_every_name() {
    let (_, locks) = client();
    let ttl = Duration::from_secs(3);
    let other = LockClient::from_arc(locks.backend().clone());
    // Released from its lease.
    let lease = locks.lock_all(["a", "b"]).ttl(ttl).acquire().await.unwrap().into_guard().detach();
    assert_eq!(locks.release_lease(&lease).await.unwrap(), ReleaseOutcome::Released);
    for name in ["a", "b"] {
        assert!(locks.inspect(name).await.unwrap().is_none(), "{name} was left held");
    }
    // Extended from its lease.
    let mut lease = locks.lock_all(["a", "b"]).ttl(ttl).acquire().await.unwrap().into_guard().detach();
    tokio::time::sleep(Duration::from_secs(2)).await;
    locks.extend_lease(&mut lease, ttl).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in ["a", "b"] {
        assert!(other.lock(name).try_acquire().await.unwrap().is_none(), "{name} was not extended");
    }
    // Resumed with renewal.
    let g = locks.resume(lease, true);
    tokio::time::sleep(ttl * 3).await;
    assert!(g.is_held());
    for name in ["a", "b"] {
        assert!(other.lock(name).try_acquire().await.unwrap().is_none(), "{name} was not renewed");
    }
    assert_eq!(g.release().await.unwrap(), ReleaseOutcome::Released);
    for name in ["a", "b"] {
        assert!(locks.inspect(name).await.unwrap().is_none(), "{name} was left held");
    }
}

/// A backend that gives every lease the one loss signal of its session (the trait allows it).
#[derive(Debug, Clone)]
struct SharedSession {
    inner: MemoryBackend,
    session: lock_core::LossSignal,
}

#[lock_core::async_trait]
impl lock_core::LockBackend for SharedSession {
    fn name(&self) -> &'static str {
        "shared-session"
    }
    fn capabilities(&self) -> lock_core::Capabilities {
        self.inner.capabilities().with_atomic_multi_key(false)
    }
    async fn try_acquire(&self, req: &lock_core::AcquireRequest) -> lock_core::Result<lock_core::Attempt> {
        Ok(match self.inner.try_acquire(req).await? {
            lock_core::Attempt::Acquired(l) => {
                lock_core::Attempt::Acquired(l.with_session(self.session.clone()))
            }
            held => held,
        })
    }
    async fn extend(
        &self,
        lease: &lock_core::Lease,
        ttl: Duration,
    ) -> lock_core::Result<lock_core::ExtendOutcome> {
        self.inner.extend(lease, ttl).await
    }
    async fn release(&self, lease: &lock_core::Lease) -> lock_core::Result<ReleaseOutcome> {
        self.inner.release(lease).await
    }
    async fn inspect(&self, key: &lock_core::LockKey) -> lock_core::Result<Option<lock_core::LockInfo>> {
        self.inner.inspect(key).await
    }
}

/// Releasing a multi-key guard of one name ends its own watch of the session, not the session:
/// the other guards on that session stay held (the combined signal was the session's own
/// signal for one part, and the release fired it).
#[tokio::test]
async fn releasing_a_one_name_multi_key_guard_loses_no_other_guard_of_its_session() {
    let backend = SharedSession { inner: MemoryBackend::new(), session: lock_core::LossSignal::new() };
    let locks = LockClient::new(backend.clone());
    let other = locks.lock("x").ttl(Duration::from_secs(30)).acquire().await.unwrap();
    let multi = locks.lock_all(["a"]).ttl(Duration::from_secs(30)).acquire().await.unwrap();
    assert_eq!(multi.release().await.unwrap(), ReleaseOutcome::Released);
    assert!(!backend.session.is_fired(), "the session's signal was fired by a multi-key release");
    assert!(other.is_held(), "another guard of the session was lost");
    other.release().await.unwrap();
}
