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
//! | `redis://[user[:password]@]host[:port][/db]` | one Redis server | `redis` | `prefix=`, `connect_timeout=5s`, `timeout=2s`, `wait_replicas=0` + `wait_timeout=100ms` (grants confirmed by replicas) |
//! | `rediss://…` | the same over TLS | `redis` | as `redis://`, and `ca_file=` (a private CA, PEM), `cert_file=` + `key_file=` (a client certificate) |
//! | `redis+cluster://[user[:password]@]h1[:port],h2[:port],…` (or `rediss+cluster://`) | a Redis Cluster, discovered from any of these nodes | `redis` | as `redis://` (`rediss://`), without a database |
//! | `redis+sentinel://[user[:password]@]s1[:port],s2[:port]/MASTER[/db]` (or `rediss+sentinel://`) | the primary the Redis Sentinels call `MASTER`, followed across failovers | `redis` | as `redis://` (`rediss://`) |
//! | `redlock://[user[:password]@]h1[:port],h2[:port],h3[:port][/db]` | Redlock over independent masters (3 or more) | `redis` | `prefix=`, `connect_timeout=5s`, `timeout=200ms` (per node), `wait_replicas=`, `wait_timeout=`, `tls=true`, `ca_file=`, `cert_file=` + `key_file=` |
//! | `etcd://[user:password@]h1:2379,h2:2379` | etcd v3 (session leases by default) | `etcd` | `prefix=`, `lease=session\|per-lock`, `session_ttl=10s`, `connect_timeout=5s`, `timeout=5s`, `tls=true` (the system's roots), `ca_file=` (a private CA), `cert_file=` + `key_file=` (a client certificate); each implies TLS |
//! | `zk://[user:password@]h1:2181,h2:2181[/chroot]` (or `zookeeper://…`) | ZooKeeper (Curator's lock layout; `user:password` is digest auth; the chroot is created if missing) | `zk` | `prefix=/distlock`, `session_timeout=10s`, `connect_timeout=5s`, `tls=true` (the servers' `secureClientPort`), `ca_file=`, `cert_file=` + `key_file=`; each implies TLS |
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

/// The core crate, for what the facade does not re-export.
pub use lock_core as core;
pub use lock_core::parse_duration;
pub use lock_core::{
    async_trait, drift_margin, AcquireRequest, Attempt, BackendErrorKind, Backoff, Capabilities, Election,
    Error, ExtendOutcome, FencingToken, Guard, Instant, Leader, Lease, LockBackend, LockBuilder, LockClient,
    LockInfo, LockKey, LossReason, LossSignal, Metadata, Mode, MultiGuard, MultiLockBuilder, Namespace,
    OwnerToken, ReleaseOutcome, Result, Secret, TlsOptions, WakeMode, MAX_PERMITS,
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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use lock_core::url::{BackendOptions, ConnectUrl};

/// What one line of the backend table returns: a boxed connect.
type BoxedConnect = Pin<Box<dyn Future<Output = Result<Arc<dyn LockBackend>>> + Send>>;
type Connect = fn(&ConnectUrl) -> BoxedConnect;

/// Parses the URL with `T`'s parser and connects the backend it names.
#[allow(dead_code)] // unused when every backend feature is off but `local`
fn connect_with<T: BackendOptions>(u: &ConnectUrl) -> BoxedConnect {
    let parsed = T::from_url(u);
    Box::pin(async move { parsed?.connect_dyn().await })
}

/// One line per backend: its Cargo feature, its URL schemes, and its options type (which
/// parses its own URL forms: see each backend crate's `options.rs`). A scheme whose feature is
/// off is still known, so the error can name the feature.
macro_rules! backends {
    ($($feature:literal => [$($scheme:literal),+] $options:ty;)*) => {
        /// The schemes `connect` knows, whatever the build's features.
        pub const SCHEMES: &[&str] = &[$($($scheme),+),*];

        /// The feature a scheme needs, and its connector when this build has that feature.
        fn backend_for(scheme: &str) -> Option<(&'static str, Option<Connect>)> {
            $(
                if [$($scheme),+].contains(&scheme) {
                    #[cfg(feature = $feature)]
                    return Some(($feature, Some(connect_with::<$options> as Connect)));
                    #[cfg(not(feature = $feature))]
                    return Some(($feature, None));
                }
            )*
            None
        }
    };
}

backends! {
    "local" => ["mem"] lock_local::MemoryOptions;
    "local" => ["file"] lock_local::FileOptions;
    "redis" => ["redis", "rediss", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster"] lock_redis::RedisOptions;
    "redis" => ["redlock"] lock_redis::RedlockOptions;
    "etcd" => ["etcd"] lock_etcd::EtcdOptions;
    "zk" => ["zk", "zookeeper"] lock_zk::ZkOptions;
    "dynamo" => ["dynamodb"] lock_dynamo::DynamoOptions;
}

/// Connects to the backend the URL names and returns a client for it.
///
/// # Behavior
/// The scheme picks the backend (see the table in the crate docs); the backend's own options
/// type parses the rest of the URL. `namespace=` and `ttl=` configure the returned client.
///
/// # Errors
/// [`Error::InvalidConfig`] for a malformed URL, an unknown scheme or option, or a scheme whose
/// feature is off (the message names the feature); the backend's own errors (an unreachable
/// server is a retryable connection error).
pub async fn connect(url: &str) -> Result<LockClient> {
    let u = ConnectUrl::parse(url)?;
    // The client's own options are checked before anything connects (or creates a table).
    let namespace = u.option("namespace").map(lock_core::Namespace::new).transpose()?;
    let ttl = u.duration("ttl")?;
    if ttl.is_some_and(|t| t.is_zero()) {
        return Err(u.error("option 'ttl': a TTL must be greater than zero"));
    }
    // Longer than any backend takes (the backend's own bounds are checked once connected).
    let longest = lock_core::Capabilities::default().max_ttl;
    if let Some(t) = ttl.filter(|t| *t > longest) {
        return Err(u.error(format!("option 'ttl': {t:?} is longer than any backend takes ({longest:?})")));
    }
    let connect = match backend_for(&u.scheme) {
        Some((_, Some(connect))) => connect,
        Some((feature, None)) => {
            return Err(u.error(format!(
                "{}:// needs distlock's `{feature}` feature, which this build does not have (build with --features {feature})",
                u.scheme
            )))
        }
        None => {
            return Err(u.error(format!(
                "unknown scheme '{}' (known: {})",
                u.scheme,
                SCHEMES.join(", ")
            )))
        }
    };
    let mut client = LockClient::from_arc(connect(&u).await?);
    if let Some(ns) = namespace {
        client = client.with_namespace(ns.as_str())?;
    }
    if let Some(ttl) = ttl {
        client = client.with_default_ttl(ttl)?;
    }
    Ok(client)
}
