//! The record a lock file holds, and the clocks it is read against.
//!
//! The file holds one line:
//!
//! ```text
//! distlock1 <fence> <owner hex or -> <expires, CLOCK_MONOTONIC ns> <boot id> <key>
//! ```
//!
//! - Expiry: CLOCK_MONOTONIC is one clock for every process of a boot; a record written under
//!   another boot id is expired (its holder died with that boot).
//! - Only the first line is read: a process killed between writing a record and cutting the
//!   file to length leaves the new line followed by a tail of the old one (see
//!   [`files`](crate::files)).
//! - If `/proc/sys/kernel/random/boot_id` cannot be read, the boot id is `unknown` and a
//!   record left by a holder that died with an earlier boot blocks its key until the
//!   machine's uptime passes that record's expiry; Linux always provides it.
//! - The key is written last, for people reading the directory; it is not read back.

use std::sync::OnceLock;
use std::time::Duration;

use lock_core::OwnerToken;

const MAGIC: &str = "distlock1";

/// One lock file's record: the fencing counter (kept across releases) and the grant, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) fence: u64,
    pub(crate) owner: Option<OwnerToken>,
    pub(crate) expires_ns: u64,
    pub(crate) boot: String,
}

impl Record {
    /// Whether the record holds a grant that has not expired in this boot.
    pub(crate) fn live(&self, now_ns: u64) -> bool {
        self.owner.is_some() && self.boot == boot_id() && self.expires_ns > now_ns
    }

    /// Parses the first line of `bytes` (anything after it is a torn tail and is ignored,
    /// even if it is not UTF-8).
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        let end = bytes.iter().position(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&bytes[..end]).ok()?;
        let mut it = line.splitn(6, ' ');
        if it.next()? != MAGIC {
            return None;
        }
        let fence = it.next()?.parse().ok()?;
        let owner = match it.next()? {
            "-" => None,
            hex => Some(OwnerToken::parse_hex(hex)?),
        };
        let expires_ns = it.next()?.parse().ok()?;
        let boot = it.next()?.to_owned();
        Some(Self { fence, owner, expires_ns, boot })
    }

    /// The line to write for `key`.
    pub(crate) fn render(&self, key: &str) -> String {
        let owner = self.owner.map_or_else(|| "-".to_owned(), |o| o.to_string());
        format!("{MAGIC} {} {} {} {} {}\n", self.fence, owner, self.expires_ns, self.boot, key)
    }
}

/// This boot's id (`unknown` when the kernel does not say).
pub(crate) fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty() && !s.contains(' '))
            .unwrap_or_else(|| "unknown".to_owned())
    })
}

/// Nanoseconds on CLOCK_MONOTONIC: one clock for every process of this boot.
pub(crate) fn mono_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// A duration in nanoseconds, saturating.
pub(crate) fn dur_ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_ignores_a_torn_tail() {
        let rec =
            Record { fence: 42, owner: Some(OwnerToken::from_u128(7)), expires_ns: 99, boot: "b".into() };
        let line = rec.render("jobs/a b");
        assert_eq!(Record::parse(line.as_bytes()), Some(rec.clone()));
        // A torn tail that starts inside a multi-byte character is not UTF-8; still fine.
        let mut torn = line.clone().into_bytes();
        torn.extend_from_slice(&"ü-old-key-bytes".as_bytes()[1..]);
        assert_eq!(Record::parse(&torn), Some(rec));
        assert_eq!(Record::parse(b"garbage"), None);
    }

    #[test]
    fn a_record_of_another_boot_is_not_live() {
        let now = mono_ns();
        let mut rec = Record {
            fence: 1,
            owner: Some(OwnerToken::from_u128(1)),
            expires_ns: now + 1_000_000_000,
            boot: boot_id().into(),
        };
        assert!(rec.live(now));
        rec.boot = "another-boot".into();
        assert!(!rec.live(now));
    }
}
