//! The suite's checks can fail: backends that break a promise are caught.

use std::time::Duration;

use conformance_tests::Suite;
use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, ExtendOutcome, Lease, LockBackend, LockClient,
    LockInfo, LockKey, ReleaseOutcome, Result, WakeMode,
};
use lock_local::MemoryBackend;

/// A backend that claims `WakeMode::Notify` but only polls (the trait's default `acquire`).
#[derive(Debug, Clone)]
struct ClaimsNotifyButPolls(MemoryBackend);

#[async_trait]
impl LockBackend for ClaimsNotifyButPolls {
    fn name(&self) -> &'static str {
        "claims-notify"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities().with_wake(WakeMode::Notify)
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.0.try_acquire(req).await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        self.0.extend(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        self.0.release(lease).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.0.inspect(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_claims_notify_but_polls_fails_the_wake_up_check() {
    let store = MemoryBackend::new();
    let report = Suite::new("claims-notify", move || {
        let store = store.clone();
        async move { Ok(LockClient::new(ClaimsNotifyButPolls(store))) }
    })
    .only("waiting_acquire_wakes_by_notification")
    .run_report()
    .await;
    assert!(report.passed.is_empty(), "a polling backend passed the notification check: {report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].1.contains("behaves like polling"), "{report:?}");
}

/// A backend that grants every request, held or not, each with a new token: it breaks
/// mutual exclusion (promise 1) and nothing else it can help.
#[derive(Debug, Default)]
struct GrantsEveryone {
    next: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl LockBackend for GrantsEveryone {
    fn name(&self) -> &'static str {
        "grants-everyone"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let lease = Lease::new(
            req.key.clone(),
            req.owner,
            lock_core::FencingToken::new(token),
            req.ttl,
            lock_core::Instant::now(),
        );
        Ok(Attempt::Acquired(lease.with_mode(req.mode)))
    }
    async fn extend(&self, _: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        Ok(ExtendOutcome::Extended { valid_until: lock_core::Instant::now() + ttl })
    }
    async fn release(&self, _: &Lease) -> Result<ReleaseOutcome> {
        Ok(ReleaseOutcome::Released)
    }
    async fn inspect(&self, _: &LockKey) -> Result<Option<LockInfo>> {
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_grants_everyone_fails_the_exclusion_checks() {
    let backend = std::sync::Arc::new(GrantsEveryone::default());
    let report = Suite::new("grants-everyone", move || {
        let backend = backend.clone();
        async move { Ok(LockClient::from_arc(backend)) }
    })
    .only("mutual_exclusion_shared_client")
    .only("mutual_exclusion_separate_clients")
    .run_report()
    .await;
    // Checks run concurrently: their order in the report is the order they ended.
    let mut failed: Vec<&str> = report.failed.iter().map(|(n, _)| *n).collect();
    failed.sort_unstable();
    assert_eq!(failed, ["mutual_exclusion_separate_clients", "mutual_exclusion_shared_client"], "{report:?}");
}

/// A filter that matches no check fails the run instead of passing it with nothing checked.
#[test]
fn a_run_in_which_no_check_ran_fails() {
    let run = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            Suite::new("memory", || async { Ok(LockClient::new(MemoryBackend::new())) })
                .only("no_such_check")
                .run()
                .await;
        });
    });
    assert!(run.join().is_err(), "a run that checked nothing passed");
}

/// A backend whose store keeps each grant for twice the TTL it reports: a crashed holder
/// blocks others for two leases while its capabilities promise one.
#[derive(Debug, Clone)]
struct KeepsGrantsTwice(MemoryBackend);

#[async_trait]
impl LockBackend for KeepsGrantsTwice {
    fn name(&self) -> &'static str {
        "keeps-grants-twice"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let sent = lock_core::Instant::now();
        let doubled = AcquireRequest { ttl: req.ttl * 2, ..req.clone() };
        Ok(match self.0.try_acquire(&doubled).await? {
            Attempt::Acquired(l) => Attempt::Acquired(
                Lease::new(l.key().clone(), l.owner(), l.fencing_token(), req.ttl, sent).with_mode(l.mode()),
            ),
            other => other,
        })
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let sent = lock_core::Instant::now();
        Ok(match self.0.extend(lease, ttl * 2).await? {
            ExtendOutcome::Extended { .. } => {
                ExtendOutcome::Extended { valid_until: lock_core::lease::valid_until(sent, ttl) }
            }
            other => other,
        })
    }
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        self.0.release(lease).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.0.inspect(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_keeps_crashed_grants_for_two_leases_fails_the_crash_check() {
    let store = MemoryBackend::new();
    let report = Suite::new("keeps-grants-twice", move || {
        let store = store.clone();
        async move { Ok(LockClient::new(KeepsGrantsTwice(store))) }
    })
    .only("crashed_holder_blocks_at_most_ttl")
    .run_report()
    .await;
    assert!(report.passed.is_empty(), "a backend keeping crashed grants twice as long passed: {report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].1.contains("blocked for"), "{report:?}");
}

/// A backend whose grant is made before its reply comes (as a server's is), with nothing
/// that undoes a grant whose reply was never read: an attempt cut in between leaves it.
#[derive(Debug, Clone)]
struct LeavesCutGrants(MemoryBackend);

#[async_trait]
impl LockBackend for LeavesCutGrants {
    fn name(&self) -> &'static str {
        "leaves-cut-grants"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let attempt = self.0.try_acquire(req).await;
        // The reply on its way back.
        tokio::time::sleep(Duration::from_millis(2)).await;
        attempt
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        self.0.extend(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        self.0.release(lease).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.0.inspect(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_leaves_cut_grants_fails_the_cancellation_checks() {
    let store = MemoryBackend::new();
    let report = Suite::new("leaves-cut-grants", move || {
        let store = store.clone();
        async move { Ok(LockClient::new(LeavesCutGrants(store))) }
    })
    .only("cancelled_attempts_leave_nothing")
    .only("cancelled_permit_attempts_leave_nothing")
    .only("cancelled_read_write_attempts_leave_nothing")
    .run_report()
    .await;
    let mut failed: Vec<&str> = report.failed.iter().map(|(n, _)| *n).collect();
    failed.sort_unstable();
    assert_eq!(
        failed,
        [
            "cancelled_attempts_leave_nothing",
            "cancelled_permit_attempts_leave_nothing",
            "cancelled_read_write_attempts_leave_nothing"
        ],
        "{report:?}"
    );
}

/// A backend whose waits run to twice their deadline.
#[derive(Debug, Clone)]
struct WaitsTwiceAsLong(MemoryBackend);

#[async_trait]
impl LockBackend for WaitsTwiceAsLong {
    fn name(&self) -> &'static str {
        "waits-twice"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.0.try_acquire(req).await
    }
    async fn acquire(&self, req: &AcquireRequest, deadline: lock_core::Instant) -> Result<Lease> {
        let now = lock_core::Instant::now();
        self.0.acquire(req, deadline + deadline.saturating_duration_since(now)).await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        self.0.extend(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        self.0.release(lease).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.0.inspect(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_waits_run_twice_as_long_fails_the_deadline_check() {
    let store = MemoryBackend::new();
    let report = Suite::new("waits-twice", move || {
        let store = store.clone();
        async move { Ok(LockClient::new(WaitsTwiceAsLong(store))) }
    })
    .only("waiting_acquire_times_out_at_deadline")
    .run_report()
    .await;
    assert!(report.passed.is_empty(), "{report:?}");
    assert!(report.failed.first().is_some_and(|(_, why)| why.contains("long past")), "{report:?}");
}
