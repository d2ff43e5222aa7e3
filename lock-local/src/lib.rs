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
mod memory;
mod options;
mod record;

pub use backend::FileBackend;
pub use memory::MemoryBackend;
pub use options::{FileOptions, MemoryOptions};
