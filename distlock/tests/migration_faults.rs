//! The migration lock under cancellation and slow backends (issue: the migration lock is
//! cancel-safe at every await, never reuses an owner token, and renews the old grant while it
//! waits for the new one).
#![cfg(feature = "local")]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::lock_local::MemoryBackend;
use distlock::migration::{MigrationBackend, Primary};
use distlock::{
    async_trait, AcquireRequest, Attempt, Capabilities, ExtendOutcome, Instant, Lease, LockBackend,
    LockClient, LockInfo, LockKey, OwnerToken, ReleaseOutcome, Result,
};

/// A memory backend whose releases take a while, and which records the owner token of every
/// acquire attempt.
#[derive(Debug, Clone, Default)]
struct Recorded {
    inner: MemoryBackend,
    release_delay: Duration,
    owners: Arc<Mutex<Vec<OwnerToken>>>,
    extend_fault: Arc<Mutex<ExtendFault>>,
}

/// What [`Recorded`]'s extends answer.
#[derive(Debug, Clone, Copy, Default)]
enum ExtendFault {
    /// The memory backend's answer.
    #[default]
    None,
    /// A retryable connection error.
    Fails,
    /// The grant is gone.
    NotHeld,
}

#[async_trait]
impl LockBackend for Recorded {
    fn name(&self) -> &'static str {
        "recorded"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.owners.lock().unwrap().push(req.owner);
        self.inner.try_acquire(req).await
    }
    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        self.owners.lock().unwrap().push(req.owner);
        self.inner.acquire(req, deadline).await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let fault = *self.extend_fault.lock().unwrap();
        match fault {
            ExtendFault::None => self.inner.extend(lease, ttl).await,
            ExtendFault::Fails => Err(distlock::Error::backend_msg(
                "recorded",
                distlock::BackendErrorKind::Connection,
                "injected",
            )),
            ExtendFault::NotHeld => Ok(ExtendOutcome::NotHeld),
        }
    }
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        tokio::time::sleep(self.release_delay).await;
        self.inner.release(lease).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.inner.inspect(key).await
    }
}

/// A try_acquire dropped while it releases the old grant (the new backend was held) must not
/// leave the old grant behind: the release goes on in the background.
#[tokio::test]
async fn a_try_acquire_dropped_while_undoing_the_old_grant_leaves_nothing() {
    let old = Recorded { release_delay: Duration::from_millis(300), ..Default::default() };
    let new = MemoryBackend::new();
    let blocker =
        LockClient::new(new.clone()).lock("job").ttl(Duration::from_secs(60)).acquire().await.unwrap();
    let both = LockClient::new(MigrationBackend::new(Arc::new(old.clone()), Arc::new(new), Primary::Old));
    let attempt = both.lock("job").ttl(Duration::from_secs(60)).try_acquire();
    // The old grant is taken at once, the new one is refused, then the slow release starts.
    let cut = tokio::time::timeout(Duration::from_millis(100), attempt).await;
    assert!(cut.is_err(), "the attempt finished before it could be cut: {cut:?}");
    let on_old = LockClient::new(old.inner.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    while on_old.inspect("job").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the old grant of a dropped attempt was left behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(blocker);
}

/// Every attempt of the acquire loop uses a new owner token: a backend's background cleanup of
/// a timed-out attempt (ZooKeeper deletes its child by the owner's uuid) can never touch the
/// next attempt's grant.
#[tokio::test]
async fn every_attempt_has_its_own_owner_token() {
    let old = Recorded::default();
    let new = MemoryBackend::new();
    let blocker =
        LockClient::new(new.clone()).lock("job").ttl(Duration::from_secs(60)).acquire().await.unwrap();
    let both = LockClient::new(MigrationBackend::new(Arc::new(old.clone()), Arc::new(new), Primary::Old));
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = blocker.release().await;
    });
    // The old grant's TTL (300 ms) runs out several times while the new backend is held.
    let g = both
        .lock("job")
        .ttl(Duration::from_millis(300))
        .wait(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let owners = old.owners.lock().unwrap().clone();
    let distinct: std::collections::HashSet<_> = owners.iter().collect();
    assert_eq!(distinct.len(), owners.len(), "owner tokens reused across attempts: {owners:?}");
    let _ = g.release().await;
}

/// While it waits for the new backend, the old grant is kept alive: the lease handed out is
/// fresh, not one that is about to expire.
#[tokio::test]
async fn the_old_grant_is_renewed_while_waiting_for_the_new_one() {
    let ttl = Duration::from_millis(1000);
    let old = MemoryBackend::new();
    let new = MemoryBackend::new();
    let blocker =
        LockClient::new(new.clone()).lock("job").ttl(Duration::from_secs(60)).acquire().await.unwrap();
    let both = LockClient::new(MigrationBackend::new(Arc::new(old.clone()), Arc::new(new), Primary::Old));
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let _ = blocker.release().await;
    });
    let g = both.lock("job").ttl(ttl).wait(Duration::from_secs(10)).acquire().await.unwrap();
    let left = g.valid_until().saturating_duration_since(Instant::now());
    assert!(left >= ttl * 3 / 4, "the lease handed out had only {left:?} of its {ttl:?} left");
    let info = LockClient::new(old).inspect("job").await.unwrap().expect("the old grant is held");
    assert!(info.remaining_ttl.unwrap() >= ttl * 3 / 4, "old grant: {info:?}");
    let _ = g.release().await;
}

