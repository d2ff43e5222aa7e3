//! Redlock over N independent Redis masters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, BoxFuture};
use lock_core::{
    async_trait, drift_margin, AcquireRequest, Attempt, BackendErrorKind, Capabilities, Error, ExtendOutcome,
    FencingToken, Instant, Lease, LockBackend, LockInfo, LockKey, Mode, OwnerToken, ReleaseOutcome, Result,
    WakeMode,
};

use crate::attempts::{arm, extra, intent_ttl};
use crate::keys::Keys;
use crate::node::{Node, NodeGrant};
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
/// # Read-write locks, and why no semaphores
/// Read-write locks run the single node's scripts on every master and need a quorum, as the
/// lock does, with the same token agreement; a waiting writer leaves its intent on every master
/// it reaches. Semaphores are not offered: a quorum of masters that each admit `N` does not
/// bound the holders by `N` (see the crate docs for the counter-example).
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

/// How long a waiting acquire's round waits for its undo's answers past the deadline: the
/// masters that answer at all answer within it; one that does not is asked again in the
/// background once the acquire ends.
const UNDO_GRACE: Duration = Duration::from_millis(20);

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

    /// How long a waiting writer's intent lasts unless its next round refreshes it; a writer
    /// that dies while waiting blocks new readers for at most this long.
    pub fn writer_intent_ttl(&self) -> Duration {
        // A round is one request to every master, and maybe a write-back.
        intent_ttl(self.inner.node_timeout.saturating_mul(2))
    }

    fn keys(&self, key: &LockKey, mode: Mode) -> Result<Keys> {
        if let Mode::Permit { .. } = mode {
            return Err(Error::Unsupported { backend: NAME, capability: "semaphores".into() });
        }
        Ok(Keys::new(NAME, &self.inner.prefix, key, mode)?.waking_all())
    }

    /// One Redlock round: ask every master, keep a quorum's grant or undo everywhere.
    /// `unsettled` is set when a master did not answer the round's undo (a grant there, made
    /// late, may remain). A waiting acquire's round waits for the undo's answers until its
    /// `deadline` at most (or [`UNDO_GRACE`] past now, when later); no round follows one cut
    /// short there. The undo goes out ahead of any later round on each master's connection
    /// (unless given up before it left), and an unanswered one is sent again once the acquire
    /// ends.
    async fn attempt(
        &self,
        req: &AcquireRequest,
        intent: Option<Duration>,
        unsettled: &AtomicBool,
        deadline: Option<Instant>,
    ) -> Result<Attempt> {
        let keys = self.keys(&req.key, req.mode)?;
        let sent = Instant::now();
        let extra = extra(req, intent);
        let meta = crate::node::meta_arg(&req.metadata);
        let replies = join_all(
            self.inner.nodes.iter().map(|node| node.acquire(&keys, req.owner, req.ttl, extra, &meta, None)),
        )
        .await;
        let valid_until =
            lock_core::lease::add_saturating(sent, req.ttl.saturating_sub(drift_margin(req.ttl)));
        let round = Round::of(replies);
        if round.granted.len() >= self.inner.quorum && Instant::now() < valid_until {
            let fence = self.agree(&keys, req.owner, &round.granted, unsettled, deadline).await?;
            if Instant::now() < valid_until {
                let lease = Lease::new(req.key.clone(), req.owner, FencingToken::new(fence), req.ttl, sent);
                return Ok(Attempt::Acquired(lease.with_mode(req.mode)));
            }
        }
        self.refuse(&keys, req.owner, round, unsettled, deadline).await
    }

    /// The token of a quorum's grant: the highest proposal, written back to the masters that
    /// proposed less until a quorum records it; otherwise the grant is released everywhere and
    /// the round fails with a retryable error.
    async fn agree(
        &self,
        keys: &Keys,
        owner: OwnerToken,
        granted: &[(usize, u64)],
        unsettled: &AtomicBool,
        deadline: Option<Instant>,
    ) -> Result<u64> {
        let quorum = self.inner.quorum;
        let fence = granted.iter().map(|(_, f)| *f).max().unwrap_or(0);
        let mut recorded = granted.iter().filter(|(_, f)| *f == fence).count();
        if recorded < quorum {
            let behind = granted.iter().filter(|(_, f)| *f < fence).map(|(i, _)| &self.inner.nodes[*i]);
            let wb = join_all(behind.map(|node| node.write_back(keys, owner, fence))).await;
            recorded += wb.iter().filter(|r| matches!(r, Ok(true))).count();
        }
        if recorded < quorum {
            if !self.undo_round(keys, owner, deadline).await {
                unsettled.store(true, Ordering::SeqCst);
            }
            return Err(unavailable(format!(
                "granted by {} of {} masters but the fencing token reached only {recorded}; retrying is safe",
                granted.len(),
                self.inner.nodes.len()
            )));
        }
        Ok(fence)
    }

    /// A round without a usable quorum: undo on every node (one that timed out may have
    /// granted anyway); held, or a retryable error when too few masters answered.
    async fn refuse(
        &self,
        keys: &Keys,
        owner: OwnerToken,
        mut round: Round,
        unsettled: &AtomicBool,
        deadline: Option<Instant>,
    ) -> Result<Attempt> {
        let (n, quorum) = (self.inner.nodes.len(), self.inner.quorum);
        let undone = if !round.granted.is_empty() || !round.errors.is_empty() {
            self.undo_round(keys, owner, deadline).await
        } else {
            true
        };
        if !undone {
            unsettled.store(true, Ordering::SeqCst);
        }
        let expires_in = round.held.iter().flatten().min().copied();
        if round.held.len() > n - quorum || round.errors.is_empty() {
            return Ok(Attempt::Held { expires_in });
        }
        let first = round.errors.swap_remove(0);
        Err(Error::Backend {
            backend: NAME,
            kind: BackendErrorKind::Unavailable,
            message: format!(
                "no quorum: {} of {n} masters granted, {} held, {} failed (a quorum is {quorum})",
                round.granted.len(),
                round.held.len(),
                round.errors.len() + 1
            ),
            source: Some(Box::new(first)),
        })
    }

    /// A guard's release on every master. With `wait_replicas`, a master whose acquire did not
    /// answer in time may still have it queued on the grants' own connection, behind other
    /// grants' `WAIT`s: the release, answered on the main connection (so that it is not held
    /// up behind those waits), is sent again on the grants' connection in the background, after
    /// any such acquire, so that its grant is not left for a TTL.
    async fn release_everywhere(&self, keys: &Keys, owner: OwnerToken) -> Vec<Result<bool>> {
        let answers = join_all(self.inner.nodes.iter().map(|n| n.release(keys, owner))).await;
        if self.inner.nodes.iter().any(|n| n.waits_for_replicas()) {
            let (this, keys) = (self.clone(), keys.clone());
            lock_core::cancel::spawn_detached(async move {
                let behind = this.inner.nodes.iter().filter(|n| n.waits_for_replicas());
                join_all(behind.map(|n| n.undo(&keys, owner, false))).await;
            });
        }
        answers
    }

    /// The undo of one round: its grants on every master, but not a waiting writer's intent
    /// (the writer goes on waiting; its acquire withdraws the intent when it ends).
    /// Whether every master answered (by `deadline`, or [`UNDO_GRACE`] from now if later).
    async fn undo_round(&self, keys: &Keys, owner: OwnerToken, deadline: Option<Instant>) -> bool {
        let answers = join_all(self.inner.nodes.iter().map(|n| n.undo(keys, owner, true)));
        let answers = match deadline {
            Some(d) => match tokio::time::timeout_at(d.max(Instant::now() + UNDO_GRACE), answers).await {
                Ok(a) => a,
                Err(_) => return false,
            },
            None => answers.await,
        };
        answers.iter().all(Result::is_ok)
    }

    /// One round. The round undoes its own partial grants; dropped mid-flight it cannot, so
    /// the release on every node is then sent in the background. A failed round is not undone
    /// again here: the waiting loop retries with the same owner token, and a late undo could
    /// release that retry's grant on a master; the callers undo once no retry follows.
    async fn attempt_once(
        &self,
        req: &AcquireRequest,
        intent: Option<Duration>,
        unsettled: &AtomicBool,
        deadline: Option<Instant>,
    ) -> Result<Attempt> {
        let keys = self.keys(&req.key, req.mode)?;
        let undo = arm(self.releaser(keys, req.owner));
        let attempt = self.attempt(req, intent, unsettled, deadline).await;
        undo.disarm();
        attempt
    }

    /// A release of `owner`'s grant on every master that says whether every master answered.
    fn releaser(
        &self,
        keys: Keys,
        owner: OwnerToken,
    ) -> impl Fn() -> BoxFuture<'static, bool> + Send + 'static {
        let this = self.clone();
        move || {
            let (this, keys) = (this.clone(), keys.clone());
            Box::pin(async move {
                let undone = join_all(this.inner.nodes.iter().map(|n| n.undo(&keys, owner, false))).await;
                undone.iter().all(Result::is_ok)
            })
        }
    }

    /// The holders of `keys` that a quorum of masters agrees on (by owner and mode: the
    /// highest token, the least time left), and how many masters answered.
    async fn agreed_holders(&self, keys: &Keys) -> (Vec<LockInfo>, usize) {
        let replies = join_all(self.inner.nodes.iter().map(|node| node.holders(keys))).await;
        let answered = replies.iter().filter(|r| r.is_ok()).count();
        let infos: Vec<LockInfo> = replies.into_iter().filter_map(Result::ok).flatten().collect();
        let mut agreed: Vec<LockInfo> = Vec::new();
        for info in &infos {
            let Some(owner) = info.owner else { continue };
            if agreed.iter().any(|a| a.owner == Some(owner) && a.mode == info.mode) {
                continue;
            }
            let same: Vec<&LockInfo> =
                infos.iter().filter(|i| i.owner == Some(owner) && i.mode == info.mode).collect();
            if same.len() >= self.inner.quorum {
                let fence = same.iter().filter_map(|i| i.fencing_token).max();
                let left = same.iter().filter_map(|i| i.remaining_ttl).min();
                // The newest metadata (a proclaim writes it with its own time, and reaches a
                // quorum, perhaps not all: any quorum read holds it), then the one most
                // masters hold.
                let metadata = same
                    .iter()
                    .filter_map(|i| i.metadata.as_ref())
                    .max_by_key(|m| {
                        (m.acquired_at_ms, same.iter().filter(|i| i.metadata.as_ref() == Some(*m)).count())
                    })
                    .cloned();
                agreed.push(
                    LockInfo::new(fence, Some(owner), left).with_mode(info.mode).with_metadata(metadata),
                );
            }
        }
        (agreed, answered)
    }

    fn too_few(&self, answered: usize) -> Error {
        unavailable(format!(
            "only {answered} of {} masters answered; a quorum is {}",
            self.inner.nodes.len(),
            self.inner.quorum
        ))
    }
}

