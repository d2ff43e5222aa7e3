//! Options of a [`ZkBackend`](crate::ZkBackend): the builder, its validation, and the
//! `zk://` / `zookeeper://` URL forms.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lock_core::url::{BackendOptions, ConnectUrl};
use lock_core::{Error, LockBackend, Result, Secret, TlsOptions};
use zookeeper_client::Acls;

use crate::ZkBackend;

/// The schemes [`ZkOptions`] parses.
pub const SCHEMES: &[&str] = &["zk", "zookeeper"];

/// The URL options [`ZkOptions`] reads (besides lock-core's client options).
const URL_OPTIONS: &[&str] =
    &["prefix", "session_timeout", "connect_timeout", "tls", "ca_file", "cert_file", "key_file"];

/// The longest session timeout the protocol carries: a 32-bit count of milliseconds (24.8 days).
const MAX_SESSION_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// Where and how a [`ZkBackend`](crate::ZkBackend) keeps its locks.
///
/// Built with [`ZkOptions::new`] and the builder methods, or parsed from a URL:
///
/// ```
/// use std::time::Duration;
/// use lock_zk::ZkOptions;
///
/// let built = ZkOptions::new("h1:2181,h2:2181/app")
///     .credentials("app", "s3cret")
///     .session_timeout(Duration::from_secs(4));
/// let parsed: ZkOptions = "zk://app:s3cret@h1:2181,h2:2181/app?session_timeout=4s".parse()?;
/// assert_eq!(built, parsed);
/// assert!(!format!("{parsed:?}").contains("s3cret"));
/// # Ok::<(), lock_core::Error>(())
/// ```
///
/// # URL forms
/// `zk://[user:password@]h1:2181,h2:2181[/chroot][?option=value&…]`, or `zookeeper://…`.
/// `user:password` is digest auth ([`credentials`](Self::credentials)); the chroot is
/// created if it does not exist. Options: `prefix=/distlock`, `session_timeout=10s`,
/// `connect_timeout=5s`, and TLS to the servers' `secureClientPort`: `tls=true`,
/// `ca_file=` (a private CA; without it the system's CA bundle), `cert_file=` + `key_file=`
/// (a client certificate, for servers with `ssl.clientAuth=need`). Any of the files implies
/// `tls=true`.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkOptions {
    /// The connect string: `host:port[,host:port…][/chroot]`.
    pub(crate) connect: String,
    pub(crate) session_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) prefix: String,
    /// Digest authentication: user and password.
    pub(crate) credentials: Option<(String, Secret)>,
    pub(crate) close_on_drop: bool,
    /// TLS to the servers' secure client port.
    pub(crate) tls: Option<TlsOptions>,
}

impl ZkOptions {
    /// Options for the ensemble named by `connect` (`h1:2181,h2:2181[/chroot]`; a host
    /// without a port means port 2181), with the defaults: session timeout 10 s, connect
    /// timeout 5 s, prefix `/distlock`, no authentication, sessions closed on drop.
    pub fn new(connect: impl Into<String>) -> Self {
        Self {
            connect: connect.into(),
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            prefix: "/distlock".into(),
            credentials: None,
            close_on_drop: true,
            tls: None,
        }
    }

    /// Sets the requested session timeout (default 10 s). The server clamps it to its
    /// `minSessionTimeout..maxSessionTimeout`, by default 2 to 20 ticks. It is every lock's
    /// lease: see the [crate documentation](crate#sessions-and-ttls).
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Sets how long to wait for the first connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the parent of every lock's path (default `/distlock`; absolute, without a
    /// trailing `/`): a lock named `jobs/nightly` lives at `/distlock/jobs/nightly`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Whether dropping the backend closes its session (default true), which deletes its
    /// nodes at once. When false, the session is left to expire on the server after its
    /// timeout, exactly as when the process crashes (tests use it to simulate one).
    pub fn close_on_drop(mut self, close: bool) -> Self {
        self.close_on_drop = close;
        self
    }