/// One backend finds the grant gone while the other fails retryably: the renewal reports the
/// loss at once (the error used to win, and the renewal retried it until `valid_until`, the
/// guard saying held while the lock was someone else's on one backend). Either side.
#[tokio::test]
async fn a_grant_gone_on_one_backend_is_a_loss_whatever_the_other_says() {
    for gone_on_old in [true, false] {
        let (old, new) = (Recorded::default(), Recorded::default());
        let both = LockClient::new(MigrationBackend::new(
            Arc::new(old.clone()),
            Arc::new(new.clone()),
            Primary::Old,
        ));
        let ttl = Duration::from_secs(3);
        let g = both.lock("job").ttl(ttl).auto_renew().acquire().await.unwrap();
        let (gone, failing) = if gone_on_old { (&old, &new) } else { (&new, &old) };
        *gone.extend_fault.lock().unwrap() = ExtendFault::NotHeld;
        *failing.extend_fault.lock().unwrap() = ExtendFault::Fails;
        let start = Instant::now();
        let lost = tokio::time::timeout(Duration::from_secs(2), g.lost()).await;
        assert!(
            lost.is_ok(),
            "gone on {}: the guard still said held after {:?} (valid until {:?} from now)",
            if gone_on_old { "old" } else { "new" },
            start.elapsed(),
            g.valid_until().saturating_duration_since(Instant::now())
        );
        assert!(!g.is_held());
    }
}

/// A release that finds either grant gone says the lock was not held throughout: the
/// secondary's grant is what kept the other side's processes out.
#[tokio::test]
async fn a_release_that_finds_the_secondary_grant_gone_says_not_held() {
    for primary in [Primary::Old, Primary::New] {
        let (old, new) = (MemoryBackend::new(), MemoryBackend::new());
        let both =
            LockClient::new(MigrationBackend::new(Arc::new(old.clone()), Arc::new(new.clone()), primary));
        let g = both.lock("job").ttl(Duration::from_secs(30)).acquire().await.unwrap();
        let owner = g.lease().owner();
        let secondary = match primary {
            Primary::Old => new,
            Primary::New => old,
        };
        let on_secondary = LockClient::new(secondary);
        let rebuilt = Lease::new(
            LockKey::new("job").unwrap(),
            owner,
            g.fencing_token(),
            Duration::from_secs(30),
            Instant::now(),
        );
        assert_eq!(on_secondary.release_lease(&rebuilt).await.unwrap(), ReleaseOutcome::Released);
        assert_eq!(g.release().await.unwrap(), ReleaseOutcome::NotHeld, "{primary:?}");
    }
}

/// A backend that waits by lock-core's polling (no `acquire` of its own): every attempt after
/// the first asks with a fresh owner token.
#[derive(Debug, Clone, Default)]
struct Polled {
    inner: MemoryBackend,
}

#[async_trait]
impl LockBackend for Polled {
    fn name(&self) -> &'static str {
        "polled"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner
            .capabilities()
            .with_wake(distlock::WakeMode::Poll { max_interval: Duration::from_millis(50) })
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.inner.try_acquire(req).await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        self.inner.extend(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        self.inner.release(lease).await
    }
    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.inner.inspect(key).await
    }
}

/// The old backend granted its lock on a later attempt, under a fresh owner token: the new
/// grant is asked for under that token, and the lease's owner is both grants' owner, so a
/// lease rebuilt from key and owner (a detached guard in another process) releases both. The
/// lease used to carry the first attempt's token, which neither backend held.
#[tokio::test]
async fn the_lease_carries_the_owner_token_of_both_grants() {
    let old = Polled::default();
    let new = MemoryBackend::new();
    let blocker =
        LockClient::new(old.inner.clone()).lock("job").ttl(Duration::from_secs(60)).acquire().await.unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = blocker.release().await;
    });
    let both =
        LockClient::new(MigrationBackend::new(Arc::new(old.clone()), Arc::new(new.clone()), Primary::Old));
    let g =
        both.lock("job").ttl(Duration::from_secs(30)).wait(Duration::from_secs(5)).acquire().await.unwrap();
    let owner = g.lease().owner();
    let on_old = LockClient::new(old.inner.clone()).inspect("job").await.unwrap().expect("held on old");
    let on_new = LockClient::new(new.clone()).inspect("job").await.unwrap().expect("held on new");
    assert_eq!(
        (on_old.owner, on_new.owner),
        (Some(owner), Some(owner)),
        "the lease's owner is not the grants'"
    );
    // Detached, rebuilt from key and owner, released: both grants go.
    let detached = g.detach();
    let rebuilt = Lease::new(
        LockKey::new("job").unwrap(),
        detached.owner(),
        detached.fencing_token(),
        Duration::from_secs(30),
        Instant::now(),
    );
    assert_eq!(both.release_lease(&rebuilt).await.unwrap(), ReleaseOutcome::Released);
    assert!(LockClient::new(old.inner.clone()).inspect("job").await.unwrap().is_none(), "left on old");
    assert!(LockClient::new(new).inspect("job").await.unwrap().is_none(), "left on new");
}
