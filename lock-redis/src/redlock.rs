//! Redlock over N independent Redis masters.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use lock_core::{
    async_trait, drift_margin, AcquireRequest, Attempt, BackendErrorKind, Capabilities, Error, ExtendOutcome,
    FencingToken, Instant, Lease, LockBackend, LockInfo, LockKey, ReleaseOutcome, Result, UndoOnDrop,
    WakeMode,
};

use crate::node::{Keys, Node, NodeGrant, MAX_POLL};
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
///   reported as held (or, when too few nodes answered, as a retryable error).
/// - **Extend** needs a quorum of nodes to confirm; **release** deletes on every node and
///   reports `Released` when a quorum held our grant.
/// - **Waiting** subscribes to the release channel on every node; any node's message wakes
///   the waiter, which also retries at the holder's expiry and at least every 250 ms.
///
/// # Fencing tokens across nodes
/// No single node is authoritative, so the token is agreed as follows:
/// 1. Each node's acquire script proposes `p_i = counter_i + 1` (its clock in µs when the
///    counter is missing) and stores it in the same atomic step as the grant.
/// 2. The client takes `F = max p_i` over the nodes that granted.
/// 3. **Write-back**: before the lease is returned, every granting node with `p_i < F` raises
///    its counter to `F` (the write-back script, conditional on still holding our grant). The
///    grant is returned only if at least a quorum of nodes now has `counter >= F`;
///    otherwise it is released and the attempt fails with a retryable error.
///
/// Any later grant needs a quorum too, and two quorums share at least one node; that node's
/// counter is already `>= F`, so its proposal, and therefore the later token, is `> F`.
/// This holds under Redlock's own assumptions: nodes fail by stopping, and a node that
/// restarts either kept its data (AOF with `fsync always`) or stays down for at least one
/// TTL. A node that restarts empty breaks mutual exclusion (as for any Redlock); the token
/// still rises if its clock is ahead of every earlier token, which the microsecond clock
/// floor gives whenever the node's clock has not gone back.
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
        let valid_until = sent + req.ttl.saturating_sub(drift_margin(req.ttl));
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
            .with_expiry_margin(self.inner.node_timeout + Duration::from_millis(50))
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        // The attempt undoes its own partial grants; dropped mid-flight it cannot, so the
        // release on every node is then sent in the background.
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

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let keys = self.keys(&req.key);
        let subs = join_all(self.inner.nodes.iter().map(|n| n.watch(&keys))).await;
        let wakers: Vec<&tokio::sync::Notify> = subs.iter().map(|s| &*s.notify).collect();
        lock_core::wait_for_lock(&wakers, &req.key, deadline, MAX_POLL, || self.try_acquire(req)).await
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
