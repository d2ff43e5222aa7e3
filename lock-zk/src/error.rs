//! ZooKeeper client failures as distlock errors: a lost connection, a timeout, an ended
//! session and throttling are retryable; failed authentication and missing permissions are
//! auth errors.

use lock_core::{BackendErrorKind, Error};

/// The backend's name, in errors, logs and metrics.
pub(crate) const NAME: &str = "zookeeper";

/// Maps an error of the zookeeper client crate from operation `op` on `path`.
pub(crate) fn zk_err(op: &str, path: &str, e: zookeeper_client::Error) -> Error {
    use zookeeper_client::Error as Z;
    let kind = match &e {
        Z::ConnectionLoss | Z::NoHosts | Z::Custom(_) => BackendErrorKind::Connection,
        Z::Timeout => BackendErrorKind::RequestTimedOut,
        Z::SessionExpired | Z::ClientClosed | Z::SessionMoved => BackendErrorKind::Unavailable,
        Z::Throttled => BackendErrorKind::Throttled,
        Z::NoAuth | Z::AuthFailed => BackendErrorKind::Auth,
        _ => BackendErrorKind::Other,
    };
    Error::backend(NAME, kind, format!("{op} {path}"), e)
}

/// Whether a request failed because its connection broke: the client crate reports a clean
/// close as `ConnectionLoss`, but fails the requests in flight with the connection's own error
/// (`Custom`: a reset, an I/O error, no reply within its idle timeout) otherwise. Its reply
/// is lost; the request may or may not have been carried out.
pub(crate) fn connection_lost(e: &zookeeper_client::Error) -> bool {
    matches!(e, zookeeper_client::Error::ConnectionLoss | zookeeper_client::Error::Custom(_))
}

/// A retryable failure that the client crate did not report as an error.
pub(crate) fn unavailable(message: impl Into<String>) -> Error {
    Error::backend_msg(NAME, BackendErrorKind::Unavailable, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_trouble_retries_and_auth_does_not() {
        use zookeeper_client::Error as Z;
        for e in [Z::ConnectionLoss, Z::Timeout, Z::SessionExpired, Z::Throttled] {
            assert!(zk_err("op", "/p", e).is_retryable());
        }
        for e in [Z::NoAuth, Z::AuthFailed, Z::NodeExists] {
            assert!(!zk_err("op", "/p", e).is_retryable());
        }
        let e = zk_err("delete", "/distlock/k/x", Z::NoAuth);
        assert!(matches!(e, Error::Backend { kind: BackendErrorKind::Auth, .. }), "{e:?}");
    }
}
