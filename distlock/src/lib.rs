//! # distlock
//!
//! Distributed locks with fencing tokens and loss signals, one API over many backends,
//! picked by Cargo feature and by URL:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> distlock::Result<()> {
//! use std::time::Duration;
//!
//! let locks = distlock::connect("mem://").await?; // or redis://…, file:///…
//! let guard = locks.lock("jobs/nightly").ttl(Duration::from_secs(30)).auto_renew().acquire().await?;
//! println!("fencing token {}", guard.fencing_token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## Backends and URLs
//!
//! | URL | backend | feature | options (`?a=b&…`) |
//! |---|---|---|---|
//! | `mem://` or `mem://NAME` | in-process store; the same `NAME` shares one store within the process | `local` (default) | |
//! | `file:///PATH` or `file://` | single-host file backend in `PATH` (default: [`lock_local::FileBackend::default_dir`]) | `local` (default) | `sync=true\|false`, `poll=20ms` |
//! | `redis://[user[:password]@]host[:port][/db]` | one Redis server | `redis` | `prefix=`, `connect_timeout=5s`, `timeout=2s` |
//! | `rediss://…` | the same over TLS | `redis` | as `redis://`, and `ca_file=` (a private CA, PEM) |
//! | `redlock://[user[:password]@]h1[:port],h2[:port],h3[:port][/db]` | Redlock over independent masters (3 or more) | `redis` | `prefix=`, `connect_timeout=5s`, `timeout=200ms` (per node), `tls=true`, `ca_file=` |
//! | `etcd://[user:password@]h1:2379,h2:2379` | etcd v3 (session leases by default) | `etcd` | `prefix=`, `lease=session\|per-lock`, `session_ttl=10s`, `connect_timeout=5s`, `timeout=5s`, `tls=true` (the system's roots), `ca_file=` (a private CA), `cert_file=` + `key_file=` (a client certificate); each implies TLS |
//! | `zk://[user:password@]h1:2181,h2:2181[/chroot]` (or `zookeeper://…`) | ZooKeeper (Curator's lock layout; `user:password` is digest auth; the chroot is created if missing) | `zk` | `prefix=/distlock`, `session_timeout=10s`, `connect_timeout=5s` |
//! | `dynamodb://TABLE` | DynamoDB, one item per lock in `TABLE`; credentials from aws-config's default chain | `dynamo` | `region=`, `endpoint=` (DynamoDB Local, an emulator), `partition_key=lock_key`, `sort_key=NAME:VALUE`, `takeover=rvn\|clock`, `max_skew=100ms` (with `clock`), `poll=100ms`, `timeout=5s`, `create_table=true` |
//!
//! A host may be a bracketed IPv6 address, with or without a port (`[::1]`, `[::1]:2379`).
//! Every URL also takes `namespace=NS` (a prefix for every key of the client) and `ttl=30s`
//! (the TTL of locks that name none). Durations are written `500ms`, `30s`, `2m`, `1h`.
//! A scheme whose feature is off is an error that names the feature; a malformed URL is an
//! error that points at the part that is wrong; passwords are never echoed.
//!
//! ## Migrating between backends
//! [`migration::MigrationBackend`] holds every lock on two backends at once; see the
//! playbook in the README.

pub mod migration;
pub use lock_core::url;

#[cfg(feature = "redis")]
use std::time::Duration;

/// The core crate, for what the facade does not re-export.
pub use lock_core as core;
pub use lock_core::parse_duration;
pub use lock_core::{
    drift_margin, AcquireRequest, Attempt, BackendErrorKind, Backoff, Capabilities, Error, ExtendOutcome,
    FencingToken, Guard, Instant, Lease, LockBackend, LockBuilder, LockClient, LockInfo, LockKey, LossReason,
    LossSignal, Namespace, OwnerToken, ReleaseOutcome, Result, WakeMode,
};
#[cfg(feature = "dynamo")]
pub use lock_dynamo;
#[cfg(feature = "etcd")]
pub use lock_etcd;
#[cfg(feature = "local")]
pub use lock_local;
#[cfg(feature = "redis")]
pub use lock_redis;
#[cfg(feature = "zk")]
pub use lock_zk;

use url::ConnectUrl;

const COMMON: &[&str] = &["namespace", "ttl"];

#[cfg_attr(
    all(feature = "local", feature = "redis", feature = "etcd", feature = "zk", feature = "dynamo"),
    allow(dead_code)
)]
fn feature_off(u: &ConnectUrl, feature: &str) -> Error {
    Error::InvalidConfig(format!(
        "{}:// needs distlock's `{feature}` feature, which this build does not have (build with --features {feature})",
        u.scheme
    ))
}

