//! One Redis server: a multiplexed, self-reconnecting connection for commands and a
//! subscriber connection for wake-ups, plus the scripts' calls.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{Error, FencingToken, LockInfo, Mode, OwnerToken, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;

use crate::cluster_scan::{self, Cursor, Topology};
use crate::error::{bad_reply, map_err, no_connection, request_timed_out, unavailable};
use crate::keys::Keys;
use crate::notify::{Notifier, Subscription};
use crate::options::RedisOptions;
use crate::scripts;

pub(crate) const NAME: &str = "redis";

/// The longest sleep of a waiter between two attempts when no release message comes (a
/// foreign holder that never publishes, or a lost message).
pub(crate) const MAX_POLL: Duration = Duration::from_millis(250);

/// What one node said to an acquire.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NodeGrant {
    Granted(u64),
    Held(Option<Duration>),
    /// The semaphore's holders use this other number of permits.
    Mismatch(u32),
}

/// A remaining time in ms as the scripts report it (negative: unknown or none).
fn millis(ms: i64) -> Option<Duration> {
    (ms >= 0).then(|| Duration::from_millis(ms as u64))
}

/// The connection requests go out on: one server's (self-reconnecting), or a cluster's
/// (each request routed to its key's slot, following `MOVED` and `ASK`).
#[doc(hidden)]
#[derive(Clone)]
pub enum Connection {
    /// One server.
    Server(ConnectionManager),
    /// A Redis Cluster.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Server(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

pub(crate) struct Node {
    pub(crate) addr: String,
    con: Connection,
    notifier: Notifier,
    /// This client's own wake-up channel (`<prefix>wake:<uuid>`): a release that takes one of
    /// our waiters out of a queue of waiters publishes `w:<owner>` there, to us alone.
    wake_channel: String,
    timeout: Duration,
    backend: &'static str,
    /// With `wait_replicas`: the grants' own connection and what they wait for.
    replicas: Option<Replicas>,
    /// Told when a request fails in a way a failover explains (a Sentinel-managed primary).
    trouble: Option<Arc<tokio::sync::Notify>>,
    /// On a cluster, the options a listing's `SCAN` connects to one primary with.
    scan_opts: Option<Box<RedisOptions>>,
}

/// Grants confirmed by replicas ([`RedisOptions::wait_replicas`]): they go out on a connection
/// of their own, since `WAIT` holds its connection until it returns.
struct Replicas {
    con: Connection,
    count: u32,
    timeout: Duration,
}

/// A pipeline's failure as its failing command's own error: a pipeline error keeps no code
/// redis-rs does not know (`BUSY`, `NOREPLICAS`), which the error kinds read to tell a passing
/// refusal from a lasting one.
fn first_failure(e: redis::RedisError) -> redis::RedisError {
    match e.clone().into_server_errors() {
        Some(failures) => failures.first().map_or(e, |(_, first)| redis::RedisError::from(first.clone())),
        None => e,
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("addr", &self.addr).field("timeout", &self.timeout).finish()
    }
}

/// The metadata argument of every acquire script: `"\n<JSON>"` (a lock's, an election's and
/// a writer's grant value is `"<owner>:<fence>"` then this; a permit's or a reader's is kept
/// in its primitive's hash).
pub(crate) fn meta_arg(metadata: &lock_core::Metadata) -> String {
    format!("\n{}", metadata.encode())
}

/// Whether grants of `mode` keep holder metadata on Redis (the lock's and the election's do,
/// in their value).
///
/// # Errors
/// [`Error::Unsupported`] for the other primitives.
pub(crate) fn keeps_metadata(backend: &'static str, mode: Mode) -> Result<()> {
    match mode {
        Mode::Exclusive | Mode::Leader => Ok(()),
        other => {
            Err(Error::Unsupported { backend, capability: format!("metadata of {}s", other.primitive()) })
        }
    }
}

/// The channel a grant or a proclaim is announced on: an election's release channel (its
/// observers listen there); none for the other primitives.
fn announce(keys: &Keys) -> &str {
    if keys.mode == Mode::Leader {
        &keys.channel
    } else {
        ""
    }
}

/// A new client's own wake-up channel, under the key prefix (so an ACL that allows the
/// prefix's channels allows it).
fn wake_channel(opts: &RedisOptions) -> String {
    format!("{}wake:{}", opts.prefix, OwnerToken::random())
}

/// Milliseconds for PX/PEXPIRE, rounded up so the server never holds less than asked.
pub(crate) fn ttl_ms(ttl: Duration) -> u64 {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    ms.clamp(1, u64::MAX as u128) as u64
}

impl Node {
    /// Connects with `opts` (already validated), whose request timeout defaults to
    /// `default_timeout`. With `lazy`, returns at once and connects on first use (Redlock
    /// tolerates nodes that are down at start).
    pub(crate) async fn connect(
        opts: &RedisOptions,
        backend: &'static str,
        lazy: bool,
        default_timeout: Duration,
    ) -> Result<Self> {
        if opts.cluster.is_some() {
            return Self::connect_cluster(opts, backend, default_timeout).await;
        }
        Self::connect_server(opts, backend, lazy, default_timeout, None).await
    }

