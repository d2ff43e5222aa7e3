//! Redlock over N independent Redis masters.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use lock_core::{
    async_trait, drift_margin, AcquireRequest, Attempt, BackendErrorKind, Capabilities, Error, ExtendOutcome,
    FencingToken, Instant, Lease, LockBackend, LockInfo, LockKey, ReleaseOutcome, Result, UndoOnDrop,
    WakeMode,
};

use crate::node::{Keys, Node, NodeGrant};
use crate::options::{RedlockOptions, DEFAULT_NODE_TIMEOUT};

const NAME: &str = "redlock";

/// The Redlock algorithm over N independent Redis masters (use 3 or 5).
///
/// # Behavior
/// - **Acquire**: the acquire script is sent to every node in parallel, each with its own
///   timeout (the node's request timeout, 200 ms by default for Redlock). The lock is granted
///   when a quorum (N/2 + 1) of nodes granted it and time remains: the lease is valid until
///   `sent + TTL - drift`, with `drift = 1% of TTL + 2 ms`, which is Redlock's
///   `TTL - elapsed - drift` counted from the moment the request was sent. Otherwise the
///   attempt is undone on **every** node (a node that timed out may have granted anyway) and
///   reported as held (or, when too few nodes answered, as a retryable error). After a failed
///   `try_acquire`, a master that did not answer that undo is asked again in the background
///   (50 ms, 250 ms and 1 s later) until it does.
/// - **Extend** needs a quorum of nodes to confirm; **release** deletes on every node and
///   reports `Released` when a quorum held our grant.
/// - **Waiting** tries first; only if the lock is held does it subscribe to the release
///   channel on every node (waiting for the confirmations at most the node timeout, never past
///   its deadline) and try again. Any node's message wakes the waiter, which also retries at
///   the holder's expiry and at least every 250 ms; it returns by its deadline plus at most one
///   round.
///
/// # Fencing tokens across nodes
/// No single node is authoritative, so the token is agreed as follows:
/// 1. Each node's acquire script proposes `p_i = max(counter_i + 1, its clock in µs)` and
///    stores it in the same atomic step as the grant.
/// 2. The client takes `F = max p_i` over the nodes that granted.
/// 3. **Write-back**: before the lease is returned, every granting node with `p_i < F` raises
///    its counter to `F` (the write-back script, conditional on still holding our grant). The
///    grant is returned only if at least a quorum of nodes now has `counter >= F`;
///    otherwise it is released and the attempt fails with a retryable error.
///
/// Any later grant needs a quorum too, and two quorums share at least one node; that node's
/// counter is already `>= F`, so its proposal, and therefore the later token, is `> F`.
///
/// **When masters lose data** (a restart from an RDB snapshot older than the last writes,
/// redis-server's default after a `kill -9`; AOF `everysec` losing its last second):
/// - *One* master restarted from a stale snapshot is covered by the overlap as long as the
///   last grant's quorum kept another node that also takes part in the next grant: with all
///   masters up, every grant is recorded on all of them, and any two of three include one
///   that remembers.
/// - *A majority* restarted from stale snapshots (the next quorum has no node that remembers)
///   is covered by the clock: every token is at most the clock of the fastest master at its
///   grant (a node's own proposal is at most its clock; a write-back raises a node at most to
///   the fastest master's clock), and the next grant gets at least the clock of each master
///   that grants it. **The assumption**: no master's clock steps back, and the masters' clocks
///   differ by less than the time from the last grant before the crash to the first grant
///   after it (a restart that loads a snapshot takes far longer than the skew of
///   NTP-synchronised hosts; keep the clocks slewed, never stepped).
///
/// Mutual exclusion itself holds under Redlock's own assumptions: nodes fail by stopping, and
/// a node that restarts either kept its data (AOF with `fsync always`) or stays down for at
/// least one TTL. A majority that restarts with stale data can grant a lock that is still
/// held (as for any Redlock): the fencing token, which still rises, is what protects the
/// resource then. A master's clock that steps forward ends its grants early (Redis keeps
/// expiries as wall-clock times), with the same effect.
#[derive(Debug, Clone)]
pub struct RedlockBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    nodes: Vec<Node>,
    quorum: usize,
    prefix: String,
    node_timeout: Duration,
}

fn unavailable(msg: String) -> Error {
    crate::error::unavailable(NAME, msg)
}