fn with_options(u: &ConnectUrl, extra: &[&str]) -> Result<()> {
    let allowed: Vec<&str> = COMMON.iter().chain(extra).copied().collect();
    u.check_options(&allowed)
}

/// Connects to the backend the URL names and returns a client for it.
///
/// # Errors
/// [`Error::InvalidConfig`] for a malformed URL, an unknown option or a scheme whose feature is
/// off; the backend's own errors
/// (an unreachable server is a retryable connection error).
pub async fn connect(url: &str) -> Result<LockClient> {
    let u = ConnectUrl::parse(url)?;
    let client = match u.scheme.as_str() {
        "mem" => connect_mem(&u)?,
        "file" => connect_file(&u)?,
        "redis" | "rediss" => connect_redis(&u).await?,
        "redlock" => connect_redlock(&u).await?,
        "etcd" => connect_etcd(&u).await?,
        "zk" | "zookeeper" => connect_zk(&u).await?,
        "dynamodb" => connect_dynamo(&u).await?,
        other => {
            return Err(Error::InvalidConfig(format!(
                "distlock URL '{}': unknown scheme '{other}' (known: mem, file, redis, rediss, redlock, etcd, zk, dynamodb)",
                u.redacted()
            )))
        }
    };
    let mut client = client;
    if let Some(ns) = u.option("namespace") {
        client = client.with_namespace(ns)?;
    }
    if let Some(ttl) = u.duration("ttl")? {
        client = client.with_default_ttl(ttl)?;
    }
    Ok(client)
}

#[cfg(feature = "local")]
fn connect_mem(u: &ConnectUrl) -> Result<LockClient> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    with_options(u, &[])?;
    static STORES: OnceLock<Mutex<HashMap<String, lock_local::MemoryBackend>>> = OnceLock::new();
    let name = format!("{}{}", u.hosts.join(","), u.path);
    let store = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(name)
        .or_default()
        .clone();
    Ok(LockClient::new(store))
}

#[cfg(not(feature = "local"))]
fn connect_mem(u: &ConnectUrl) -> Result<LockClient> {
    Err(feature_off(u, "local"))
}

#[cfg(feature = "local")]
fn connect_file(u: &ConnectUrl) -> Result<LockClient> {
    with_options(u, &["sync", "poll"])?;
    if !u.hosts.is_empty() && u.hosts != ["localhost"] {
        return Err(Error::InvalidConfig(format!(
            "distlock URL '{}': file URLs name a local path: file:///absolute/path (got host '{}')",
            u.redacted(),
            u.hosts.join(",")
        )));
    }
    let mut opts = lock_local::FileOptions::default();
    if let Some(sync) = u.flag("sync")? {
        opts.sync = sync;
    }
    if let Some(poll) = u.duration("poll")? {
        opts.poll_interval = poll;
    }
    let dir = if u.path.is_empty() || u.path == "/" {
        lock_local::FileBackend::default_dir()
    } else {
        std::path::PathBuf::from(&u.path)
    };
    Ok(LockClient::new(lock_local::FileBackend::open_with(dir, opts)?))
}

#[cfg(not(feature = "local"))]
fn connect_file(u: &ConnectUrl) -> Result<LockClient> {
    Err(feature_off(u, "local"))
}

#[cfg(feature = "redis")]
fn redis_options(
    u: &ConnectUrl,
    scheme: &str,
    host: &str,
    default_timeout: Duration,
) -> Result<lock_redis::RedisOptions> {
    let driver_url = format!("{scheme}://{}{host}{}", u.userinfo(), u.path);
    let mut o = lock_redis::RedisOptions::from_url(&driver_url).map_err(|_| {
        Error::InvalidConfig(format!(
            "distlock URL '{}': host '{host}' or path '{}' is not valid for Redis",
            u.redacted(),
            u.path
        ))
    })?;
    o = o.command_timeout(u.duration("timeout")?.unwrap_or(default_timeout));
    if let Some(t) = u.duration("connect_timeout")? {
        o = o.connect_timeout(t);
    }
    if let Some(p) = u.option("prefix") {
        o = o.key_prefix(p);
    }
    if let Some(ca) = u.option("ca_file") {
        o = o.tls_root_cert_file(ca)?;
    }
    Ok(o)
}

