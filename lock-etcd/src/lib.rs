//! # lock-etcd: distlock on etcd v3
//!
//! The layout and ordering of etcd's Go `concurrency.Mutex`, so distlock, `etcdctl lock NAME`
//! and Go services using that package exclude one another on the same name:
//!
//! - Each contender puts `<prefix><name>/<lease id in hex>` attached to its lease, in one
//!   transaction that also reads the current owner: the key with the lowest create revision
//!   under `<prefix><name>/`. Contenders are served in the order their keys were created
//!   (a fair queue).
//! - A waiter watches only the key created just before its own (no thundering herd). The
//!   watch is opened at the current revision and the predecessor re-read after the watch is
//!   in place: a watch opened at an older revision lands in etcd's "unsynced" watcher group,
//!   which the server catches up only every 100 ms, and hand-off would wait for it.
//!   When the predecessor's deletion arrives, one read of the revision of that deletion,
//!   served by the member without a quorum round (it has applied that revision, since it
//!   reported it), says whether an older key is left and whether the waiter's own key is still
//!   there: the hand-off costs the releaser's delete and that one read.
//! - **Fencing token** = the create revision of the holder's key. etcd's revision is one
//!   counter for the whole cluster that every write raises by one, never reused (compaction
//!   drops old revisions but never lowers the counter), and a later holder's key is created
//!   after the earlier holder's key was created, so its create revision is strictly greater.
//! - The value of our keys is the owner token (Go's Mutex writes an empty value); release and
//!   extend compare it, so a stale holder never deletes or extends a newer grant.
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
//! keep-alive, or swapped for a new lease when the TTL changes.
//!
//! ## Failures
//! Requests that are safe to repeat (compare-and-delete, compare-and-put, reads) are retried
//! through leader elections within the request timeout. A release whose first try landed but
//! whose reply was lost with the old leader reports `NotHeld` on the retry: the key is gone
//! either way.
//!
//! A cancelled attempt (its future dropped) deletes its queue key in the background. The
//! client spreads requests over the endpoints, so that delete can overtake the attempt's own
//! put: in session mode a put found missing is looked for again 50 ms, 250 ms and 1 s later
//! (`lock_core::cancel::LATE_GRANT_RECHECKS`),
//! and the client's next attempt on the name deletes a key of its session that no live
//! attempt owns before it queues. In per-lock mode the attempt's lease is revoked, so a late
//! put fails.
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
//! module): one channel balanced over the endpoints, the auth token in the requests'
//! metadata and a new login when it expires, the lease keep-alive and watch streams. The
//! protobuf code is generated ahead of time from etcd's `.proto` files (in `proto/`, with
//! `scripts/gen-etcd-proto.sh`) and committed, so building needs no `protoc`.
//!
//! ## Source layout
//! `backend.rs` ([`EtcdBackend`] and its [`LockBackend`](lock_core::LockBackend) impl),
//! `options.rs`, `error.rs`, `rpc.rs` (the client) and `proto.rs` (over the generated
//! `proto/*.rs`), then one file per mechanism: `queue.rs` (the fair queue: enqueue, the
//! waiter's view, waiting for predecessors, undoing an attempt), `session.rs` (the session
//! lease), `keywatch.rs` (the session's watch of held keys), `keepalive.rs` (per-lock lease
//! keep-alives) and `local.rs` (one queue entry per name per session).

mod backend;
mod error;
mod keepalive;
mod keywatch;
mod local;
mod options;
mod queue;
mod session;

// Public for the tests and benchmarks (outside admin operations, etcd's lock service as a
// peer) and distlock-bench; not a stable API.
#[doc(hidden)]
pub mod proto;
#[doc(hidden)]
pub mod rpc;

pub use backend::EtcdBackend;
pub use options::{EtcdOptions, LeaseMode};
