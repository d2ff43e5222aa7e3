//! # lock-local: distlock without a server
//!
//! Two backends for the [`lock_core`] API:
//!
//! - [`MemoryBackend`]: locks inside one process (tests, single-process apps). Clones share
//!   one store; waiters are woken at once on release.
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

mod file;
mod memory;

pub use file::{FileBackend, FileOptions};
pub use memory::MemoryBackend;