#[cfg(feature = "redis")]
async fn connect_redis(u: &ConnectUrl) -> Result<LockClient> {
    with_options(u, &["prefix", "connect_timeout", "timeout", "ca_file"])?;
    let [host] = u.hosts.as_slice() else {
        return Err(Error::InvalidConfig(format!(
            "distlock URL '{}': {}:// takes one host (use redlock://h1,h2,h3 for several masters)",
            u.redacted(),
            u.scheme
        )));
    };
    let o = redis_options(u, &u.scheme, host, Duration::from_secs(2))?;
    Ok(LockClient::new(lock_redis::RedisBackend::connect_with(o).await?))
}

#[cfg(not(feature = "redis"))]
async fn connect_redis(u: &ConnectUrl) -> Result<LockClient> {
    Err(feature_off(u, "redis"))
}

#[cfg(feature = "redis")]
async fn connect_redlock(u: &ConnectUrl) -> Result<LockClient> {
    with_options(u, &["prefix", "connect_timeout", "timeout", "tls", "ca_file"])?;
    if u.hosts.len() < 3 {
        return Err(Error::InvalidConfig(format!(
            "distlock URL '{}': Redlock needs at least 3 hosts, comma-separated (got {})",
            u.redacted(),
            u.hosts.len()
        )));
    }
    let scheme = if u.flag("tls")?.unwrap_or(false) { "rediss" } else { "redis" };
    let opts = u
        .hosts
        .iter()
        .map(|h| redis_options(u, scheme, h, Duration::from_millis(200)))
        .collect::<Result<Vec<_>>>()?;
    Ok(LockClient::new(lock_redis::RedlockBackend::connect_with(opts).await?))
}

#[cfg(not(feature = "redis"))]
async fn connect_redlock(u: &ConnectUrl) -> Result<LockClient> {
    Err(feature_off(u, "redis"))
}

#[cfg(feature = "etcd")]
async fn connect_etcd(u: &ConnectUrl) -> Result<LockClient> {
    with_options(
        u,
        &[
            "prefix",
            "lease",
            "session_ttl",
            "connect_timeout",
            "timeout",
            "tls",
            "ca_file",
            "cert_file",
            "key_file",
        ],
    )?;
    if u.hosts.is_empty() {
        return Err(Error::InvalidConfig(format!(
            "distlock URL '{}': etcd:// needs at least one host:port",
            u.redacted()
        )));
    }
    if !(u.path.is_empty() || u.path == "/") {
        return Err(Error::InvalidConfig(format!(
            "distlock URL '{}': etcd:// takes no path (got '{}'; use ?prefix= for a key prefix)",
            u.redacted(),
            u.path
        )));
    }
    let tls = u.flag("tls")?.unwrap_or(false)
        || ["ca_file", "cert_file", "key_file"].iter().any(|k| u.option(k).is_some());
    let scheme = if tls { "https" } else { "http" };
    let endpoints: Vec<String> = u.hosts.iter().map(|h| format!("{scheme}://{h}")).collect();
    let mut o = lock_etcd::EtcdOptions::new(&endpoints).tls(tls);
    if let Some(ca) = u.option("ca_file") {
        o = o.tls_ca_file(ca)?;
    }
    match (u.option("cert_file"), u.option("key_file")) {
        (Some(cert), Some(key)) => o = o.tls_identity_files(cert, key)?,
        (None, None) => {}
        _ => {
            return Err(Error::InvalidConfig(format!(
                "distlock URL '{}': cert_file= and key_file= go together (a client certificate and its key)",
                u.redacted()
            )))
        }
    }
    if let (Some(user), Some(pw)) = (&u.user, &u.password) {
        o = o.user(user, pw);
    }
    if let Some(p) = u.option("prefix") {
        o = o.key_prefix(p);
    }
    match u.option("lease") {
        None | Some("session") => {}
        Some("per-lock") => o = o.lease_mode(lock_etcd::LeaseMode::PerLock),
        Some(other) => {
            return Err(Error::InvalidConfig(format!(
                "distlock URL '{}': option lease: '{other}' is not session or per-lock",
                u.redacted()
            )))
        }
    }
    if let Some(t) = u.duration("session_ttl")? {
        o = o.session_ttl(t);
    }
    if let Some(t) = u.duration("connect_timeout")? {
        o = o.connect_timeout(t);
    }
    if let Some(t) = u.duration("timeout")? {
        o = o.request_timeout(t);
    }
    Ok(LockClient::new(lock_etcd::EtcdBackend::connect_with(o).await?))
}

