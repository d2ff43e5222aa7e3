//! # lock-zk: distlock on ZooKeeper
//!
//! The lock recipe of ZooKeeper's documentation, laid out as Apache Curator's
//! `InterProcessMutex` lays it out, so that distlock and Curator exclude each other on the
//! same path.
//!
//! ```no_run
//! # async fn demo() -> lock_core::Result<()> {
//! let backend = lock_zk::ZkBackend::connect(lock_zk::ZkOptions::new("10.0.0.1:2181,10.0.0.2:2181/app")).await?;
//! let locks = lock_core::LockClient::new(backend);
//! let guard = locks.lock("jobs/nightly").auto_renew().acquire().await?;
//! // ... write with guard.fencing_token() ...
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! The same backend from a URL, as the `distlock` facade's `connect` reads it
//! (`zk://[user:password@]h1:2181,h2:2181[/chroot]?prefix=/distlock&session_timeout=10s&connect_timeout=5s`,
//! or `zookeeper://…`): `"zk://10.0.0.1:2181,10.0.0.2:2181/app".parse::<ZkOptions>()`. See
//! [`ZkOptions`].
//!
//! ## Layout and order
//! - A lock named `jobs/nightly` is the directory `<prefix>/jobs/nightly` (default prefix
//!   `/distlock`). Directories are created as **container nodes**, which the server removes
//!   once they are empty, so lock parents do not pile up. Path segments that ZooKeeper cannot
//!   name (empty, `.`, `..`, or holding characters outside `[A-Za-z0-9_.:@~-]`) are
//!   percent-encoded.
//! - Each contender creates an EPHEMERAL_SEQUENTIAL child named as Curator's protected mode
//!   names it: `_c_<uuid>-lock-<10-digit sequence>`, where the uuid is the attempt's owner
//!   token. The contender with the lowest sequence holds the lock; every other one watches
//!   only the child just before its own, so a release wakes one waiter (no herd).
//! - Children are ordered by the 10-digit sequence suffix ZooKeeper appends, so children
//!   written by other recipes in the same directory are ordered rightly too.
//! - **Interoperability**: Apache Curator's `InterProcessMutex` on the same path (tested
//!   against Curator 5.4 from Debian's `libcurator-recipes-java`). kazoo's `Lock` names its
//!   children `<uuid>__lock__<sequence>` and by default orders only those, so a default
//!   kazoo `Lock` does **not** exclude distlock or Curator on the same path (tested). Built
//!   with `extra_lock_patterns=["-lock-"]` it orders our children by their sequence too, and
//!   kazoo and distlock exclude each other, hand-off included (tested). Curator never orders
//!   kazoo's children rightly (it sorts names without `lock-` whole), so do not mix kazoo
//!   with Curator on one path.
//! - A create whose reply was lost (the connection broke) is recovered by finding our own
//!   child by its uuid, so no orphan blocks the queue.
//!
//! ## Fencing tokens
//! The token is the **czxid** of the holder's child: the zxid of the transaction that
//! created it. zxids strictly increase across the whole ensemble, leader changes included
//! (the epoch is the high half), and holders are served in creation order, so every later
//! holder's child was created by a later transaction and has a greater czxid. The token also
//! keeps growing when an empty directory is removed and created again, where the sequence
//! numbers restart.
//!
//! ## Sessions and TTLs
//! One session per backend, shared by all its locks. **The lock API's TTL does not apply**:
//! a lock lasts as long as the session that created its child, so the session timeout
//! ([`ZkOptions::session_timeout`]) is every lock's lease, and the capabilities say
//! `session_leases` and not `per_lock_ttl`.
//! - While connected, a lock's `valid_until` is half a session timeout ahead.
//! - On a disconnect, `valid_until` stops at half a session timeout after it. The client
//!   notices a silent connection within 2/5 of the timeout (plus a tick of 1/20), and the
//!   server expires a session only a whole timeout after it last heard from it, so the
//!   session's nodes are certainly alive for that long. Re-connected in time (same session),
//!   the locks are kept; otherwise, at that bound, `is_held()` turns false and every lock's
//!   loss signal fires. Session expiry, failed authentication, or the client closing fire
//!   it at once. A lock whose child is deleted by someone else fires its own signal.
//! - A crashed holder blocks others until the server expires its session: up to one session
//!   timeout.
//! - A waiter whose session ends (or whose connection breaks) while it waits queues again, on
//!   a new session if need be, until its deadline: it never holds on a lost session.
//!
//! ## Cancel safety
//! A dropped waiting acquire deletes its child, in the background if need be; release
//! deletes it; empty directories are removed by the server (container nodes, ZooKeeper
//! 3.5.3 and later).
//!
//! ## Where things are
//! In the source: `backend.rs` holds [`ZkBackend`] and the trait impl, `options.rs` the
//! options and their URL, `children.rs` Curator's names and order, `queue.rs` joining and
//! leaving the queue, `watch.rs` the predecessor watch and each held lock's watcher,
//! `session.rs` the session's state and its grace, `error.rs` the client crate's errors.

mod backend;
mod children;
mod error;
mod options;
mod queue;
mod session;
mod watch;

pub use crate::backend::ZkBackend;
pub use crate::options::{ZkOptions, SCHEMES};
