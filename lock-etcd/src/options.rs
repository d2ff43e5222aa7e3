//! Connection and lease options; secrets never appear in `Debug` output.

use std::fmt;
use std::time::Duration;

use lock_core::{Error, Result};

/// How grants are tied to etcd leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseMode {
    /// One lease per client session, kept alive by one keep-alive stream and shared by all the
    /// client's locks (etcd's `concurrency.Session`). A lock lasts while the session does; the
    /// lock's own TTL is not used: the session TTL bounds how long a crashed holder blocks.
    Session,
    /// A lease per grant, with the lock's own TTL (rounded up to whole seconds).
    PerLock,
}

/// Options of an [`EtcdBackend`](crate::EtcdBackend).
#[derive(Clone)]
pub struct EtcdOptions {
    pub(crate) endpoints: Vec<String>,
    pub(crate) user: Option<(String, String)>,
    pub(crate) key_prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) session_ttl: Duration,
    pub(crate) mode: LeaseMode,
    pub(crate) tls_ca: Option<Vec<u8>>,
    /// TLS without a private CA: the system's trusted roots.
    pub(crate) tls: bool,
    /// A client certificate and its private key (PEM), for servers that require one.
    pub(crate) tls_identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdOptions {
    /// Options for the cluster reachable at `endpoints` (`http://host:2379`, or `host:2379`).
    /// Defaults: session leases with a 10 s TTL, connect timeout 5 s, request timeout 5 s, no
    /// key prefix.
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Self {
        Self {
            endpoints: endpoints.iter().map(|e| e.as_ref().to_owned()).collect(),
            user: None,
            key_prefix: String::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            session_ttl: Duration::from_secs(10),
            mode: LeaseMode::Session,
            tls_ca: None,
            tls: false,
            tls_identity: None,
        }
    }

    /// Authenticates as `user` (etcd's user/password auth).
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.user = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Prefixes every key (after the client's namespace). Locks interoperate with
    /// `etcdctl lock NAME` when the prefix is empty and the namespace is empty.
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.key_prefix = prefix.to_owned();
        self
    }

    /// How long to wait for a connection.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long to wait for one request.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// The session lease's TTL (whole seconds, at least 2; default 10 s).
    pub fn session_ttl(mut self, d: Duration) -> Self {
        self.session_ttl = d;
        self
    }

    /// One lease per grant instead of one per session.
    pub fn lease_mode(mut self, mode: LeaseMode) -> Self {
        self.mode = mode;
        self
    }

    /// Speaks TLS to the endpoints (also implied by `https://` endpoints), trusting the
    /// system's root certificates unless [`EtcdOptions::tls_ca`] names a private CA
    /// (feature `tls`).
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Trusts this CA certificate (PEM) for `https://` endpoints instead of the system's
    /// roots: for a cluster with a private CA (feature `tls`).
    pub fn tls_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca = Some(pem.into());
        self
    }

    /// Presents this client certificate and private key (both PEM) to the servers, for a
    /// cluster started with `--client-cert-auth` (feature `tls`). The key never appears in
    /// `Debug` output.
    pub fn tls_identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.tls_identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Like [`EtcdOptions::tls_identity`], reading the two PEM files.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a file cannot be read.
    pub fn tls_identity_files(
        self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Result<Self> {
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                Error::InvalidConfig(format!("etcd: cannot read {what} file {}: {e}", path.display()))
            })
        };
        let cert = read("client certificate", cert.as_ref())?;
        let key = read("client key", key.as_ref())?;
        Ok(self.tls_identity(cert, key))
    }

    /// Whether the connection uses TLS.
    pub(crate) fn uses_tls(&self) -> bool {
        self.tls
            || self.tls_ca.is_some()
            || self.tls_identity.is_some()
            || self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Like [`EtcdOptions::tls_ca`], reading the PEM file at `path`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the file cannot be read.
    pub fn tls_ca_file(self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            Error::InvalidConfig(format!("etcd: cannot read CA file {}: {e}", path.display()))
        })?;
        Ok(self.tls_ca(pem))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.uses_tls() && !cfg!(feature = "tls") {
            return Err(Error::InvalidConfig(
                "etcd: TLS (https://, a CA or a client certificate) needs lock-etcd's `tls` feature".into(),
            ));
        }
        if self.uses_tls() && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(Error::InvalidConfig(
                "etcd: TLS is on but an endpoint says http://; write https:// or host:port".into(),
            ));
        }
        if self.endpoints.is_empty() {
            return Err(Error::InvalidConfig("etcd: no endpoints".into()));
        }
        if self.session_ttl < Duration::from_secs(2) {
            return Err(Error::InvalidConfig(format!(
                "etcd: session TTL {:?} is below etcd's practical minimum of 2 s",
                self.session_ttl
            )));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::InvalidConfig("etcd: timeouts must be greater than zero".into()));
        }
        Ok(())
    }
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(u, _)| format!("{u}:***")))
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("session_ttl", &self.session_ttl)
            .field("mode", &self.mode)
            .field("tls", &self.uses_tls())
            .field("tls_ca", &self.tls_ca.is_some())
            .field("tls_identity", &self.tls_identity.is_some())
            .finish()
    }
}
