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
//! use lock_redis::RedisBackend;
//!
//! let locks = LockClient::new(RedisBackend::connect("redis://127.0.0.1:6379").await?);
//! let guard = locks.lock("jobs/nightly").ttl(Duration::from_secs(30)).auto_renew().acquire().await?;
//! println!("token {}", guard.fencing_token());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! Connection options ([`RedisOptions`]): `redis://[user[:password]@]host[:port][/db]`,
//! `rediss://` for TLS (feature `tls`, on by default), ACL user and password, database index,
//! key prefix, connect and command timeouts. Passwords never appear in `Debug` output,
//! errors or logs.

mod node;
mod notify;
mod options;
mod redlock;
pub mod scripts;
mod single;

pub use options::{redact_url, RedisOptions};
pub use redlock::RedlockBackend;
pub use single::RedisBackend;
