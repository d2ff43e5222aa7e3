//! The single-node backend: [`RedisBackend`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, Error, ExtendOutcome, FencingToken, Instant, Lease,
    LockBackend, LockInfo, LockKey, Mode, OwnerToken, ReleaseOutcome, Result, WakeMode,
};

use crate::attempts::{arm, extra, intent_ttl};
use crate::error::mismatch;
use crate::keys::Keys;
use crate::node::{meta_arg, Node, NodeGrant, NAME};
use crate::options::RedisOptions;
use crate::sentinel::Primary;

/// The longest an election observer goes without reading the leader (an expiry publishes
/// nothing).
const OBSERVE_POLL: Duration = Duration::from_secs(1);

/// Locks on one Redis server, a Redis Cluster ([`RedisOptions::cluster`]) or a
/// Sentinel-managed primary ([`RedisOptions::sentinel`]).
///
/// # Behavior
/// - Acquire is one Lua script: `SET lock value PX ttl` if absent, with the fencing counter
///   raised in the same step; release is compare-and-delete, extend compare-and-`PEXPIRE`,
///   both on the owner token. See [`scripts`](crate::scripts) for the keys and why the
///   fencing token keeps rising even when the server loses data (a restart from an older
///   snapshot, a failover), as long as the server's clock does not step back.
/// - A `try_acquire` that fails after its request went out (the reply was lost, or came after
///   the request timeout) releases by owner token before it returns the error, so the grant
///   the server may have made does not block others for a TTL; it can therefore take up to
///   twice the request timeout. A waiting acquire that ends in an error does the same in the
///   background.
/// - Waiting is by notification: release publishes on a per-key channel. A waiter tries
///   first; only if the lock is held does it subscribe (on one subscriber connection per
///   client), waiting for the confirmation at most the request timeout and never past its
///   deadline, and then tries again. It still retries at the holder's expiry and at least
///   every 250 ms, so an expired holder, a foreign client that never publishes or a pub/sub
///   connection that is down cannot stall it. A waiting acquire returns by its deadline plus
///   at most one request timeout. A release of a lock or a permit wakes one waiter: the one
///   its script takes out of the name's queue of waiters, where waiting attempts register
///   (see [`scripts`](crate::scripts)); the others keep polling meanwhile.
/// - One multiplexed, self-reconnecting connection carries every command of the locks (with
///   `wait_replicas`, a second one carries the `WAIT`s; wake-ups have a pub/sub connection).
/// - Mutual exclusion is as strong as the server: with replication, a failover that loses
///   the last writes can grant a lock twice (use Redlock, etcd or ZooKeeper if that matters);
///   fencing tokens still rise, as long as the new master's clock has not gone back.
/// - The fencing counters never expire; configure `maxmemory-policy` as `noeviction`: any
///   other policy may evict grants (a second holder) or counters.
/// - Semaphores (a sorted set of permits), read-write locks (with writer preference) and
///   atomic multi-key locks (one script over every key), each one script per step with the
///   same fencing rule; see the crate docs and [`scripts`](crate::scripts).
/// - Elections, laid out as the lock under `P{K}:elect` (waiters woken on release; observers
///   woken by the grants, proclaims and releases published on the election's channel, and at
///   the leader's expiry); holder metadata in the grant's value of a lock or an
///   election; `list(prefix)` by `SCAN` over the fencing counters under the prefix.
#[derive(Debug, Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    primary: Arc<Primary>,
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
        let primary = Primary::connect(&opts).await?;
        Ok(Self { inner: Arc::new(Inner { primary, prefix: opts.prefix }) })
    }

    /// The server new requests go to (after a Sentinel failover, the new primary).
    fn node(&self) -> Arc<Node> {
        self.inner.primary.node()
    }

    /// The Redis key that holds the grant of `key`: hand it to a foreign client (for example
    /// redis-py's `Lock`) that must exclude and be excluded by distlock.
    pub fn redis_key(&self, key: &LockKey) -> String {
        Keys::lock(&self.inner.prefix, key).all[0].clone()
    }

    /// How long a waiting writer's intent lasts unless its next attempt refreshes it; a writer
    /// that dies while waiting blocks new readers for at most this long.
    pub fn writer_intent_ttl(&self) -> Duration {
        intent_ttl(self.node().timeout())
    }

    /// The underlying connection (for benchmarks measuring the raw floor with the same client).
    #[doc(hidden)]
    pub fn raw_connection(&self) -> crate::node::Connection {
        self.node().connection()
    }

    fn keys(&self, key: &LockKey, mode: Mode) -> Result<Keys> {
        // `P{}x}`: an empty hash tag, so Redis Cluster would hash each of the name's keys
        // whole, into different slots, and every script would fail.
        if key.full().starts_with('}') && self.node().is_cluster() {
            return Err(Error::Unsupported {
                backend: NAME,
                capability: format!(
                    "the name {:?} on a Redis Cluster: a name that starts with '}}' gives its keys no common hash slot",
                    key.full()
                ),
            });
        }
        Keys::new(NAME, &self.inner.prefix, key, mode)
    }

    /// One acquire request (`intent`: a waiting writer's). Dropped mid-flight, the script may
    /// still have granted: the release by owner token then goes out in the background, on the
    /// same connection, so it runs after the acquire. A failed attempt is not undone here: the
    /// waiting loop retries with the same owner token (the script then returns the grant it
    /// already made); the callers undo once no retry follows.
    ///
    /// `waiting`: an attempt of a waiting acquire, registered in the queue of waiters when the
    /// lock or the semaphore is held, so that a release wakes it (see
    /// [`scripts`](crate::scripts)).
    async fn attempt(
        &self,
        req: &AcquireRequest,
        intent: Option<Duration>,
        waiting: bool,
    ) -> Result<Attempt> {
        let keys = self.keys(&req.key, req.mode)?;
        let sent = Instant::now();
        let undo = arm(self.releaser(vec![keys.clone()], req.owner));
        let meta = meta_arg(&req.metadata);
        let waiting = waiting.then(|| self.writer_intent_ttl());
        let reply = self.node().acquire(&keys, req.owner, req.ttl, extra(req, intent), &meta, waiting).await;
        undo.disarm();
        Ok(match reply? {
            NodeGrant::Granted(f) => Attempt::Acquired(
                Lease::new(req.key.clone(), req.owner, FencingToken::new(f), req.ttl, sent)
                    .with_mode(req.mode),
            ),
            NodeGrant::Held(expires_in) => Attempt::Held { expires_in },
            NodeGrant::Mismatch(held) => return Err(mismatch(req, held)),
        })
    }

    /// An undo of `owner`'s grants of `keys` (on the attempts' connection, see
    /// [`Node::undo`](crate::node::Node::undo)) that says whether the server answered every
    /// release (whatever it said). It holds the backend weakly: once the backend is dropped
    /// (its connections closed), an undo still asking in the background stops.
    fn releaser(
        &self,
        keys: Vec<Keys>,
        owner: OwnerToken,
    ) -> impl Fn() -> BoxFuture<'static, bool> + Send + 'static {
        let this = Arc::downgrade(&self.inner);
        move || {
            let (this, keys) = (this.clone(), keys.clone());
            Box::pin(async move {
                let Some(inner) = this.upgrade() else { return true };
                let node = inner.primary.node();
                let done = futures::future::join_all(keys.iter().map(|k| node.undo(k, owner, false))).await;
                done.iter().all(Result::is_ok)
            })
        }
    }
}

