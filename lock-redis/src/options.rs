//! Options of the two backends, built in code or parsed from URLs; passwords and private keys
//! never appear in `Debug` output or errors.
//!
//! | URL | options |
//! |---|---|
//! | `redis://[user[:password]@]host[:port][/db]` | `prefix=`, `connect_timeout=5s`, `timeout=2s`, `wait_replicas=0` + `wait_timeout=100ms` (see [`RedisOptions::wait_replicas`]) |
//! | `rediss://…` (TLS) | as `redis://`, and `ca_file=` (a private CA), `cert_file=` + `key_file=` (a client certificate) |
//! | `redis+sentinel://[user[:password]@]s1[:port],s2[:port]/MASTER[/db]` | the primary the sentinels call `MASTER`, followed across failovers (see [`RedisOptions::sentinel`]); as `redis://` |
//! | `rediss+sentinel://…` | the same over TLS, to the sentinels and the primary; as `rediss://` |
//! | `redis+cluster://[user[:password]@]h1[:port],h2[:port],…` | a Redis Cluster, discovered from these nodes (see [`RedisOptions::cluster`]); as `redis://`, without a database |
//! | `rediss+cluster://…` | the same over TLS; as `rediss://` |
//! | `redlock://[user[:password]@]h1[:port],h2[:port],h3[:port][/db]` (3 or more) | `prefix=`, `connect_timeout=5s`, `timeout=200ms` (per node), `wait_replicas=`, `wait_timeout=` (on every master), `tls=true`, `ca_file=`, `cert_file=` + `key_file=` |
//!
//! A host may be a bracketed IPv6 address (`[::1]`, `[::1]:6379`); the port defaults to 6379
//! (26379 for a sentinel).
//! A password without a user (`redis://:password@host`) authenticates as the default user.

use std::fmt;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use lock_core::url::{BackendOptions, ConnectUrl};
use lock_core::{Error, LockBackend, Result, Secret, TlsOptions};

use crate::{RedisBackend, RedlockBackend};

/// The port used when an address names none.
pub const DEFAULT_PORT: u16 = 6379;
/// The port used when a sentinel's address names none.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;
/// The URL schemes of a Sentinel-managed primary (plain and TLS).
const SENTINEL_SCHEMES: [&str; 2] = ["redis+sentinel", "rediss+sentinel"];
/// The URL schemes of a Redis Cluster (plain and TLS).
const CLUSTER_SCHEMES: [&str; 2] = ["redis+cluster", "rediss+cluster"];
/// How long to wait for a connection unless the options choose otherwise.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take on a single node unless the options choose otherwise.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Redlock's per-node timeout unless the options choose one: a node that answers later is
/// treated as down, so one slow master never eats the lock's validity.
pub(crate) const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(200);
/// How long a grant waits for its replicas' confirmation unless the options choose otherwise.
pub(crate) const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(100);

/// Options of one Redis server's connection and of the lock keys on it.
///
/// ```
/// use std::time::Duration;
/// use lock_redis::RedisOptions;
///
/// let opts = RedisOptions::new("127.0.0.1:6379")
///     .credentials("app", "s3cret")
///     .database(2)
///     .prefix("svc:")
///     .request_timeout(Duration::from_secs(1));
/// assert!(opts.validate().is_ok());
/// let parsed: RedisOptions = "redis://app:s3cret@127.0.0.1:6379/2?prefix=svc:&timeout=1s".parse()?;
/// assert_eq!(parsed, opts);
/// # Ok::<(), lock_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RedisOptions {
    pub(crate) address: String,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) db: i64,
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    /// `None`: the backend's default (one node: 2 s; Redlock: 200 ms per node).
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) tls: Option<TlsOptions>,
    /// Replicas that must confirm a grant (`WAIT`), and how long to wait for them; 0: none.
    pub(crate) wait_replicas: u32,
    pub(crate) wait_timeout: Duration,
    /// Where the sentinels are and the master's name, for a Sentinel-managed primary.
    pub(crate) sentinel: Option<Sentinel>,
    /// The nodes a Redis Cluster is discovered from.
    pub(crate) cluster: Option<Vec<String>>,
}

