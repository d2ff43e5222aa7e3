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
//!   only the nearest contender before its own, so a release wakes one waiter (no herd).
//! - Children are ordered by the 10-digit sequence suffix ZooKeeper appends, so children
//!   written by other recipes in the same directory are ordered rightly too. Only lock nodes
//!   (ephemeral children) are contenders: the directory of a lock whose name extends this
//!   one (`jobs/0000000001` is the child `0000000001` of `jobs`, `jobs/x-lock-0000000007`
//!   looks like a Curator child) is a container node, never ephemeral, and is skipped, so a
//!   lock is independent of every lock whose name extends it (tested, in both directions).
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
//! - **Validity comes from the server, never from the link's state.** The server expires a
//!   session a whole session timeout after it last heard from the client, never sooner, and
//!   it heard from us after every request it answered was sent. So a lock's `valid_until` is
//!   half a session timeout after the send time of the session's last answered request (the
//!   other half is margin). `extend` sends nothing while more than half of that is left;
//!   otherwise it sends one `exists` on the lock's child, which confirms the child and moves
//!   `valid_until` on. Not answered before the last confirmed validity ran out, or answered
//!   "no node", or the session ended: `NotHeld`, never a validity the server did not confirm.
//!   A holder stopped (SIGSTOP, a long pause) past its session wakes up looking connected,
//!   and its first `extend` says `NotHeld` (tested with a stopped holder process).
//! - A disconnect that lasts until the session's validity has passed, or half a session
//!   timeout (the client notices a silent connection within 2/5 of it), fires every lock's
//!   loss signal, and the backend opens a new session on its next use. Session expiry,
//!   failed authentication, or the client closing fire it at once. A lock whose child is
//!   deleted by someone else fires its own signal.
//! - A waiter whose session ends (or whose connection breaks) while it waits queues again, on
//!   a new session if need be, until its deadline: it never holds on a lost session.
//!
//! ## Honest limits
//! - The validity assumes that the server that answered speaks for the session's expiry.
//!   That holds for a standalone server and for the leader. A follower passes the sessions it
//!   heard from on to the leader at the next ping (a tick or less later), which the margin of
//!   half a session timeout covers; but a follower cut off from the leader keeps answering
//!   reads until it gives up on the leader (`syncLimit` ticks), while the leader may expire a
//!   session whose activity that follower never passed on. If `syncLimit × tickTime` exceeds
//!   half the session timeout, such a partition can let a holder believe, for part of the
//!   margin, that it holds a lock the leader already gave to another client. The fencing token
//!   is the defence; ZooKeeper's own recipe has the same window.
//! - A holder whose validity ran out while its session survived (stopped for more than half
//!   a session timeout but less than a whole one) is told its lock is lost, yet its child
//!   lives on with the session: it keeps others out until the guard is released or dropped.
//! - A crashed holder blocks others until the server expires its session: up to one session
//!   timeout. The lock API's TTL is not a lease here.
//! - Requests have no time limit of their own: one sent while the link is down waits for
//!   the client to reconnect or to give the session up (up to 7/5 of the session timeout),
//!   except `extend`'s check, which is bounded by a session timeout.
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
//! `session.rs` the session, its validity and its grace, `error.rs` the client crate's errors.

mod backend;
mod children;
mod error;
mod options;
mod queue;
mod session;
mod watch;

pub use crate::backend::ZkBackend;
pub use crate::options::{ZkOptions, SCHEMES};
