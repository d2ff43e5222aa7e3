//! The mapping of file-system failures to typed [`lock_core::Error`]s of the file backend.

use std::io;
use std::path::Path;
use std::time::Duration;

use lock_core::{BackendErrorKind, Error};

pub(crate) const NAME: &str = "file";

/// An I/O failure on `path`: a permission problem is an auth error, an interrupted or
/// would-block call is retryable, anything else is not.
pub(crate) fn io_err(what: &str, path: &Path, e: io::Error) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::PermissionDenied => BackendErrorKind::Auth,
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            BackendErrorKind::Unavailable
        }
        _ => BackendErrorKind::Other,
    };
    Error::backend(NAME, kind, format!("{what} {}: {e}", path.display()), e)
}

/// A lock file from which no trustworthy fencing counter can be read (see
/// [`record::decode`](crate::record::decode)): never reset, since a reset counter would hand
/// out tokens again. Not retryable; the message names the file and what to do.
pub(crate) fn damaged(path: &Path, why: &str) -> Error {
    Error::backend_msg(
        NAME,
        BackendErrorKind::Protocol,
        format!(
            "lock file {} is corrupt ({why}); refusing to reset its fencing counter. Move it away to \
             start the key's counter again, once nothing relies on the tokens it handed out",
            path.display()
        ),
    )
}

/// Another process held a record's `flock` for all of `bound` (retryable).
pub(crate) fn busy(path: &Path, bound: Duration) -> Error {
    Error::backend_msg(
        NAME,
        BackendErrorKind::Unavailable,
        format!("lock file {} stayed locked by another process for {bound:?}", path.display()),
    )
}

/// The blocking task that ran a file operation panicked or was cancelled.
pub(crate) fn task_failed(e: tokio::task::JoinError) -> Error {
    Error::backend(NAME, BackendErrorKind::Other, "lock file task failed", e)
}

/// Anything else that should not happen.
pub(crate) fn other(message: &str) -> Error {
    Error::backend_msg(NAME, BackendErrorKind::Other, message)
}

/// A semaphore asked for with another number of permits than its holders use (not
/// retryable).
pub(crate) fn mismatch(req: &lock_core::AcquireRequest, held: u32) -> Error {
    let asked = match req.mode {
        lock_core::Mode::Permit { limit } => limit,
        _ => 0,
    };
    Error::PermitsMismatch { key: req.key.full().to_owned(), asked, held }
}