/// What the masters said to one round.
struct Round {
    granted: Vec<(usize, u64)>,
    held: Vec<Option<Duration>>,
    errors: Vec<Error>,
}

impl Round {
    fn of(replies: Vec<Result<NodeGrant>>) -> Self {
        let mut round = Round { granted: Vec::new(), held: Vec::new(), errors: Vec::new() };
        for (i, r) in replies.into_iter().enumerate() {
            match r {
                Ok(NodeGrant::Granted(f)) => round.granted.push((i, f)),
                Ok(NodeGrant::Held(left)) => round.held.push(left),
                // Only semaphores report a mismatch, and Redlock has none.
                Ok(NodeGrant::Mismatch(_)) => round.held.push(None),
                Err(e) => round.errors.push(e),
            }
        }
        round
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
            .with_read_write(true)
            .with_writer_preference(true)
            .with_elections(true)
            .with_holder_metadata(true)
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let unsettled = AtomicBool::new(false);
        let attempt = self.attempt_once(req, None, &unsettled, None).await;
        if matches!(attempt, Err(Error::Backend { .. })) || unsettled.load(Ordering::SeqCst) {
            // The round already released on every master; a master that did not answer that
            // release (the round failed, or found the lock held) is asked again in the
            // background until it does.
            let release = self.releaser(self.keys(&req.key, req.mode)?, req.owner);
            lock_core::cancel::spawn_detached(async move {
                lock_core::cancel::undo_after(lock_core::cancel::LATE_GRANT_RECHECKS, release).await;
            });
        }
        attempt
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let keys = self.keys(&req.key, req.mode)?;
        let nodes = &self.inner.nodes;
        let intent = (req.mode == Mode::Write).then(|| self.writer_intent_ttl());
        let unsettled = AtomicBool::new(false);
        let res = crate::attempts::acquire_waiting(
            &req.key,
            deadline,
            self.inner.node_timeout,
            |bound| {
                let keys = &keys;
                join_all(nodes.iter().map(move |n| n.watch(keys, bound, None)))
            },
            || self.attempt_once(req, intent, &unsettled, Some(deadline)),
            // The quick rechecks only: a master that does not answer is down, and Redlock's
            // masters have no replica promoted later to carry the grant on.
            crate::attempts::undo_later(self.releaser(keys.clone(), req.owner), Duration::ZERO, ()),
        )
        .await;
        if res.is_err() && unsettled.load(Ordering::SeqCst) {
            // A master did not answer a round's undo in time (a grant made there late may
            // remain): now that no round follows, asked again in the background until every
            // master answers.
            lock_core::cancel::spawn_detached(crate::attempts::undo_later(
                self.releaser(keys.clone(), req.owner),
                Duration::ZERO,
                (),
            ));
        }
        if res.is_err() && intent.is_some() {
            // A writer that gives up withdraws its intent.
            let withdraw = (self.releaser(keys, req.owner))();
            crate::attempts::withdraw_within(deadline, self.inner.node_timeout, withdraw).await;
        }
        res
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let keys = self.keys(lease.key(), lease.mode())?;
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
        let keys = self.keys(lease.key(), lease.mode())?;
        let n = self.inner.nodes.len();
        let quorum = self.inner.quorum;
        let replies = self.release_everywhere(&keys, lease.owner()).await;
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
        // The holder is the owner present on a quorum of nodes.
        let (agreed, answered) = self.agreed_holders(&Keys::lock(&self.inner.prefix, key).waking_all()).await;
        match agreed.into_iter().next() {
            Some(holder) => Ok(Some(holder)),
            None if answered < self.inner.quorum => Err(self.too_few(answered)),
            None => Ok(None),
        }
    }