    /// Authenticates with the digest scheme as `user`. Nodes are then created with the
    /// `creator_all` ACL; without credentials, `anyone_all`. So every client that locks under
    /// the same prefix, Curator's included, must authenticate as the same digest user:
    /// another identity (or none) cannot create children in a lock directory made under
    /// this one, and gets a typed permission error, never a lock. The password never shows
    /// in `Debug` output or errors.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), Secret::new(password.into())));
        self
    }

    /// Connects over TLS (to the servers' `secureClientPort`, which needs ZooKeeper's Netty
    /// connection factory), trusting `tls`'s CA, or the system's CA bundle when it names none
    /// (`SSL_CERT_FILE`, else the usual bundle paths), and presenting its client certificate
    /// if it has one. Every server of the connect string is reached over TLS. Needs the `tls`
    /// feature (on by default). The server's certificate must name the host as written in the
    /// connect string (an IP address or a DNS name).
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Checks the options without connecting: a non-empty connect string of well-formed
    /// hosts (`host[:port]` or `[ipv6][:port]`, ports from 1 to 65535) and an absolute
    /// chroot, an absolute prefix without a trailing `/`, positive timeouts, a session timeout
    /// the protocol can carry (at most 2^31 - 1 ms), and no TLS in a build without the `tls`
    /// feature.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the option that is wrong.
    pub fn validate(&self) -> Result<()> {
        self.problem().map_or(Ok(()), |what| Err(Error::InvalidConfig(format!("ZooKeeper options: {what}"))))
    }

    /// What is wrong with the options, if anything.
    fn problem(&self) -> Option<String> {
        if self.connect.trim().is_empty() {
            return Some("the connect string is empty (host:port[,host:port][/chroot])".into());
        }
        if self.connect.contains('@') {
            // Nothing of it is shown: the part before the `@` is a user and password.
            return Some(
                "the connect string holds a user or password (before an '@'); give them as credentials"
                    .into(),
            );
        }
        let (hosts, chroot) = self.hosts_and_chroot();
        if let Some(what) = hosts.split(',').find_map(host_problem) {
            return Some(format!("connect string '{}': {what}", lock_core::redact_url(&self.connect)));
        }
        if !chroot.is_empty() && !is_znode_path(chroot) {
            return Some(format!(
                "connect string '{}': the chroot '{chroot}' is not an absolute path (like /app)",
                lock_core::redact_url(&self.connect)
            ));
        }
        let p = &self.prefix;
        if !p.starts_with('/') || p.ends_with('/') || p.contains("//") {
            return Some(
                "the prefix must be an absolute path without a trailing '/' (like /distlock)".into(),
            );
        }
        if self.session_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Some("session_timeout and connect_timeout must be positive".into());
        }
        if self.tls.is_some() && !cfg!(feature = "tls") {
            return Some("TLS needs lock-zk's `tls` feature, which is disabled in this build".into());
        }
        if self.session_timeout > MAX_SESSION_TIMEOUT {
            return Some(format!(
                "session_timeout must be at most {MAX_SESSION_TIMEOUT:?} (the protocol's limit; servers cap it \
                 at their maxSessionTimeout, 20 ticks by default)"
            ));
        }
        None
    }

    /// The hosts part of the connect string and its chroot (without a trailing `/`; empty
    /// for none).
    pub(crate) fn hosts_and_chroot(&self) -> (&str, &str) {
        match self.connect.find('/') {
            Some(i) => (&self.connect[..i], self.connect[i..].trim_end_matches('/')),
            None => (self.connect.as_str(), ""),
        }
    }

    /// The ACL of every node we create: only its creator with digest auth, anyone without.
    pub(crate) fn acls(&self) -> Acls<'static> {
        if self.credentials.is_some() {
            Acls::creator_all()
        } else {
            Acls::anyone_all()
        }
    }
}

/// What is wrong with one host of a connect string, if anything.
fn host_problem(host: &str) -> Option<String> {
    const FORMS: &str = "host:port[,host:port][/chroot]";
    if host.trim().is_empty() {
        return Some(format!("a host is empty ({FORMS})"));
    }
    if host.chars().any(|c| c.is_whitespace() || c == '@' || c == '?') {
        return Some(format!("host '{host}' is not a host name or address"));
    }
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((addr, "")) if !addr.is_empty() => (addr, None),
            Some((addr, after)) if !addr.is_empty() && after.starts_with(':') => (addr, Some(&after[1..])),
            _ => return Some(format!("host '{host}' is not a bracketed IPv6 address ([::1] or [::1]:PORT)")),
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    if name.is_empty() {
        return Some(format!("host '{host}' has a port but no name"));
    }
    match port.map(str::parse::<u16>) {
        None | Some(Ok(1..)) => None,
        Some(_) => Some(format!(
            "port '{}' of host '{name}' is not a number from 1 to 65535",
            port.unwrap_or_default()
        )),
    }
}

