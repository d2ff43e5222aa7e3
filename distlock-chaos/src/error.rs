//! The harness's errors: what failed, in words a reader of the CI log can act on.

use conformance_tests::fixtures::FixtureError;

/// Anything that stops the harness from running a scenario (a violation found by the checker
/// is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A server could not be started or controlled.
    #[error("server fixture: {0}")]
    Fixture(String),
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The lock backend failed where the harness needed it (connecting the probe client).
    #[error("backend: {0}")]
    Backend(#[from] distlock::Error),
    /// A peer broke the register protocol, or a history file is malformed.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Bad command line or configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Ctrl-C or SIGTERM stopped the run (every worker and server was stopped).
    #[error("interrupted by {0}; every worker and server was stopped")]
    Interrupted(&'static str),
}

impl From<FixtureError> for ChaosError {
    fn from(e: FixtureError) -> Self {
        Self::Fixture(e.0)
    }
}

impl ChaosError {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { what: what.into(), source }
    }
}

/// The harness's result type.
pub type Result<T, E = ChaosError> = std::result::Result<T, E>;
