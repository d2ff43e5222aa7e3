//! Holder metadata: a small record stored with every grant (who took it, from where, when, and
//! a value of the user's), which `inspect`, `holders` and `list` return and an election
//! advertises.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest user value a grant carries, in bytes.
pub const MAX_VALUE_LEN: usize = 1024;

/// The longest host or program name kept (longer ones are cut at a character boundary).
const MAX_NAME_LEN: usize = 255;

/// What a grant says about its holder.
///
/// # Behavior
/// - [`Metadata::current`] fills in this host's name, this process's id and program name, and
///   the time; [`with_value`](Self::with_value) adds a value of yours (at most
///   [`MAX_VALUE_LEN`] bytes; an election's value is this value).
/// - Backends store it beside the grant in a compact JSON form ([`encode`](Self::encode)) and
///   give it back from `inspect`, `holders` and `list`; it never decides anything about the
///   lock.
/// - It holds no secrets: do not put any in the value, since every operator tool shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metadata {
    /// The host name of the process that took the grant.
    #[serde(default)]
    pub host: String,
    /// Its process id.
    #[serde(default)]
    pub pid: u32,
    /// Its program's name.
    #[serde(default)]
    pub program: String,
    /// When the grant was asked for, in milliseconds since the Unix epoch (the holder's clock);
    /// for an election's leader, when its value was last proclaimed (a proclaim writes the
    /// metadata anew, so observers see a proclaim of the same value as a change).
    #[serde(default)]
    pub acquired_at_ms: u64,
    /// The user's value, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_NAME_LEN {
        let mut end = MAX_NAME_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Metadata {
    /// This process's metadata, as of now, with no value.
    pub fn current() -> Self {
        // Host and program are looked up once per process.
        static PROCESS: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
        let (host, program) = PROCESS.get_or_init(|| {
            let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
            let program = std::env::current_exe()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .or_else(|| std::env::args().next())
                .unwrap_or_default();
            (cut(host), cut(program))
        });
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self {
            host: host.clone(),
            pid: std::process::id(),
            program: program.clone(),
            acquired_at_ms: now.as_millis().min(u128::from(u64::MAX)) as u64,
            value: None,
        }
    }

    /// The same metadata with `value` as the user's value.
    ///
    /// # Errors
    /// [`Error::InvalidMetadata`] when the value is longer than [`MAX_VALUE_LEN`] bytes.
    pub fn with_value(mut self, value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        check_value(&value)?;
        self.value = Some(value);
        Ok(self)
    }

    /// The record of a holder that another client wrote with a value alone (an etcd Go
    /// `Election` candidate's proposal, a Curator `LeaderLatch` participant id): every other
    /// field empty, the value taken whole. [`MAX_VALUE_LEN`] bounds what distlock writes, not
    /// what it reads; bytes that are not UTF-8 read as U+FFFD.
    pub fn foreign(value: &[u8]) -> Self {
        Self {
            host: String::new(),
            pid: 0,
            program: String::new(),
            acquired_at_ms: 0,
            value: Some(String::from_utf8_lossy(value).into_owned()),
        }
    }

    /// When the grant was asked for, by the holder's clock.
    pub fn acquired_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.acquired_at_ms)
    }

    /// The compact JSON form backends store.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Reads the form [`encode`](Self::encode) writes; `None` for anything else (a foreign
    /// client's value).
    pub fn decode(s: &str) -> Option<Self> {
        let s = s.trim();
        if !s.starts_with('{') {
            return None;
        }
        serde_json::from_str(s).ok()
    }
}

/// Checks a user value's size.
///
/// # Errors
/// [`Error::InvalidMetadata`] when it is longer than [`MAX_VALUE_LEN`] bytes.
pub fn check_value(value: &str) -> Result<()> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Error::InvalidMetadata(format!(
            "the value is {} bytes long; the limit is {MAX_VALUE_LEN}",
            value.len()
        )));
    }
    Ok(())
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metadata")
            .field("host", &self.host)
            .field("pid", &self.pid)
            .field("program", &self.program)
            .field("acquired_at_ms", &self.acquired_at_ms)
            .field("value", &self.value)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bounds() {
        let m = Metadata::current().with_value("scheduler-a:8080").expect("value");
        assert!(!m.host.is_empty() && m.pid > 0);
        let back = Metadata::decode(&m.encode()).expect("decode");
        assert_eq!(back, m);
        assert_eq!(Metadata::decode("0123456789abcdef0123456789abcdef"), None);
        assert!(matches!(
            Metadata::current().with_value("x".repeat(MAX_VALUE_LEN + 1)),
            Err(Error::InvalidMetadata(_))
        ));
        assert!(m.encode().len() < 600);
        let long = "y".repeat(3 * MAX_VALUE_LEN);
        assert_eq!(Metadata::foreign(long.as_bytes()).value.as_deref(), Some(long.as_str()));
        assert_eq!(Metadata::foreign(b"a\xffb").value.as_deref(), Some("a\u{fffd}b"));
    }
}