    /// Connects to the server `opts` names (not a cluster, not lazily) in place of `old`, the
    /// primary before a Sentinel failover: `old`'s subscriber moves to the new server and
    /// serves this node, with `old`'s wake-up channel, so waiters that subscribed before the
    /// failover are still woken by releases.
    pub(crate) async fn connect_after(
        opts: &RedisOptions,
        backend: &'static str,
        default_timeout: Duration,
        old: &Node,
    ) -> Result<Self> {
        Self::connect_server(opts, backend, false, default_timeout, Some(old)).await
    }

    /// [`Node::connect`] to one server, with the subscriber and wake-up channel of `old`
    /// when it succeeds it.
    async fn connect_server(
        opts: &RedisOptions,
        backend: &'static str,
        lazy: bool,
        default_timeout: Duration,
        old: Option<&Node>,
    ) -> Result<Self> {
        let client = client(opts)?;
        let addr = opts.describe();
        let timeout = opts.request_timeout_or(default_timeout);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let con = if lazy {
            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                .map_err(|e| map_err(backend, &addr, e))?
        } else {
            tokio::time::timeout(
                opts.connect_timeout.saturating_add(Duration::from_millis(100)),
                ConnectionManager::new_with_config(client.clone(), config.clone()),
            )
            .await
            .map_err(|_| no_connection(backend, &addr, opts.connect_timeout))?
            .map_err(|e| map_err(backend, &addr, e))?
        };
        let replicas = match opts.wait_replicas {
            0 => None,
            count => {
                if opts.wait_timeout >= timeout {
                    return Err(Error::InvalidConfig(format!(
                        "redis {addr}: wait_timeout ({:?}) must be shorter than the request timeout ({timeout:?})",
                        opts.wait_timeout
                    )));
                }
                let con = ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map_err(|e| map_err(backend, &addr, e))?;
                Some(Replicas { con: Connection::Server(con), count, timeout: opts.wait_timeout })
            }
        };
        let (notifier, wake_channel) = match old {
            Some(old) => (old.notifier.moved_to(vec![client]), old.wake_channel.clone()),
            None => (Notifier::start(vec![client], opts.connect_timeout, timeout), wake_channel(opts)),
        };
        Ok(Self {
            addr,
            con: Connection::Server(con),
            notifier,
            wake_channel,
            timeout,
            backend,
            replicas,
            trouble: None,
            scan_opts: None,
        })
    }

