//! # lock-redis: distlock on Redis
//!
//! - [`RedisBackend`]: one Redis server. Acquire, extend and release are single Lua scripts
//!   (run by EVALSHA, reloaded on NOSCRIPT) over one multiplexed, self-reconnecting
//!   connection; waiters wake on a per-key pub/sub channel.
//! - [`RedlockBackend`]: the Redlock algorithm over N independent masters, with fencing
//!   tokens that still strictly increase (see its docs for the protocol).
//!
//! ```no_run
//! # async fn demo() -> lock_core::Result<()> {
//! use std::time::Duration;
//! use lock_core::LockClient;
//! use lock_redis::{RedisBackend, RedisOptions};
//!
//! let locks = LockClient::new(RedisBackend::connect(RedisOptions::new("127.0.0.1:6379")).await?);
//! // or, from a URL: RedisBackend::connect("redis://127.0.0.1:6379".parse()?)
//! let guard = locks.lock("jobs/nightly").ttl(Duration::from_secs(30)).auto_renew().acquire().await?;
//! println!("token {}", guard.fencing_token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! Connection options ([`RedisOptions`], [`RedlockOptions`]): built in code, or parsed from
//! `redis://[user[:password]@]host[:port][/db]`, `rediss://` for TLS (feature `tls`, on by
//! default: a private CA and a client certificate through [`lock_core::TlsOptions`]) and
//! `redlock://h1,h2,h3`; ACL user and password, database index, key prefix, connect and
//! request timeouts. Passwords never appear in `Debug` output, errors or logs.

mod backend;
mod error;
mod node;
mod notify;
mod options;
mod redlock;
pub mod scripts;

pub use backend::RedisBackend;
pub use options::{RedisOptions, RedlockOptions, DEFAULT_PORT};
pub use redlock::RedlockBackend;