impl RedlockBackend {
    /// Connects to the masters `opts` names (`"redlock://h1,h2,h3".parse()?` for a URL). A
    /// master that is down is connected to lazily, as long as a quorum answers now.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for invalid options (see [`RedlockOptions::validate`]: fewer
    /// than 3 masters, …); a retryable connection error when fewer than a quorum answer.
    pub async fn connect(opts: RedlockOptions) -> Result<Self> {
        opts.validate()?;
        let mut nodes = Vec::with_capacity(opts.nodes.len());
        for o in &opts.nodes {
            nodes.push(Node::connect(o, NAME, true, DEFAULT_NODE_TIMEOUT).await?);
        }
        let quorum = nodes.len() / 2 + 1;
        let pings = join_all(nodes.iter().map(Node::ping)).await;
        let up = pings.iter().filter(|r| r.is_ok()).count();
        if up < quorum {
            let first = pings.into_iter().find_map(|r| r.err()).map(|e| e.to_string()).unwrap_or_default();
            return Err(Error::backend_msg(
                NAME,
                BackendErrorKind::Connection,
                format!(
                    "only {up} of {} Redlock masters answered; a quorum is {quorum} ({first})",
                    nodes.len()
                ),
            ));
        }
        let node_timeout = opts
            .nodes
            .iter()
            .map(|o| o.request_timeout_or(DEFAULT_NODE_TIMEOUT))
            .max()
            .unwrap_or(DEFAULT_NODE_TIMEOUT);
        let prefix = opts.nodes[0].prefix.clone();
        Ok(Self { inner: Arc::new(Inner { nodes, quorum, prefix, node_timeout }) })
    }

    /// How many masters must agree.
    pub fn quorum(&self) -> usize {
        self.inner.quorum
    }

    /// The number of masters.
    pub fn nodes(&self) -> usize {
        self.inner.nodes.len()
    }

    fn keys(&self, key: &LockKey) -> Keys {
        Keys::new(&self.inner.prefix, key)
    }

    /// One Redlock round: ask every master, keep a quorum's grant or undo everywhere.
    async fn attempt(&self, req: &AcquireRequest) -> Result<Attempt> {
        let keys = self.keys(&req.key);

        let n = self.inner.nodes.len();
        let quorum = self.inner.quorum;
        let sent = Instant::now();
        let replies =
            join_all(self.inner.nodes.iter().map(|node| node.acquire(&keys, req.owner, req.ttl))).await;
        let valid_until =
            lock_core::lease::add_saturating(sent, req.ttl.saturating_sub(drift_margin(req.ttl)));
        let mut granted = Vec::new();
        let mut held = Vec::new();
        let mut errors = Vec::new();
        for (i, r) in replies.into_iter().enumerate() {
            match r {
                Ok(NodeGrant::Granted(f)) => granted.push((i, f)),
                Ok(NodeGrant::Held(left)) => held.push(left),
                Err(e) => errors.push(e),
            }
        }
        if granted.len() >= quorum && Instant::now() < valid_until {
            let fence = granted.iter().map(|(_, f)| *f).max().unwrap_or(0);
            let at_fence = granted.iter().filter(|(_, f)| *f == fence).count();
            let mut recorded = at_fence;
            if at_fence < quorum {
                let behind: Vec<usize> =
                    granted.iter().filter(|(_, f)| *f < fence).map(|(i, _)| *i).collect();
                let wb =
                    join_all(behind.iter().map(|&i| self.inner.nodes[i].write_back(&keys, req.owner, fence)))
                        .await;
                recorded += wb.iter().filter(|r| matches!(r, Ok(true))).count();
            }
            if recorded < quorum {
                self.release_everywhere(&keys, req).await;
                return Err(unavailable(format!(
                    "granted by {} of {n} masters but the fencing token reached only {recorded}; retrying is safe",
                    granted.len()
                )));
            }
            if Instant::now() < valid_until {
                let lease = Lease::new(req.key.clone(), req.owner, FencingToken::new(fence), req.ttl, sent);
                return Ok(Attempt::Acquired(lease));
            }
        }
        // No usable quorum: undo on every node (one that timed out may have granted anyway).
        if !granted.is_empty() || !errors.is_empty() {
            self.release_everywhere(&keys, req).await;
        }
        let expires_in = held.iter().flatten().min().copied();
        if held.len() > n - quorum || errors.is_empty() {
            return Ok(Attempt::Held { expires_in });
        }
        let first = errors.swap_remove(0);
        Err(Error::Backend {
            backend: NAME,
            kind: BackendErrorKind::Unavailable,
            message: format!(
                "no quorum: {} of {n} masters granted, {} held, {} failed (a quorum is {quorum})",
                granted.len(),
                held.len(),
                errors.len() + 1
            ),
            source: Some(Box::new(first)),
        })
    }

    async fn release_everywhere(&self, keys: &Keys, req: &AcquireRequest) -> Vec<Result<bool>> {
        join_all(self.inner.nodes.iter().map(|n| n.release(keys, req.owner))).await
    }