#[async_trait]
impl LockBackend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let cluster = self.node().is_cluster();
        Capabilities::new()
            .with_wake(WakeMode::Notify)
            .with_ttl_granularity(Duration::from_millis(1))
            .with_min_ttl(lock_core::SHORTEST_TTL)
            .with_expiry_margin(Duration::from_millis(20))
            .with_max_permits(lock_core::MAX_PERMITS)
            .with_read_write(true)
            .with_writer_preference(true)
            .with_atomic_multi_key(!cluster)
            .with_batch_extend(!cluster)
            .with_elections(true)
            .with_holder_metadata(true)
            .with_listing(true)
            .with_fencing_counters(true)
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let attempt = self.attempt(req, None, false).await;
        if let Err(Error::Backend { .. }) = attempt {
            // The script may have run although the reply was lost or came too late: release by
            // owner token before returning the error. The release travels on the same
            // connection, so the server runs it after the acquire.
            let keys = self.keys(&req.key, req.mode)?;
            crate::attempts::undo_now(self.releaser(vec![keys], req.owner), req.ttl, self.clone()).await;
        }
        attempt
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let keys = self.keys(&req.key, req.mode)?;
        let undo =
            crate::attempts::undo_later(self.releaser(vec![keys.clone()], req.owner), req.ttl, self.clone());
        let node = &*self.node();
        let intent = (req.mode == Mode::Write).then(|| self.writer_intent_ttl());
        let res = crate::attempts::acquire_waiting(
            &req.key,
            deadline,
            node.timeout(),
            |bound| {
                let keys = &keys;
                async move { vec![node.watch(keys, bound, Some(req.owner)).await] }
            },
            || self.attempt(req, intent, true),
            undo,
        )
        .await;
        if res.is_err() && (intent.is_some() || keys.queue.is_some()) {
            // A writer that gives up withdraws its intent, and a waiter its place in the queue.
            let withdraw = (self.releaser(vec![keys], req.owner))();
            crate::attempts::withdraw_within(deadline, node.timeout(), withdraw).await;
        }
        res
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let keys = self.keys(lease.key(), lease.mode())?;
        let sent = Instant::now();
        Ok(if self.node().extend(&keys, lease.owner(), ttl).await? {
            ExtendOutcome::Extended { valid_until: lock_core::lease::valid_until(sent, ttl) }
        } else {
            ExtendOutcome::NotHeld
        })
    }

    /// Locks (exclusive grants) in one script call ([`scripts::EXTEND_MANY`](crate::scripts::EXTEND_MANY)); the grants of
    /// the other primitives one by one, concurrently. If the batch call fails, each of its
    /// grants is tried once more on its own, so one bad moment costs no lock a renewal that an
    /// individual extend would have made.
    async fn extend_many(&self, grants: &[(Lease, Duration)]) -> Vec<Result<ExtendOutcome>> {
        let batch: Vec<(usize, Keys)> = grants
            .iter()
            .enumerate()
            .filter(|(_, (lease, _))| lease.mode() == Mode::Exclusive)
            .filter_map(|(i, (lease, _))| self.keys(lease.key(), Mode::Exclusive).ok().map(|k| (i, k)))
            .collect();
        let sent = Instant::now();
        let mut extended: HashMap<usize, bool> = HashMap::new();
        if !batch.is_empty() {
            let args: Vec<_> = batch.iter().map(|(i, k)| (k, grants[*i].0.owner(), grants[*i].1)).collect();
            if let Ok(done) = self.node().extend_many(&args).await {
                extended.extend(batch.iter().map(|(i, _)| *i).zip(done));
            }
        }
        let each = grants.iter().enumerate().map(|(i, (lease, ttl))| {
            let batched = extended.get(&i).copied();
            async move {
                match batched {
                    Some(true) => {
                        Ok(ExtendOutcome::Extended { valid_until: lock_core::lease::valid_until(sent, *ttl) })
                    }
                    Some(false) => Ok(ExtendOutcome::NotHeld),
                    None => self.extend(lease, *ttl).await,
                }
            }
        });
        futures::future::join_all(each).await
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let keys = self.keys(lease.key(), lease.mode())?;
        Ok(if self.node().release(&keys, lease.owner()).await? {
            ReleaseOutcome::Released
        } else {
            ReleaseOutcome::NotHeld
        })
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.node().inspect(&Keys::lock(&self.inner.prefix, key)).await
    }

    async fn holders(&self, key: &LockKey, mode: Mode) -> Result<Vec<LockInfo>> {
        self.node().holders(&self.keys(key, mode)?).await
    }

    /// The metadata of a lock or an election (proclaim): one script that compares the owner
    /// token and rewrites the grant's value, keeping its token and TTL. The other primitives
    /// keep no metadata on Redis.
    async fn update_metadata(&self, lease: &Lease, metadata: &lock_core::Metadata) -> Result<ExtendOutcome> {
        crate::node::keeps_metadata(NAME, lease.mode())?;
        let keys = self.keys(lease.key(), lease.mode())?;
        Ok(if self.node().set_meta(&keys, lease.owner(), &meta_arg(metadata)).await? {
            ExtendOutcome::Extended { valid_until: lease.valid_until() }
        } else {
            ExtendOutcome::NotHeld
        })
    }

    /// An election's leader by notification: grants, proclaims and releases are published on
    /// the election's channel; each message (and, for an expiry, which publishes nothing, the
    /// leader's remaining TTL or 1 s at most) leads to one read of the leader.
    async fn observe(&self, key: &LockKey, mode: Mode) -> Result<Option<lock_core::ObserveStream>> {
        if mode != Mode::Leader {
            return Ok(None);
        }
        let keys = self.keys(key, mode)?;
        let sub = self.node().watch(&keys, self.node().timeout(), None).await;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                // Armed before the read, so a message that comes during it is not missed.
                let notified = sub.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let state = this.node().holders(&keys).await.map(|h| h.into_iter().next());
                let next = match &state {
                    Ok(Some(l)) => {
                        l.remaining_ttl.unwrap_or(OBSERVE_POLL).clamp(Duration::from_millis(10), OBSERVE_POLL)
                    }
                    _ => OBSERVE_POLL,
                };
                let end = state.is_err();
                if tx.send(state).await.is_err() || end {
                    return;
                }
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(next) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
        Ok(Some(Box::pin(stream)))
    }

    async fn list(&self, prefix: &str, cursor: Option<String>, limit: usize) -> Result<lock_core::ListPage> {
        crate::list::page(&self.node(), &self.inner.prefix, prefix, cursor, limit).await
    }

    /// The counters under `prefix`, found as `list` finds them (a `SCAN` over `…:fence` keys).
    async fn fencing_counters(
        &self,
        prefix: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<lock_core::CounterPage> {
        crate::list::counters(&self.node(), &self.inner.prefix, prefix, cursor, limit).await
    }

    /// One script that raises the primitive's counter (never lowers it); the next grant's
    /// token is above it, by the usual `max(counter + 1, clock)` rule.
    async fn raise_fencing_counter(
        &self,
        key: &LockKey,
        mode: Mode,
        at_least: FencingToken,
    ) -> Result<FencingToken> {
        let keys = self.keys(key, mode)?;
        self.node().raise(&keys, at_least.get()).await.map(FencingToken::new)
    }

    /// One script over every key (see [`scripts::ACQUIRE_ALL`](crate::scripts::ACQUIRE_ALL)).
    async fn try_acquire_all(&self, reqs: &[AcquireRequest]) -> Result<Option<Vec<Lease>>> {
        let Some(first) = reqs.first() else { return Ok(Some(Vec::new())) };
        if reqs.iter().any(|r| r.mode != Mode::Exclusive || r.owner != first.owner || r.ttl != first.ttl) {
            return Err(Error::Unsupported {
                backend: NAME,
                capability: "one atomic request for grants of different modes, owners or TTLs".into(),
            });
        }
        let keys: Vec<Keys> = reqs.iter().map(|r| Keys::lock(&self.inner.prefix, &r.key)).collect();
        let sent = Instant::now();
        let undo = arm(self.releaser(keys.clone(), first.owner));
        let meta = meta_arg(&first.metadata);
        let reply = self.node().acquire_all(&keys, first.owner, first.ttl, &meta).await;
        undo.disarm();
        match reply {
            Ok(Some(fences)) => Ok(Some(
                reqs.iter()
                    .zip(fences)
                    .map(|(r, f)| Lease::new(r.key.clone(), r.owner, FencingToken::new(f), r.ttl, sent))
                    .collect(),
            )),
            Ok(None) => Ok(None),
            Err(e) => {
                let ttl = reqs.iter().map(|r| r.ttl).max().unwrap_or(first.ttl);
                crate::attempts::undo_now(self.releaser(keys, first.owner), ttl, self.clone()).await;
                Err(e)
            }
        }
    }
}
