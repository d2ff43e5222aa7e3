//! Connection URLs, parsed once for every backend:
//! `scheme://[user[:password]@]host[:port][,host[:port]…][/path][?option=value&…]`.
//!
//! Each backend crate parses its own URL forms from a [`ConnectUrl`] (its options type
//! implements [`BackendOptions`] and `FromStr`); the pieces they share live here: the
//! userinfo, the host list (bracketed IPv6 included), percent-decoding, durations, flags,
//! TLS files, unknown-option errors and redaction. Errors point at the part that is wrong and
//! never echo a password.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::LockBackend;
use crate::error::{Error, Result};
use crate::tls::TlsOptions;

pub use crate::duration::parse_duration;

/// Options every URL takes, whatever its backend: they configure the client
/// ([`LockClient::with_namespace`](crate::LockClient::with_namespace),
/// [`LockClient::with_default_ttl`](crate::LockClient::with_default_ttl)), not the backend, and
/// backend parsers accept and ignore them.
pub const CLIENT_OPTIONS: &[&str] = &["namespace", "ttl"];

/// A parsed connection URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectUrl {
    /// The scheme, lower-cased (`redis`, `file`, `mem`, …).
    pub scheme: String,
    /// The user, if any.
    pub user: Option<String>,
    /// The password, if any. Never printed.
    pub password: Option<String>,
    /// The comma-separated hosts (with ports), possibly empty.
    pub hosts: Vec<String>,
    /// The path after the hosts, with its leading `/` (possibly empty).
    pub path: String,
    /// The `?` options, in order.
    pub options: Vec<(String, String)>,
}

/// A backend's options type, as the facade's `connect(url)` table uses it: parsed from the
/// backend's URL forms, validated, and connected.
///
/// Each backend crate implements it for its options type (and `FromStr` through [`parse`]),
/// so that a URL is understood by the crate that owns the backend and adding a backend to the
/// facade is one line.
#[async_trait::async_trait]
pub trait BackendOptions: Sized + Send + 'static {
    /// Builds the options from a parsed URL.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the part of the URL that is wrong (a scheme this type
    /// does not parse, an unknown option, a malformed value).
    fn from_url(url: &ConnectUrl) -> Result<Self>;

    /// Checks the options without connecting.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the option that is wrong.
    fn validate(&self) -> Result<()>;

    /// Connects the backend these options describe.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for invalid options; the backend's own errors (an unreachable
    /// server is a retryable connection error).
    async fn connect_dyn(self) -> Result<Arc<dyn LockBackend>>;
}

/// Parses `url` into a backend's options: what each options type's `FromStr` calls.
///
/// # Errors
/// [`Error::InvalidConfig`] for a malformed URL or one the options type refuses.
pub fn parse<T: BackendOptions>(url: &str) -> Result<T> {
    T::from_url(&ConnectUrl::parse(url)?)
}

impl std::fmt::Debug for ConnectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn bad(url: &str, what: String) -> Error {
    Error::InvalidConfig(format!("distlock URL '{url}': {what}"))
}

