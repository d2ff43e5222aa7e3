//! The default waiting acquire over a backend that undoes a failed attempt in the background
//! by its owner token (as the DynamoDB and Redis backends do, Redlock also after a round that
//! found the lock held): the attempt after the failure must not be the one undone.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lock_core::{
    async_trait, backend::poll_acquire, AcquireRequest, Attempt, BackendErrorKind, Capabilities, Error,
    ExtendOutcome, FencingToken, Instant, Lease, LockBackend, LockInfo, LockKey, ReleaseOutcome, Result,
};
use lock_local::MemoryBackend;

/// The first attempt fails (with a retryable error, its reply "lost", or finding the lock
/// held, as a Redlock round whose undo a master did not answer) and, 100 ms later, releases
/// whatever its owner token holds, as a backend's background undo does.
#[derive(Debug)]
struct UndoesFailedAttempts {
    inner: MemoryBackend,
    failed_once: AtomicBool,
    held: bool,
}

#[async_trait]
impl LockBackend for UndoesFailedAttempts {
    fn name(&self) -> &'static str {
        "undoes-failed-attempts"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        if self.failed_once.swap(true, Ordering::SeqCst) {
            return self.inner.try_acquire(req).await;
        }
        let (inner, key, owner) = (self.inner.clone(), req.key.clone(), req.owner);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let undo = Lease::new(key, owner, FencingToken::new(0), Duration::from_secs(1), Instant::now());
            let _ = inner.release(&undo).await;
        });
        if self.held {
            return Ok(Attempt::Held { expires_in: None });
        }
        Err(Error::backend_msg("undoes-failed-attempts", BackendErrorKind::Connection, "reply lost"))
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

#[tokio::test]
async fn an_undo_of_a_failed_attempt_never_removes_a_later_attempts_grant() {
    for held in [false, true] {
        let store = MemoryBackend::new();
        let b = UndoesFailedAttempts { inner: store.clone(), failed_once: AtomicBool::new(false), held };
        let req = AcquireRequest::new(LockKey::new("k").unwrap(), Duration::from_secs(30));
        let lease = poll_acquire(&b, &req, Instant::now() + Duration::from_secs(5)).await.unwrap();
        // Past the failed attempt's undo.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let holder = store.inspect(&req.key).await.unwrap();
        assert!(
            holder.is_some(),
            "held={held}: the failed attempt's undo removed the grant poll_acquire returned"
        );
        assert_eq!(holder.and_then(|h| h.owner), Some(lease.owner()));
        assert_eq!(store.release(&lease).await.unwrap(), ReleaseOutcome::Released);
    }
}