/// An absolute znode path: starts with `/`, no empty, `.` or `..` segments, no trailing `/`.
fn is_znode_path(path: &str) -> bool {
    path.strip_prefix('/').is_some_and(|rest| rest.split('/').all(|s| !matches!(s, "" | "." | "..")))
}

impl std::fmt::Debug for ZkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkOptions")
            .field("connect", &lock_core::redact_url(&self.connect))
            .field("session_timeout", &self.session_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("prefix", &self.prefix)
            .field("credentials", &self.credentials.as_ref().map(|(u, _)| format!("{u}:***")))
            .field("close_on_drop", &self.close_on_drop)
            .field("tls", &self.tls)
            .finish()
    }
}

impl FromStr for ZkOptions {
    type Err = Error;

    /// Parses a `zk://` or `zookeeper://` URL (see [`ZkOptions`]).
    fn from_str(url: &str) -> Result<Self> {
        lock_core::url::parse(url)
    }
}

#[lock_core::async_trait]
impl BackendOptions for ZkOptions {
    fn from_url(u: &ConnectUrl) -> Result<Self> {
        u.expect_scheme(SCHEMES)?;
        u.check_options(URL_OPTIONS)?;
        let scheme = &u.scheme;
        if u.hosts.is_empty() {
            return Err(u.error(format!("{scheme}:// needs at least one host:port")));
        }
        let chroot = if u.path == "/" { "" } else { u.path.as_str() };
        let mut o = ZkOptions::new(format!("{}{chroot}", u.hosts.join(",")));
        match (&u.user, &u.password) {
            (Some(user), Some(password)) => o = o.credentials(user, password),
            (None, None) => {}
            _ => {
                return Err(u.error(format!(
                    "{scheme}:// digest auth needs both user and password ({scheme}://user:password@host)"
                )))
            }
        }
        if let Some(p) = u.option("prefix") {
            o = o.prefix(p);
        }
        if let Some(t) = u.duration("session_timeout")? {
            o = o.session_timeout(t);
        }
        if let Some(t) = u.duration("connect_timeout")? {
            o = o.connect_timeout(t);
        }
        if let Some(tls) = u.tls()? {
            o = o.tls(tls);
        }
        match o.problem() {
            Some(what) => Err(u.error(what)),
            None => Ok(o),
        }
    }

    fn validate(&self) -> Result<()> {
        ZkOptions::validate(self)
    }

