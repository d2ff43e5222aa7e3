//! # lock-etcd: distlock on etcd v3
//!
//! The layout and ordering of etcd's Go `concurrency.Mutex`, so distlock, `etcdctl lock NAME`
//! and Go services using that package exclude one another on the same name:
//!
//! - Each contender puts `<prefix><name>/<lease id in hex>` attached to its lease, in one
//!   transaction that also reads the current owner: the contender with the lowest create
//!   revision under `<prefix><name>/`. Contenders are served in the order their keys were
//!   created (a fair queue).
//! - **A contender of `<name>` is a direct child of `<prefix><name>/` whose last segment is a
//!   lease id in lowercase hex, on a lease.** The same prefix holds the keys of every lock
//!   whose name extends `<name>` (`<name>/nightly/<lease>`) and of every lock of the namespace
//!   `<name>`; they are at least two levels down, so a lock is independent of them, even of a
//!   nested lock named like a lease id (`<name>/694d8a0b8c2a1f03/<lease>`). etcd ranges by
//!   prefix only: the owner read, the waiter's view and `inspect` read a page of keys in
//!   create order and skip the others, reading on while a page held none (`layout.rs`). Go's
//!   Mutex counts every key under the prefix, so it also waits for nested locks; it never
//!   sees less than we do, so the two never hold a lock at once.
//! - A waiter counts down the contenders older than its own: it opens a watch of the
//!   deletions under the lock's prefix at the current revision (a watch opened at an older
//!   revision lands in etcd's "unsynced" watcher group, which the server catches up only every
//!   100 ms), then reads its own key and the names of the older keys in one transaction; each
//!   deletion event takes one off, and when none is left the lock is ours. No key older than
//!   ours can appear later, and our own key's deletion (a lost lease) arrives on the same
//!   ordered stream first, so the hand-off costs the releaser's delete and nothing else: the
//!   woken waiter sends no request (Go's Mutex reads the queue again after each deletion, and
//!   etcd's lock service does so inside the server). Only the first four waiters count down
//!   on the prefix's watch, so a release's event reaches at most five: a waiter with more
//!   contenders ahead watches the one key five places ahead of its own (its gate), re-read
//!   once the watch is in place, and counts down once that key is gone (keys usually leave
//!   the queue oldest first, so four are left ahead of it then; a gate gone out of turn only
//!   makes the next round pick another; the move costs one read, while the holder holds).
//!   When the 64 newest keys older than its own under the prefix (nested locks' included)
//!   hold fewer than five contenders, a waiter watches only the contender just before its
//!   own, re-reads it once the watch is in place, and after its deletion reads the revision
//!   of that deletion (served by the member without a quorum round) to see whether an older
//!   key is left and its own key is still there.
//! - **Fencing token** = the create revision of the holder's key. etcd's revision is one
//!   counter for the whole cluster that every write raises by one, never reused (compaction
//!   drops old revisions but never lowers the counter), and a later holder's key is created
//!   after the earlier holder's key was created, so its create revision is strictly greater.
//! - The value of our lock keys starts with the owner token (Go's Mutex writes an empty
//!   value). A held grant is extended by comparing its key's create revision, so a stale
//!   holder never extends a newer grant; a held lock's release is a plain delete, as Go's
//!   `Mutex.Unlock`: only this client writes its key (the key's name carries the lease, and
//!   the name's local slot admits one attempt of a session at a time), and the deleted key's
//!   create revision, returned with the delete, says whether it was the grant (`undo.rs`,
//!   `delete_own_key`). A lease rebuilt from its owner token alone is matched by comparing
//!   the token on the server.
//!
//! ## Semaphores, read-write locks and elections
//! Each has a queue of its own under `<prefix><name>#semaphore/`, `#rwlock/` or `#election/`,
//! one key per attempt named by its owner token, in create-revision order; the fencing token is
//! again the key's create revision (`grants.rs`). A semaphore of `N` is held by the `N` oldest
//! keys (a waiter watches every deletion under the prefix); a writer holds when no key is
//! older, a reader when no writer's key is older (a waiting writer holds back later readers);
//! a candidate leads when its key is the oldest. Elections are etcd's Go
//! `concurrency.Election` on `<name>#election`: `etcdctl elect '<name>#election' PROPOSAL`
//! campaigns against distlock, `etcdctl elect -l '<name>#election'` observes distlock's
//! leader, and `observe` is one watch of the election's prefix (`election.rs`). The leases,
//! waiting, re-queueing on a lost lease and undo are the lock's.
//!
//! Holder metadata: the lock's key holds the owner token and the metadata, `<owner>\n<JSON>`
//! (`metadata.rs`; whatever matches a grant by its owner token compares the token alone on
//! the server); the other primitives keep it in their own key.
//! `list(prefix)` reads the keys under the prefix and each queue's holders by its rule.
//!
//! Multi-key locks: the first try is one transaction that puts every name's queue key and
//! reads every queue; it holds them all when each key is its queue's oldest contender, and
//! otherwise deletes them and the client takes the names one at a time in canonical order
//! (`multi.rs`).
//!
//! ## Leases
//! [`LeaseMode::Session`] (the default): one lease per client, kept alive by one keep-alive
//! stream about every TTL/3 and shared by all the client's locks. Renewing them costs one
//! request per lock at its first renewal and none after: from then on one watch stream per
//! session (one watcher per held key, deletions only) fires a lock's own loss signal when its
//! key is deleted by anyone. A lock released before its first renewal costs no watcher. When the lease is lost
//! (keep-alive failing past the TTL, revoked, or reported gone by the server) every guard on
//! it gets its loss signal. A lock lasts as long as the session: the lock's own TTL is not
//! used, the session TTL bounds how long a crashed holder blocks others, and the capabilities
//! say so (`session_leases`, not `per_lock_ttl`). Locks of one client on the same name are
//! queued inside the client (they would share one key), then on etcd.
//!
//! [`LeaseMode::PerLock`]: a lease per grant with the lock's TTL (whole seconds), extended by
//! keep-alive, or swapped for a new lease when the TTL changes. A waiter's lease is kept alive
//! for the whole wait on a keep-alive stream that is reopened, through the other members,
//! when it breaks or stops answering (a member restarting, an election); it counts as lost
//! only when etcd says it is gone (a new leader extends every lease, so an outage longer than
//! the TTL may leave it alive).
//!
//! A waiter whose lease is lost while it waits (revoked, its process paused past the TTL, its
//! session expired) never gets the lock on it: its attempt is undone and it queues again, at
//! the back, on a new lease and with a new owner token, until its deadline (as ZooKeeper and
//! DynamoDB waiters do). A wait that runs out is `WaitTimedOut`.
//!
//! ## Failures
//! Requests that are safe to repeat (compare-and-delete, compare-and-put, reads) are retried
//! through leader elections within the request timeout. A release whose first try landed but
//! whose reply was lost with the old leader reports `NotHeld` on the retry: the key is gone
//! either way.
//!
//! A cancelled attempt (its future dropped) deletes its queue key in the background. The
//! client spreads requests over the endpoints, so that delete can overtake the attempt's own
//! put, and a member that stopped answering may apply a put it held when it comes back. In
//! session mode the undo of an attempt whose put may still come first writes the attempt's
//! undo marker (`<prefix><name>#undo/<owner token>`, on the session's lease): every put of a
//! session-mode attempt compares the marker's absence, so a later one is refused, and one
//! applied earlier is removed by the delete that follows the marker. In per-lock mode the
//! attempt's lease is revoked, so a late put fails. The client's next attempt on a name also
//! deletes a key of its session that no live attempt owns before it queues.
//!
//! **Limits:** a marker is deleted two minutes after its undo (or goes with the session): a
//! put held back longer than that can still be applied. A lock's leftover key is then removed
//! by this client's next attempt on the name; a semaphore permit, a read-write grant or an
//! election candidacy stays taken until the client closes or its session ends. With auth
//! on, a user whose role does not cover `<name>#undo/` (etcd refuses a transaction comparing
//! a key the role may not read) has the markers turned off, with a warning: its undo then
//! looks for a late put a few times over a request timeout and 1.3 s, and a put held back
//! longer stays. Names ending in `#undo` are reserved; a Go `Mutex` on a parent name
//! (`jobs`) counts the markers of nested names (`jobs/x#undo/…`) as contenders, as it counts
//! their locks' keys, for up to two minutes after a cancelled attempt.
//!
//! An attempt whose request failed may have been carried out with its reply lost; it returns
//! the error, and its undo (by owner token, or revoking its own per-lock lease) goes on in the
//! background until etcd answers: while the session lives, or until a per-lock lease has
//! surely run out. Another client can take the lock as soon as etcd is reachable again.
//!
//! A waiting acquire returns by its deadline plus at most one request timeout (a request
//! sent just before the deadline); an attempt cut there is undone in the background. Failed
//! requests are retried, and a failed attempt queues again, until the deadline. A member that
//! stops answering leaves its streams open and silent: a waiter asks its watch stream for a
//! progress report every 2 s and watches again through another member when no answer comes
//! within the request timeout.
//!
//! ## Honest limits
//! - **A leader change restarts every lease.** Without lease checkpointing a new leader
//!   renews every lease to its full TTL plus an election timeout, so a crashed holder can
//!   block others for about two leases (the session TTL, or the lock's TTL) plus the
//!   election. The capabilities say so: `expiry_ttls` 2, an `expiry_margin` of 5 s for etcd's
//!   default election timeout (1 s), and in session mode `session_timeout` (the session TTL).
//!   Measured through distlock on a three-member cluster with the leader killed just before a
//!   3 s lease would end: the lock was free 7.9–9.6 s after the crash (session leases, p50
//!   8.5 s) and 7.9–9.0 s (per-lock leases, p50 8.1 s). Lease checkpointing would remove the
//!   doubling, but Debian's etcd 3.4.23 crashes with `--experimental-enable-lease-checkpoint`.
//!   A longer election timeout needs a longer margin (about three times the difference).
//! - A semaphore's waiters all watch every deletion under its name and count them off the
//!   older keys they read once (each release's event goes to every waiter, a fan-out bounded
//!   by the number of waiters, with no read); writers, readers and candidates watch one key
//!   each. An election's key holds the bare value, as Go's does, so
//!   its holder metadata on etcd is the value alone. Names ending in `#semaphore`, `#rwlock`
//!   or `#election`, or holding one of them followed by `/`, are reserved (a lock of that name
//!   would share a primitive's prefix): `Error::Unsupported`.
//! - The fencing token is etcd's revision: it never repeats or falls on one cluster, but a
//!   cluster restored from a snapshot taken before later grants re-issues their revisions
//!   (unless the restore raises the revision).
//! - A member that stops answering holds the requests it was given for up to the request
//!   timeout each (the client then tries another), and a renewal or a release can wait that
//!   long; a lock's `valid_until` is the truth the holder must act on.
//!
//! ## Options
//! [`EtcdOptions`]: several endpoints, user/password auth, TLS (the system's roots or a private
//! CA, and client certificates; `https://` endpoints; feature `tls`, on by default), key
//! prefix, timeouts, session TTL, lease mode. Built in code
//! (`EtcdOptions::new(["h1:2379", "h2:2379"]).credentials("app", pw)`) or parsed from a URL
//! (`"etcd://app:pw@h1:2379,h2:2379?prefix=locks/".parse::<EtcdOptions>()`, the form the
//! `distlock` facade's `connect(url)` takes). [`EtcdBackend::connect`] validates them and
//! connects. Requests that are safe to repeat are retried through leader elections within
//! the request timeout.
//!
//! ## The client
//! lock-etcd speaks etcd's gRPC API with a small client of its own over `tonic` (the `rpc`
//! module): one channel per endpoint, taken in turn, a member that left a request
//! unanswered (a paused process, a cut link: its connection stays open) or said it cannot
//! serve passed over for 1 s, doubling up to 30 s, until it answers again; the auth token in
//! the requests' metadata and a new login when it expires, the lease keep-alive and watch streams. The
//! protobuf code is generated ahead of time from etcd's `.proto` files (in `proto/`, with
//! `scripts/gen-etcd-proto.sh`) and committed, so building needs no `protoc`.
//!
//! ## Source layout
//! `backend.rs` ([`EtcdBackend`] and its [`LockBackend`](lock_core::LockBackend) impl),
//! `options.rs`, `error.rs`, `rpc.rs` (the client) and `proto.rs` (over the generated
//! `proto/*.rs`), then one file per mechanism: `layout.rs` (which keys are contenders, and
//! the reads of a queue that skip the others), `queue.rs` (the fair queue: enqueue, waiting
//! for predecessors, queueing again on a lost lease), `undo.rs` (undoing an attempt, and the
//! owner-checked deletes), `grants.rs` (semaphores, read-write locks and elections: their
//! layout, who holds, holders, proclaim), `election.rs` (observing a leader), `metadata.rs`
//! (the lock key's value: owner token and holder metadata), `list.rs` (listing grants under a
//! prefix), `session.rs` (the session lease), `keywatch.rs` (the session's
//! watch of held keys), `keepalive.rs` (keeping a lease alive, and per-lock lease requests)
//! and `local.rs` (one queue entry per name per session, and a waiting attempt's lease).

mod backend;
mod election;
mod error;
mod grants;
mod keepalive;
mod keywatch;
mod layout;
mod list;
mod local;
mod metadata;
mod multi;
mod options;
mod queue;
mod session;
mod undo;

// Public for the tests and benchmarks (outside admin operations, etcd's lock service as a
// peer) and distlock-bench; not a stable API.
#[doc(hidden)]
pub mod proto;
#[doc(hidden)]
pub mod rpc;

pub use backend::EtcdBackend;
pub use options::{EtcdOptions, LeaseMode};
