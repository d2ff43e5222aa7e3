//! The exit codes of every `distlock` command, in one place (the README's table is this one).
//!
//! | exit code | meaning |
//! |---|---|
//! | 0 | success (`run`: the command exited 0) |
//! | 1 | `release`: the lock was not held by that owner (expired or taken); `force-release`: the lock was already free |
//! | 2 | bad command line |
//! | 64 | invalid input (lock name, TTL, URL, permits, value, options), or what the backend cannot do (`acquire` on a session-lease backend or `mem://`, `list` where it cannot list, `force-release` of a foreign holder) |
//! | 69 | the backend failed or could not be reached |
//! | 70 | `run` and `elect`: the lock (leadership) was lost while the command ran (the command was stopped, or the release found the lock gone); not with `--on-lost ignore` |
//! | 74 | `acquire`: the owner token could not be written to standard output (the lock was released) |
//! | 75 | the lock is held by someone else (not acquired within `--wait`) |
//! | 126, 127 | `run`, `elect`: the command could not be started / was not found |
//! | 128+N | `run`, `elect`: the command was killed by signal N; `run`, `elect`, `acquire`: signal N ended the wait for the lock |
//! | other | `run`, `elect`: the command's own status |

use distlock::Error;

/// `release`: the lock was not held by that owner; `force-release`: the lock was free.
pub(crate) const NOT_HELD: u8 = 1;
/// Invalid input, or what the backend cannot do (`EX_USAGE`).
pub(crate) const INVALID: u8 = 64;
/// The backend failed or could not be reached (`EX_UNAVAILABLE`).
pub(crate) const BACKEND: u8 = 69;
/// `run`: the lock was lost while the command ran: the command was stopped, or the release found the lock gone (`EX_SOFTWARE`).
pub(crate) const LOST: u8 = 70;
/// `acquire`: the owner token could not be written out, so the lock was released (`EX_IOERR`).
pub(crate) const OUTPUT: u8 = 74;
/// The lock is held by someone else (`EX_TEMPFAIL`).
pub(crate) const HELD: u8 = 75;
/// `run`: the command could not be started.
pub(crate) const CANNOT_START: u8 = 126;
/// `run`: the command was not found.
pub(crate) const NOT_FOUND: u8 = 127;

/// The exit code for an error.
pub(crate) fn for_error(e: &Error) -> u8 {
    match e {
        Error::WaitTimedOut { .. } => HELD,
        Error::InvalidKey(_)
        | Error::InvalidTtl { .. }
        | Error::InvalidConfig(_)
        | Error::Unsupported { .. }
        | Error::InvalidPermits { .. }
        | Error::PermitsMismatch { .. }
        | Error::InvalidMetadata(_)
        | Error::AlreadyHeld { .. } => INVALID,
        // Reported as an error only before a command ran (a session that ended while the
        // lock was awaited): a failure of the backend. A loss while the command runs is 70,
        // decided by `run` itself.
        _ => BACKEND,
    }
}

/// The exit code for a command's status: its code, or 128 + the signal that killed it.
pub(crate) fn for_status(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An acquire that ends with `Lost` (ZooKeeper: the waiter's session ended) never ran a
    /// command: it is a backend failure, not 70, which says a running command was stopped.
    #[test]
    fn a_loss_before_any_command_ran_is_a_backend_failure() {
        let e = Error::Lost { key: "k".into(), reason: distlock::LossReason::SessionLost };
        assert_eq!(for_error(&e), BACKEND);
    }
}
