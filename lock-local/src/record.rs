//! The record a lock file holds, how it is written and read back (also when torn or
//! damaged), and the clocks it is read against.
//!
//! # The format
//!
//! Three lines, always written together by one `pwrite` at offset 0:
//!
//! ```text
//! distlock1 <fence> <owner> <expires> <boot id> c=<checksum>
//! distlock1 <fence> <owner> <expires> <boot id> c=<checksum>
//! key <key>
//! ```
//!
//! - Every field has a fixed width: the fence and the expiry (CLOCK_MONOTONIC ns) as 20
//!   zero-padded digits, the owner token as 32 hex digits (zeros when nobody holds it), the boot
//!   id as 36 characters (padded with `-`), the checksum as 16 hex digits (the first 8 bytes of
//!   SHA-256 over the line up to the space before `c=`). A record line is always
//!   [`LINE_LEN`] bytes, and a file always the same length for its key: records are written in
//!   place and a file is **never shortened**, so no crash can leave a file cut to a new length
//!   before its new bytes.
//! - The record is written twice, so a write torn by a power loss (part new, part old bytes)
//!   or a damaged byte leaves at least one copy whose checksum holds.
//! - The key line is for people reading the directory; it is not read back.
//!
//! # Reading it back ([`decode`])
//!
//! 1. Of the copies whose checksum holds, the one with the highest fence (then the latest
//!    expiry) is the record. Either copy is a state the file was in; the higher fence is never
//!    below a token handed out (grants are flushed before they are returned, with `sync`).
//! 2. Otherwise, a first line in the previous format (`distlock1 <fence> <owner or -> <expires>
//!    <boot id> <key>`, variable width, the fence written without leading zeros) is read as it
//!    was: files from earlier releases keep working and are rewritten in the new format by their
//!    next write. Anything after that line (the torn tail an interrupted write of that format
//!    could leave) is ignored, as before.
//! 3. Otherwise, a file that ends inside its first line (cut short) but still holds that
//!    line's whole fence field is recovered with that fence: bytes that are there were
//!    written, and the file is overwritten in place, so the field holds the last fence written.
//!    Its grant, if any, is dropped: only a crash of the machine (a new boot, so the grant is
//!    dead anyway) or damage from outside cuts a file short.
//! 4. Anything else (an empty file, both copies damaged) cannot be trusted to give a counter
//!    that is not lower than one handed out: the key is refused with an error that names the
//!    file, never reset. A lock file is never empty: it is created with its first record (a
//!    temporary file linked into place).
//!
//! # Clocks
//!
//! - Expiry: CLOCK_MONOTONIC is one clock for every process of a boot; a record written under
//!   another boot id is expired (its holder died with that boot).
//! - If `/proc/sys/kernel/random/boot_id` cannot be read, the boot id is `unknown` and a
//!   record left by a holder that died with an earlier boot blocks its key until the
//!   machine's uptime passes that record's expiry; Linux always provides it.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use lock_core::{OwnerToken, Result};
use sha2::{Digest, Sha256};

use crate::error::{damaged, other};
use crate::files::{Op, OpResult};