/// Decodes `%XX` escapes (an escape that is not two hex digits stays as written).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) =
                std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ConnectUrl {
    /// Parses `url`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the part that is wrong (the password is shown as `***`).
    pub fn parse(url: &str) -> Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad(
                &redact(url),
                "expected scheme://… (for example redis://127.0.0.1:6379, file:///var/lib/distlock, mem://)"
                    .into(),
            ));
        };
        if !is_scheme(scheme) {
            return Err(bad(
                &redact(url),
                "the text before :// is not a scheme (letters, digits and '+', for example redis)".into(),
            ));
        }
        let scheme = scheme.to_ascii_lowercase();
        // The userinfo ends at the last '@' (a password may hold '/', ':' or a '?' with no
        // '=' after it; an '@' in an option value must be written %40, a password's
        // '?…=' as %3F).
        let (userinfo, after) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        // A "userinfo" that holds a query (`h:6379?prefix=team@eu`) is an option's '@' taken
        // for the end of a password: the host would be what follows it, and the host and
        // options before it sent as credentials.
        if userinfo.is_some_and(|ui| ui.split_once('?').is_some_and(|(_, q)| q.contains('='))) {
            return Err(bad(
                &redact(url),
                "an '@' after the '?' of the options: write an '@' in an option's value as %40 \
                 (and a '?' in a password as %3F)"
                    .into(),
            ));
        }
        let (before_query, query) = match after.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (after, None),
        };
        let (hostlist, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| percent_decode(u)), Some(percent_decode(p))),
                None => ((!ui.is_empty()).then(|| percent_decode(ui)), None),
            },
        };
        let mut hosts = Vec::new();
        for h in hostlist.split(',').filter(|h| !h.is_empty()) {
            // An IPv6 address is bracketed (`[::1]` or `[::1]:2379`): only a colon after the
            // closing bracket starts a port.
            let port_part = match h.strip_prefix('[') {
                Some(rest) => match rest.split_once(']') {
                    Some((addr, after))
                        if !addr.is_empty() && (after.is_empty() || after.starts_with(':')) =>
                    {
                        after.strip_prefix(':').map(|p| (&h[..addr.len() + 2], p))
                    }
                    _ => {
                        return Err(bad(
                            &redact(url),
                            format!("host '{h}' is not a bracketed IPv6 address ([::1] or [::1]:PORT)"),
                        ))
                    }
                },
                None => h.rsplit_once(':'),
            };
            if let Some((name, port)) = port_part {
                if name.is_empty() {
                    return Err(bad(&redact(url), format!("host '{h}' has a port but no name")));
                }
                match port.parse::<u16>() {
                    Ok(p) if p > 0 => {}
                    _ => {
                        return Err(bad(
                            &redact(url),
                            format!("port '{port}' of host '{name}' is not a number from 1 to 65535"),
                        ))
                    }
                }
            }
            hosts.push(h.to_owned());
        }
        let mut options = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                let shown = redact_pair(pair);
                return Err(bad(&redact(url), format!("option '{shown}' has no value (write {shown}=…)")));
            };
            options.push((k.to_owned(), percent_decode(v)));
        }
        Ok(Self { scheme, user, password, hosts, path: percent_decode(path), options })
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut s = format!("{}://", self.scheme);
        match (&self.user, &self.password) {
            (Some(u), Some(_)) => s.push_str(&format!("{u}:***@")),
            (None, Some(_)) => s.push_str(":***@"),
            // A user alone may be a token.
            (Some(_), None) => s.push_str("***@"),
            (None, None) => {}
        }
        s.push_str(&self.hosts.join(","));
        s.push_str(&self.path);
        if !self.options.is_empty() {
            // An option value may be a URL with credentials of its own (an endpoint).
            let q: Vec<String> =
                self.options.iter().map(|(k, v)| format!("{k}={}", redact_option(k, v))).collect();
            s.push('?');
            s.push_str(&q.join("&"));
        }
        s
    }

    /// An [`Error::InvalidConfig`] about this URL: `distlock URL '<redacted>': <what>`.
    pub fn error(&self, what: impl std::fmt::Display) -> Error {
        bad(&self.redacted(), what.to_string())
    }

    /// Rejects a scheme not in `schemes` (a backend's parser called with another's URL).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the schemes this parser takes.
    pub fn expect_scheme(&self, schemes: &[&str]) -> Result<()> {
        if schemes.contains(&self.scheme.as_str()) {
            return Ok(());
        }
        Err(self.error(format!(
            "scheme '{}' is not one of {}",
            self.scheme,
            schemes.iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(", ")
        )))
    }

    /// Rejects options not in `allowed` (the [`CLIENT_OPTIONS`] are always allowed).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the unknown option and the known ones.
    pub fn check_options(&self, allowed: &[&str]) -> Result<()> {
        for (k, _) in &self.options {
            if !allowed.contains(&k.as_str()) && !CLIENT_OPTIONS.contains(&k.as_str()) {
                let known: Vec<&str> = allowed.iter().chain(CLIENT_OPTIONS).copied().collect();
                return Err(self.error(format!(
                    "unknown option '{k}' for {}:// (known: {})",
                    self.scheme,
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The hosts, refusing fewer than `min`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] saying how many hosts the scheme needs.
    pub fn hosts_at_least(&self, min: usize, what: &str) -> Result<&[String]> {
        if self.hosts.len() < min {
            return Err(self.error(format!(
                "{}:// needs at least {min} {what}, comma-separated (got {})",
                self.scheme,
                self.hosts.len()
            )));
        }
        Ok(&self.hosts)
    }

    /// The one host, refusing none or several.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming what the host stands for; `several` says what to use
    /// instead of a host list.
    pub fn single_host(&self, what: &str, several: &str) -> Result<&str> {
        match self.hosts.as_slice() {
            [h] if !h.is_empty() => Ok(h),
            [] => Err(self.error(format!("{}:// needs {what}", self.scheme))),
            _ => Err(self.error(format!("{}:// takes one {what}{several}", self.scheme))),
        }
    }

    /// Refuses a path (beyond a lone `/`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the path; `hint` says what to use instead.
    pub fn no_path(&self, hint: &str) -> Result<()> {
        if self.path.is_empty() || self.path == "/" {
            return Ok(());
        }
        Err(self.error(format!("{}:// takes no path (got '{}'{hint})", self.scheme, self.path)))
    }

    /// Refuses credentials in the URL.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`]; `hint` says where the credentials come from instead.
    pub fn no_credentials(&self, hint: &str) -> Result<()> {
        if self.user.is_none() && self.password.is_none() {
            return Ok(());
        }
        Err(self.error(format!("{}:// takes no credentials in the URL{hint}", self.scheme)))
    }

    /// The user and password, both required when either is given.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when only one of the two is given.
    pub fn user_and_password(&self) -> Result<Option<(&str, &str)>> {
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => Ok(Some((u, p))),
            (None, None) => Ok(None),
            _ => Err(self.error(format!(
                "{}:// auth needs both a user and a password ({}://user:password@host)",
                self.scheme, self.scheme
            ))),
        }
    }

    /// TLS from the URL's `tls=`, `ca_file=`, `cert_file=` and `key_file=` options: `None` when
    /// none of them asks for TLS; `tls=true` alone trusts the system's roots; a CA file or a
    /// client certificate implies TLS.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a file that cannot be read, a certificate without its key
    /// (or the reverse), or `tls=false` beside TLS files.
    pub fn tls(&self) -> Result<Option<TlsOptions>> {
        let flag = self.flag("tls")?;
        let (ca, cert, key) = (self.option("ca_file"), self.option("cert_file"), self.option("key_file"));
        let files = ca.is_some() || cert.is_some() || key.is_some();
        if flag == Some(false) && files {
            return Err(self.error("tls=false contradicts ca_file=, cert_file= or key_file="));
        }
        if !(flag.unwrap_or(false) || files) {
            return Ok(None);
        }
        let mut tls = TlsOptions::new();
        if let Some(ca) = ca {
            tls = tls.ca_file(ca)?;
        }
        match (cert, key) {
            (Some(c), Some(k)) => tls = tls.identity_files(c, k)?,
            (None, None) => {}
            _ => {
                return Err(
                    self.error("cert_file= and key_file= go together (a client certificate and its key)")
                )
            }
        }
        Ok(Some(tls))
    }

    /// Option `name` as a whole number in `range`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when it is not a number or out of range.
    pub fn number(&self, name: &str, range: std::ops::RangeInclusive<u64>) -> Result<Option<u64>> {
        self.option(name)
            .map(|v| match v.parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(self.error(format!(
                    "option {name}: '{v}' is not a whole number from {} to {}",
                    range.start(),
                    range.end()
                ))),
            })
            .transpose()
    }

    /// The value of option `name`, if given.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Option `name` as a duration.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when it is not a duration.
    pub fn duration(&self, name: &str) -> Result<Option<Duration>> {
        self.option(name)
            .map(|v| parse_duration(v).map_err(|e| self.error(format!("option {name}: {e}"))))
            .transpose()
    }

    /// Option `name` as a boolean (`true`/`false`/`1`/`0`/`yes`/`no`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when it is none of these.
    pub fn flag(&self, name: &str) -> Result<Option<bool>> {
        self.option(name)
            .map(|v| match v {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                other => Err(self.error(format!("option {name}: '{other}' is not true or false"))),
            })
            .transpose()
    }

    /// `user:password@`, percent-encoded, for rebuilding a URL for a client crate (it holds
    /// the password: never log it).
    pub fn userinfo(&self) -> String {
        let (u, p) =
            (self.user.as_deref().map(encode_userinfo), self.password.as_deref().map(encode_userinfo));
        match (u, p) {
            (Some(u), Some(p)) => format!("{u}:{p}@"),
            (None, Some(p)) => format!(":{p}@"),
            (Some(u), None) => format!("{u}@"),
            (None, None) => String::new(),
        }
    }
}

/// A connection URL fit for errors and logs: everything after the first `:` of the text
/// between `://` and the **last** `@` is shown as `***`.
///
/// Taking the last `@` means a password holding `/`, `?`, `#` or `:` is still hidden, and a
/// URL that does not even parse is redacted the same way. Every backend and the facade use
/// this one rule.
pub fn redact_url(url: &str) -> String {
    let scheme_end = url.find("://").filter(|&i| is_scheme(&url[..i]));
    let Some(start) = scheme_end.map(|i| i + 3) else {
        // No `scheme://` (a typo such as `redis:u:pw@h`, or `://` only in an option's value):
        // everything between the first `:` and the last `@` may be a password.
        return match (url.find(':'), url.rfind('@')) {
            (Some(colon), Some(at)) if colon < at => format!("{}:***{}", &url[..colon], &url[at..]),
            (None, Some(at)) => format!("***{}", &url[at..]),
            _ => url.to_owned(),
        };
    };
    let rest = &url[start..];
    match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            // A user alone may be a token (`https://TOKEN@proxy`), or a query swallowed by
            // an `@` in it (`redis://h?password=x&y=a@b`): hidden too.
            let shown = match userinfo.split_once(':') {
                Some((user, _)) if !user.contains(['?', '&', '=']) => format!("{user}:***"),
                _ => "***".to_owned(),
            };
            format!("{}{}{}", &url[..start], shown, &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// What an error shows of a URL given as text: the password and the values of options whose
/// name says they may be secret (`password`, `secret_key`, `token`…) as `***`.
fn redact(url: &str) -> String {
    let r = redact_url(url);
    let from = r.rfind('@').map_or(0, |i| i + 1);
    let Some(q) = r[from..].find('?').map(|i| from + i) else { return r };
    let pairs: Vec<String> = r[q + 1..].split('&').map(redact_pair).collect();
    format!("{}?{}", &r[..q], pairs.join("&"))
}

/// One `name=value` option as errors show it; an option written without `=` (`password:x`)
/// is hidden whole when its text says it may be a secret.
fn redact_pair(pair: &str) -> String {
    match pair.split_once('=') {
        Some((k, v)) => format!("{k}={}", redact_option(k, v)),
        None if secret_name(pair) => "***".to_owned(),
        None => pair.to_owned(),
    }
}

/// Whether an option's name says its value may be a secret.
fn secret_name(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["pass", "pwd", "pw", "secret", "token", "key", "cred", "auth", "sig", "digest", "jwt", "bearer", "login"]
        .iter()
        .any(|s| k.contains(s))
}

/// Whether `s` is a URL scheme as [`ConnectUrl::parse`] takes it: letters, digits and `+`.
fn is_scheme(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+')
}

/// An option's value as errors and logs show it: `***` when the option's name says it may be
/// a secret, else with any credentials of a URL in it hidden.
fn redact_option(key: &str, value: &str) -> String {
    if secret_name(key) {
        "***".to_owned()
    } else {
        // Decoded first: a URL in an option's value writes its `@` as `%40`.
        redact_url(&percent_decode(value))
    }
}

/// Percent-encodes a user name or password for a client crate's URL.
pub fn encode_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bracketed_ipv6_hosts_take_an_optional_port() {
        let u = ConnectUrl::parse("etcd://[::1],[::1]:2379,h:1").unwrap();
        assert_eq!(u.hosts, vec!["[::1]", "[::1]:2379", "h:1"]);
        let e = ConnectUrl::parse("etcd://[::1]:0").unwrap_err().to_string();
        assert!(e.contains("port '0' of host '[::1]'"), "{e}");
        let e = ConnectUrl::parse("etcd://[::1").unwrap_err().to_string();
        assert!(e.contains("bracketed IPv6"), "{e}");
        let e = ConnectUrl::parse("etcd://[::1]x").unwrap_err().to_string();
        assert!(e.contains("bracketed IPv6"), "{e}");
    }

    #[test]
    fn parses_every_form() {
        let u =
            ConnectUrl::parse("redlock://app:s3cret@h1:6379,h2,h3:7000/2?prefix=x&timeout=200ms").unwrap();
        assert_eq!(u.scheme, "redlock");
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.hosts, vec!["h1:6379", "h2", "h3:7000"]);
        assert_eq!(u.path, "/2");
        assert_eq!(u.option("prefix"), Some("x"));
        assert_eq!(u.redacted(), "redlock://app:***@h1:6379,h2,h3:7000/2?prefix=x&timeout=200ms");
        assert!(!format!("{u:?}").contains("s3cret"));
        let f = ConnectUrl::parse("file:///var/lib/distlock").unwrap();
        assert!(f.hosts.is_empty());
        assert_eq!(f.path, "/var/lib/distlock");
        assert_eq!(ConnectUrl::parse("mem://").unwrap().hosts.len(), 0);
    }

    #[test]
    fn secret_looking_option_values_never_show() {
        let u = ConnectUrl::parse("redis://h?password=s3cret&secret_key=k3y&namespace=app").unwrap();
        assert_eq!(u.redacted(), "redis://h?password=***&secret_key=***&namespace=app");
        assert!(!format!("{u:?}").contains("s3cret"));
        let e = u.check_options(&["namespace"]).unwrap_err().to_string();
        assert!(
            e.contains("unknown option 'password'") && !e.contains("s3cret") && !e.contains("k3y"),
            "{e}"
        );
        let e = ConnectUrl::parse("redis://h:0?token=t0ken").unwrap_err().to_string();
        assert!(e.contains("port '0'") && !e.contains("t0ken"), "{e}");
        let e = ConnectUrl::parse("redis://u:pw@h:0?endpoint=http://a:b%40c&auth=x").unwrap_err().to_string();
        assert!(!e.contains("pw") && !e.contains("auth=x"), "{e}");
    }

    /// Secrets the redaction missed: an endpoint's password before its `%40` (as the README
    /// says to write it), a ZooKeeper `digest=`, a user alone (a token), and a query whose
    /// `@` made the parser take it for a user.
    #[test]
    fn secrets_in_encoded_endpoints_digests_and_lone_users_never_show() {
        let e =
            ConnectUrl::parse("dynamodb://locks?endpoint=http://key:s3cret%40localhost:8000&create_table")
                .unwrap_err()
                .to_string();
        assert!(!e.contains("s3cret"), "{e}");
        let u = ConnectUrl::parse("zk://h:2181?digest=app:s3cret").unwrap();
        assert!(!u.redacted().contains("s3cret"), "{}", u.redacted());
        let u = ConnectUrl::parse("https://T0KEN@proxy").unwrap();
        assert!(!u.redacted().contains("T0KEN") && !format!("{u:?}").contains("T0KEN"), "{u:?}");
        assert!(!redact_url("https://T0KEN@proxy:8000").contains("T0KEN"));
        let e = ConnectUrl::parse("redis://localhost?password=s3cret&prefix=a@b:0").unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn the_path_is_percent_decoded() {
        assert_eq!(ConnectUrl::parse("file:///srv/my%20locks").unwrap().path, "/srv/my locks");
        assert_eq!(ConnectUrl::parse("file:///srv/my locks").unwrap().path, "/srv/my locks");
    }

    #[test]
    fn errors_point_at_the_part_and_hide_passwords() {
        let e = ConnectUrl::parse("redis://u:pw123@host:99999").unwrap_err().to_string();
        assert!(e.contains("port '99999'") && !e.contains("pw123"), "{e}");
        let e = ConnectUrl::parse("localhost:6379").unwrap_err().to_string();
        assert!(e.contains("scheme://"), "{e}");
        let e = ConnectUrl::parse("redis://h?timeout").unwrap_err().to_string();
        assert!(e.contains("option 'timeout' has no value"), "{e}");
        let u = ConnectUrl::parse("redis://:pw@h?bogus=1").unwrap();
        let e = u.check_options(&["prefix"]).unwrap_err().to_string();
        assert!(e.contains("unknown option 'bogus'") && !e.contains("pw@"), "{e}");
        assert_eq!(redact("weird://a:b@c/d"), "weird://a:***@c/d");
        // A URL without `scheme://` (a typo), or with `://` only in an option's value, or a
        // secret option written without `=`: the password is not echoed either.
        for url in [
            "redis:/app:s3cret@h:6379",
            "redis:app:s3cret@h",
            "redis:u:s3cret@h?endpoint=http://x",
            "redis://h?password:s3cret",
            "app:s3cret@h",
        ] {
            let e = ConnectUrl::parse(url).unwrap_err().to_string();
            assert!(!e.contains("s3cret"), "{url}: {e}");
            assert!(!redact(url).contains("s3cret"), "{url}: {}", redact(url));
        }
        assert_eq!(redact_url("redis:app:s3cret@h"), "redis:***@h");
        // Passwords holding '/', '?' or '@'-free oddities never leak.
        for url in ["redis://u:p?ss@h", "etcd://u:pa/ss@h:2379", "redis://u:pw:99999@h"] {
            let e = ConnectUrl::parse(url).map(|u| u.redacted()).unwrap_or_else(|e| e.to_string());
            assert!(!e.contains("ss@") && !e.contains("pa/") && !e.contains("pw:"), "{url}: {e}");
            assert!(!redact(url).contains("ss@") && !redact(url).contains("pw:"), "{url}");
        }
        let u = ConnectUrl::parse("dynamodb://t?endpoint=http://key:s3cret%40h:1&bogus=1").unwrap();
        let e = u.check_options(&["endpoint"]).unwrap_err().to_string();
        assert!(e.contains("unknown option 'bogus'") && !e.contains("s3cret"), "{e}");
        let u = ConnectUrl::parse("redis://u:p%2Fw?d@h:1").unwrap();
        assert_eq!(u.password.as_deref(), Some("p/w?d"));
        assert_eq!(u.hosts, vec!["h:1"]);
        assert_eq!(encode_userinfo("p/w?d"), "p%2Fw%3Fd");
        // An '@' in an option's value, unencoded: refused (it read as credentials
        // `cache:6379?prefix=team` for the host `eu`).
        let e = ConnectUrl::parse("redis://cache:6379?prefix=team@eu").unwrap_err().to_string();
        assert!(e.contains("%40"), "{e}");
        let u = ConnectUrl::parse("redis://cache:6379?prefix=team%40eu").unwrap();
        assert_eq!(u.hosts, vec!["cache:6379"]);
    }

    #[test]
    fn passwords_never_show_whatever_they_hold() {
        assert_eq!(redact_url("redis://app:s3cret@h:6379/2"), "redis://app:***@h:6379/2");
        assert_eq!(redact_url("redis://:pw@h/0"), "redis://:***@h/0");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact_url("no scheme"), "no scheme");
        for url in ["redis://u:pa/ss@h", "etcd://u:p?ss@h:2379", "redis://u:pw:99999@h", "x://u:p#w@h"] {
            let shown = redact_url(url);
            assert!(
                !shown.contains("ss@") && !shown.contains("pw:") && !shown.contains("p#w"),
                "{url}: {shown}"
            );
        }
    }
}
