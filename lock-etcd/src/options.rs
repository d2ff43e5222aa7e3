//! [`EtcdOptions`]: endpoints, credentials, TLS, key prefix, timeouts and lease mode; built in
//! code or parsed from an `etcd://` URL. Secrets never appear in `Debug` output.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lock_core::url::{BackendOptions, ConnectUrl};
use lock_core::{Error, LockBackend, Result, Secret, TlsOptions};

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
///
/// # Behavior
/// - Defaults: session leases with a 10 s TTL, connect timeout 5 s, request timeout 5 s, no
///   key prefix, no credentials, no TLS.
/// - TLS is on when [`tls`](Self::tls) is set or an endpoint says `https://`; bare
///   `host:port` endpoints are then dialled `https://`. [`validate`](Self::validate) refuses
///   TLS beside an `http://` endpoint, and TLS without the crate's `tls` feature.
/// - The URL form (`FromStr`, [`BackendOptions`]):
///   `etcd://[user:password@]h1:2379,h2:2379?prefix=&lease=session|per-lock&session_ttl=10s&connect_timeout=5s&timeout=5s&tls=true&ca_file=&cert_file=&key_file=`;
///   a CA file or a client certificate implies TLS.
#[derive(Clone)]
pub struct EtcdOptions {
    pub(crate) endpoints: Vec<String>,
    pub(crate) credentials: Option<(String, Secret)>,
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) session_ttl: Duration,
    pub(crate) mode: LeaseMode,
    pub(crate) tls: Option<TlsOptions>,
}

