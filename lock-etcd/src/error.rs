//! etcd's failures as distlock errors: the gRPC status decides the kind (and so whether the
//! request is worth repeating).

use std::time::Duration;

use lock_core::{BackendErrorKind, Error};
use tonic::{Code, Status};

/// The backend's name, in errors and [`LockBackend::name`](lock_core::LockBackend::name).
pub(crate) const NAME: &str = "etcd";

/// The distlock kind of a gRPC status: elections, members going away and broken connections
/// are retryable; refused credentials and everything else are not.
pub(crate) fn kind(code: Code) -> BackendErrorKind {
    match code {
        Code::Unavailable | Code::Aborted | Code::Internal | Code::Unknown => BackendErrorKind::Unavailable,
        Code::DeadlineExceeded | Code::Cancelled => BackendErrorKind::RequestTimedOut,
        Code::ResourceExhausted => BackendErrorKind::Throttled,
        Code::Unauthenticated | Code::PermissionDenied => BackendErrorKind::Auth,
        _ => BackendErrorKind::Other,
    }
}

/// A failed request as a distlock error (the status is kept as the source).
pub(crate) fn map_err(s: Status) -> Error {
    let message = format!("{:?}: {}", s.code(), s.message());
    Error::backend(NAME, kind(s.code()), message, s)
}

/// Whether `e` is a write refused because the lease it names is gone (revoked from outside
/// before the keep-alive noticed). Sending the same request again cannot help; queueing again
/// on a new lease does (the keep-alive finds the old one gone within a third of its TTL).
pub(crate) fn lease_gone(e: &Error) -> bool {
    let Error::Backend { source: Some(source), .. } = e else { return false };
    source
        .downcast_ref::<Status>()
        .is_some_and(|s| s.code() == Code::NotFound && s.message().contains("lease not found"))
}

/// Whether `e` is a request refused because the user's role may not touch a key it names.
pub(crate) fn permission_denied(e: &Error) -> bool {
    let Error::Backend { source: Some(source), .. } = e else { return false };
    source.downcast_ref::<Status>().is_some_and(|s| s.code() == Code::PermissionDenied)
}

/// Whether `s` says the auth token is no longer valid (a new login fixes it), not that the
/// user lacks a permission.
pub(crate) fn token_expired(s: &Status) -> bool {
    s.code() == Code::Unauthenticated
}

/// No reply to `what` within `d`.
pub(crate) fn timeout(what: &str, d: Duration) -> Error {
    Error::backend_msg(NAME, BackendErrorKind::RequestTimedOut, format!("{what}: no reply within {d:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds_that_say_whether_to_retry() {
        assert!(map_err(Status::unavailable("leader changed")).is_retryable());
        assert!(map_err(Status::deadline_exceeded("slow")).is_retryable());
        let e = map_err(Status::invalid_argument("etcdserver: authentication failed"));
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("authentication failed"), "{e}");
        assert!(token_expired(&Status::unauthenticated("etcdserver: invalid auth token")));
        assert!(!token_expired(&Status::permission_denied("etcdserver: permission denied")));
        assert_eq!(kind(Code::PermissionDenied), BackendErrorKind::Auth);
        assert!(lease_gone(&map_err(Status::not_found("etcdserver: requested lease not found"))));
        assert!(!lease_gone(&map_err(Status::not_found("etcdserver: key not found"))));
    }
}