    async fn connect_dyn(self) -> Result<Arc<dyn LockBackend>> {
        Ok(Arc::new(ZkBackend::connect(self).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user and password written into a hand-built connect string never show in Debug or
    /// errors.
    #[test]
    fn credentials_in_a_hand_built_connect_string_never_show() {
        for connect in ["app:s3cret@zk:99999", "app:s3,cret@zk:2181", "app:s3/cret@zk"] {
            let o = ZkOptions::new(connect);
            assert!(!format!("{o:?}").contains("s3"), "{o:?}");
            let e = o.validate().unwrap_err().to_string();
            assert!(!e.contains("s3"), "{e}");
        }
    }

    fn err(url: &str) -> String {
        let e = url.parse::<ZkOptions>().expect_err(url);
        assert!(matches!(e, Error::InvalidConfig(_)) && !e.is_retryable(), "{url}: {e:?}");
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("hunter2"), "{url}: the password shows: {shown}");
        e.to_string()
    }

    #[test]
    fn every_url_form_parses() {
        let o: ZkOptions = "zk://h1:2181,h2:2182".parse().expect("hosts");
        assert_eq!(o, ZkOptions::new("h1:2181,h2:2182"));
        let o: ZkOptions = "zookeeper://h1:2181/apps/one/".parse().expect("zookeeper:// with a chroot");
        assert_eq!(o, ZkOptions::new("h1:2181/apps/one/"));
        assert_eq!(o.hosts_and_chroot(), ("h1:2181", "/apps/one"));
        assert_eq!("zk://h:2181/".parse::<ZkOptions>().expect("root"), ZkOptions::new("h:2181"));
        let o: ZkOptions =
            "zk://app:p%40ss@[::1]:2181,h?prefix=/locks&session_timeout=4s&connect_timeout=500ms&namespace=x&ttl=5s"
                .parse()
                .expect("everything");
        let want = ZkOptions::new("[::1]:2181,h")
            .credentials("app", "p@ss")
            .prefix("/locks")
            .session_timeout(Duration::from_secs(4))
            .connect_timeout(Duration::from_millis(500));
        assert_eq!(o, want);
        assert_eq!(o.acls(), Acls::creator_all());
        assert_eq!(ZkOptions::new("h").acls(), Acls::anyone_all());
    }

    #[test]
    fn tls_in_urls() {
        let o: ZkOptions = "zk://h:2281?tls=true".parse().expect("tls=true");
        assert_eq!(o, ZkOptions::new("h:2281").tls(TlsOptions::new()));
        assert_eq!(
            "zk://h:2281?tls=false".parse::<ZkOptions>().expect("tls=false"),
            ZkOptions::new("h:2281")
        );
        for (url, expect) in [
            ("zk://h:2281?ca_file=/no/such/ca.pem", "cannot read the TLS CA file"),
            ("zk://h:2281?cert_file=/c.pem", "go together"),
            ("zk://h:2281?tls=false&ca_file=/ca.pem", "contradicts"),
        ] {
            let e = err(url);
            assert!(e.contains(expect), "{url}: {e}");
        }
    }

    #[test]
    fn url_errors_point_at_the_part_and_hide_the_password() {
        for (url, expect) in [
            ("zk://u:hunter2@?session_timeout=5s", "zk:// needs at least one host:port"),
            ("zookeeper://u:hunter2@", "zookeeper:// needs at least one host:port"),
            ("zk://u:hunter2@h:2181?prefix=relative", "absolute path"),
            ("zk://u:hunter2@h:2181?prefix=/a/", "absolute path"),
            ("zk://u:hunter2@h:2181?bogus=1", "unknown option 'bogus'"),
            ("zk://u:hunter2@h:2181?session_timeout=soon", "option session_timeout"),
            ("zk://u:hunter2@h:2181?connect_timeout=0s", "must be positive"),
            ("zk://u:hunter2@h:99999", "port '99999'"),
            ("zk://u:hunter2@h:2181/a//b", "chroot '/a//b'"),
            ("zk://user@h:2181", "digest auth needs both user and password (zk://user:password@host)"),
            ("zk://:hunter2@h:2181", "digest auth needs both user and password"),
            ("etcd://u:hunter2@h:2379", "scheme 'etcd' is not one of zk://, zookeeper://"),
        ] {
            let e = err(url);
            assert!(e.contains(expect), "{url}: {e}");
        }
    }

    #[test]
    fn validate_checks_the_connect_string_prefix_and_timeouts() {
        for (o, expect) in [
            (ZkOptions::new(" "), "connect string is empty"),
            (ZkOptions::new("127.0.0.1:99999"), "port '99999' of host '127.0.0.1'"),
            (ZkOptions::new("h:0"), "port '0'"),
            (ZkOptions::new("h:"), "port ''"),
            (ZkOptions::new(":2181"), "host ':2181' has a port but no name"),
            (ZkOptions::new(",127.0.0.1:2181"), "a host is empty"),
            (ZkOptions::new("h1:2181,,h2:2181/app"), "a host is empty"),
            (ZkOptions::new("[::1:2181"), "bracketed IPv6"),
            (ZkOptions::new("h 1:2181"), "not a host name"),
            (ZkOptions::new("h:2181/app/../x"), "chroot"),
            (ZkOptions::new("h:2181").prefix("relative"), "absolute path"),
            (ZkOptions::new("h:2181").prefix("/a/"), "absolute path"),
            (ZkOptions::new("h:2181").session_timeout(Duration::ZERO), "positive"),
            (ZkOptions::new("h:2181").session_timeout(Duration::MAX), "session_timeout must be at most"),
        ] {
            let e = o.validate().expect_err(&o.connect);
            assert!(matches!(e, Error::InvalidConfig(_)) && !e.is_retryable(), "{e:?}");
            assert!(e.to_string().contains(expect), "{:?}: {e}", o.connect);
        }
        for ok in ["h:2181", "h", "[::1]", "[::1]:2181,10.0.0.1:2181/app", "h1:1,h2:65535/a/b/"] {
            ZkOptions::new(ok).validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let d = format!("{:?}", ZkOptions::new("h:2181").credentials("app", "hunter2"));
        assert!(!d.contains("hunter2") && d.contains("app:***"), "{d}");
    }
}