    /// Connects to the cluster `opts` name (validated: no database, no `wait_replicas`): the
    /// slot map from the first node that answers; wake-ups from one node's pub/sub (a
    /// cluster delivers `PUBLISH` on every node).
    async fn connect_cluster(
        opts: &RedisOptions,
        backend: &'static str,
        default_timeout: Duration,
    ) -> Result<Self> {
        let addr = opts.describe();
        let timeout = opts.request_timeout_or(default_timeout);
        let nodes = opts.cluster.as_deref().unwrap_or_default();
        let seeds: Vec<RedisOptions> = nodes.iter().map(|n| opts.at(n.clone())).collect();
        let infos = seeds
            .iter()
            .map(|o| client(o).map(|c| c.get_connection_info().clone()))
            .collect::<Result<Vec<_>>>()?;
        let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
            .connection_timeout(opts.connect_timeout)
            .response_timeout(timeout)
            .retries(3);
        if let Some(password) = &opts.password {
            builder = builder.password(password.expose());
            if let Some(user) = &opts.user {
                builder = builder.username(user);
            }
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = &opts.tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            builder = builder.tls(redis::TlsMode::Secure);
            if tls.ca_pem().is_some() || tls.identity_pem().is_some() {
                builder = builder.certs(redis::TlsCertificates {
                    client_tls: tls.identity_pem().map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.to_vec(),
                        client_key: key.to_vec(),
                    }),
                    root_cert: tls.ca_pem().map(<[u8]>::to_vec),
                });
            }
        }
        let cluster = builder.build().map_err(|e| Error::InvalidConfig(format!("redis {addr}: {e}")))?;
        let con = tokio::time::timeout(
            opts.connect_timeout.saturating_add(Duration::from_millis(100)),
            cluster.get_async_connection(),
        )
        .await
        .map_err(|_| no_connection(backend, &addr, opts.connect_timeout))?
        .map_err(|e| map_err(backend, &addr, e))?;
        if seeds.is_empty() {
            return Err(Error::InvalidConfig(format!("redis {addr}: no node")));
        }
        // Wake-up notices reach every node of a cluster: the subscriber uses whichever seed
        // answers, and the next when it goes away.
        let subscribers = seeds.iter().map(client).collect::<Result<Vec<_>>>()?;
        let notifier = Notifier::start(subscribers, opts.connect_timeout, timeout);
        Ok(Self {
            addr,
            con: Connection::Cluster(con),
            notifier,
            wake_channel: wake_channel(opts),
            timeout,
            backend,
            replicas: None,
            trouble: None,
            scan_opts: Some(Box::new(opts.clone())),
        })
    }

    /// Whether this node is a cluster (requests routed by slot).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.con, Connection::Cluster(_))
    }

    /// Tells `trouble` of every request that fails retryably (the connection, a timeout,
    /// `READONLY`): what a Sentinel-managed primary's follower listens to.
    pub(crate) fn on_trouble(mut self, trouble: Arc<tokio::sync::Notify>) -> Self {
        self.trouble = Some(trouble);
        self
    }

    /// Awaits one request with the node's timeout, mapping both failures to typed errors.
    async fn timed<T>(&self, request: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T> {
        let r = self.timed_at(&self.addr, self.timeout, request).await;
        if let (Err(e), Some(trouble)) = (&r, &self.trouble) {
            if e.is_retryable() {
                trouble.notify_one();
            }
        }
        r
    }

    async fn call<T: redis::FromRedisValue>(&self, inv: redis::ScriptInvocation<'_>) -> Result<T> {
        self.call_on(&self.con, inv).await
    }

    /// One script call on `con`. On a cluster, a call refused because its slot is being
    /// migrated (see [`is_slot_moving`](crate::error::is_slot_moving)) is sent again after a
    /// short pause until the request timeout: the scripts are safe to repeat (each step is
    /// keyed by the owner token) and stop at the refused access.
    async fn call_on<T: redis::FromRedisValue>(
        &self,
        con: &Connection,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut con = con.clone();
        if !matches!(con, Connection::Cluster(_)) {
            return self.timed(inv.invoke_async::<T>(&mut con)).await;
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = match tokio::time::timeout(left, inv.invoke_async::<T>(&mut con)).await {
                Ok(r) => r,
                Err(_) => return Err(request_timed_out(self.backend, &self.addr, self.timeout)),
            };
            match r {
                Err(e) if crate::error::is_slot_moving(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                r => return r.map_err(|e| map_err(self.backend, &self.addr, e)),
            }
        }
    }

    /// Whether grants go out on a connection of their own (`wait_replicas`).
    pub(crate) fn waits_for_replicas(&self) -> bool {
        self.replicas.is_some()
    }

    /// The connection grants go out on: their own with `wait_replicas`, else the node's.
    fn grant_connection(&self) -> &Connection {
        self.replicas.as_ref().map_or(&self.con, |r| &r.con)
    }

    /// Runs the grant script `inv` on the grants' connection. With `wait_replicas`, the `WAIT`
    /// that confirms it goes in the same pipeline, so both travel on one connection: a `WAIT`
    /// sent after the reply could go out on a new connection (another request's failure
    /// reconnected it meanwhile), where it covers no write and confirms at once. A refused
    /// attempt's `WAIT` returns as soon as the replicas have this connection's writes (at
    /// once when it wrote nothing and they had the earlier ones). Returns the script's reply
    /// and, with `wait_replicas`, how many replicas confirmed.
    async fn grant_call<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<(T, Option<i64>)> {
        let Some(r) = &self.replicas else { return Ok((self.call_on(&self.con, inv).await?, None)) };
        let mut con = r.con.clone();
        let mut pipe = redis::pipe();
        pipe.invoke_script(&inv).cmd("WAIT").arg(r.count).arg(ttl_ms(r.timeout));
        let (reply, acked) = self
            .timed(async {
                match pipe.query_async::<(T, i64)>(&mut con).await {
                    // The script is not loaded on this server yet (a restart, a failover, or
                    // `SCRIPT FLUSH`): load it and send the pipeline again. Its `WAIT` ran
                    // over no write of ours and is sent again too.
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        inv.load_async(&mut con).await?;
                        pipe.query_async::<(T, i64)>(&mut con).await
                    }
                    r => r,
                }
                .map_err(first_failure)
            })
            .await?;
        Ok((reply, Some(acked)))
    }

    /// With `wait_replicas`, undoes `owner`'s grants of `keys` if fewer replicas than asked for
    /// confirmed them (`acked`, from [`grant_call`](Self::grant_call)).
    ///
    /// # Errors
    /// A retryable [`BackendErrorKind::Unavailable`](lock_core::BackendErrorKind::Unavailable)
    /// error when too few confirmed (the grant was released).
    async fn confirm(&self, keys: &[Keys], owner: OwnerToken, acked: Option<i64>) -> Result<()> {
        let (Some(r), Some(acked)) = (&self.replicas, acked) else { return Ok(()) };
        if acked >= i64::from(r.count) {
            return Ok(());
        }
        // Concurrently: each undo is bounded by a request timeout, and one after another a
        // multi-key grant's would take one per name.
        futures::future::join_all(keys.iter().map(|k| self.undo(k, owner, false))).await;
        Err(Error::backend_msg(
            self.backend,
            lock_core::BackendErrorKind::Unavailable,
            format!(
                "{}: {acked} of the {} replicas asked for (wait_replicas) confirmed the grant within {:?}; it was undone",
                self.addr, r.count, r.timeout
            ),
        ))
    }

    /// One acquire script on `keys`' primitive. `extra`: the number of permits of a semaphore,
    /// a waiting writer's intent in ms (0: none); ignored by the others. `meta`: the holder's
    /// metadata, kept in the grant of a lock or an election (see [`meta_arg`]). `waiting`: for
    /// an attempt of a waiting acquire, how long its registration in the primitive's queue of
    /// waiters lasts (where it has one).
    pub(crate) async fn acquire(
        &self,
        keys: &Keys,
        owner: OwnerToken,
        ttl: Duration,
        extra: u64,
        meta: &str,
        waiting: Option<Duration>,
    ) -> Result<NodeGrant> {
        let mut inv = keys.scripts().acquire.prepare_invoke();
        keys.add_with_queue(&mut inv);
        inv.arg(owner.to_string()).arg(ttl_ms(ttl)).arg(extra).arg(meta).arg(announce(keys));
        // A waiting attempt's registration in the queue: how long it lasts and its entry.
        match waiting.filter(|_| keys.queue.is_some()) {
            Some(w) => inv.arg(ttl_ms(w)).arg(self.member(owner)),
            None => inv.arg("").arg(""),
        };
        let ((status, value), acked): ((i64, String), _) = self.grant_call(inv).await?;
        let bad = || bad_reply(self.backend, &self.addr, "acquire");
        Ok(match status {
            1 => {
                let fence = value.parse().map_err(|_| bad())?;
                self.confirm(std::slice::from_ref(keys), owner, acked).await?;
                NodeGrant::Granted(fence)
            }
            0 => NodeGrant::Held(millis(value.parse().map_err(|_| bad())?)),
            2 => NodeGrant::Mismatch(value.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        })
    }

    /// Takes the locks of every `keys` at once (one script): their tokens, or `None` when one
    /// is held by someone else (nothing written).
    pub(crate) async fn acquire_all(
        &self,
        keys: &[Keys],
        owner: OwnerToken,
        ttl: Duration,
        meta: &str,
    ) -> Result<Option<Vec<u64>>> {
        let mut inv = scripts::ACQUIRE_ALL.prepare_invoke();
        for k in keys {
            k.add_to(&mut inv);
        }
        inv.arg(owner.to_string()).arg(ttl_ms(ttl)).arg(meta);
        let (reply, acked): (Vec<String>, _) = self.grant_call(inv).await?;
        let bad = || bad_reply(self.backend, &self.addr, "multi-key acquire");
        match reply.split_first() {
            Some((status, fences)) if status == "1" && fences.len() == keys.len() => {
                let fences = fences.iter().map(|f| f.parse().map_err(|_| bad())).collect::<Result<_>>()?;
                self.confirm(keys, owner, acked).await?;
                Ok(Some(fences))
            }
            Some((status, _)) if status == "0" => Ok(None),
            _ => Err(bad()),
        }
    }

    pub(crate) async fn extend(&self, keys: &Keys, owner: OwnerToken, ttl: Duration) -> Result<bool> {
        let mut inv = keys.scripts().extend.prepare_invoke();
        keys.add_to(&mut inv);
        inv.arg(owner.to_string()).arg(ttl_ms(ttl)).arg(keys.role());
        Ok(self.call::<i64>(inv).await? == 1)
    }

    /// Extends many locks (exclusive grants: the lock key of each `keys`) in one script call:
    /// whether each was still `owner`'s and is extended, in order.
    pub(crate) async fn extend_many(&self, grants: &[(&Keys, OwnerToken, Duration)]) -> Result<Vec<bool>> {
        let mut inv = scripts::EXTEND_MANY.prepare_invoke();
        for (keys, owner, ttl) in grants {
            inv.key(&keys.all[0]).arg(owner.to_string()).arg(ttl_ms(*ttl));
        }
        let reply: Vec<i64> = self.call(inv).await?;
        if reply.len() != grants.len() {
            return Err(bad_reply(self.backend, &self.addr, "batch extend"));
        }
        Ok(reply.into_iter().map(|r| r == 1).collect())
    }

    /// Releases `owner`'s grant (and a waiting writer's intent) and wakes waiters.
    pub(crate) async fn release(&self, keys: &Keys, owner: OwnerToken) -> Result<bool> {
        self.release_on(&self.con, keys, owner, false).await
    }

    /// The undo of an attempt (or a waiting acquire's withdrawal): [`Node::release`], or only
    /// the grant (`keep_intent`: a writer's intent stays, for a writer that goes on waiting),
    /// sent on the connection the attempts go out on, so that the server runs it after them.
    /// With `wait_replicas`, grants travel on a connection of their own, queued behind other
    /// grants' `WAIT`s: an undo on the main connection could overtake the attempt it undoes.
    pub(crate) async fn undo(&self, keys: &Keys, owner: OwnerToken, keep_intent: bool) -> Result<bool> {
        self.release_on(self.grant_connection(), keys, owner, keep_intent).await
    }

    async fn release_on(
        &self,
        con: &Connection,
        keys: &Keys,
        owner: OwnerToken,
        keep_intent: bool,
    ) -> Result<bool> {
        let mut inv = keys.scripts().release.prepare_invoke();
        keys.add_with_queue(&mut inv);
        inv.arg(owner.to_string()).arg(&keys.channel).arg(keys.role()).arg(if keep_intent {
            "1"
        } else {
            "0"
        });
        inv.arg(self.member(owner));
        Ok(self.call_on::<i64>(con, inv).await? == 1)
    }

    pub(crate) async fn write_back(&self, keys: &Keys, owner: OwnerToken, fence: u64) -> Result<bool> {
        let Some(script) = keys.scripts().write_back else {
            return Err(bad_reply(self.backend, &self.addr, "write-back (none for this primitive)"));
        };
        let mut inv = script.prepare_invoke();
        keys.add_to(&mut inv);
        inv.arg(owner.to_string()).arg(fence.to_string()).arg(keys.role());
        Ok(self.call::<i64>(inv).await? == 1)
    }

    pub(crate) async fn inspect(&self, keys: &Keys) -> Result<Option<LockInfo>> {
        let mut inv = scripts::INSPECT.prepare_invoke();
        inv.key(&keys.all[0]);
        let (value, pttl): (String, String) = self.call(inv).await?;
        if value.is_empty() {
            return Ok(None);
        }
        let pttl: i64 = pttl.parse().unwrap_or(-1);
        // Ours: "<32 hex>:<fence>" and "\n<metadata JSON>"; anything else is a foreign
        // client's value.
        let (grant, meta) = value.split_once('\n').unwrap_or((value.as_str(), ""));
        let (owner, fence, metadata) = match grant.split_once(':') {
            Some((o, f)) => match (OwnerToken::parse_hex(o), f.parse::<u64>()) {
                (Some(o), Ok(f)) => (Some(o), Some(FencingToken::new(f)), lock_core::Metadata::decode(meta)),
                _ => (None, None, None),
            },
            None => (None, None, None),
        };
        Ok(Some(LockInfo::new(fence, owner, millis(pttl)).with_mode(keys.mode).with_metadata(metadata)))
    }

    /// Replaces the metadata of `owner`'s grant of a lock or an election ([`scripts::SET_META`]):
    /// whether the grant was still ours.
    pub(crate) async fn set_meta(&self, keys: &Keys, owner: OwnerToken, meta: &str) -> Result<bool> {
        let mut inv = scripts::SET_META.prepare_invoke();
        inv.key(&keys.all[0]).arg(owner.to_string()).arg(meta).arg(announce(keys));
        Ok(self.call::<i64>(inv).await? == 1)
    }

    /// Raises the fencing counter of `keys`' primitive to at least `at_least` ([`scripts::RAISE`]):
    /// the counter after.
    ///
    /// # Errors
    /// [`Error::Unsupported`] from `i64::MAX - 1` on, before anything is sent: Redis counters
    /// are signed 64-bit integers, and the next grant's `INCR` would fail for good.
    pub(crate) async fn raise(&self, keys: &Keys, at_least: u64) -> Result<u64> {
        if at_least >= i64::MAX as u64 - 1 {
            return Err(Error::Unsupported {
                backend: self.backend,
                capability: format!(
                    "fencing tokens above {}: Redis counters are signed 64-bit integers (asked for {at_least})",
                    i64::MAX - 1
                ),
            });
        }
        let mut inv = scripts::RAISE.prepare_invoke();
        inv.key(keys.counter()).arg(at_least.to_string());
        let v: String = self.call(inv).await?;
        v.parse().map_err(|_| bad_reply(self.backend, &self.addr, "raise"))
    }

    /// The fencing counters of `keys`, in order (0 where none), in one `MGET`.
    pub(crate) async fn counters(&self, keys: &[String]) -> Result<Vec<u64>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let got: Vec<Option<String>> = self.timed(redis::cmd("MGET").arg(keys).query_async(&mut con)).await?;
        Ok(got.into_iter().map(|v| v.and_then(|v| v.parse().ok()).unwrap_or(0)).collect())
    }

    /// One `SCAN` call with `pattern` from `cursor` (`None`: the start): the keys, and the
    /// cursor to go on from (`None`: done).
    ///
    /// On one server the cursor is `SCAN`'s own. On a cluster the primaries are scanned one
    /// after another, and a page fails rather than let the listing miss a key moved by a slot
    /// migration or a failover (the rules are in [`crate::cluster_scan`]).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a cursor no listing made; on a cluster whose slots move,
    /// a retryable [`lock_core::BackendErrorKind::Unavailable`] (list again from the start
    /// once the cluster settles); backend errors.
    pub(crate) async fn scan(
        &self,
        cursor: Option<&str>,
        pattern: &str,
        count: usize,
    ) -> Result<(Vec<String>, Option<String>)> {
        let bad = |c: &str| Error::InvalidConfig(format!("bad list cursor {c:?}"));
        let scan = |from: u64| {
            redis::cmd("SCAN").arg(from).arg("MATCH").arg(pattern).arg("COUNT").arg(count).clone()
        };
        let (Connection::Cluster(cluster), Some(opts)) = (&self.con, self.scan_opts.as_deref()) else {
            let from = cursor.map(|c| c.parse::<u64>().map_err(|_| bad(c))).transpose()?.unwrap_or(0);
            let mut con = self.con.clone();
            let (next, keys) = self.timed(scan(from).query_async::<(u64, Vec<String>)>(&mut con)).await?;
            return Ok((keys, (next != 0).then(|| next.to_string())));
        };
        let topology = self.topology(cluster).await?;
        let (at, from) = match cursor {
            None => (0, 0),
            Some(c) => match Cursor::parse(c, &topology).map_err(|()| bad(c))? {
                Some(c) => (c.at, c.from),
                None => return Err(self.unsettled("it changed since the listing began")),
            },
        };
        let Some((_, address)) = topology.primaries.get(at) else { return Ok((Vec::new(), None)) };
        // On a connection of its own to that primary, not through the cluster client: a
        // request routed by address to a node the cluster client has just lost would make it
        // reconnect to every node (and a SCAN has no key to be routed by).
        let primary = client(&opts.at(crate::options::join_address(address)))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(self.timeout));
        let connect = primary.get_multiplexed_async_connection_with_config(&config);
        let mut con = self.timed_at(address, opts.connect_timeout, connect).await?;
        let (next, keys): (u64, Vec<String>) =
            self.timed_at(address, self.timeout, scan(from).query_async(&mut con)).await?;
        let cursor = Cursor::after(&topology, at, next);
        // The last page: a move that began during the listing may have taken keys to a
        // primary scanned before.
        if cursor.is_none() && self.topology(cluster).await?.fingerprint != topology.fingerprint {
            return Err(self.unsettled("it changed during the listing"));
        }
        Ok((keys, cursor))
    }

    /// `request` to the node at `address`, within `limit`, its failures naming that node.
    async fn timed_at<T>(
        &self,
        address: &str,
        limit: Duration,
        request: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, request).await {
            Ok(r) => r.map_err(|e| map_err(self.backend, address, e)),
            Err(_) => Err(request_timed_out(self.backend, address, limit)),
        }
    }

    /// The cluster's primaries and slot map, from each primary's own line of `CLUSTER NODES`
    /// and its `run_id` (every primary the cluster client knows is asked).
    ///
    /// # Errors
    /// A retryable error while the slot map is not settled (see [`crate::cluster_scan`]).
    async fn topology(&self, cluster: &redis::cluster_async::ClusterConnection) -> Result<Topology> {
        let (nodes, info) = futures::try_join!(
            self.on_every_primary(cluster, redis::cmd("CLUSTER").arg("NODES").clone()),
            self.on_every_primary(cluster, redis::cmd("INFO").arg("server").clone()),
        )?;
        let mut seen = Vec::with_capacity(nodes.len());
        for (address, text) in nodes {
            let view = cluster_scan::node_view(&text)
                .ok_or_else(|| bad_reply(self.backend, &address, "CLUSTER NODES"))?;
            let run_id = info
                .iter()
                .find(|(a, _)| *a == address)
                .and_then(|(_, text)| text.lines().find_map(|l| l.strip_prefix("run_id:")))
                .ok_or_else(|| self.unsettled(&format!("no run_id from {address}")))?
                .trim()
                .to_owned();
            seen.push(cluster_scan::Seen { address, view, run_id });
        }
        cluster_scan::topology(seen).map_err(|why| self.unsettled(&why))
    }

    /// `cmd`'s text reply from every primary the cluster client knows, with its address.
    async fn on_every_primary(
        &self,
        cluster: &redis::cluster_async::ClusterConnection,
        cmd: redis::Cmd,
    ) -> Result<Vec<(String, String)>> {
        use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
        let route = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let mut con = cluster.clone();
        let reply = self.timed(con.route_command(cmd, route)).await?;
        let bad = |at: &str| bad_reply(self.backend, at, "multi-node");
        // Each primary's reply, by its address.
        let redis::Value::Map(replies) = reply else { return Err(bad(&self.addr)) };
        let mut out = Vec::with_capacity(replies.len());
        for (address, reply) in replies {
            let address: String = redis::from_redis_value(address).map_err(|_| bad(&self.addr))?;
            let reply = reply.extract_error().map_err(|e| map_err(self.backend, &address, e))?;
            let text: String = redis::from_redis_value(reply).map_err(|_| bad(&address))?;
            out.push((address, text));
        }
        Ok(out)
    }

    /// The retryable error of a cluster listing that met its topology changing (`why`).
    fn unsettled(&self, why: &str) -> Error {
        unavailable(
            self.backend,
            format!(
                "{}: the Redis Cluster changed or is changing under the listing ({why}); list again from the start once it settles",
                self.addr
            ),
        )
    }

    /// Every unexpired holder of `keys`' primitive, with its mode.
    pub(crate) async fn holders(&self, keys: &Keys) -> Result<Vec<LockInfo>> {
        let Some(script) = keys.scripts().holders else {
            return Ok(self.inspect(keys).await?.into_iter().collect());
        };
        let mut inv = script.prepare_invoke();
        keys.add_to(&mut inv);
        let flat: Vec<String> = self.call(inv).await?;
        let bad = || bad_reply(self.backend, &self.addr, "holders");
        if !flat.len().is_multiple_of(5) {
            return Err(bad());
        }
        flat.chunks(5)
            .map(|h| {
                let mode = match h[3].as_str() {
                    "r" => Mode::Read,
                    "w" => Mode::Write,
                    p => Mode::Permit {
                        limit: p.strip_prefix("p:").and_then(|l| l.parse().ok()).ok_or_else(bad)?,
                    },
                };
                let left = millis(h[2].parse().map_err(|_| bad())?);
                let fence = h[1].parse().ok().map(FencingToken::new);
                let metadata = h[4].strip_prefix('\n').and_then(lock_core::Metadata::decode);
                Ok(LockInfo::new(fence, OwnerToken::parse_hex(&h[0]), left)
                    .with_mode(mode)
                    .with_metadata(metadata))
            })
            .collect()
    }

    /// Subscribes to what wakes a waiter of `keys`' primitive, waiting at most `confirm` for
    /// the server's confirmation (see [`Notifier::watch`]): for the waiter `owner` of a
    /// primitive with a queue of waiters, this client's own wake-up channel (a release wakes it
    /// alone, there); otherwise the primitive's release channel.
    pub(crate) async fn watch(
        &self,
        keys: &Keys,
        confirm: Duration,
        owner: Option<OwnerToken>,
    ) -> Subscription {
        match owner.filter(|_| keys.queue.is_some()) {
            Some(o) => self.notifier.watch(&self.wake_channel, confirm, Some(o.to_string())).await,
            None => self.notifier.watch(&keys.channel, confirm, None).await,
        }
    }

    /// `owner`'s entry in a queue of waiters: its token and where to wake it.
    fn member(&self, owner: OwnerToken) -> String {
        format!("{owner} {}", self.wake_channel)
    }

    /// The request timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        let mut con = self.con.clone();
        self.timed(redis::cmd("PING").query_async::<String>(&mut con)).await.map(|_| ())
    }

    /// A raw connection handle, for benchmarks that measure the floor with the same client.
    pub(crate) fn connection(&self) -> Connection {
        self.con.clone()
    }
}