/// The sentinels (`host[:port]`) and the name they know the master by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sentinel {
    pub(crate) sentinels: Vec<String>,
    pub(crate) master: String,
}

impl RedisOptions {
    /// Options for the server at `address`: `host[:port]` (a bracketed IPv6 address allowed,
    /// the port defaults to 6379), without credentials or TLS, database 0, no key prefix,
    /// connect timeout 5 s, request timeout 2 s (200 ms per node under Redlock). The address
    /// is checked by [`validate`](Self::validate) (and on connect).
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            user: None,
            password: None,
            db: 0,
            prefix: String::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: None,
            tls: None,
            wait_replicas: 0,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            sentinel: None,
            cluster: None,
        }
    }

    /// Options for the Redis Cluster that `nodes` (`host[:port]`, any of its nodes) belong to,
    /// with the same defaults as [`new`](Self::new) (database 0 only: a cluster has no other).
    ///
    /// # Behavior
    /// - The client discovers the cluster's slots from the first node that answers and sends
    ///   each request to the primary of its key's slot, following `MOVED` and `ASK` (a slot
    ///   being resharded) and refreshing its slot map. Every key of one lock, semaphore,
    ///   read-write lock or election shares the hash tag `{name}`, so it lives in one slot and
    ///   its scripts run on one node.
    /// - Waiters are woken by the scripts' `PUBLISH`, which a cluster delivers on every node;
    ///   each client subscribes on one node (the first it can reach of `nodes`). Not sharded
    ///   pub/sub: a release's message crosses the cluster bus to every node, which costs bus
    ///   traffic per release but keeps wake-ups working through resharding and failover.
    /// - Multi-key locks over names in different slots are taken one name at a time in a
    ///   canonical order (no atomic multi-slot request); renewals go one request per lock
    ///   (no batches across slots); `list` and the fencing-counter reads scan the primaries
    ///   one after another, and refuse a page with a retryable error while the cluster's
    ///   slots move or its primaries change (rather than miss a name; list again from the
    ///   start); [`wait_replicas`](Self::wait_replicas) is refused.
    /// - A primary that fails is replaced by its replica: grants the replica had not received
    ///   are gone (exclusion can break in that window); fencing tokens still rise (see
    ///   [`scripts`](crate::scripts)).
    pub fn cluster(nodes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut o = Self::new(nodes.first().cloned().unwrap_or_default());
        o.cluster = Some(nodes);
        o
    }

    /// Options for the primary that the Redis Sentinels at `sentinels` (`host[:port]`, port
    /// 26379 by default) know as `master`, with the same defaults as [`new`](Self::new). The
    /// other builders apply to the primary; TLS applies to the sentinels too.
    ///
    /// # Behavior
    /// - On connect the sentinels are asked in turn (`SENTINEL get-master-addr-by-name`) until
    ///   one answers; the backend then talks to that primary as to one server.
    /// - **Failovers are followed**: the sentinels are asked again every second, and at once
    ///   when a request fails with a connection error, a timeout or `READONLY` (a demoted
    ///   primary); when they name another primary, every new request goes there. Requests in
    ///   flight on the old primary fail as any request to a lost server does (retryable).
    /// - What a failover does to locks is Redis replication's doing: grants the new primary
    ///   did not receive are gone (their holders' renewals fail and their guards report the
    ///   loss), so exclusion can break in that window; fencing tokens still rise (see
    ///   [`scripts`](crate::scripts)). [`wait_replicas`](Self::wait_replicas) narrows it.
    /// - The sentinels are reached without authentication (the credentials are the
    ///   primary's).
    pub fn sentinel(
        sentinels: impl IntoIterator<Item = impl Into<String>>,
        master: impl Into<String>,
    ) -> Self {
        let sentinels: Vec<String> = sentinels.into_iter().map(Into::into).collect();
        let mut o = Self::new(sentinels.first().cloned().unwrap_or_default());
        o.sentinel = Some(Sentinel { sentinels, master: master.into() });
        o
    }

    /// Authenticates as ACL `user` with `password`; an empty `user` is the default user
    /// (`AUTH password`, as with `requirepass`).
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        let user = user.into();
        self.user = (!user.is_empty()).then_some(user);
        self.password = Some(Secret::new(password.into()));
        self
    }

    /// Selects database `db` (default 0).
    pub fn database(mut self, db: i64) -> Self {
        self.db = db;
        self
    }

    /// Prefixes every Redis key this backend writes (after the client's namespace). It must
    /// not contain `{` or `}`: the lock key's hash tag follows it.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long to wait for a connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for one request's reply (default 2 s; under Redlock the per-node
    /// timeout, default 200 ms).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Speaks TLS (what `rediss://` means): trusting the system's roots or a private CA, and
    /// presenting a client certificate if the server requires one. Needs the `tls` feature
    /// (on by default).
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Makes every grant wait until `replicas` replicas have confirmed it (Redis's `WAIT`,
    /// at most `timeout`, default 100 ms with `?wait_replicas=N`), and undoes a grant they do
    /// not confirm in time: the attempt then fails with a retryable
    /// [`BackendErrorKind::Unavailable`](lock_core::BackendErrorKind::Unavailable) error (a
    /// waiting acquire tries again until its deadline). `0` turns it off (the default).
    ///
    /// # Behavior
    /// - A confirmed grant (its fencing counter included) is on the primary and `replicas`
    ///   replicas, so a failover to one of those replicas keeps it: this narrows the window in
    ///   which a failover lets a second holder in. It does not close it: replication stays
    ///   asynchronous, a failover may promote a replica that did not confirm, and renewals and
    ///   releases are not confirmed (a failover right after a renewal can cut the lease back to
    ///   the previous expiry).
    /// - Grants go out on a connection of their own, because `WAIT` holds its connection until
    ///   it returns: with a replica down, each attempt takes up to `timeout`, and attempts queue
    ///   behind each other's `WAIT`; renewals, releases and reads are not held up. Each
    ///   attempt's script and its `WAIT` go in one pipeline, on one connection.
    /// - `timeout` must be shorter than the request timeout (checked on connect).
    pub fn wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = replicas;
        self.wait_timeout = timeout;
        self
    }

    /// The server's address, as given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Checks the options without connecting.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a malformed address, a negative database, a zero
    /// timeout, a key prefix with `{` or `}`, or TLS in a build without the `tls` feature.
    pub fn validate(&self) -> Result<()> {
        if let Some(nodes) = &self.cluster {
            if nodes.is_empty() {
                return Err(Error::InvalidConfig("redis cluster: no node address given".into()));
            }
            for a in nodes {
                split_address(a, DEFAULT_PORT).map_err(|why| {
                    Error::InvalidConfig(format!(
                        "redis cluster node address '{}': {why}",
                        lock_core::redact_url(a)
                    ))
                })?;
            }
            if self.db != 0 {
                return Err(Error::InvalidConfig(format!(
                    "redis cluster: database {} asked for, but a cluster has database 0 only",
                    self.db
                )));
            }
            if self.wait_replicas > 0 {
                return Err(Error::InvalidConfig(
                    "redis cluster: wait_replicas is not supported on a cluster (WAIT would not reach the \
                     slot's primary alone)"
                        .into(),
                ));
            }
        }
        match &self.sentinel {
            None if self.cluster.is_some() => {}
            None => {
                self.host_port()?;
            }
            Some(s) => {
                if s.sentinels.is_empty() {
                    return Err(Error::InvalidConfig("redis sentinel: no sentinel address given".into()));
                }
                for a in &s.sentinels {
                    split_address(a, DEFAULT_SENTINEL_PORT).map_err(|why| {
                        Error::InvalidConfig(format!(
                            "redis sentinel address '{}': {why}",
                            lock_core::redact_url(a)
                        ))
                    })?;
                }
                if s.master.is_empty() || s.master.contains(|c: char| c.is_whitespace() || c == '/') {
                    return Err(Error::InvalidConfig(format!(
                        "redis sentinel: '{}' is not a master name (the name in the sentinels' `sentinel monitor`)",
                        s.master
                    )));
                }
            }
        }
        if self.db < 0 {
            return Err(Error::InvalidConfig(format!("redis database {} is negative", self.db)));
        }
        if self.connect_timeout.is_zero()
            || self.request_timeout.is_some_and(|t| t.is_zero())
            || (self.wait_replicas > 0 && self.wait_timeout.is_zero())
        {
            return Err(Error::InvalidConfig("redis timeouts must be greater than zero".into()));
        }
        if self.prefix.contains(['{', '}']) {
            return Err(Error::InvalidConfig(
                "redis key prefix must not contain '{' or '}' (the lock key's hash tag follows it)".into(),
            ));
        }
        if self.tls.is_some() && !cfg!(feature = "tls") {
            return Err(Error::InvalidConfig(
                "redis TLS (rediss://) needs lock-redis's `tls` feature, which is disabled in this build"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The host (IPv6 without its brackets) and port.
    pub(crate) fn host_port(&self) -> Result<(String, u16)> {
        split_address(&self.address, DEFAULT_PORT).map_err(|why| {
            Error::InvalidConfig(format!("redis address '{}': {why}", lock_core::redact_url(&self.address)))
        })
    }

    /// The request timeout in force: the one chosen, else `default` (the backend's).
    pub(crate) fn request_timeout_or(&self, default: Duration) -> Duration {
        self.request_timeout.unwrap_or(default)
    }

    /// The node for messages and logs: `redis://host:port[/db]`, never with credentials.
    pub(crate) fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        let db = if self.db == 0 { String::new() } else { format!("/{}", self.db) };
        if let Some(nodes) = &self.cluster {
            return format!("{scheme}+cluster://{}", nodes.join(","));
        }
        match &self.sentinel {
            None => format!("{scheme}://{}{db}", self.address),
            Some(s) => format!("{scheme}+sentinel://{}/{}{db}", s.sentinels.join(","), s.master),
        }
    }

    /// These options with `address` as the server and no sentinel: the primary the sentinels
    /// named.
    pub(crate) fn at(&self, address: String) -> Self {
        Self { address, sentinel: None, cluster: None, ..self.clone() }
    }
}

/// `host:port` as a cluster client names a node (an IPv6 host bare: `::1:7000`), in the form
/// [`split_address`] reads (`[::1]:7000`).
pub(crate) fn join_address(node: &str) -> String {
    match node.rsplit_once(':') {
        Some((host, port)) if host.contains(':') => format!("[{host}]:{port}"),
        _ => node.to_owned(),
    }
}

/// Splits `host[:port]` into the host (IPv6 without brackets) and the port (`default` if none).
pub(crate) fn split_address(address: &str, default: u16) -> std::result::Result<(String, u16), String> {
    if address.contains('@') {
        // Nothing of it is shown: the part before the `@` is a user and password.
        return Err(
            "it holds a user or password (before an '@'): give them as the options' user and password".into(),
        );
    }
    let (host, port) = match address.strip_prefix('[') {
        Some(rest) => {
            let (ip, after) = rest.split_once(']').ok_or("a bracketed IPv6 address needs its ']'")?;
            ip.parse::<Ipv6Addr>().map_err(|_| format!("'{ip}' is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or("expected ':PORT' after the ']'")?),
            };
            (ip, port)
        }
        None => match address.split_once(':') {
            None => (address, None),
            Some((host, port)) if !port.contains(':') => (host, Some(port)),
            Some(_) => return Err("an IPv6 address must be bracketed ([::1] or [::1]:6379)".into()),
        },
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let name_like = |c: char| c.is_ascii_alphanumeric() || "-._:".contains(c);
    if !host.chars().all(name_like) {
        return Err(format!("'{host}' is not a host name or an IP address"));
    }
    if matches!(host, "0.0.0.0" | "::") {
        return Err(format!("'{host}' is a wildcard address; name the server's own address"));
    }
    let port = match port {
        None => default,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("port '{p}' is not a number from 1 to 65535")),
        },
    };
    Ok((host.to_owned(), port))
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("address", &lock_core::redact_url(&self.address))
            .field("user", &self.user)
            .field("password", &self.password)
            .field("db", &self.db)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .field(
                "sentinel",
                &self.sentinel.as_ref().map(|s| {
                    (&s.master, s.sentinels.iter().map(|a| lock_core::redact_url(a)).collect::<Vec<_>>())
                }),
            )
            .field(
                "cluster",
                &self
                    .cluster
                    .as_ref()
                    .map(|c| c.iter().map(|a| lock_core::redact_url(a)).collect::<Vec<_>>()),
            )
            .finish()
    }
}

/// Options of a [`RedlockBackend`]: one [`RedisOptions`] per independent master (3 or more;
/// use 3 or 5).
///
/// The builders below set a value on every master; set per-master values on the
/// [`RedisOptions`] before. A master whose options choose no request timeout gets Redlock's
/// per-node timeout, 200 ms.
///
/// ```
/// use lock_redis::{RedisOptions, RedlockOptions};
///
/// let opts = RedlockOptions::new(["10.0.0.1", "10.0.0.2", "10.0.0.3"].map(RedisOptions::new))
///     .credentials("", "s3cret")
///     .prefix("svc:");
/// assert!(opts.validate().is_ok());
/// let parsed: RedlockOptions = "redlock://:s3cret@10.0.0.1,10.0.0.2,10.0.0.3?prefix=svc:".parse()?;
/// assert_eq!(parsed, opts);
/// # Ok::<(), lock_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedlockOptions {
    pub(crate) nodes: Vec<RedisOptions>,
}