impl EtcdOptions {
    /// Options for the cluster reachable at `endpoints` (`http://host:2379`, `https://…`, or
    /// `host:2379`), with the defaults above.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            endpoints: endpoints.into_iter().map(|e| e.as_ref().to_owned()).collect(),
            credentials: None,
            prefix: String::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            session_ttl: Duration::from_secs(10),
            mode: LeaseMode::Session,
            tls: None,
        }
    }

    /// Authenticates as `user` with `password` (etcd's user/password auth). The password
    /// never appears in `Debug` output or errors.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), Secret::new(password.into())));
        self
    }

    /// Prefixes every key (after the client's namespace). Locks interoperate with
    /// `etcdctl lock NAME` when the prefix is empty and the namespace is empty.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
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

    /// The session lease's TTL (whole seconds, at least 2 and at most etcd's maximum lease TTL
    /// of 9 000 000 000 s; default 10 s).
    pub fn session_ttl(mut self, d: Duration) -> Self {
        self.session_ttl = d;
        self
    }

    /// One lease per grant instead of one per session.
    pub fn lease_mode(mut self, mode: LeaseMode) -> Self {
        self.mode = mode;
        self
    }

    /// Speaks TLS to the endpoints (feature `tls`): `TlsOptions::new()` trusts the system's
    /// roots; a private CA and a client certificate are set on the [`TlsOptions`].
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether the connection uses TLS.
    pub(crate) fn uses_tls(&self) -> bool {
        self.tls.is_some() || self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Checks the options without connecting.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for no endpoints, TLS without the `tls` feature or beside an
    /// `http://` endpoint, a session TTL under 2 s or above etcd's maximum lease TTL
    /// (9 000 000 000 s), or a zero timeout.
    pub fn validate(&self) -> Result<()> {
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
        if self.session_ttl > MAX_LEASE_TTL {
            return Err(Error::InvalidConfig(format!(
                "etcd: session TTL {:?} is above etcd's maximum lease TTL of {} s",
                self.session_ttl,
                MAX_LEASE_TTL.as_secs()
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
            .field("endpoints", &self.endpoints.iter().map(|e| lock_core::redact_url(e)).collect::<Vec<_>>())
            .field("user", &self.credentials.as_ref().map(|(u, _)| format!("{u}:***")))
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("session_ttl", &self.session_ttl)
            .field("mode", &self.mode)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The longest lease etcd grants (`MaxLeaseTTL`, 9 000 000 000 s).
const MAX_LEASE_TTL: Duration = Duration::from_secs(9_000_000_000);

/// The options `etcd://` URLs take (besides the client's own `namespace` and `ttl`).
const URL_OPTIONS: &[&str] = &[
    "prefix",
    "lease",
    "session_ttl",
    "connect_timeout",
    "timeout",
    "tls",
    "ca_file",
    "cert_file",
    "key_file",
];

#[lock_core::async_trait]
impl BackendOptions for EtcdOptions {
    fn from_url(u: &ConnectUrl) -> Result<Self> {
        u.expect_scheme(&["etcd"])?;
        u.check_options(URL_OPTIONS)?;
        let hosts = u.hosts_at_least(1, "host:port")?;
        u.no_path("; use ?prefix= for a key prefix")?;
        let tls = u.tls()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut o = EtcdOptions::new(hosts.iter().map(|h| format!("{scheme}://{h}")));
        if let Some(tls) = tls {
            o = o.tls(tls);
        }
        if let Some((user, password)) = u.user_and_password()? {
            o = o.credentials(user, password);
        }
        if let Some(p) = u.option("prefix") {
            o = o.prefix(p);
        }
        match u.option("lease") {
            None | Some("session") => {}
            Some("per-lock") => o = o.lease_mode(LeaseMode::PerLock),
            Some(other) => return Err(u.error(format!("option lease: '{other}' is not session or per-lock"))),
        }
        if let Some(t) = u.duration("session_ttl")? {
            o = o.session_ttl(t);
        }
        if let Some(t) = u.duration("connect_timeout")? {
            o = o.connect_timeout(t);
        }
        if let Some(t) = u.duration("timeout")? {
            o = o.request_timeout(t);
        }
        Ok(o)
    }

    fn validate(&self) -> Result<()> {
        EtcdOptions::validate(self)
    }

    async fn connect_dyn(self) -> Result<Arc<dyn LockBackend>> {
        Ok(Arc::new(crate::EtcdBackend::connect(self).await?))
    }
}

impl FromStr for EtcdOptions {
    type Err = Error;

    /// Parses an `etcd://` URL (see [`EtcdOptions`]).
    fn from_str(url: &str) -> Result<Self> {
        lock_core::url::parse(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user and password written into a hand-built endpoint never show in Debug.
    #[test]
    fn credentials_in_a_hand_built_endpoint_never_show() {
        let o = EtcdOptions::new(["http://root:s3cret@etcd:2379"]);
        assert!(!format!("{o:?}").contains("s3cret"), "{o:?}");
    }

    fn parse(url: &str) -> Result<EtcdOptions> {
        url.parse()
    }

    fn err(url: &str) -> String {
        match parse(url) {
            Ok(o) => panic!("{url} parsed: {o:?}"),
            Err(Error::InvalidConfig(m)) => m,
            Err(e) => panic!("{url}: not InvalidConfig: {e:?}"),
        }
    }

    #[test]
    fn every_option_of_the_url_form() {
        let o = parse(
            "etcd://app:s3cret@h1:2379,h2:2379?prefix=locks/&lease=per-lock&session_ttl=20s\
             &connect_timeout=2s&timeout=750ms&namespace=ns&ttl=30s",
        )
        .unwrap();
        assert_eq!(o.endpoints, vec!["http://h1:2379", "http://h2:2379"]);
        let (user, password) = o.credentials.as_ref().unwrap();
        assert_eq!((user.as_str(), password.expose().as_str()), ("app", "s3cret"));
        assert_eq!(o.prefix, "locks/");
        assert_eq!(o.mode, LeaseMode::PerLock);
        assert_eq!(o.session_ttl, Duration::from_secs(20));
        assert_eq!(o.connect_timeout, Duration::from_secs(2));
        assert_eq!(o.request_timeout, Duration::from_millis(750));
        assert!(o.tls.is_none() && !o.uses_tls());
        assert!(!format!("{o:?}").contains("s3cret"));
        o.validate().unwrap();
    }

    #[test]
    fn defaults_and_the_session_mode() {
        let o = parse("etcd://127.0.0.1:2379/?lease=session").unwrap();
        assert_eq!(o.endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(o.mode, LeaseMode::Session);
        assert!(o.credentials.is_none() && o.prefix.is_empty());
        assert_eq!((o.session_ttl, o.request_timeout), (Duration::from_secs(10), Duration::from_secs(5)));
    }

    #[test]
    fn tls_from_the_flag_or_the_files() {
        let o = parse("etcd://h:2379,[::1]:2379?tls=true").unwrap();
        assert_eq!(o.endpoints, vec!["https://h:2379", "https://[::1]:2379"]);
        assert_eq!(o.tls, Some(TlsOptions::new()));
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (dir.path().join("ca.pem"), dir.path().join("c.pem"), dir.path().join("k.pem"));
        for (p, body) in [(&ca, "CA"), (&cert, "CERT"), (&key, "PRIVATE-KEY-BYTES")] {
            std::fs::write(p, body).unwrap();
        }
        let url = format!(
            "etcd://h:2379?ca_file={}&cert_file={}&key_file={}",
            ca.display(),
            cert.display(),
            key.display()
        );
        let o = parse(&url).unwrap();
        assert_eq!(o.endpoints, vec!["https://h:2379"]);
        let tls = o.tls.as_ref().unwrap();
        assert_eq!(tls.ca_pem(), Some(&b"CA"[..]));
        assert_eq!(tls.identity_pem(), Some((&b"CERT"[..], &b"PRIVATE-KEY-BYTES"[..])));
        assert!(!format!("{o:?}").contains("PRIVATE-KEY-BYTES"), "{o:?}");
        let e = err(&format!("etcd://h:2379?cert_file={}", cert.display()));
        assert!(e.contains("cert_file= and key_file= go together"), "{e}");
        let e = err("etcd://h:2379?ca_file=/nonexistent/ca.pem");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = err(&format!("etcd://h:2379?tls=false&ca_file={}", ca.display()));
        assert!(e.contains("tls=false"), "{e}");
        let e = err("etcd://h:2379?tls=maybe");
        assert!(e.contains("option tls: 'maybe'"), "{e}");
    }

    #[test]
    fn errors_name_the_part_and_hide_the_password() {
        for (url, want) in [
            ("etcd://u:pw-77@?prefix=x", "etcd:// needs at least 1 host:port"),
            ("etcd://u:pw-77@h:2379/locks", "takes no path (got '/locks'; use ?prefix= for a key prefix)"),
            ("etcd://u:pw-77@h:2379?bogus=1", "unknown option 'bogus'"),
            ("etcd://u:pw-77@h:2379?lease=forever", "option lease: 'forever' is not session or per-lock"),
            ("etcd://u:pw-77@h:2379?session_ttl=soon", "option session_ttl:"),
            ("etcd://u:pw-77@h:2379?connect_timeout=-1s", "option connect_timeout:"),
            ("etcd://u:pw-77@h:2379?timeout=x", "option timeout:"),
            ("etcd://u@h:2379", "auth needs both a user and a password"),
            ("redis://u:pw-77@h:6379", "scheme 'redis' is not one of etcd://"),
        ] {
            let e = err(url);
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("pw-77"), "{url}: the password leaked: {e}");
        }
    }

    #[test]
    fn validate_refuses_contradictions() {
        let bad = |o: EtcdOptions| match o.validate() {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(bad(EtcdOptions::new(Vec::<String>::new())).contains("no endpoints"));
        assert!(bad(EtcdOptions::new(["http://h:1"]).tls(TlsOptions::new())).contains("http://"));
        assert!(bad(EtcdOptions::new(["h:1"]).session_ttl(Duration::from_secs(1))).contains("session TTL"));
        assert!(bad(EtcdOptions::new(["h:1"]).session_ttl(Duration::MAX)).contains("maximum lease TTL"));
        assert!(bad(EtcdOptions::new(["h:1"]).request_timeout(Duration::ZERO)).contains("timeouts"));
        EtcdOptions::new(["https://h:1", "h:2"]).validate().unwrap();
        let dbg = format!("{:?}", EtcdOptions::new(["h:1"]).credentials("root", "pa55-secret"));
        assert!(dbg.contains("root:***") && !dbg.contains("pa55-secret"), "{dbg}");
    }
}