/// The redis crate's client for `opts`: address, credentials, database and TLS (a private CA
/// and a client certificate are handed to rustls).
pub(crate) fn client(opts: &RedisOptions) -> Result<redis::Client> {
    let (host, port) = opts.host_port()?;
    let addr = match opts.tls {
        Some(_) => redis::ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
        None => redis::ConnectionAddr::Tcp(host, port),
    };
    let invalid = |e: redis::RedisError| Error::InvalidConfig(format!("redis {}: {e}", opts.describe()));
    let info = addr.into_connection_info().map_err(invalid)?;
    let mut settings = info.redis_settings().clone().set_db(opts.db);
    if let Some(password) = &opts.password {
        settings = settings.set_password(password.expose());
        if let Some(user) = &opts.user {
            settings = settings.set_username(user);
        }
    }
    let info = info.set_redis_settings(settings);
    #[cfg(feature = "tls")]
    {
        if let Some(tls) = &opts.tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
            if tls.ca_pem().is_some() || tls.identity_pem().is_some() {
                let certs = redis::TlsCertificates {
                    client_tls: tls.identity_pem().map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.to_vec(),
                        client_key: key.to_vec(),
                    }),
                    root_cert: tls.ca_pem().map(<[u8]>::to_vec),
                };
                return redis::Client::build_with_tls(info, certs).map_err(|e| {
                    Error::InvalidConfig(format!("redis TLS setup for {}: {e}", opts.describe()))
                });
            }
        }
    }
    redis::Client::open(info).map_err(invalid)
}