#[cfg(not(feature = "etcd"))]
async fn connect_etcd(u: &ConnectUrl) -> Result<LockClient> {
    Err(feature_off(u, "etcd"))
}

#[cfg(feature = "dynamo")]
async fn connect_dynamo(u: &ConnectUrl) -> Result<LockClient> {
    use lock_dynamo::{DynamoBackend, DynamoOptions, Takeover};
    with_options(
        u,
        &[
            "region",
            "endpoint",
            "partition_key",
            "sort_key",
            "takeover",
            "max_skew",
            "poll",
            "timeout",
            "create_table",
        ],
    )?;
    let bad = |what: String| Error::InvalidConfig(format!("distlock URL '{}': {what}", u.redacted()));
    let table = match u.hosts.as_slice() {
        [t] if !t.is_empty() => t.clone(),
        [] => {
            return Err(bad(
                "dynamodb:// needs the table name as its host (dynamodb://locks?region=...)".into()
            ))
        }
        _ => return Err(bad("dynamodb:// takes one table name".into())),
    };
    if u.user.is_some() || u.password.is_some() {
        return Err(bad(
            "dynamodb:// takes no credentials in the URL; they come from AWS's default chain (environment, profile, role)"
                .into(),
        ));
    }
    if !(u.path.is_empty() || u.path == "/") {
        return Err(bad(format!("dynamodb:// takes no path (got '{}')", u.path)));
    }
    let mut o = DynamoOptions::new(table);
    if let Some(r) = u.option("region") {
        o = o.region(r);
    }
    if let Some(e) = u.option("endpoint") {
        o = o.endpoint(e);
    }
    if let Some(pk) = u.option("partition_key") {
        o = o.partition_key(pk);
    }
    if let Some(sk) = u.option("sort_key") {
        let (name, value) =
            sk.split_once(':').ok_or_else(|| bad(format!("option sort_key: '{sk}' is not NAME:VALUE")))?;
        o = o.sort_key(name, value);
    }
    let skew = u.duration("max_skew")?;
    match u.option("takeover") {
        None | Some("rvn") => {
            if skew.is_some() {
                return Err(bad("option max_skew: only with takeover=clock".into()));
            }
        }
        Some("clock") => {
            o = o
                .takeover(Takeover::Clock { max_skew: skew.unwrap_or(std::time::Duration::from_millis(100)) })
        }
        Some(other) => return Err(bad(format!("option takeover: '{other}' is not rvn or clock"))),
    }
    if let Some(p) = u.duration("poll")? {
        o = o.poll_interval(p);
    }
    if let Some(t) = u.duration("timeout")? {
        o = o.request_timeout(t);
    }
    let create = u.flag("create_table")?.unwrap_or(false);
    let backend = DynamoBackend::connect(o).await?;
    if create {
        backend.create_table().await?;
    }
    Ok(LockClient::new(backend))
}

#[cfg(not(feature = "dynamo"))]
async fn connect_dynamo(u: &ConnectUrl) -> Result<LockClient> {
    Err(feature_off(u, "dynamo"))
}

#[cfg(feature = "zk")]
async fn connect_zk(u: &ConnectUrl) -> Result<LockClient> {
    with_options(u, &["prefix", "session_timeout", "connect_timeout"])?;
    if u.hosts.is_empty() {
        return Err(Error::InvalidConfig(format!(
            "distlock URL '{}': zk:// needs at least one host:port",
            u.redacted()
        )));
    }
    let chroot = if u.path == "/" { "" } else { u.path.as_str() };
    let mut o = lock_zk::ZkOptions::new(format!("{}{chroot}", u.hosts.join(",")));
    if let (Some(user), Some(pw)) = (&u.user, &u.password) {
        o = o.digest(user, pw);
    } else if u.user.is_some() || u.password.is_some() {
        return Err(Error::InvalidConfig(format!(
            "distlock URL '{}': zk:// digest auth needs both user and password (zk://user:password@host)",
            u.redacted()
        )));
    }
    if let Some(p) = u.option("prefix") {
        o = o.prefix(p);
    }
    if let Some(t) = u.duration("session_timeout")? {
        o = o.session_timeout(t);
    }
    if let Some(t) = u.duration("connect_timeout")? {
        o = o.connect_timeout(t);
    }
    Ok(LockClient::new(lock_zk::ZkBackend::connect(o).await?))
}

#[cfg(not(feature = "zk"))]
async fn connect_zk(u: &ConnectUrl) -> Result<LockClient> {
    Err(feature_off(u, "zk"))
}
