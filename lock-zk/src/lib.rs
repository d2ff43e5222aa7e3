//! # lock-zk: distlock on ZooKeeper
//!
//! The lock recipe of ZooKeeper's documentation and Apache Curator's other recipes, laid out
//! as Curator lays them out, so that distlock and Curator share locks, semaphores, read-write
//! locks and elections on the same paths.
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
//! or `zookeeper://…`; TLS with `tls=true`, `ca_file=`, `cert_file=` + `key_file=`): `"zk://10.0.0.1:2181,10.0.0.2:2181/app".parse::<ZkOptions>()`. See
//! [`ZkOptions`].
//!
//! ## Layout and order
//! - The name `jobs/nightly` is the node `<prefix>/jobs/nightly` (default prefix `/distlock`),
//!   one node per key segment; its lock queues in that node. Path segments that ZooKeeper
//!   cannot name (empty, `.`, `..`, or holding characters outside `[A-Za-z0-9_.:@~-]`) are
//!   percent-encoded, and so is the first character of a segment shaped as a queue node named
//!   by a random id (`_c_<uuid>-…`, kazoo's `<32 hex digits>__lock__…`): the order of a queue
//!   starts from such nodes, and no directory of a longer name may pose as one (Curator
//!   clients, and distlock before this rule, name such a lock's path unencoded, so they do
//!   not share that lock with this version). Its other primitives have sibling nodes of their own, so the lock, the
//!   semaphore, the read-write lock and the election of one name never block one another:
//!
//!   | primitive | node (Curator's path) | queue nodes (EPHEMERAL_SEQUENTIAL) | Curator recipe |
//!   |---|---|---|---|
//!   | lock | `…/nightly` | `_c_<uuid>-lock-<seq>` | `InterProcessMutex` |
//!   | semaphore | `…/nightly#semaphore` | `locks/_c_<uuid>-lock-<seq>`, `leases/_c_<uuid>-lease-<seq>` | `InterProcessSemaphoreV2` |
//!   | read-write lock | `…/nightly#rwlock` | `_c_<uuid>-__READ__<seq>`, `_c_<uuid>-__WRIT__<seq>` | `InterProcessReadWriteLock` |
//!   | election | `…/nightly#election` | `_c_<uuid>-latch-<seq>` | `LeaderLatch` |
//!
//!   `#` is never in an encoded key segment, so no name's node is ever called that, and a
//!   primitive's node never ends in ten digits (a queue node's sequence). Directories are
//!   created as **container nodes**, which the server removes once they are empty, so they do
//!   not pile up.
//! - Queue nodes are named as Curator's protected mode names them, with the attempt's owner
//!   token as the uuid, and carry the holder's metadata ([`lock_core::Metadata`], compact JSON)
//!   as their data. Each is served in the order of the 10-digit sequence ZooKeeper appends, so
//!   nodes written by other recipes in the same directory are ordered rightly too. A waiter
//!   watches only the nearest node ahead that keeps it waiting, so a release wakes one waiter
//!   (no herd). A create whose reply was lost is found again by its uuid, so no orphan blocks
//!   a queue.
//! - **The lock**: the first queue node holds. Only lock nodes (ephemeral children) contend:
//!   the node of a name that extends this one (`jobs/0000000001` is the child `0000000001` of
//!   `jobs`, `jobs/x-lock-0000000007` looks like a Curator child) is a container, never
//!   ephemeral, and is skipped, so a lock is independent of every lock whose name extends it
//!   (tested, in both directions).
//! - **Semaphores** (`InterProcessSemaphoreV2`): a contender takes the mutex `locks`, creates
//!   its lease node in `leases`, and holds as soon as at most N lease nodes exist (its own
//!   included); until then it waits, still holding the mutex, on the children of `leases`;
//!   then it releases the mutex. At most one contender waits among the leases, the others
//!   queue on the mutex in arrival order (fair), and a contender begins to hold only when it
//!   sees at most N leases while no other can be made: never more than N holders. N is
//!   Curator's client-side setting; distlock stores the N its clients use as the semaphore
//!   node's data (`{"permits":N}`, ignored by Curator) and checks it under the mutex: another
//!   N while leases exist is [`lock_core::Error::PermitsMismatch`]; with none, the new N is
//!   written.
//! - **Read-write locks** (`InterProcessReadWriteLock`): readers and writers queue in one node.
//!   A writer holds when it is first; a reader holds when no writer is ahead of it. So a
//!   waiting writer keeps every later reader out: writers are not starved
//!   (`writer_preference`).
//! - **Elections** (`LeaderLatch`): the first candidate leads, and its value is its metadata's
//!   value (a `LeaderLatch` writes its participant id as the node's data; that raw data is then
//!   the value). Campaigning, renewing and resigning are the lock's acquire, extend and
//!   release on the election's queue. Proclaiming writes `{"leader":"<node>","metadata":…}` as
//!   the election node's data, in one transaction with a check that the leader's node still
//!   exists (`NotHeld` otherwise) and over the version just read; readers take it when it names
//!   the current leader. It never writes the leader's own node: a `LeaderLatch` waiting right
//!   behind watches that node and acts only on its deletion, so a data change there would use
//!   up its watch and it would never notice the resignation (found by the interop test).
//!   Observing sets watches on the election's children, the election node's data and the
//!   leader's data in the reads that report each state, so no later change goes unseen; the
//!   stream ends with an error when its session ends.
//! - **Several locks at once** (`atomic_multi_key`): the queue nodes of every lock are created
//!   in one `multi` transaction and each is checked as a single try checks its node; if one
//!   is not first, all are deleted in one more transaction and nothing is granted. A node first
//!   in its queue holds that lock whatever else exists, and until the second transaction our
//!   nodes are contenders like any failed try's, so the queues keep their meaning. A waiting
//!   multi-key acquire then takes the names one at a time in canonical order (lock-core).
//! - **Listing** walks the nodes under the prefix's node in path order, reporting each name's
//!   lock holder, semaphore permits, readers or writer, and leader, with metadata and token;
//!   pages end after a whole node, with that node's path as the cursor. No remaining TTL is
//!   known: grants last as long as their holders' sessions.
//!
//! ## Interoperability
//! Apache Curator's `InterProcessMutex`, `InterProcessSemaphoreV2`, `InterProcessReadWriteLock`
//! and `LeaderLatch` on the same paths (tested in both directions against Curator 5.4 from
//! Debian's `libcurator-recipes-java`: permits shared, modes respected with a waiting writer of
//! either client keeping the other's new readers out, never two leaders, each side observing
//! the other's leader). Curator's nodes carry no metadata of ours (`inspect` shows `None`,
//! except an election's raw participant id as the value); Curator's `getLeader()` shows a
//! distlock leader's whole metadata JSON as its id. kazoo's `Lock` names its children
//! `<uuid>__lock__<sequence>` and by default orders only those, so a default kazoo `Lock`
//! does **not** exclude distlock or Curator on the same path (tested). Built with
//! `extra_lock_patterns=["-lock-"]` it orders our children by their sequence too, and kazoo
//! and distlock exclude each other, hand-off included (tested). Curator never orders kazoo's
//! children rightly (it sorts names without `lock-` whole), so do not mix kazoo with Curator
//! on one path.
//!
//! ## Fencing tokens
//! The token is the **czxid** of the holder's node: the zxid of the transaction that created
//! it. zxids strictly increase across the whole ensemble, leader changes included (the epoch is
//! the high half), and every queue grants in creation order, so a later holder's node was
//! created by a later transaction: tokens rise across a lock's holders, across all permits of a
//! semaphore (leases are made one at a time, in grant order), and across an election's terms; a
//! writer's token is above every earlier reader's and writer's, a reader's above every earlier
//! writer's. The token also keeps growing when an empty directory is removed and created again,
//! where the sequence numbers restart.
//!
//! ## Sessions and TTLs
//! One session per backend, shared by all its grants. **The lock API's TTL does not apply**:
//! a grant lasts as long as the session that created its node, so the session timeout
//! ([`ZkOptions::session_timeout`]; the capabilities state the one the server agreed) is every
//! grant's lease, and the capabilities say `session_leases` and not `per_lock_ttl`.
//! - **Validity comes from the server, never from the link's state.** The server expires a
//!   session a whole session timeout after it last heard from the client, never sooner, and
//!   it heard from us after every request it answered was sent. So a grant's `valid_until` is
//!   half a session timeout after the send time of the session's last answered request (the
//!   other half is margin). `extend` sends nothing while more than half of that is left;
//!   otherwise it sends one `exists` on the grant's node, which confirms the node and moves
//!   `valid_until` on. Not answered before the last confirmed validity ran out, or answered
//!   "no node", or the session ended: `NotHeld`, never a validity the server did not confirm.
//!   A holder stopped (SIGSTOP, a long pause) past its session wakes up looking connected,
//!   and its first `extend` says `NotHeld` (tested with a stopped holder process).
//! - A disconnect that lasts until the session's validity has passed, or half a session
//!   timeout (the client notices a silent connection within 2/5 of it), fires every grant's
//!   loss signal, and the backend opens a new session on its next use. If the old session
//!   comes back before the server expired it, its nodes are deleted at once (`getEphemerals`),
//!   so a lock reported lost is never kept by a session nothing uses (tested). Session expiry,
//!   failed authentication, or the client closing fire it at once. A grant whose node is
//!   deleted by someone else fires its own signal. A session holding fewer than 32 grants
//!   watches each node from 100 ms after its grant (a grant released sooner sends no watch
//!   request, and a deletion in its first 100 ms is reported when the watch is set). From 32
//!   grants held at once the session watches its prefix as a whole instead (one persistent
//!   recursive watch, ZooKeeper 3.6+), and each further grant costs a map entry, not a watch
//!   and a task: about 2 KiB of client memory per held lock in place of 3.2.
//! - A waiter whose session ends (or whose connection breaks) while it waits queues again, on
//!   a new session if need be, until its deadline: it never holds on a lost session.
//! - **A crashed holder** blocks others until the server expires its session: one session
//!   timeout after it last heard from it, rounded up to the server's tick, and a follower's
//!   report of the session reaches the leader at its next ping. **A change of the ensemble's
//!   leader counts every session's timeout again** from the moment the new leader takes over
//!   (measured: a 4 s session whose leader was killed 2 s after the crash expired 6.5 s after
//!   it), so the capabilities state `expiry_ttls` = 2 session timeouts and an
//!   `expiry_margin` of one more session timeout and 1.5 s for the ticks (2.5 at most) and the
//!   election.
//!
//! ## Honest limits
//! - The validity assumes that the server that answered speaks for the session's expiry.
//!   That holds for a standalone server and for the leader. A follower passes the sessions it
//!   heard from on to the leader at the next ping (a tick or less later), which the margin of
//!   half a session timeout covers; but a follower cut off from the leader keeps answering
//!   reads until it gives up on the leader (`syncLimit` ticks), while the leader may expire a
//!   session whose activity that follower never passed on. If `syncLimit × tickTime` exceeds
//!   half the session timeout, such a partition can let a holder believe, for part of the
//!   margin, that it holds a grant the leader already gave to another client. The fencing token
//!   is the defence; ZooKeeper's own recipe has the same window.
//! - A holder whose validity ran out while its session survived (stopped for more than half
//!   a session timeout but less than a whole one) is told its grant is lost, yet its node lives
//!   on with the session: it keeps others out until the guard is released or dropped.
//! - A crashed holder blocks others for up to two session timeouts and the margin when the
//!   ensemble's leader changes meanwhile; the stated margin assumes `tickTime` at most 2/5 of
//!   the session timeout (ZooKeeper's default 2 s tick with session timeouts of 5 s or more).
//!   The lock API's TTL is not a lease here.
//! - Requests have no time limit of their own: one sent while the link is down waits for
//!   the client to reconnect or to give the session up (up to 7/5 of the session timeout),
//!   except `extend`'s check, which is bounded by a session timeout. Once a session was given
//!   up with every server unreachable, each new one is tried for `connect_timeout`: a waiting
//!   acquire can then return up to one `connect_timeout` past its deadline (two for a
//!   semaphore's permit, which opens a session for its clean-up and for its queue).
//! - A semaphore's N is checked among distlock clients only: a Curator client that uses
//!   another N is not detected, and admits by its own N. A `try_acquire` of a permit is
//!   refused while another contender holds the semaphore's mutex (one waiting for a permit, or
//!   one making its lease), as Curator's `acquire(0, …)` is.
//! - A session that has held 32 grants or more at once receives, for the rest of its life,
//!   an event for every node created, changed or deleted under the prefix by any client:
//!   with many such sessions, each change is sent to each of them. A server older than 3.6
//!   keeps the node-by-node watches. Deletions during a disconnection are found by listing
//!   the session's own nodes once it is back (the server does not replay them to a
//!   persistent watch), so such a loss is reported on reconnection, not when it happened.
//! - Curator's `LeaderLatch` shows a distlock leader's metadata JSON, as campaigned, as its
//!   participant id: proclaimed values are distlock's alone.
//! - A listing is not a snapshot: a grant that changes while the walk runs may be listed in
//!   either state, and a semaphore that only Curator's clients use (no stored N) is listed
//!   with all its lease nodes, the one that may still wait included.
//!
//! ## Cancel safety
//! A dropped waiting acquire deletes its nodes (a semaphore's mutex and lease nodes too), in
//! the background if need be; release deletes them; empty directories are removed by the
//! server (container nodes, ZooKeeper 3.5.3 and later).
//!
//! ## Where things are
//! In the source: `backend.rs` holds [`ZkBackend`] and the trait impl, `options.rs` the
//! options and their URL, `children.rs` Curator's names, paths and order, `queue.rs` joining
//! and leaving a queue, `watch.rs` waiting in a queue and a held grant's own watcher,
//! `held.rs` a session's held grants and its prefix-wide watch,
//! `semaphore.rs`, `rwlock.rs` and `election.rs` those primitives (observing included),
//! `holders.rs` reading holders and their metadata, `multi.rs` atomic multi-key tries,
//! `list.rs` listing, `session.rs` the session, its validity and its grace, `error.rs` the
//! client crate's errors.

mod backend;
mod children;
mod election;
mod error;
mod held;
mod holders;
mod list;
mod multi;
mod options;
mod queue;
mod rwlock;
mod semaphore;
mod session;
mod watch;

pub use crate::backend::ZkBackend;
pub use crate::options::{ZkOptions, SCHEMES};
