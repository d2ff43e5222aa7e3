//! Connection options, parsed from URLs; secrets never appear in `Debug` or logs.

use std::fmt;
use std::time::Duration;

pub use lock_core::redact_url;
use lock_core::{Error, Result};

/// Options of a Redis connection (one node) and of the lock keys.
///
/// Built from a URL with [`RedisOptions::from_url`]:
/// `redis://[user[:password]@]host[:port][/db]` or `rediss://…` for TLS (feature `tls`).
/// The password and ACL user may also be set with [`RedisOptions::credentials`].
#[derive(Clone)]
pub struct RedisOptions {
    pub(crate) url: String,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: Option<i64>,
    pub(crate) key_prefix: String,
    pub(crate) connect_timeout: Duration,
    /// `None`: the backend's default (one node: `DEFAULT_COMMAND_TIMEOUT`; Redlock: its
    /// per-node timeout).
    pub(crate) command_timeout: Option<Duration>,
    pub(crate) tls_root_cert: Option<Vec<u8>>,
}

/// How long one command may take on a single node unless the options choose otherwise.
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisOptions {
    /// Options for the server at `url`, with default timeouts (connect 5 s, command 2 s) and
    /// no key prefix.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming what is wrong with the URL (the password is never
    /// echoed).
    pub fn from_url(url: &str) -> Result<Self> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| Error::InvalidConfig(format!("redis URL {}: {e}", redact_url(url))))?;
        if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) && !cfg!(feature = "tls") {
            return Err(Error::InvalidConfig(
                "rediss:// needs lock-redis's `tls` feature, which is disabled in this build".into(),
            ));
        }
        Ok(Self {
            url: url.to_owned(),
            username: None,
            password: None,
            db: None,
            key_prefix: String::new(),
            connect_timeout: Duration::from_secs(5),
            command_timeout: None,
            tls_root_cert: None,
        })
    }

    /// Sets the ACL user (optional) and password, overriding the URL's.
    pub fn credentials(mut self, username: Option<&str>, password: &str) -> Self {
        self.username = username.map(str::to_owned);
        self.password = Some(password.to_owned());
        self
    }

    /// Selects a database index, overriding the URL's.
    pub fn database(mut self, db: i64) -> Self {
        self.db = Some(db);
        self
    }

    /// Prefixes every Redis key this backend writes (after the client's namespace).
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.key_prefix = prefix.to_owned();
        self
    }

    /// How long to wait for a connection (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long to wait for one command's reply (default 2 s; for Redlock, the per-node
    /// timeout, default 200 ms).
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = Some(d);
        self
    }

    /// Trusts this CA certificate (PEM) for `rediss://` instead of the system's roots: for
    /// servers with a private CA.
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(pem.into());
        self
    }

    /// Like [`RedisOptions::tls_root_cert`], reading the PEM file at `path`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the file cannot be read.
    pub fn tls_root_cert_file(self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            Error::InvalidConfig(format!("redis: cannot read CA file {}: {e}", path.display()))
        })?;
        Ok(self.tls_root_cert(pem))
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The command timeout in force: the one chosen, else the single-node default.
    pub(crate) fn effective_command_timeout(&self) -> Duration {
        self.command_timeout.unwrap_or(DEFAULT_COMMAND_TIMEOUT)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.connect_timeout.is_zero() || self.effective_command_timeout().is_zero() {
            return Err(Error::InvalidConfig("redis timeouts must be greater than zero".into()));
        }
        if self.key_prefix.contains(['{', '}']) {
            return Err(Error::InvalidConfig(
                "redis key prefix must not contain '{' or '}' (the lock key's hash tag follows it)".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn client(&self) -> Result<redis::Client> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(self.url.as_str())
            .map_err(|e| Error::InvalidConfig(format!("redis URL {}: {e}", self.redacted_url())))?;
        let mut settings = info.redis_settings().clone();
        if let Some(p) = &self.password {
            settings = settings.set_password(p);
            if let Some(u) = &self.username {
                settings = settings.set_username(u);
            }
        }
        if let Some(db) = self.db {
            settings = settings.set_db(db);
        }
        info = info.set_redis_settings(settings);
        #[cfg(feature = "tls")]
        {
            let _ = rustls::crypto::ring::default_provider().install_default();
            if let Some(pem) = &self.tls_root_cert {
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) };
                return redis::Client::build_with_tls(info, certs).map_err(|e| {
                    Error::InvalidConfig(format!("redis TLS setup for {}: {e}", self.redacted_url()))
                });
            }
        }
        redis::Client::open(info)
            .map_err(|e| Error::InvalidConfig(format!("redis URL {}: {e}", self.redacted_url())))
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &self.redacted_url())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.effective_command_timeout())
            .field("tls_root_cert", &self.tls_root_cert.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let o = RedisOptions::from_url("redis://app:s3cret@127.0.0.1:6379/2").unwrap();
        assert_eq!(o.redacted_url(), "redis://app:***@127.0.0.1:6379/2");
        let dbg = format!("{:?}", o.clone().credentials(Some("u"), "hunter2"));
        assert!(!dbg.contains("s3cret") && !dbg.contains("hunter2"), "{dbg}");
        assert_eq!(redact_url("redis://:pw@h/0"), "redis://:***@h/0");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        let e = RedisOptions::from_url("redis://u:pa/ss-9@h:99999").unwrap_err().to_string();
        assert!(!e.contains("pa/ss-9"), "{e}");
    }

    #[test]
    fn malformed_urls_are_typed_errors_without_secrets() {
        let e = RedisOptions::from_url("http://u:topsecret@host").unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)));
        assert!(!e.to_string().contains("topsecret"), "{e}");
        assert!(RedisOptions::from_url("redis://127.0.0.1:6379")
            .unwrap()
            .key_prefix("a{b")
            .validate()
            .is_err());
    }
}