const MAGIC: &str = "distlock1";
/// The length of one record line, newline included.
pub(crate) const LINE_LEN: usize = 141;
/// Where the checksum field starts (`c=`): the checksum covers the bytes before it.
const SUM_AT: usize = 122;
pub(crate) const BOOT_WIDTH: usize = 36;
/// Where the fence field ends in a line of the current format.
const FENCE_END: usize = 30;

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
        self.owner.is_some() && same_boot(&self.boot) && self.expires_ns > now_ns
    }

    /// The file's bytes for `key`: the record line twice, then the key line.
    pub(crate) fn render(&self, key: &str) -> Vec<u8> {
        twice_then_key(&self.line(), key)
    }

    /// One record line, [`LINE_LEN`] bytes.
    fn line(&self) -> String {
        let owner = self.owner.map_or_else(|| "0".repeat(32), |o| o.to_string());
        let mut boot = self.boot.clone();
        if boot.len() > BOOT_WIDTH || boot.contains([' ', '\n']) {
            boot = UNKNOWN_BOOT.to_owned();
        }
        let head =
            format!("{MAGIC} {:020} {owner} {:020} {boot:-<BOOT_WIDTH$} ", self.fence, self.expires_ns);
        format!("{head}c={}\n", checksum(head.as_bytes()))
    }

    /// A line of the current format whose checksum holds.
    fn parse_line(line: &[u8]) -> Option<Self> {
        if line.len() != LINE_LEN || line[LINE_LEN - 1] != b'\n' || &line[SUM_AT..SUM_AT + 2] != b"c=" {
            return None;
        }
        if line[SUM_AT + 2..LINE_LEN - 1] != *checksum(&line[..SUM_AT]).as_bytes() {
            return None;
        }
        let text = std::str::from_utf8(&line[..SUM_AT - 1]).ok()?;
        let mut it = text.split(' ');
        if it.next()? != MAGIC {
            return None;
        }
        let fence = it.next()?.parse().ok()?;
        let owner = match it.next()? {
            zeros if zeros.bytes().all(|b| b == b'0') => None,
            hex => Some(OwnerToken::parse_hex(hex)?),
        };
        let expires_ns = it.next()?.parse().ok()?;
        let boot = it.next()?.trim_end_matches('-').to_owned();
        Some(Self { fence, owner, expires_ns, boot })
    }

    /// A first line of the previous format (`distlock1 <fence> <owner or -> <expires> <boot>
    /// <key>`, the fence without leading zeros), up to its newline.
    fn parse_previous(bytes: &[u8]) -> Option<Self> {
        let end = bytes.iter().position(|&b| b == b'\n')?;
        let line = std::str::from_utf8(&bytes[..end]).ok()?;
        let mut it = line.splitn(6, ' ');
        if it.next()? != MAGIC {
            return None;
        }
        let fence_text = it.next()?;
        let fence: u64 = fence_text.parse().ok()?;
        if fence_text != fence.to_string() {
            return None; // zero-padded: a damaged line of the current format
        }
        let owner = match it.next()? {
            "-" => None,
            hex => Some(OwnerToken::parse_hex(hex)?),
        };
        let expires_ns = it.next()?.parse().ok()?;
        let boot = it.next()?.to_owned();
        Some(Self { fence, owner, expires_ns, boot })
    }

    /// The fence of a file cut short inside its first line, if that line's whole fence field
    /// is there: 20 digits (current format), or digits followed by a space (either format).
    fn fence_of_cut_line(bytes: &[u8]) -> Option<u64> {
        if bytes.contains(&b'\n') {
            return None; // the first line is whole: not cut short
        }
        let rest = bytes.strip_prefix(format!("{MAGIC} ").as_bytes())?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let whole = digits == FENCE_END - MAGIC.len() - 1 || rest.get(digits) == Some(&b' ');
        if digits == 0 || !whole {
            return None;
        }
        std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
    }
}

/// The first 8 bytes of SHA-256 over `bytes`, in hex.
pub(crate) fn checksum(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Reads a lock file's bytes back into its record (see the module docs for the rules).
///
/// # Errors
/// Why nothing in the file can be trusted; the caller names the file.
pub(crate) fn decode(bytes: &[u8]) -> Result<Record, &'static str> {
    if bytes.is_empty() {
        return Err("it is empty");
    }
    let copies = [bytes.get(..LINE_LEN), bytes.get(LINE_LEN..2 * LINE_LEN)];
    let valid = copies.into_iter().flatten().filter_map(Record::parse_line);
    if let Some(best) = valid.max_by_key(|r| (r.fence, r.expires_ns)) {
        return Ok(best);
    }
    if let Some(previous) = Record::parse_previous(bytes) {
        return Ok(previous);
    }
    match Record::fence_of_cut_line(bytes) {
        Some(fence) => Ok(Record { fence, ..Record::default() }),
        None => Err("no copy of its record is intact"),
    }
}