impl RedlockOptions {
    /// Options for these masters.
    pub fn new(nodes: impl IntoIterator<Item = RedisOptions>) -> Self {
        Self { nodes: nodes.into_iter().collect() }
    }

    fn each(mut self, f: impl Fn(RedisOptions) -> RedisOptions) -> Self {
        self.nodes = self.nodes.into_iter().map(f).collect();
        self
    }

    /// Sets [`RedisOptions::prefix`] on every master (they must all use the same one).
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.each(|o| o.prefix(prefix.clone()))
    }

    /// Sets the per-node request timeout (default 200 ms) on every master.
    pub fn request_timeout(self, timeout: Duration) -> Self {
        self.each(|o| o.request_timeout(timeout))
    }

    /// Sets [`RedisOptions::connect_timeout`] on every master.
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.each(|o| o.connect_timeout(timeout))
    }

    /// Sets [`RedisOptions::credentials`] on every master.
    pub fn credentials(self, user: impl Into<String>, password: impl Into<String>) -> Self {
        let (user, password) = (user.into(), password.into());
        self.each(|o| o.credentials(user.clone(), password.clone()))
    }

    /// Sets [`RedisOptions::database`] on every master.
    pub fn database(self, db: i64) -> Self {
        self.each(|o| o.database(db))
    }

    /// Sets [`RedisOptions::tls`] on every master.
    pub fn tls(self, tls: TlsOptions) -> Self {
        self.each(|o| o.tls(tls.clone()))
    }

    /// The masters' options.
    pub fn nodes(&self) -> &[RedisOptions] {
        &self.nodes
    }

    /// Checks the options without connecting.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for fewer than 3 masters, one master listed twice, masters
    /// with different key prefixes, or any master's invalid options.
    pub fn validate(&self) -> Result<()> {
        if self.nodes.len() < 3 {
            return Err(Error::InvalidConfig(format!(
                "Redlock needs at least 3 independent masters (got {}); use the single-node backend for one",
                self.nodes.len()
            )));
        }
        let mut seen = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            node.validate()?;
            if node.sentinel.is_some() || node.cluster.is_some() {
                return Err(Error::InvalidConfig(
                    "Redlock masters are single servers: a Sentinel-managed master or a cluster \
                     (RedisOptions::sentinel, RedisOptions::cluster) is not supported under Redlock"
                        .into(),
                ));
            }
            let at = node.host_port()?;
            if seen.contains(&at) {
                return Err(Error::InvalidConfig(format!(
                    "Redlock masters must be independent: '{}' is listed twice",
                    node.address
                )));
            }
            seen.push(at);
        }
        if self.nodes.iter().any(|o| o.prefix != self.nodes[0].prefix) {
            return Err(Error::InvalidConfig("all Redlock masters must use the same key prefix".into()));
        }
        Ok(())
    }
}

