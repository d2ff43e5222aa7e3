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
//! `file:///PATH?sync=&poll=` and `mem://NAME` URLs.

mod backend;
mod error;
mod files;
mod memory;
mod options;
mod record;

pub use backend::FileBackend;
pub use memory::MemoryBackend;
pub use options::{FileOptions, MemoryOptions};
