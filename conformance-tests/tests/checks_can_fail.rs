//! The suite's checks can fail: backends that break a promise are caught.

use std::time::Duration;

use conformance_tests::{Report, Suite};
use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, ExtendOutcome, Lease, LockBackend, LockClient,
    LockInfo, LockKey, ReleaseOutcome, Result, WakeMode,
};
use lock_local::MemoryBackend;

/// How a [`Flawed`] memory backend breaks a promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// Claims `WakeMode::Notify` but only polls (the trait's default `acquire`).
    ClaimsNotifyButPolls,
    /// Keeps each grant for twice the TTL it reports: a crashed holder blocks others for two
    /// leases while its capabilities promise one.
    KeepsGrantsTwice,
    /// Makes its grant before its reply comes (as a server does), with nothing that undoes a
    /// grant whose reply was never read: an attempt cut in between leaves it.
    LeavesCutGrants,
    /// Waits run to twice their deadline.
    WaitsTwiceAsLong,
}

/// The memory backend with one [`Flaw`]; everything else it does right.
#[derive(Debug, Clone)]
struct Flawed(MemoryBackend, Flaw);

#[async_trait]
impl LockBackend for Flawed {
    fn name(&self) -> &'static str {
        "flawed"
    }
    fn capabilities(&self) -> Capabilities {
        let caps = self.0.capabilities();
        if self.1 == Flaw::ClaimsNotifyButPolls {
            return caps.with_wake(WakeMode::Notify);
        }
        caps
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        match self.1 {
            Flaw::KeepsGrantsTwice => {
                let sent = lock_core::Instant::now();
                let doubled = AcquireRequest { ttl: req.ttl * 2, ..req.clone() };
                Ok(match self.0.try_acquire(&doubled).await? {
                    Attempt::Acquired(l) => Attempt::Acquired(
                        Lease::new(l.key().clone(), l.owner(), l.fencing_token(), req.ttl, sent)
                            .with_mode(l.mode()),
                    ),
                    other => other,
                })
            }
            Flaw::LeavesCutGrants => {
                let attempt = self.0.try_acquire(req).await;
                // The reply on its way back.
                tokio::time::sleep(Duration::from_millis(2)).await;
                attempt
            }
            _ => self.0.try_acquire(req).await,
        }
    }
    async fn acquire(&self, req: &AcquireRequest, deadline: lock_core::Instant) -> Result<Lease> {
        match self.1 {
            Flaw::WaitsTwiceAsLong => {
                let now = lock_core::Instant::now();
                self.0.acquire(req, deadline + deadline.saturating_duration_since(now)).await
            }
            Flaw::KeepsGrantsTwice => self.0.acquire(req, deadline).await,
            // Polls its own `try_acquire`.
            Flaw::ClaimsNotifyButPolls | Flaw::LeavesCutGrants => {
                lock_core::backend::poll_acquire(self, req, deadline).await
            }
        }
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        if self.1 != Flaw::KeepsGrantsTwice {
            return self.0.extend(lease, ttl).await;
        }
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

/// Runs `checks` against a memory backend with `flaw`; the names of those that failed (sorted)
/// and the report.
async fn run_flawed(flaw: Flaw, checks: &[&str]) -> (Vec<&'static str>, Report) {
    let store = MemoryBackend::new();
    let mut suite = Suite::new("flawed", move || {
        let store = store.clone();
        async move { Ok(LockClient::new(Flawed(store, flaw))) }
    });
    for c in checks {
        suite = suite.only(c);
    }
    let report = suite.run_report().await;
    let mut failed: Vec<&str> = report.failed.iter().map(|(n, _)| *n).collect();
    failed.sort_unstable();
    (failed, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_claims_notify_but_polls_fails_the_wake_up_check() {
    let (failed, report) =
        run_flawed(Flaw::ClaimsNotifyButPolls, &["waiting_acquire_wakes_by_notification"]).await;
    assert!(report.passed.is_empty(), "a polling backend passed the notification check: {report:?}");
    assert_eq!(failed.len(), 1, "{report:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_keeps_crashed_grants_for_two_leases_fails_the_crash_check() {
    let (failed, report) = run_flawed(Flaw::KeepsGrantsTwice, &["crashed_holder_blocks_at_most_ttl"]).await;
    assert!(report.passed.is_empty(), "a backend keeping crashed grants twice as long passed: {report:?}");
    assert_eq!(failed.len(), 1, "{report:?}");
    assert!(report.failed[0].1.contains("blocked for"), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_leaves_cut_grants_fails_the_cancellation_checks() {
    let checks = [
        "cancelled_attempts_leave_nothing",
        "cancelled_permit_attempts_leave_nothing",
        "cancelled_read_write_attempts_leave_nothing",
    ];
    let (failed, report) = run_flawed(Flaw::LeavesCutGrants, &checks).await;
    assert_eq!(failed, checks, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_waits_run_twice_as_long_fails_the_deadline_check() {
    let (_, report) = run_flawed(Flaw::WaitsTwiceAsLong, &["waiting_acquire_times_out_at_deadline"]).await;
    assert!(report.passed.is_empty(), "{report:?}");
    assert!(report.failed.first().is_some_and(|(_, why)| why.contains("long past")), "{report:?}");
}