/// What `redis://`, `rediss://` and `redlock://` URLs say about every node.
struct UrlSettings {
    credentials: Option<(String, String)>,
    db: i64,
    prefix: Option<String>,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    tls: Option<TlsOptions>,
    wait_replicas: Option<u32>,
    wait_timeout: Option<Duration>,
}

impl UrlSettings {
    /// The settings of `u`, whose path (`db_path`: the part that names the database) is `/DB`.
    fn parse(u: &ConnectUrl, tls: Option<TlsOptions>, db_path: &str) -> Result<Self> {
        let credentials = match (&u.user, &u.password) {
            // A password alone authenticates as the default user.
            (None, Some(p)) => Some((String::new(), p.clone())),
            _ => u.user_and_password()?.map(|(user, p)| (user.to_owned(), p.to_owned())),
        };
        let db = match db_path.trim_matches('/') {
            "" => 0,
            db => db.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                u.error(format!("path '{}' is not valid for Redis: expected /DB, a database number", u.path))
            })?,
        };
        Ok(Self {
            credentials,
            db,
            prefix: u.option("prefix").map(str::to_owned),
            connect_timeout: u.duration("connect_timeout")?,
            request_timeout: u.duration("timeout")?,
            tls,
            wait_replicas: match u.option("wait_replicas") {
                None => None,
                Some(n) => Some(n.parse::<u32>().map_err(|_| {
                    u.error(format!("option wait_replicas: '{n}' is not a number of replicas (0 or more)"))
                })?),
            },
            wait_timeout: u.duration("wait_timeout")?,
        })
    }

    fn apply(&self, mut o: RedisOptions) -> RedisOptions {
        if let Some((user, password)) = &self.credentials {
            o = o.credentials(user.as_str(), password.as_str());
        }
        o = o.database(self.db);
        if let Some(p) = &self.prefix {
            o = o.prefix(p.as_str());
        }
        if let Some(t) = self.connect_timeout {
            o = o.connect_timeout(t);
        }
        if let Some(t) = self.request_timeout {
            o = o.request_timeout(t);
        }
        if let Some(tls) = &self.tls {
            o = o.tls(tls.clone());
        }
        if self.wait_replicas.is_some() || self.wait_timeout.is_some() {
            let n = self.wait_replicas.unwrap_or(o.wait_replicas);
            let timeout = self.wait_timeout.unwrap_or(o.wait_timeout);
            o = o.wait_replicas(n, timeout);
        }
        o
    }
}

