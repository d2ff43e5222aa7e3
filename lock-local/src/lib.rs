//! # lock-local: distlock without a server
//!
//! Two backends for the [`lock_core`] API:
//!
//! - [`MemoryBackend`]: locks inside one process (tests, single-process apps). Clones share
//!   one store; [`MemoryBackend::named`] shares one by name within the process; waiters are
//!   woken at once on release.
//! - [`FileBackend`]: locks across the processes of one host, kept in small files under one
//!   directory. A killed holder blocks others for at most its TTL; the fencing counter lives in
//!   the file and survives releases, expiries, crashes and reboots. This is distlock's embedded
//!   default.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> lock_core::Result<()> {
//! use std::time::Duration;
//! use lock_core::LockClient;
//! use lock_local::MemoryBackend;
//!
//! let locks = LockClient::new(MemoryBackend::new());
//! let guard = locks.lock("jobs/nightly").ttl(Duration::from_secs(10)).acquire().await?;
//! assert!(locks.lock("jobs/nightly").try_acquire().await?.is_none());
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! Options ([`FileOptions`], [`MemoryOptions`]) are built in code or parsed from
//! `file:///PATH?sync=&poll=&timeout=` and `mem://NAME` URLs.
//!
//! ## Semaphores, read-write locks and multi-key locks
//!
//! The lock, the semaphore and the read-write lock of one name are three independent
//! resources (three entries of the memory store; three files, `.lock`, `.sem` and `.rw`). Each
//! keeps its grants in one table with one fencing counter, under the rules of the lock
//! (checked after dropping expired grants, in one critical section: the store's mutex, or the
//! record file's `flock`):
//!
//! - **Semaphore** (`N` permits): at most `N` unexpired permits; every grant takes the next
//!   value of the semaphore's counter, so tokens strictly increase across all its permits.
//!   `N` is stored with the holders: a client that asks for another `N` while permits are
//!   held gets [`Error::PermitsMismatch`](lock_core::Error::PermitsMismatch) and nothing is
//!   written; once every permit is gone, the next grant sets `N` again. A crashed holder's
//!   permit comes back when its TTL runs out (CLOCK_MONOTONIC for files, tokio's clock in
//!   memory); release wakes waiters in the process at once, other processes poll.
//! - **Read-write lock**: readers share, a writer excludes readers and writers, with one
//!   counter for both: a writer's token is above every earlier grant's, a reader's above the
//!   last writer's. **Writer preference**: a writer that waits leaves an *intent* in the table,
//!   refreshed by each of its attempts; new readers are refused while an unexpired intent
//!   exists, so a stream of readers cannot starve it. The intent is removed when the writer is
//!   granted or its acquire ends without the lock (a timeout, an error, the future dropped),
//!   and lapses on its own unless refreshed: a writer that dies while waiting holds readers
//!   back for at most 1 s (memory: a future that is never dropped nor polled again) or
//!   [`FileBackend::writer_intent_ttl`] (file: twice a poll interval plus a busy record's
//!   bound, 1.04 s by default).
//! - **Multi-key locks**: the memory backend takes every name in one step under its mutex
//!   (`atomic_multi_key`); the file backend takes them one at a time in canonical order, as
//!   `lock_core` does for every backend without an atomic request, releasing what it took if
//!   one name stays held.
//!
//! The file record of a semaphore or read-write lock (see `table_record.rs`) is, like the
//! lock's, fixed-width, written twice with checksums, in place and never shortened, created
//! whole by a hard link, and recovered from a torn write or a cut without ever lowering its
//! counter (or refused with an error naming the file). Its width is the file backend's
//! bound: **at most 64 permits per semaphore** (claimed as `max_permits`; more is
//! [`Error::InvalidPermits`](lock_core::Error::InvalidPermits)), and at most 64 readers,
//! writers and waiting writers at once per read-write lock: a 65th reader waits for a slot,
//! and a writer that finds no slot for its intent waits without holding readers back. Each
//! such file is about 10 KB. The memory backend allows up to
//! [`MAX_PERMITS`](lock_core::MAX_PERMITS) permits and any number of readers.
//!
//! Both backends have elections (the leader is an exclusive grant in the election's own table
//! or record; observers poll), holder metadata (the memory backend keeps it beside each grant,
//! the file backend in a side file) and `list(prefix)`.
//!
//! What they do not promise: waiters are not served in order (no fairness among permits or
//! readers); a semaphore's `N` is only checked against current holders, so two groups of
//! clients that never overlap in time may use different `N`s.
//!
//! ## The file backend's honest limits
//!
//! - **One host, a local file system**: `flock` is not reliable over NFS, and the lock files
//!   must live on a file system that supports hard links (every local Linux one does: a new
//!   lock file is linked into place with its first record already in it).
//! - **Fencing tokens survive power loss** with `sync` (the default): a grant is flushed with
//!   `fdatasync` before it is returned, records are written in place at a fixed width and never
//!   shortened, and each is written twice with a checksum. A write torn by a power loss, a
//!   damaged byte or a file cut short inside its first record is recovered without lowering
//!   the counter. What cannot be trusted (an empty file, both copies damaged) is refused with
//!   a non-retryable error naming the file, never reset: move the file away to start that
//!   key's counter again, once nothing relies on its tokens. Without `sync`, a power loss can
//!   roll a counter back (or leave a file that is refused).
//! - **A process that holds a record's `flock` and does not let go** (one stopped in the
//!   middle of a write, an operator's `flock(1)`) blocks nobody past a bound: `try_acquire`
//!   reports the lock held after [`FileOptions::request_timeout`] (500 ms by default), a
//!   waiting acquire ends with `WaitTimedOut` by its deadline plus at most that, and extend,
//!   release and inspect fail with a retryable error. While it holds the `flock` the key cannot
//!   be taken, extended or released.
//! - **Files from the previous format** (one variable-width line) are read and rewritten in
//!   the new one on their next write. Processes of the previous release read the new format's
//!   first line but rewrite it in theirs, shortening the file: upgrade every process that shares
//!   a directory together. An empty lock file left by a process of the previous release killed
//!   between creating it and writing it is refused like a damaged one.

mod backend;
mod error;
mod files;
mod listing;
mod memory;
mod metafile;
mod options;
mod record;
mod table;
mod table_record;

pub use backend::FileBackend;
pub use memory::MemoryBackend;
pub use options::{FileOptions, MemoryOptions};