    async fn holders(&self, key: &LockKey, mode: Mode) -> Result<Vec<LockInfo>> {
        let (agreed, answered) = self.agreed_holders(&self.keys(key, mode)?).await;
        if answered < self.inner.quorum {
            return Err(self.too_few(answered));
        }
        Ok(agreed)
    }

    /// The metadata of a lock or an election (proclaim), rewritten on every master where the
    /// grant is ours; done when a quorum did.
    async fn update_metadata(&self, lease: &Lease, metadata: &lock_core::Metadata) -> Result<ExtendOutcome> {
        crate::node::keeps_metadata(NAME, lease.mode())?;
        let keys = self.keys(lease.key(), lease.mode())?;
        let meta = crate::node::meta_arg(metadata);
        let (n, quorum) = (self.inner.nodes.len(), self.inner.quorum);
        let replies =
            join_all(self.inner.nodes.iter().map(|node| node.set_meta(&keys, lease.owner(), &meta))).await;
        let ok = replies.iter().filter(|r| matches!(r, Ok(true))).count();
        let refused = replies.iter().filter(|r| matches!(r, Ok(false))).count();
        if ok >= quorum {
            return Ok(ExtendOutcome::Extended { valid_until: lease.valid_until() });
        }
        if refused > n - quorum {
            return Ok(ExtendOutcome::NotHeld);
        }
        Err(unavailable(format!(
            "metadata written on {ok} of {n} masters, {refused} refused; a quorum is {quorum}"
        )))
    }
}