/// Puts the URL in front of a validation error's message.
fn in_url(u: &ConnectUrl, e: Error) -> Error {
    match e {
        Error::InvalidConfig(m) => u.error(m),
        e => e,
    }
}

const TLS_OPTIONS: [&str; 4] = ["tls", "ca_file", "cert_file", "key_file"];

#[lock_core::async_trait]
impl BackendOptions for RedisOptions {
    fn from_url(u: &ConnectUrl) -> Result<Self> {
        u.expect_scheme(&[
            "redis",
            "rediss",
            SENTINEL_SCHEMES[0],
            SENTINEL_SCHEMES[1],
            CLUSTER_SCHEMES[0],
            CLUSTER_SCHEMES[1],
        ])?;
        let tls = if u.scheme.starts_with("rediss") {
            u.check_options(&[
                "prefix",
                "connect_timeout",
                "timeout",
                "wait_replicas",
                "wait_timeout",
                "ca_file",
                "cert_file",
                "key_file",
            ])?;
            Some(u.tls()?.unwrap_or_default())
        } else {
            if let Some(k) = TLS_OPTIONS.iter().find(|k| u.option(k).is_some()) {
                let tls = u.scheme.replacen("redis", "rediss", 1);
                return Err(
                    u.error(format!("{}:// is plain TCP; option {k}= needs {tls}:// (TLS)", u.scheme))
                );
            }
            u.check_options(&["prefix", "connect_timeout", "timeout", "wait_replicas", "wait_timeout"])?;
            None
        };
        let opts = if CLUSTER_SCHEMES.contains(&u.scheme.as_str()) {
            let nodes = u.hosts_at_least(1, "node addresses")?;
            if !matches!(u.path.as_str(), "" | "/") {
                return Err(u.error(format!(
                    "{}:// takes no path (a cluster has database 0 only; got '{}')",
                    u.scheme, u.path
                )));
            }
            UrlSettings::parse(u, tls, "")?.apply(RedisOptions::cluster(nodes.to_vec()))
        } else if SENTINEL_SCHEMES.contains(&u.scheme.as_str()) {
            let sentinels = u.hosts_at_least(1, "sentinel addresses")?;
            let path = u.path.trim_start_matches('/');
            let (master, db) = path.split_once('/').unwrap_or((path, ""));
            if master.is_empty() {
                return Err(u.error(format!(
                    "{}:// needs the master's name: {}://s1,s2/MASTER[/db]",
                    u.scheme, u.scheme
                )));
            }
            UrlSettings::parse(u, tls, db)?.apply(RedisOptions::sentinel(sentinels.to_vec(), master))
        } else {
            let host = u.single_host("host", " (use redlock://h1,h2,h3 for several masters)")?;
            UrlSettings::parse(u, tls, &u.path)?.apply(RedisOptions::new(host))
        };
        opts.validate().map_err(|e| in_url(u, e))?;
        Ok(opts)
    }