/// One operation on a lock file's bytes, at `now` (CLOCK_MONOTONIC ns): what it found and
/// did, and the bytes to write back (`None` when nothing changed). The bytes are written in
/// place, the same length for a key every time: never shortened.
///
/// # Errors
/// A damaged record (naming `path`), or an exhausted fencing counter.
pub(crate) fn apply(
    path: &Path,
    bytes: &[u8],
    key: &str,
    op: &Op,
    now: u64,
) -> Result<(OpResult, Option<Vec<u8>>)> {
    let mut rec = decode(bytes).map_err(|why| damaged(path, why))?;
    let live = rec.live(now);
    let (result, dirty) = match *op {
        Op::Acquire { .. } if live => {
            (OpResult::Held(Some(Duration::from_nanos(rec.expires_ns - now))), false)
        }
        Op::Acquire { owner, ttl, .. } => {
            rec.fence = rec.fence.checked_add(1).ok_or_else(|| other("fencing counter exhausted"))?;
            rec.owner = Some(owner);
            rec.expires_ns = now.saturating_add(dur_ns(ttl));
            rec.boot = boot_id().to_owned();
            (OpResult::Acquired(rec.fence), true)
        }
        Op::Extend { owner, ttl, .. } if live && rec.owner == Some(owner) => {
            rec.expires_ns = now.saturating_add(dur_ns(ttl));
            (OpResult::Extended, true)
        }
        Op::Release { owner, .. } if rec.owner == Some(owner) => {
            rec.owner = None;
            rec.expires_ns = 0;
            (if live { OpResult::Released } else { OpResult::NotHeld }, true)
        }
        Op::SetMeta { owner, .. } if live && rec.owner == Some(owner) => (OpResult::Extended, false),
        Op::Raise { at_least, .. } => {
            let raised = at_least > rec.fence;
            rec.fence = rec.fence.max(at_least);
            (OpResult::Raised(rec.fence), raised)
        }
        Op::Extend { .. } | Op::Release { .. } | Op::SetMeta { .. } => (OpResult::NotHeld, false),
    };
    Ok((result, dirty.then(|| rec.render(key))))
}

/// The boot id of a process that cannot read its own.
pub(crate) const UNKNOWN_BOOT: &str = "unknown";

/// This boot's id ([`UNKNOWN_BOOT`] when the kernel does not say; a failed read is tried
/// again next time, never kept).
pub(crate) fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    if let Some(b) = BOOT.get() {
        return b;
    }
    let read = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= BOOT_WIDTH && !s.contains(' ') && !s.ends_with('-'));
    match read {
        Some(b) => BOOT.get_or_init(|| b),
        None => UNKNOWN_BOOT,
    }
}

/// Whether a grant written under boot id `other` may still be live in this boot: the same
/// boot, or either id unknown (a process that cannot read its boot id, as under a systemd
/// unit with `ProcSubset=pid` or in a chroot without `/proc`, shares files with others that
/// can). Only two known ids that differ say the grant died with its boot; an unknown one is
/// judged by its expiry, which may keep a grant of an earlier boot until it passes, but
/// never lets two holders in.
pub(crate) fn same_boot(other: &str) -> bool {
    same_boot_as(boot_id(), other)
}