    /// One round. The round undoes its own partial grants; dropped mid-flight it cannot, so
    /// the release on every node is then sent in the background. A failed round is not undone
    /// again here: the waiting loop retries with the same owner token, and a late undo could
    /// release that retry's grant on a master; the callers undo once no retry follows.
    async fn attempt_once(&self, req: &AcquireRequest) -> Result<Attempt> {
        let undo = UndoOnDrop::new({
            let (this, req) = (self.clone(), req.clone());
            async move {
                let keys = this.keys(&req.key);
                this.release_everywhere(&keys, &req).await;
            }
        });
        let attempt = self.attempt(req).await;
        undo.disarm();
        attempt
    }

    /// A release of `req`'s grant on every master that says whether every master answered.
    fn releaser(&self, req: &AcquireRequest) -> impl Fn() -> BoxFuture<'static, bool> + Send + 'static {
        let (this, req) = (self.clone(), req.clone());
        move || {
            let (this, req) = (this.clone(), req.clone());
            Box::pin(async move {
                let keys = this.keys(&req.key);
                this.release_everywhere(&keys, &req).await.iter().all(Result::is_ok)
            })
        }
    }
}

#[async_trait]
impl LockBackend for RedlockBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_wake(WakeMode::Notify)
            .with_ttl_granularity(Duration::from_millis(1))
            .with_min_ttl(Duration::from_millis(50))
            // A node may apply the grant up to one node timeout after it was sent.
            .with_expiry_margin(self.inner.node_timeout.saturating_add(Duration::from_millis(50)))
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let attempt = self.attempt_once(req).await;
        if attempt.is_err() {
            // The round already released on every master; a master that did not answer that
            // release is asked again in the background until it does.
            let release = self.releaser(req);
            lock_core::cancel::spawn_detached(async move {
                lock_core::cancel::undo_after(lock_core::cancel::LATE_GRANT_RECHECKS, release).await;
            });
        }
        attempt
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let keys = self.keys(&req.key);
        let nodes = &self.inner.nodes;
        crate::attempts::acquire_waiting(
            &req.key,
            deadline,
            self.inner.node_timeout,
            |bound| {
                let keys = &keys;
                join_all(nodes.iter().map(move |n| n.watch(keys, bound)))
            },
            || self.attempt_once(req),
            crate::attempts::undo_later(self.releaser(req)),
        )
        .await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let keys = self.keys(lease.key());
        let n = self.inner.nodes.len();
        let quorum = self.inner.quorum;
        let sent = Instant::now();
        let replies =
            join_all(self.inner.nodes.iter().map(|node| node.extend(&keys, lease.owner(), ttl))).await;
        let ok = replies.iter().filter(|r| matches!(r, Ok(true))).count();
        let refused = replies.iter().filter(|r| matches!(r, Ok(false))).count();
        if ok >= quorum {
            return Ok(ExtendOutcome::Extended { valid_until: lock_core::lease::valid_until(sent, ttl) });
        }
        if refused > n - quorum {
            return Ok(ExtendOutcome::NotHeld);
        }
        Err(unavailable(format!(
            "extend confirmed by {ok} of {n} masters, {refused} refused; a quorum is {quorum}"
        )))
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let keys = self.keys(lease.key());
        let n = self.inner.nodes.len();
        let quorum = self.inner.quorum;
        let replies = join_all(self.inner.nodes.iter().map(|node| node.release(&keys, lease.owner()))).await;
        let released = replies.iter().filter(|r| matches!(r, Ok(true))).count();
        let failed = replies.iter().filter(|r| r.is_err()).count();
        if released >= quorum {
            Ok(ReleaseOutcome::Released)
        } else if released + failed < quorum {
            Ok(ReleaseOutcome::NotHeld)
        } else {
            Err(unavailable(format!(
                "released on {released} of {n} masters, {failed} unreachable; the rest expire with the TTL"
            )))
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        let keys = self.keys(key);
        let n = self.inner.nodes.len();
        let quorum = self.inner.quorum;
        let replies = join_all(self.inner.nodes.iter().map(|node| node.inspect(&keys))).await;
        let answered = replies.iter().filter(|r| r.is_ok()).count();
        let infos: Vec<LockInfo> = replies.into_iter().filter_map(|r| r.ok().flatten()).collect();
        // The holder is the owner present on a quorum of nodes.
        for info in &infos {
            let Some(owner) = info.owner else { continue };
            let same: Vec<&LockInfo> = infos.iter().filter(|i| i.owner == Some(owner)).collect();
            if same.len() >= quorum {
                let fence = same.iter().filter_map(|i| i.fencing_token).max();
                let left = same.iter().filter_map(|i| i.remaining_ttl).min();
                return Ok(Some(LockInfo::new(fence, Some(owner), left)));
            }
        }
        if answered < quorum {
            return Err(unavailable(format!(
                "only {answered} of {n} masters answered; a quorum is {quorum}"
            )));
        }
        Ok(None)
    }
}
