//! Deliberately broken locks, for the harness's own test: a run whose workers use one must
//! fail (`tests/broken_lock.rs`). They go through the same workers, history, registers and
//! checker as a real run, so a checker that could no longer fail (a conversion of
//! `valid_until` that emptied every grant's certain hold, say) fails that test.

use std::sync::Arc;
use std::time::Duration;

use distlock::{
    AcquireRequest, Attempt, Capabilities, ExtendOutcome, FencingToken, Instant, Lease, LockBackend,
    LockInfo, LockKey, ReleaseOutcome, Result,
};

/// How a [`Broken`] lock lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Breakage {
    /// Grants a lock that is held, with the holder's fencing token: two holders at once, and
    /// one token handed out twice.
    DoubleGrant,
}

/// A backend that delegates to a real one, except where its [`Breakage`] says.
#[derive(Debug)]
pub struct Broken {
    inner: Arc<dyn LockBackend>,
    how: Breakage,
}

impl Broken {
    /// `inner`, broken `how`.
    pub fn new(inner: Arc<dyn LockBackend>, how: Breakage) -> Self {
        Self { inner, how }
    }
}

#[distlock::async_trait]
impl LockBackend for Broken {
    fn name(&self) -> &'static str {
        "broken"
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let sent = Instant::now();
        let attempt = self.inner.try_acquire(req).await?;
        match (self.how, attempt) {
            (Breakage::DoubleGrant, Attempt::Held { .. }) => {
                let token = self.inner.inspect(&req.key).await?.and_then(|h| h.fencing_token);
                let token = token.unwrap_or(FencingToken::new(1));
                Ok(Attempt::Acquired(Lease::new(req.key.clone(), req.owner, token, req.ttl, sent)))
            }
            (_, attempt) => Ok(attempt),
        }
    }

    // A waiting acquire is the trait's own: tries until the deadline, so it is broken too.

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
