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
//! ## Honest limits
//!
//! - **Fencing tokens** are `max(counter + 1, the server's clock in µs)` (see
//!   [`scripts`]): they keep rising across a loss of data on the server (a restart from an
//!   older RDB snapshot, a lost AOF second, a failover to a replica that lagged) as long as
//!   the server's clock never steps back; after a failover, as long as the new master's clock
//!   is not behind the old one's by more than the failover took. For Redlock, a majority of
//!   masters losing data is covered when the masters' clocks differ by less than the time the
//!   restart took (see [`RedlockBackend`]).
//! - **Mutual exclusion** is as strong as the server's memory of the grant: a single server
//!   that loses the grant (the same faults) lets a second holder in while the first one's
//!   TTL runs; so does a step *forward* of the server's clock, since Redis keeps expiries as
//!   wall-clock times. Redlock survives the loss of a minority of masters.
//! - **Failed attempts** leave nothing behind: a `try_acquire` whose reply was lost or late
//!   releases by owner token before it returns the error (on the same connection, so after the
//!   acquire); a waiting acquire returns by its deadline plus at most one request timeout and
//!   cleans up in the background.
//!
//! Connection options ([`RedisOptions`], [`RedlockOptions`]): built in code, or parsed from
//! `redis://[user[:password]@]host[:port][/db]`, `rediss://` for TLS (feature `tls`, on by
//! default: a private CA and a client certificate through [`lock_core::TlsOptions`]) and
//! `redlock://h1,h2,h3`; ACL user and password, database index, key prefix, connect and
//! request timeouts. Passwords never appear in `Debug` output, errors or logs.

mod attempts;
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