    fn validate(&self) -> Result<()> {
        RedisOptions::validate(self)
    }

    async fn connect_dyn(self) -> Result<Arc<dyn LockBackend>> {
        Ok(Arc::new(RedisBackend::connect(self).await?))
    }
}

impl std::str::FromStr for RedisOptions {
    type Err = Error;

    /// Parses `redis://[user[:password]@]host[:port][/db]` or `rediss://…`.
    fn from_str(url: &str) -> Result<Self> {
        lock_core::url::parse(url)
    }
}

#[lock_core::async_trait]
impl BackendOptions for RedlockOptions {
    fn from_url(u: &ConnectUrl) -> Result<Self> {
        u.expect_scheme(&["redlock"])?;
        let mut known = vec!["prefix", "connect_timeout", "timeout", "wait_replicas", "wait_timeout"];
        known.extend(TLS_OPTIONS);
        u.check_options(&known)?;
        let hosts = u.hosts_at_least(3, "hosts")?;
        let settings = UrlSettings::parse(u, u.tls()?, &u.path)?;
        let opts = RedlockOptions::new(hosts.iter().map(|h| settings.apply(RedisOptions::new(h.as_str()))));
        opts.validate().map_err(|e| in_url(u, e))?;
        Ok(opts)
    }

    fn validate(&self) -> Result<()> {
        RedlockOptions::validate(self)
    }

    async fn connect_dyn(self) -> Result<Arc<dyn LockBackend>> {
        Ok(Arc::new(RedlockBackend::connect(self).await?))
    }
}

impl std::str::FromStr for RedlockOptions {
    type Err = Error;

    /// Parses `redlock://[user[:password]@]h1[:port],h2[:port],h3[:port][/db]`.
    fn from_str(url: &str) -> Result<Self> {
        lock_core::url::parse(url)
    }
}

#[cfg(test)]
mod tests;
