//! Renewal in batches: the renewals of many held locks go out in a few extend_many calls, and
//! a key found gone in a batch fires that lock's loss alone.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, ExtendOutcome, Lease, LockBackend, LockClient,
    LockInfo, LockKey, LossReason, ReleaseOutcome, Result,
};
use lock_local::MemoryBackend;

#[derive(Debug, Default)]
struct Batching {
    inner: MemoryBackend,
    calls: AtomicUsize,
    extended: AtomicUsize,
    /// The next `extend_many` never answers.
    hang_next: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl LockBackend for Batching {
    fn name(&self) -> &'static str {
        "batching"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities().with_batch_extend(true)
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.inner.try_acquire(req).await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.extended.fetch_add(1, Ordering::SeqCst);
        self.inner.extend(lease, ttl).await
    }
    async fn extend_many(&self, grants: &[(Lease, Duration)]) -> Vec<Result<ExtendOutcome>> {
        if self.hang_next.swap(false, Ordering::SeqCst) {
            return std::future::pending().await;
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.extended.fetch_add(grants.len(), Ordering::SeqCst);
        let mut out = Vec::new();
        for (l, ttl) in grants {
            out.push(self.inner.extend(l, *ttl).await);
        }
        out
    }
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        self.inner.release(lease).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.inner.inspect(key).await
    }
}

#[tokio::test(start_paused = true)]
async fn many_held_locks_renew_in_a_few_requests() {
    let backend = Arc::new(Batching::default());
    let locks = LockClient::from_arc(backend.clone());
    let mut guards = Vec::new();
    for i in 0..200 {
        guards.push(
            locks.lock(&format!("k{i}")).ttl(Duration::from_secs(3)).auto_renew().acquire().await.unwrap(),
        );
        // Spread the grants over a second, as a service's locks would be.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(guards.iter().all(|g| g.is_held()), "a lock was lost under batched renewal");
    let (calls, extended) = (backend.calls.load(Ordering::SeqCst), backend.extended.load(Ordering::SeqCst));
    assert!(extended >= 200 * 4, "only {extended} renewals in 12 s of 3 s TTLs");
    assert!(calls * 10 <= extended, "{calls} requests for {extended} renewals: not batched");
    // A key deleted behind one guard's back: that lock alone is lost.
    let victim = guards.swap_remove(7);
    let info = locks.inspect(victim.key()).await.unwrap().unwrap();
    let lease = locks
        .lease_from_parts(victim.key(), info.owner.unwrap(), victim.fencing_token(), Duration::from_secs(1))
        .unwrap();
    locks.release_lease(&lease).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), victim.lost())
        .await
        .expect("the victim's loss never fired");
    assert_eq!(reason, LossReason::NotHeld);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(guards.iter().all(|g| g.is_held()), "another lock was lost with the victim");
    for g in guards {
        g.release().await.unwrap();
    }
}

/// A short TTL's renewal that joins a batch opened by a long TTL's waits only its own window:
/// the long one's 100 ms would outlast a 90 ms lease's validity left at its renewal (60 ms).
#[tokio::test(start_paused = true)]
async fn a_short_ttl_is_not_held_back_by_a_long_ttls_batch() {
    let backend = Arc::new(Batching::default());
    let locks = LockClient::from_arc(backend.clone());
    let mut long = Vec::new();
    // Twenty 3 s locks granted 50 ms apart: a renewal falls due every 50 ms, so a batch with a
    // 100 ms window is almost always open.
    for i in 0..20 {
        long.push(
            locks.lock(&format!("long{i}")).ttl(Duration::from_secs(3)).auto_renew().acquire().await.unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let short = locks.lock("short").ttl(Duration::from_millis(90)).auto_renew().acquire().await.unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(3), short.lost()).await;
    assert!(lost.is_err(), "the short lock was lost: {lost:?}");
    assert!(short.is_held());
    assert!(long.iter().all(|g| g.is_held()));
}

/// A batch whose request hangs does not hold back the renewals that fall due after it.
#[tokio::test(start_paused = true)]
async fn a_hung_batch_does_not_hold_back_the_next() {
    let backend = Arc::new(Batching::default());
    let locks = LockClient::from_arc(backend.clone());
    let first = locks.lock("first").ttl(Duration::from_secs(3)).auto_renew().acquire().await.unwrap();
    // The first renewal (due at 1 s) hangs.
    backend.hang_next.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = locks.lock("second").ttl(Duration::from_secs(3)).auto_renew().acquire().await.unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(6), second.lost()).await;
    assert!(lost.is_err(), "the second lock was lost behind the hung batch: {lost:?}");
    // The first lock's renewal hung until its validity ran out.
    assert!(!first.is_held());
}

/// A client used from two runtimes: the batcher its first renewal started on one runtime,
/// which is then left alive but idle (a current-thread runtime no one drives), does not
/// leave the other runtime's guards without renewal: each runtime batches its own.
#[test]
fn guards_on_another_runtime_renew_while_the_first_runtime_is_idle() {
    let locks = LockClient::new(Batching::default());
    let idle = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let first = idle.block_on(async {
        let g = locks.lock("on-idle").ttl(Duration::from_millis(300)).auto_renew().acquire().await.unwrap();
        // Past its first renewal: the batcher runs on this runtime.
        tokio::time::sleep(Duration::from_millis(250)).await;
        g
    });
    // `idle` stays alive, and nothing drives it from now on.
    let main = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    main.block_on(async {
        let g = locks.lock("on-main").ttl(Duration::from_millis(300)).auto_renew().acquire().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(g.is_held(), "renewal on the busy runtime waited for the idle one's batcher");
        g.release().await.unwrap();
    });
    let _ = first.detach();
    drop(idle);
}
