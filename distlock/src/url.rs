//! `scheme://[user[:password]@]host[:port][,host[:port]…][/path][?option=value&…]`, parsed
//! once, with errors that point at the part that is wrong and never echo a password.

use lock_core::{Error, Result};

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

impl std::fmt::Debug for ConnectUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn bad(url: &str, what: String) -> Error {
    Error::InvalidConfig(format!("distlock URL '{url}': {what}"))
}

fn percent_decode(s: &str) -> String {
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
        let scheme = scheme.to_ascii_lowercase();
        if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+') {
            return Err(bad(&redact(url), format!("'{scheme}' is not a scheme")));
        }
        // The userinfo ends at the last '@' (a password may hold '/', '?' or ':'; an '@' in an
        // option value must be written %40).
        let (userinfo, after) = match rest.rfind('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
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
                return Err(bad(&redact(url), format!("option '{pair}' has no value (write {pair}=…)")));
            };
            options.push((k.to_owned(), percent_decode(v)));
        }
        Ok(Self { scheme, user, password, hosts, path: path.to_owned(), options })
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut s = format!("{}://", self.scheme);
        match (&self.user, &self.password) {
            (Some(u), Some(_)) => s.push_str(&format!("{u}:***@")),
            (None, Some(_)) => s.push_str(":***@"),
            (Some(u), None) => s.push_str(&format!("{u}@")),
            (None, None) => {}
        }
        s.push_str(&self.hosts.join(","));
        s.push_str(&self.path);
        if !self.options.is_empty() {
            let q: Vec<String> = self.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push('?');
            s.push_str(&q.join("&"));
        }
        s
    }

    /// Rejects options not in `allowed`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the unknown option and the known ones.
    pub fn check_options(&self, allowed: &[&str]) -> Result<()> {
        for (k, _) in &self.options {
            if !allowed.contains(&k.as_str()) {
                return Err(bad(
                    &self.redacted(),
                    format!("unknown option '{k}' for {}:// (known: {})", self.scheme, allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// The value of option `name`, if given.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Option `name` as a duration.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when it is not a duration.
    pub fn duration(&self, name: &str) -> Result<Option<std::time::Duration>> {
        self.option(name)
            .map(|v| {
                crate::parse_duration(v).map_err(|e| bad(&self.redacted(), format!("option {name}: {e}")))
            })
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
                other => Err(bad(&self.redacted(), format!("option {name}: '{other}' is not true or false"))),
            })
            .transpose()
    }

    /// `user:password@` for rebuilding a URL for a driver (contains the password: never log it).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn userinfo(&self) -> String {
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

/// Redacts a URL that may not even parse: the one rule of [`lock_core::redact_url`].
pub use lock_core::redact_url as redact;

/// Percent-encodes a user name or password for a driver URL.
pub(crate) fn encode_userinfo(s: &str) -> String {
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
        // Passwords holding '/', '?' or '@'-free oddities never leak.
        for url in ["redis://u:p?ss@h", "etcd://u:pa/ss@h:2379", "redis://u:pw:99999@h"] {
            let e = ConnectUrl::parse(url).map(|u| u.redacted()).unwrap_or_else(|e| e.to_string());
            assert!(!e.contains("ss@") && !e.contains("pa/") && !e.contains("pw:"), "{url}: {e}");
            assert!(!redact(url).contains("ss@") && !redact(url).contains("pw:"), "{url}");
        }
        let u = ConnectUrl::parse("redis://u:p%2Fw?d@h:1").unwrap();
        assert_eq!(u.password.as_deref(), Some("p/w?d"));
        assert_eq!(u.hosts, vec!["h:1"]);
        assert_eq!(encode_userinfo("p/w?d"), "p%2Fw%3Fd");
    }
}
