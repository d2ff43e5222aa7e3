//! # lock-redis: distlock on Redis
//!
//! - [`RedisBackend`]: one Redis server. Acquire, extend and release are single Lua scripts
//!   (run by EVALSHA, reloaded on NOSCRIPT) over one multiplexed, self-reconnecting
//!   connection; a release wakes one waiter through its client's own pub/sub wake channel
//!   (every waiter also polls, at most 250 ms apart). The same backend reaches a
//!   Redis Cluster ([`RedisOptions::cluster`], `redis+cluster://`) and a Sentinel-managed
//!   primary, following failovers ([`RedisOptions::sentinel`], `redis+sentinel://`); grants
//!   can wait for replicas ([`RedisOptions::wait_replicas`]).
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
//! ## Semaphores, read-write locks and multi-key locks
//!
//! The lock, the semaphore and the read-write lock of one name are independent resources,
//! under different keys of the same hash tag `{K}` (so each primitive's keys stay in one
//! Redis Cluster slot). Each step (acquire, extend, release, list) is one Lua script, and
//! every grant takes its token from the primitive's one counter by the lock's rule,
//! `max(counter + 1, the server's clock in µs)`, so tokens keep rising across a loss of data
//! under the same assumptions (see [`scripts`]).
//!
//! - **Semaphore** ([`RedisBackend`] only, up to [`MAX_PERMITS`](lock_core::MAX_PERMITS)
//!   permits; layout in [`scripts::semaphore`]): a sorted set of permits, member = owner
//!   token, score = expiry in ms read from the server's `TIME`, beside a hash holding `N`
//!   and each holder's token, and the counter. The acquire script drops expired members,
//!   refuses a different `N` while permits are held
//!   ([`Error::PermitsMismatch`](lock_core::Error::PermitsMismatch), nothing written),
//!   grants while fewer than `N` remain, and takes the next token, all at once; extend is
//!   `ZADD XX` on an unexpired member; release is `ZREM` and a wake-up of the first waiter in
//!   the queue of waiters (who also retry when the first permit expires).
//!   The set and the hash expire with the last permit; only the counter stays.
//! - **Read-write lock** (both backends; layout in [`scripts::rwlock`]): the writer's grant
//!   is a string like a lock's, the readers a sorted set like the permits, with one counter
//!   for both (a writer's token is above every earlier grant's, a reader's above the last
//!   writer's). **Writer preference**: a waiting writer leaves an intent (a sorted set of
//!   waiting writers with expiries), refreshed by each attempt, and readers are refused while
//!   one exists; it is withdrawn when the writer is granted or gives up (timeout, error,
//!   future dropped), and lapses by itself after [`RedisBackend::writer_intent_ttl`] (4.5 s
//!   with the default 2 s request timeout) or [`RedlockBackend::writer_intent_ttl`] (1.3 s
//!   with the default 200 ms node timeout) when the writer dies while waiting.
//! - **Multi-key locks**: [`RedisBackend`] takes every name in one script
//!   ([`scripts::ACQUIRE_ALL`]): all are granted or nothing is written, each with its own
//!   token; a reply lost in flight is undone by owner token like a single lock's. On Redis
//!   Cluster the keys of one script must share a hash slot, which the names of different
//!   locks do not: there the backend claims no atomic multi-key request, and `lock_core`
//!   takes the names one at a time in canonical order, as on [`RedlockBackend`], which has no
//!   atomic request either.
//!
//! **Why Redlock offers no semaphores.** Running the semaphore script on every master and
//! granting on a quorum does not bound the holders by `N`: a master admits `N` holders, and
//! a holder needs `Q = n/2 + 1` masters, so up to `n * N / Q` holders fit (for 3 masters,
//! `1.5 N`). With three masters A, B, C and `N = 2`, three clients whose requests arrive in
//! different orders (A: 1, 3; B: 1, 2; C: 2, 3) are each admitted by two masters, a quorum:
//! three holders of a 2-permit semaphore (`tests/redlock_primitives.rs` shows it on real
//! servers). Only unanimity (`Q = n`) bounds the holders by `N`, which gives up the one
//! master down that Redlock is for; a sound quorum design would be `N` slot locks, each a
//! Redlock lock sharing one counter, and is not implemented. Use the single node, etcd or
//! ZooKeeper for semaphores. Read-write locks are sound on a quorum: a writer's quorum and
//! any reader's or writer's quorum share a master, which refuses the second.
//!
//! What they do not promise, beyond the lock's limits above: waiters are not served in order
//! (no fairness among permits or readers); a semaphore's `N` is checked only against current
//! holders; a server that loses its data (the same faults as for the lock) loses the permits
//! and readers on it and can admit new holders beside them while their TTLs run; the tokens
//! still rise.
//!
//! ## Elections, holder metadata and listing
//! The election of a name is laid out as its lock under `P{K}:elect` and uses the lock's
//! scripts (terms are fencing tokens; candidates wait by notification; grants, proclaims and
//! releases are published on the election's channel, which observers listen to; Redlock's
//! observers poll). A lock's or a leader's metadata rides in its grant's value after the token
//! (`"<owner>:<token>\n<JSON>"`): it expires, renews and is deleted with the grant, and
//! proclaim rewrites it ([`scripts::SET_META`]). [`RedisBackend`] lists by `SCAN` over the
//! fencing counters under a prefix; Redlock offers elections and metadata on a quorum but no
//! listing. A writer's metadata rides in its grant's value the same way; a permit's or a
//! reader's is kept in its primitive's hash under `m:<owner>` and leaves with the grant (its
//! release, or the prune of an expired one). Only a lock's and a leader's metadata can be
//! replaced while held (proclaim); the others' is the one given at the grant.
//!
//! Connection options ([`RedisOptions`], [`RedlockOptions`]): built in code, or parsed from
//! `redis://[user[:password]@]host[:port][/db]`, `rediss://` for TLS (feature `tls`, on by
//! default: a private CA and a client certificate through [`lock_core::TlsOptions`]) and
//! `redlock://h1,h2,h3`; ACL user and password, database index, key prefix, connect and
//! request timeouts. Passwords never appear in `Debug` output, errors or logs.

mod attempts;
mod backend;
mod cluster_scan;
mod error;
mod keys;
mod list;
mod node;
mod notify;
mod options;
mod redlock;
pub mod scripts;
mod sentinel;

#[doc(hidden)]
pub use node::Connection;

pub use backend::RedisBackend;
pub use options::{RedisOptions, RedlockOptions, DEFAULT_PORT};
pub use redlock::RedlockBackend;
