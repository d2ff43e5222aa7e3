//! Options of a [`ZkBackend`](crate::ZkBackend).

use std::time::Duration;

/// Where and how a [`ZkBackend`](crate::ZkBackend) keeps its locks.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ZkOptions {
    /// The connect string: `host:port[,host:port…][/chroot]`.
    pub connect: String,
    /// The requested session timeout (default 10 s; the server clamps it to its
    /// `minSessionTimeout..maxSessionTimeout`, by default 2 to 20 ticks). It is every lock's
    /// lease: see the crate documentation.
    pub session_timeout: Duration,
    /// How long to wait for the first connection (default 5 s).
    pub connect_timeout: Duration,
    /// The parent of every lock's path (default `/distlock`): a lock named `jobs/nightly`
    /// lives at `/distlock/jobs/nightly`.
    pub prefix: String,
    /// Digest authentication: `(user, password)`. Nodes are then created with the
    /// `creator_all` ACL; without it, `anyone_all`. So every client that locks under the same
    /// prefix, Curator's included, must authenticate as the same digest user: another
    /// identity (or none) cannot create children in a lock directory made under this one,
    /// and gets a typed permission error, never a lock.
    pub digest: Option<(String, String)>,
    /// Close the session when the backend is dropped (default true), which deletes its nodes
    /// at once. When false, the session is left to expire on the server after its timeout,
    /// exactly as when the process crashes (tests use it to simulate one).
    pub close_on_drop: bool,
}

impl ZkOptions {
    /// Options for the ensemble named by `connect` (`h1:2181,h2:2181[/chroot]`).
    pub fn new(connect: impl Into<String>) -> Self {
        Self {
            connect: connect.into(),
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            prefix: "/distlock".into(),
            digest: None,
            close_on_drop: true,
        }
    }

    /// Sets the requested session timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the path prefix of every lock (absolute, without a trailing `/`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Whether dropping the backend closes its session (see the field).
    pub fn close_on_drop(mut self, close: bool) -> Self {
        self.close_on_drop = close;
        self
    }

    /// Authenticates with the digest scheme (see [`ZkOptions::digest`](Self#structfield.digest)
    /// for the ACLs this implies).
    pub fn digest(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.digest = Some((user.into(), password.into()));
        self
    }
}

impl std::fmt::Debug for ZkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkOptions")
            .field("connect", &self.connect)
            .field("session_timeout", &self.session_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("prefix", &self.prefix)
            .field("digest", &self.digest.as_ref().map(|(u, _)| format!("{u}:***")))
            .field("close_on_drop", &self.close_on_drop)
            .finish()
    }
}
