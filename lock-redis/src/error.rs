//! The mapping of the redis crate's errors, and of our own time limits, to typed
//! [`lock_core::Error`]s. `addr` names the node (never with its password).

use std::time::Duration;

use lock_core::{BackendErrorKind, Error};

/// Maps a redis client error: its kind decides whether it is retryable.
pub(crate) fn map_err(backend: &'static str, addr: &str, e: redis::RedisError) -> Error {
    use redis::{ErrorKind, ServerErrorKind};
    let kind = if e.is_timeout() {
        BackendErrorKind::RequestTimedOut
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        BackendErrorKind::Connection
    } else {
        match e.kind() {
            ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
                BackendErrorKind::Auth
            }
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly,
            ) => BackendErrorKind::Unavailable,
            // A cluster's redirect that the client's own retries did not get past (a slot's
            // dead primary named until its replica is promoted): the slot is served again
            // once the failover ends. Nothing ran on the node that redirected.
            ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) => BackendErrorKind::Unavailable,
            // No connection to any node of a cluster (all unreachable for now).
            ErrorKind::ClusterConnectionNotFound => BackendErrorKind::Connection,
            // A cluster slot being migrated: a script touched a key that is not (or no longer)
            // on this node. Nothing after that point ran; the slot's new owner serves it soon.
            _ if is_slot_moving(&e) => BackendErrorKind::Unavailable,
            // A script's write on a node that became a replica (a failover): Redis before 7
            // wraps the READONLY refusal in the script's own error.
            _ if e.to_string().contains("-READONLY") => BackendErrorKind::Unavailable,
            // Passing states of the server: another client's script running past
            // `busy-reply-threshold` (BUSY), too few replicas connected for
            // `min-replicas-to-write` (NOREPLICAS). A renewal refused so is tried again.
            // Redis 7 reports a NOREPLICAS met inside a script inside the script's error
            // (before 7, scripts were not refused by `min-replicas-to-write` at all).
            _ if matches!(e.code(), Some("BUSY" | "NOREPLICAS")) || e.to_string().contains("-NOREPLICAS") => {
                BackendErrorKind::Unavailable
            }
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => BackendErrorKind::Protocol,
            _ => BackendErrorKind::Other,
        }
    };
    Error::backend(backend, kind, format!("{addr}: {e}"), e)
}

/// Whether `e` is a cluster's refusal while a slot moves: `TRYAGAIN`, or a script that met a
/// key of a migrating slot that is not on this node.
pub(crate) fn is_slot_moving(e: &redis::RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain))
        || e.to_string().contains("non local key")
}

/// A request that got no reply within the node's request timeout (retryable).
pub(crate) fn request_timed_out(backend: &'static str, addr: &str, timeout: Duration) -> Error {
    Error::backend_msg(
        backend,
        BackendErrorKind::RequestTimedOut,
        format!("{addr}: no reply within {timeout:?}"),
    )
}

/// A connection that was not made within the connect timeout (retryable).
pub(crate) fn no_connection(backend: &'static str, addr: &str, timeout: Duration) -> Error {
    Error::backend_msg(
        backend,
        BackendErrorKind::Connection,
        format!("{addr}: no connection within {timeout:?}"),
    )
}

/// A reply this client does not understand (not retryable).
pub(crate) fn bad_reply(backend: &'static str, addr: &str, what: &str) -> Error {
    Error::backend_msg(backend, BackendErrorKind::Protocol, format!("{addr}: bad {what} reply"))
}

/// Too few Redlock masters agreed (retryable).
pub(crate) fn unavailable(backend: &'static str, message: String) -> Error {
    Error::backend_msg(backend, BackendErrorKind::Unavailable, message)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(reply: &str) -> redis::RedisError {
        let v = redis::parse_redis_value(reply.as_bytes()).expect("a reply");
        v.extract_error().expect_err("an error reply")
    }

    #[test]
    fn a_replica_refusing_a_write_is_retryable_plain_or_inside_a_script() {
        for reply in [
            "-READONLY You can't write against a read only replica.\r\n",
            "-ERR Error running script (call to f_1e8c): @user_script:12: @user_script: 12: -READONLY You can't write against a read only replica.\r\n",
        ] {
            let e = map_err("redis", "127.0.0.1:6379", server_error(reply));
            assert!(e.is_retryable(), "{reply:?} gave {e:?}");
        }
        let other = map_err("redis", "127.0.0.1:6379", server_error("-ERR unknown command\r\n"));
        assert!(!other.is_retryable(), "{other:?}");
    }

    /// A cluster failover: redirects to a dead primary that outlast the client's retries, and
    /// no connection to any node, pass once the replica is promoted. A renewal refused so
    /// ended the guard at once, and a waiting acquire gave up before its deadline.
    #[test]
    fn a_cluster_failovers_refusals_are_retryable() {
        for reply in ["-MOVED 3999 127.0.0.1:6381\r\n", "-ASK 3999 127.0.0.1:6381\r\n"] {
            let e = map_err("redis", "127.0.0.1:6379", server_error(reply));
            assert!(e.is_retryable(), "{reply:?} gave {e:?}");
        }
        let none =
            redis::RedisError::from((redis::ErrorKind::ClusterConnectionNotFound, "No connections found"));
        let e = map_err("redis", "127.0.0.1:6379", none);
        assert!(e.is_retryable(), "{e:?}");
    }
}
