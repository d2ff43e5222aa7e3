//! The one error type of distlock.

use std::fmt;
use std::time::Duration;

use crate::key::KeyError;
use crate::signal::LossReason;

/// What kind of failure a backend reported; decides [`Error::is_retryable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The server could not be reached or the connection broke. Retryable.
    Connection,
    /// One request to the server got no reply within its request timeout. Retryable. (A
    /// wait for a held lock that ran out is [`Error::WaitTimedOut`], not a backend error.)
    RequestTimedOut,
    /// The server asked us to slow down. Retryable.
    Throttled,
    /// The server is temporarily unable to serve (no quorum, leader election, 5xx). Retryable.
    Unavailable,
    /// Credentials were refused or lacked permission. Not retryable.
    Auth,
    /// The server answered something this client does not understand. Not retryable.
    Protocol,
    /// Anything else. Not retryable.
    Other,
}

impl BackendErrorKind {
    /// Whether an error of this kind may succeed when tried again.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            BackendErrorKind::Connection
                | BackendErrorKind::RequestTimedOut
                | BackendErrorKind::Throttled
                | BackendErrorKind::Unavailable
        )
    }
}

impl fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendErrorKind::Connection => "connection",
            BackendErrorKind::RequestTimedOut => "request timed out",
            BackendErrorKind::Throttled => "throttled",
            BackendErrorKind::Unavailable => "unavailable",
            BackendErrorKind::Auth => "auth",
            BackendErrorKind::Protocol => "protocol",
            BackendErrorKind::Other => "other",
        })
    }
}

/// The source of a backend error, boxed so no backend crate's type shows in this API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong with a lock.
///
/// [`Error::is_retryable`] tells whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock stayed held by another owner until the wait ran out (at once for an acquire
    /// without a wait: `waited` is then zero). Not a failure of the backend: a request that
    /// timed out is [`Error::Backend`] with [`BackendErrorKind::RequestTimedOut`].
    #[error("lock {key:?} is held by another owner; gave up after {waited:?}")]
    WaitTimedOut {
        /// The full key.
        key: String,
        /// How long the acquire waited.
        waited: Duration,
    },
    /// Extend or release found the lock not held by this owner: it expired or was taken.
    #[error("lock {key:?} is not held by this owner (it expired or another owner took it)")]
    NotHeld {
        /// The full key.
        key: String,
    },
    /// The lock was lost while work ran under it.
    #[error("lock {key:?} was lost: {reason}")]
    Lost {
        /// The full key.
        key: String,
        /// Why it was lost.
        reason: LossReason,
    },
    /// The key broke a key rule.
    #[error("invalid lock key: {0}")]
    InvalidKey(#[from] KeyError),
    /// The TTL is zero, below the backend's minimum, or absurdly long.
    #[error("invalid TTL {ttl:?}: {reason}")]
    InvalidTtl {
        /// The TTL asked for.
        ttl: Duration,
        /// The rule it broke.
        reason: String,
    },
    /// A semaphore was asked for with zero permits, or more than the backend allows.
    #[error("invalid number of permits {permits}: {reason}")]
    InvalidPermits {
        /// The number asked for.
        permits: u32,
        /// The rule it broke.
        reason: String,
    },
    /// A semaphore was asked for with another number of permits than its holders use: granting
    /// it would let more holders in than either number allows.
    #[error("semaphore {key:?} has {held} permits; this client asked for {asked}")]
    PermitsMismatch {
        /// The full key.
        key: String,
        /// The number this client asked for.
        asked: u32,
        /// The number the current holders use.
        held: u32,
    },
    /// Holder metadata was refused (a value over the size limit).
    #[error("invalid holder metadata: {0}")]
    InvalidMetadata(String),
    /// This task already holds the lock it asks for: waiting would wait for itself. (Another
    /// task, or another client, asking for it waits as usual.) The grant counts as the task's
    /// that acquired it, wherever its guard was moved since.
    #[error("lock {key:?} is already held by this task; it would wait for itself")]
    AlreadyHeld {
        /// The full key.
        key: String,
    },
    /// A configuration value (URL, option) is malformed or contradictory.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The backend cannot do what was asked.
    #[error("the {backend} backend does not support {capability}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// What was asked for.
        capability: String,
    },
    /// The backend failed: connection, server or protocol error.
    #[error("{backend} backend error ({kind}): {message}")]
    Backend {
        /// The backend's name, e.g. `"redis"`.
        backend: &'static str,
        /// What kind of failure it was.
        kind: BackendErrorKind,
        /// A message for people, free of secrets.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// Whether trying the same operation again may succeed.
    ///
    /// `WaitTimedOut` is retryable (the holder may be gone later); backend errors are retryable
    /// when their kind is (connection, timeout, throttling, unavailability); everything else is
    /// not: the input, the configuration or the lock's state must change first.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::WaitTimedOut { .. } => true,
            Error::Backend { kind, .. } => kind.is_retryable(),
            _ => false,
        }
    }

    /// A backend error with a source.
    pub fn backend(
        backend: &'static str,
        kind: BackendErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend { backend, kind, message: message.into(), source: Some(source.into()) }
    }

    /// A backend error without a source.
    pub fn backend_msg(backend: &'static str, kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Error::Backend { backend, kind, message: message.into(), source: None }
    }

    /// A short machine-readable name of the variant, used as a metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Error::WaitTimedOut { .. } => "wait_timed_out",
            Error::NotHeld { .. } => "not_held",
            Error::Lost { .. } => "lost",
            Error::InvalidKey(_) => "invalid_key",
            Error::InvalidTtl { .. } => "invalid_ttl",
            Error::InvalidPermits { .. } => "invalid_permits",
            Error::PermitsMismatch { .. } => "permits_mismatch",
            Error::InvalidMetadata(_) => "invalid_metadata",
            Error::AlreadyHeld { .. } => "already_held",
            Error::InvalidConfig(_) => "invalid_config",
            Error::Unsupported { .. } => "unsupported",
            Error::Backend { .. } => "backend",
        }
    }
}

/// `Result` with distlock's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
