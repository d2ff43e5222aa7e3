//! The single-node backend: [`RedisBackend`].

use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, ExtendOutcome, FencingToken, Instant, Lease,
    LockBackend, LockInfo, LockKey, ReleaseOutcome, Result, UndoOnDrop, WakeMode,
};

use crate::node::{Keys, Node, NodeGrant, MAX_POLL, NAME};
use crate::options::{RedisOptions, DEFAULT_REQUEST_TIMEOUT};

/// Locks on one Redis server (or one Redis Cluster slot owner, or a Sentinel-managed master
/// reached by its address).
///
/// # Behavior
/// - Acquire is one Lua script: `SET lock value PX ttl` if absent, with the fencing counter
///   bumped in the same step; release is compare-and-delete, extend compare-and-`PEXPIRE`,
///   both on the owner token. See [`scripts`](crate::scripts) for the keys and why the
///   fencing token keeps rising even if the server loses the counter.
/// - Waiting is by notification: release publishes on a per-key channel, and waiters
///   subscribe (on one subscriber connection per client) before they try. They still retry at
///   the holder's expiry and at least every 250 ms, so an expired holder or a foreign client
///   that never publishes cannot stall them.
/// - One multiplexed, self-reconnecting connection carries every command.
/// - Mutual exclusion is as strong as the server: with replication, a failover that loses
///   the last writes can grant a lock twice (use Redlock, etcd or ZooKeeper if that matters);
///   fencing tokens still rise, as long as the new master's clock has not gone back.
/// - The fencing counters never expire; configure `maxmemory-policy` as `noeviction` or a
///   `volatile-*` policy so they are never evicted.
#[derive(Debug, Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: Node,
    prefix: String,
}

impl RedisBackend {
    /// Connects to the server `opts` names (`"redis://…".parse()?` for a URL).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](lock_core::Error::InvalidConfig) for invalid options (see
    /// [`RedisOptions::validate`]); a retryable connection error when the server cannot be
    /// reached; an auth error when it refuses the credentials.
    pub async fn connect(opts: RedisOptions) -> Result<Self> {
        opts.validate()?;
        let node = Node::connect(&opts, NAME, false, DEFAULT_REQUEST_TIMEOUT).await?;
        Ok(Self { inner: Arc::new(Inner { node, prefix: opts.prefix }) })
    }

    /// The Redis key that holds the grant of `key`: hand it to a foreign client (for example
    /// redis-py's `Lock`) that must exclude and be excluded by distlock.
    pub fn redis_key(&self, key: &LockKey) -> String {
        Keys::new(&self.inner.prefix, key).lock
    }

    /// The underlying connection (for benchmarks measuring the raw floor with the same client).
    #[doc(hidden)]
    pub fn raw_connection(&self) -> redis::aio::ConnectionManager {
        self.inner.node.connection()
    }

    fn keys(&self, key: &LockKey) -> Keys {
        Keys::new(&self.inner.prefix, key)
    }
}

#[async_trait]
impl LockBackend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_wake(WakeMode::Notify)
            .with_ttl_granularity(Duration::from_millis(1))
            .with_min_ttl(Duration::from_millis(1))
            .with_expiry_margin(Duration::from_millis(20))
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let keys = self.keys(&req.key);
        let sent = Instant::now();
        // Dropped mid-flight, the script may still have granted: release by owner token on the
        // same connection, which runs after it. (A failed attempt is not undone: the waiting
        // loop may retry with the same owner token, and an undo racing that retry could
        // release its grant. Its grant, if any, lasts the TTL.)
        let undo = UndoOnDrop::new({
            let (this, keys, owner) = (self.clone(), keys.clone(), req.owner);
            async move {
                let _ = this.inner.node.release(&keys, owner).await;
            }
        });
        let reply = self.inner.node.acquire(&keys, req.owner, req.ttl).await;
        undo.disarm();
        Ok(match reply? {
            NodeGrant::Granted(f) => {
                Attempt::Acquired(Lease::new(req.key.clone(), req.owner, FencingToken::new(f), req.ttl, sent))
            }
            NodeGrant::Held(expires_in) => Attempt::Held { expires_in },
        })
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let keys = self.keys(&req.key);
        let sub = self.inner.node.watch(&keys).await;
        lock_core::wait_for_lock(&[&sub.notify], &req.key, deadline, MAX_POLL, || self.try_acquire(req)).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let keys = self.keys(lease.key());
        let sent = Instant::now();
        Ok(if self.inner.node.extend(&keys, lease.owner(), ttl).await? {
            ExtendOutcome::Extended { valid_until: lock_core::lease::valid_until(sent, ttl) }
        } else {
            ExtendOutcome::NotHeld
        })
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let keys = self.keys(lease.key());
        Ok(if self.inner.node.release(&keys, lease.owner()).await? {
            ReleaseOutcome::Released
        } else {
            ReleaseOutcome::NotHeld
        })
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.inner.node.inspect(&self.keys(key)).await
    }
}