/// [`same_boot`] for a process whose boot id is `ours`.
pub(crate) fn same_boot_as(ours: &str, other: &str) -> bool {
    ours == other || ours == UNKNOWN_BOOT || other == UNKNOWN_BOOT
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

/// A record file's bytes: `copy` twice (a torn write spoils at most one), then the key line.
pub(crate) fn twice_then_key(copy: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 * copy.len() + key.len() + 5);
    out.extend_from_slice(copy.as_bytes());
    out.extend_from_slice(copy.as_bytes());
    out.extend_from_slice(format!("key {key}\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grant written by a process that could not read its boot id is live by its expiry
    /// to every process of the machine, not taken as one of an earlier boot.
    #[test]
    fn a_grant_of_an_unknown_boot_is_judged_by_its_expiry() {
        let rec = Record { boot: UNKNOWN_BOOT.into(), expires_ns: 1_000, ..sample() };
        assert!(rec.live(999), "a live grant of a process without a boot id was taken for dead");
        assert!(!rec.live(1_000));
        let other = Record { boot: "another-boot".into(), expires_ns: 1_000, ..sample() };
        assert!(!other.live(999), "a grant of another boot is dead");
    }

    fn sample() -> Record {
        Record { fence: 42, owner: Some(OwnerToken::from_u128(7)), expires_ns: 99, boot: boot_id().into() }
    }

    #[test]
    fn records_round_trip_at_a_fixed_width() {
        for rec in [sample(), Record::default(), Record { fence: u64::MAX, expires_ns: u64::MAX, ..sample() }]
        {
            let bytes = rec.render("jobs/a b");
            assert_eq!(bytes.len(), 2 * LINE_LEN + "key jobs/a b\n".len());
            assert_eq!(decode(&bytes), Ok(rec));
        }
    }

    #[test]
    fn the_previous_format_is_read_with_its_torn_tail() {
        let line = format!("distlock1 42 {} 99 {} jobs/a b\n", OwnerToken::from_u128(7), boot_id());
        let mut torn = line.into_bytes();
        // A torn tail that starts inside a multi-byte character is not UTF-8; still fine.
        torn.extend_from_slice(&"ü-old-key-bytes".as_bytes()[1..]);
        assert_eq!(decode(&torn), Ok(sample()));
        let free = format!("distlock1 5 - 0 {} k\n", boot_id());
        assert_eq!(decode(free.as_bytes()).map(|r| (r.fence, r.owner)), Ok((5, None)));
    }

    #[test]
    fn damaged_copies_fall_back_to_the_other_and_never_to_a_lower_fence() {
        let bytes = sample().render("k");
        let mut one = bytes.clone();
        one[12] = b'9'; // a digit of the first copy's fence: its checksum no longer holds
        assert_eq!(decode(&one), Ok(sample()));
        let mut both = one.clone();
        both[LINE_LEN + 12] = b'9';
        assert!(decode(&both).is_err(), "two damaged copies must not be guessed from");
        assert!(decode(b"").is_err());
        assert!(decode(b"garbage").is_err());
    }

    #[test]
    fn a_file_cut_inside_its_first_line_keeps_a_whole_fence_field() {
        let bytes = sample().render("k");
        assert_eq!(decode(&bytes[..FENCE_END]).map(|r| r.fence), Ok(42));
        assert!(decode(&bytes[..FENCE_END - 1]).is_err());
        assert_eq!(decode(b"distlock1 42 ").map(|r| r.fence), Ok(42));
        assert!(decode(b"distlock1 42").is_err(), "the field may have gone on");
    }

    /// The parser of the previous release (its steps, verbatim) on a line of this format: a
    /// process not yet upgraded reads the same fence, owner, expiry and boot id.
    #[test]
    fn the_previous_release_reads_the_first_line() {
        let rec = sample();
        let bytes = rec.render("k");
        let line = std::str::from_utf8(&bytes[..LINE_LEN - 1]).expect("utf-8");
        let mut it = line.splitn(6, ' ');
        assert_eq!(it.next(), Some(MAGIC));
        assert_eq!(it.next().and_then(|f| f.parse::<u64>().ok()), Some(rec.fence));
        assert_eq!(it.next().and_then(OwnerToken::parse_hex), rec.owner);
        assert_eq!(it.next().and_then(|e| e.parse::<u64>().ok()), Some(rec.expires_ns));
        assert_eq!(it.next(), Some(boot_id()));
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
