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
