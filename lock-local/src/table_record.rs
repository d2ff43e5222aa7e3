//! The record file of a semaphore or a read-write lock (file backend): its [`Table`] of
//! holders at a fixed width, torn-write safe like the lock's [`record`](crate::record).
//!
//! # The format
//!
//! Two copies of one block, then a key line; the file is never shortened. A new file is
//! written whole. Each later write changes one copy only, the one of its `seq`'s parity
//! (copy `seq % 2`), so that the other holds the previous write intact whatever order the
//! pages of a torn write reach the disk in (a block is more than a page: two copies written
//! at once could both be spoilt by a power loss that kept some of each one's pages). A write
//! that raises the fencing counter (a grant, a raise) is followed by a second one that brings
//! the other copy to the same state, each synced before the next: once a token is reported,
//! both copies hold its counter, so neither a later torn write nor a damaged byte in one copy
//! can take the counter back below it. The copies share a page, so two writes in a row that
//! are not synced (an extend, then a release; only grants and raises are) can still spoil
//! both (the file is then refused, never read with a lower counter):
//!
//! ```text
//! distlock-set1 <kind> <seq> <fence> <limit> <boot id>     header
//! <owner> <fence> <expires> <role>                          × 64 slots
//! c=<checksum>
//! (the same block again)
//! key <key>
//! ```
//!
//! - `kind` is `sem` (a semaphore) or `rwl` (a read-write lock); `seq` counts the writes of
//!   the record and `fence` is the fencing counter (20 zero-padded digits each); `limit` is
//!   the semaphore's number of permits while it has holders (5 digits); the boot id is padded
//!   with `-` to 36 characters.
//! - [`SLOTS`] slot lines hold the holders: owner token (32 hex digits), the holder's fencing
//!   token, its expiry (CLOCK_MONOTONIC ns; 20 digits each) and its role (`p` permit, `r`
//!   reader, `w` writer, `i` a waiting writer's intent, `-` an empty slot). This is the file
//!   backend's bound: at most 64 permits per semaphore, and at most 64 readers, writers and
//!   waiting writers at once per read-write lock (a 65th reader waits for a slot).
//! - The checksum is the first 8 bytes of SHA-256 over the block up to `c=`, in hex.
//!
//! # Reading it back ([`decode`])
//!
//! 1. Of the copies whose checksum holds, the one with the highest `seq` is the record
//!    (either is a state the file was in; the fence falls back only past a write that was
//!    torn, and a grant or a raise is synced before it is reported).
//! 2. Otherwise, a file that ends inside its first block (cut short) but still holds that
//!    block's whole fence field is recovered with that fence and no holders, as a lock record
//!    cut inside its first line is.
//! 3. Anything else is refused with an error that names the file, never reset.
//!
//! Holders written under another boot id are dropped when the record is read: they died with
//! that boot.

use std::path::Path;
use std::time::Duration;

use lock_core::{Mode, OwnerToken, Result};

use crate::error::{damaged, NAME};
use crate::files::{Op, OpResult};
use crate::record::{boot_id, checksum, dur_ns, same_boot_as, BOOT_WIDTH, UNKNOWN_BOOT};
use crate::table::{Admit, Ask, Entry, Kind, Role, Table};

const MAGIC: &str = "distlock-set1";
/// How many holders (and waiting writers) one record holds.
pub(crate) const SLOTS: usize = 64;
const HEADER_LEN: usize = MAGIC.len() + 1 + 3 + 1 + 20 + 1 + 20 + 1 + 5 + 1 + BOOT_WIDTH + 1;
const SLOT_LEN: usize = 32 + 1 + 20 + 1 + 20 + 1 + 1 + 1;
const SUM_AT: usize = HEADER_LEN + SLOTS * SLOT_LEN;
/// The length of one block (one copy of the record).
pub(crate) const COPY_LEN: usize = SUM_AT + 2 + 16 + 1;
/// Where the fence field of the header ends.
const FENCE_END: usize = MAGIC.len() + 1 + 3 + 1 + 20 + 1 + 20;

/// A semaphore's or read-write lock's record: its table, as of write number `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableRecord {
    pub(crate) kind: Kind,
    pub(crate) seq: u64,
    pub(crate) boot: String,
    pub(crate) table: Table<u64>,
}

fn kind_tag(kind: Kind) -> &'static str {
    match kind {
        Kind::Semaphore => "sem",
        Kind::ReadWrite | Kind::Lock | Kind::Election => "rwl",
    }
}

fn role_of_char(c: &str) -> Option<Option<Role>> {
    let mut chars = c.chars();
    match (chars.next(), chars.next()) {
        (Some('-'), None) => Some(None),
        (Some(tag), None) => Role::of_tag(tag).map(Some),
        _ => None,
    }
}

impl TableRecord {
    /// A fresh record (fence 0, no holders) of `kind`.
    pub(crate) fn new(kind: Kind) -> Self {
        Self { kind, seq: 0, boot: boot_id().to_owned(), table: Table::default() }
    }

    /// The file's bytes for `key`: the block twice, then the key line.
    pub(crate) fn render(&self, key: &str) -> Vec<u8> {
        crate::record::twice_then_key(&self.block(), key)
    }

    /// The file's bytes once this record is written over `old` (the file's bytes before):
    /// `old` with copy `seq % 2` replaced, or the whole file when `old` is not a whole file of
    /// this key's length (new, or cut short).
    pub(crate) fn render_over(&self, old: &[u8], key: &str) -> Vec<u8> {
        let full = self.render(key);
        if old.len() != full.len() {
            return full;
        }
        let copy = (self.seq % 2) as usize * COPY_LEN..(self.seq % 2 + 1) as usize * COPY_LEN;
        let mut out = old.to_vec();
        out[copy.clone()].copy_from_slice(&full[copy]);
        out
    }

    /// One block, [`COPY_LEN`] bytes.
    fn block(&self) -> String {
        let mut boot = self.boot.clone();
        if boot.len() > BOOT_WIDTH || boot.contains([' ', '\n']) {
            boot = UNKNOWN_BOOT.to_owned();
        }
        let t = &self.table;
        let mut out = format!(
            "{MAGIC} {} {:020} {:020} {:05} {boot:-<BOOT_WIDTH$}\n",
            kind_tag(self.kind),
            self.seq,
            t.fence,
            t.limit.min(99_999)
        );
        for e in t.entries.iter().take(SLOTS) {
            out.push_str(&format!("{} {:020} {:020} {}\n", e.owner, e.fence, e.expires, e.role.tag()));
        }
        for _ in t.entries.len().min(SLOTS)..SLOTS {
            out.push_str(&format!("{} {:020} {:020} -\n", "0".repeat(32), 0, 0));
        }
        let sum = checksum(out.as_bytes());
        out.push_str(&format!("c={sum}\n"));
        out
    }

    /// A block whose checksum holds.
    fn parse_block(block: &[u8]) -> Option<Self> {
        if block.len() != COPY_LEN || &block[SUM_AT..SUM_AT + 2] != b"c=" || block[COPY_LEN - 1] != b'\n' {
            return None;
        }
        if block[SUM_AT + 2..COPY_LEN - 1] != *checksum(&block[..SUM_AT]).as_bytes() {
            return None;
        }
        let text = std::str::from_utf8(&block[..SUM_AT]).ok()?;
        let mut lines = text.lines();
        let mut head = lines.next()?.split(' ');
        if head.next()? != MAGIC {
            return None;
        }
        let kind = match head.next()? {
            "sem" => Kind::Semaphore,
            "rwl" => Kind::ReadWrite,
            _ => return None,
        };
        let seq = head.next()?.parse().ok()?;
        let fence = head.next()?.parse().ok()?;
        let limit = head.next()?.parse().ok()?;
        let boot = head.next()?.trim_end_matches('-').to_owned();
        let mut entries = Vec::new();
        for line in lines {
            let mut f = line.split(' ');
            let (owner, efence, expires, role) = (f.next()?, f.next()?, f.next()?, f.next()?);
            if let Some(role) = role_of_char(role)? {
                let owner = OwnerToken::parse_hex(owner)?;
                entries.push(Entry {
                    owner,
                    fence: efence.parse().ok()?,
                    expires: expires.parse().ok()?,
                    role,
                });
            }
        }
        Some(Self { kind, seq, boot, table: Table { fence, limit, entries } })
    }

    /// The fence of a file cut short inside its first block, if the header's whole fence
    /// field is there.
    fn fence_of_cut_block(bytes: &[u8], kind: Kind) -> Option<u64> {
        let prefix = format!("{MAGIC} {} ", kind_tag(kind));
        if bytes.len() >= COPY_LEN || bytes.len() < FENCE_END || !bytes.starts_with(prefix.as_bytes()) {
            return None;
        }
        let field = &bytes[FENCE_END - 20..FENCE_END];
        if !field.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(field).ok()?.parse().ok()
    }
}

/// Reads a record file's bytes back (see the module docs for the rules), dropping holders of
/// another boot.
///
/// # Errors
/// Why nothing in the file can be trusted; the caller names the file.
pub(crate) fn decode(bytes: &[u8], kind: Kind) -> Result<TableRecord, &'static str> {
    decode_as(bytes, kind, boot_id())
}

/// [`decode`] by a process whose boot id is `ours`.
fn decode_as(bytes: &[u8], kind: Kind, ours: &str) -> Result<TableRecord, &'static str> {
    if bytes.is_empty() {
        return Err("it is empty");
    }
    let copies = [bytes.get(..COPY_LEN), bytes.get(COPY_LEN..2 * COPY_LEN)];
    let valid = copies.into_iter().flatten().filter_map(TableRecord::parse_block);
    let mut rec = match valid.max_by_key(|r| r.seq) {
        Some(r) if r.kind != kind => return Err("it holds the record of another primitive"),
        Some(r) => r,
        None => match TableRecord::fence_of_cut_block(bytes, kind) {
            Some(fence) => {
                TableRecord { table: Table { fence, ..Table::default() }, ..TableRecord::new(kind) }
            }
            None => return Err("no copy of its record is intact"),
        },
    };
    if !same_boot_as(ours, &rec.boot) {
        rec.table.entries.clear();
        rec.boot = ours.to_owned();
    } else if rec.boot != ours {
        // One side's boot id is unknown: the entries' boot cannot be told, and the table
        // (one boot id for all its entries) says so, or a process that knows its boot id
        // would drop the entries of one that does not. Without entries it is ours again.
        rec.boot = if rec.table.entries.is_empty() { ours } else { UNKNOWN_BOOT }.to_owned();
    }
    Ok(rec)
}

/// One operation on a record file's bytes, at `now` (CLOCK_MONOTONIC ns): what it found and
/// did, and the bytes to write back (`None` when nothing changed), with, when the operation
/// raised the fencing counter, the bytes of a second write that brings the other copy to the
/// same state (see [`Writes`]).
///
/// # Errors
/// A damaged record (naming `path`), or an exhausted fencing counter.
pub(crate) fn apply(
    path: &Path,
    bytes: &[u8],
    key: &str,
    op: &Op,
    now: u64,
) -> Result<(OpResult, Option<Writes>)> {
    let kind = Role::of(op.mode(), NAME)?.kind();
    let mut rec = decode(bytes, kind).map_err(|why| damaged(path, why))?;
    let before = rec.table.clone();
    let at = |d: Duration| now.saturating_add(dur_ns(d));
    let result = match *op {
        Op::Acquire { owner, ttl, mode, intent, .. } => {
            let ask = Ask { owner, mode, now, expires: at(ttl), intent: intent.map(at), capacity: SLOTS };
            match rec.table.acquire(&ask, NAME)? {
                Admit::Granted(f) => OpResult::Acquired(f),
                Admit::Held(t) => OpResult::Held(t.map(|t| Duration::from_nanos(t.saturating_sub(now)))),
                Admit::Mismatch(held) => OpResult::Mismatch(held),
            }
        }
        Op::Extend { owner, ttl, mode } => {
            let role = Role::of(mode, NAME)?;
            if rec.table.extend(owner, role, now, at(ttl)) {
                OpResult::Extended
            } else {
                OpResult::NotHeld
            }
        }
        Op::Release { owner, mode } => match rec.table.release(owner, Role::of(mode, NAME)?, now) {
            (true, _) => OpResult::Released,
            (false, _) => OpResult::NotHeld,
        },
        Op::SetMeta { owner, mode, .. } => {
            if rec.table.holds(owner, Role::of(mode, NAME)?, now) {
                OpResult::Extended
            } else {
                OpResult::NotHeld
            }
        }
        Op::Raise { at_least, .. } => OpResult::Raised(rec.table.raise(at_least)),
    };
    if rec.table == before {
        return Ok((result, None));
    }
    rec.seq = rec.seq.saturating_add(1);
    let first = rec.render_over(bytes, key);
    let second = (rec.table.fence != before.fence).then(|| {
        rec.seq = rec.seq.saturating_add(1);
        rec.render_over(&first, key)
    });
    Ok((result, Some(Writes { first, second })))
}

/// The bytes a table record's operation writes back: `first`, one copy changed; and, when the
/// fencing counter rose, `second`, the other copy brought to the same state (the next `seq`),
/// written (and synced) only once `first` is on the disk. Each write still changes one copy,
/// so a torn write spoils only the copy it wrote; and once both are written, neither copy holds
/// a counter below the token just issued: a later torn write, or a damaged byte in one copy,
/// falls back to the other copy and the same counter, never to the one before the grant.
pub(crate) struct Writes {
    pub(crate) first: Vec<u8>,
    pub(crate) second: Option<Vec<u8>>,
}

/// The holders of a record, with their modes and the time they have left at `now`.
pub(crate) fn holders(rec: &TableRecord, now: u64) -> Vec<(Entry<u64>, Mode, Duration)> {
    rec.table.holders(now).map(|(e, mode)| (*e, mode, Duration::from_nanos(e.expires - now))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(kind: Kind) -> TableRecord {
        let mut rec = TableRecord::new(kind);
        rec.seq = 7;
        rec.table.fence = 1_000;
        rec.table.limit = 64;
        for i in 0..SLOTS as u128 {
            let role = if i == 0 { Role::Intent } else { Role::Permit };
            rec.table.entries.push(Entry {
                owner: OwnerToken::from_u128(i + 1),
                fence: 900 + i as u64,
                expires: u64::MAX - i as u64,
                role,
            });
        }
        rec
    }

    #[test]
    fn a_full_record_round_trips_at_a_fixed_width() {
        for rec in [full(Kind::Semaphore), TableRecord::new(Kind::ReadWrite)] {
            let bytes = rec.render("pool/db");
            assert_eq!(bytes.len(), 2 * COPY_LEN + "key pool/db\n".len());
            assert_eq!(decode(&bytes, rec.kind), Ok(rec));
        }
    }

    #[test]
    fn the_newer_intact_copy_wins_and_two_damaged_copies_are_refused() {
        let old = full(Kind::Semaphore);
        let mut new = old.clone();
        new.seq += 1;
        new.table.entries.truncate(3);
        // A write torn after the first copy: new first block, old second block.
        let mut torn = new.render("k")[..COPY_LEN].to_vec();
        torn.extend_from_slice(&old.render("k")[COPY_LEN..]);
        assert_eq!(decode(&torn, Kind::Semaphore), Ok(new.clone()));
        // Torn inside the first copy: the old second copy is the record.
        let mut half = old.render("k");
        half[..COPY_LEN / 2].copy_from_slice(&new.render("k")[..COPY_LEN / 2]);
        assert_eq!(decode(&half, Kind::Semaphore), Ok(old.clone()));
        let mut both = old.render("k");
        both[100] ^= 1;
        both[COPY_LEN + 100] ^= 1;
        assert!(decode(&both, Kind::Semaphore).is_err());
        assert!(
            decode(&old.render("k"), Kind::ReadWrite).is_err(),
            "a semaphore's record read as an rwlock's"
        );
    }

    /// A write's pages may reach the disk in any order on a power loss (extends and releases
    /// are not synced): whichever of them made it, one copy is intact, the new or the old.
    #[test]
    fn a_write_whose_pages_reach_the_disk_in_any_order_leaves_an_intact_copy() {
        const PAGE: usize = 4096;
        let path = Path::new("/locks/k.sem");
        let mut rec = full(Kind::Semaphore);
        for seq in [7, 8] {
            rec.seq = seq;
            let before = rec.render("k");
            let op = Op::Release { owner: OwnerToken::from_u128(2), mode: Mode::Permit { limit: 64 } };
            let (result, after) = apply(path, &before, "k", &op, 0).expect("apply");
            assert!(matches!(result, OpResult::Released));
            let after = after.expect("written");
            assert!(after.second.is_none(), "a release wrote both copies");
            let after = after.first;
            let pages = after.len().div_ceil(PAGE);
            assert!(pages >= 3, "{} bytes", after.len());
            for mask in 0..1u32 << pages {
                let mut mixed = before.clone();
                for p in (0..pages).filter(|p| mask & (1 << p) != 0) {
                    let r = p * PAGE..((p + 1) * PAGE).min(after.len());
                    mixed[r.clone()].copy_from_slice(&after[r]);
                }
                let back = decode(&mixed, Kind::Semaphore)
                    .unwrap_or_else(|e| panic!("seq {seq}, pages {mask:03b} from the write: {e}"));
                assert!(back.seq == seq || back.seq == seq + 1, "seq {seq}: read back {}", back.seq);
            }
        }
    }

    /// The file's bytes after `op` over `bytes` (both writes of a grant), and what it found.
    fn step(bytes: &[u8], op: &Op, now: u64) -> (OpResult, Vec<u8>) {
        let (result, w) = apply(Path::new("/locks/k.sem"), bytes, "k", op, now).expect("apply");
        let w = w.expect("written");
        (result, w.second.unwrap_or(w.first))
    }

    fn permit_op(owner: u128, extend: bool) -> Op {
        let (owner, mode, ttl) =
            (OwnerToken::from_u128(owner), Mode::Permit { limit: 4 }, Duration::from_secs(60));
        if extend {
            Op::Extend { owner, ttl, mode }
        } else {
            Op::Acquire { owner, ttl, mode, intent: None, meta: None }
        }
    }

    /// Two grants (tokens 1 and 2, each synced), then two renewals that are not synced: on a
    /// power loss their pages reach the disk in any mix. Whatever copy survives intact holds
    /// the counter of token 2: before, the grant changed one copy only, the other kept
    /// counter 1, and a mix of the renewals' pages spoilt the grant's copy, so the next grant
    /// was token 2 again.
    #[test]
    fn unsynced_writes_after_a_grant_never_take_its_counter_back() {
        const PAGE: usize = 4096;
        let b0 = TableRecord::new(Kind::Semaphore).render("k");
        let (_, b1) = step(&b0, &permit_op(1, false), 0);
        let (granted, b2) = step(&b1, &permit_op(2, false), 1);
        assert!(matches!(granted, OpResult::Acquired(2)), "{granted:?}");
        let (_, b3) = step(&b2, &permit_op(1, true), 2);
        let (_, b4) = step(&b3, &permit_op(2, true), 3);
        let pages = b2.len().div_ceil(PAGE);
        let images = [&b2, &b3, &b4];
        let mut read = 0;
        for mix in 0..3usize.pow(pages as u32) {
            let mut disk = b2.clone();
            let mut m = mix;
            for p in 0..pages {
                let from = images[m % 3];
                m /= 3;
                let r = p * PAGE..((p + 1) * PAGE).min(disk.len());
                disk[r.clone()].copy_from_slice(&from[r]);
            }
            if let Ok(rec) = decode(&disk, Kind::Semaphore) {
                read += 1;
                assert!(rec.table.fence >= 2, "mix {mix}: counter {} after token 2", rec.table.fence);
            }
        }
        assert!(read > 0);
    }

    /// A damaged byte in either copy, or a cut anywhere past the first copy's fence field,
    /// right after a grant: the counter read back is the grant's (before, the copy the grant
    /// did not write still held the counter before it).
    #[test]
    fn a_damaged_copy_right_after_a_grant_never_takes_its_counter_back() {
        let b0 = TableRecord::new(Kind::Semaphore).render("k");
        let (_, b1) = step(&b0, &permit_op(1, false), 0);
        let (_, b2) = step(&b1, &permit_op(2, false), 1);
        for (bytes, token) in [(&b1, 1), (&b2, 2)] {
            for at in [200, COPY_LEN + 200] {
                let mut bad = bytes.clone();
                bad[at] ^= 1;
                let rec = decode(&bad, Kind::Semaphore).expect("one intact copy");
                assert!(
                    rec.table.fence >= token,
                    "byte {at} damaged: counter {} after token {token}",
                    rec.table.fence
                );
            }
            for cut in FENCE_END..bytes.len() {
                if let Ok(rec) = decode(&bytes[..cut], Kind::Semaphore) {
                    assert!(
                        rec.table.fence >= token,
                        "cut at {cut}: counter {} after token {token}",
                        rec.table.fence
                    );
                }
            }
        }
    }

    #[test]
    fn a_file_cut_at_any_byte_never_yields_a_lower_fence() {
        let rec = full(Kind::ReadWrite);
        let bytes = rec.render("k");
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut], Kind::ReadWrite) {
                Ok(r) => assert!(r.table.fence >= rec.table.fence, "cut at {cut}: fence {}", r.table.fence),
                Err(_) => assert!(cut < FENCE_END, "cut at {cut} was refused with the fence field whole"),
            }
        }
    }

    /// A process that cannot read its boot id adds its entry to a table of boot `x`: the table
    /// is then marked unknown, so that a process of boot `y` keeps that entry (one boot id
    /// stands for all of a table's entries). A table without entries is the reader's.
    #[test]
    fn a_table_read_by_a_process_of_unknown_boot_becomes_unknown() {
        let mut rec = full(Kind::Semaphore);
        rec.boot = "x".into();
        let seen = decode_as(&rec.render("k"), Kind::Semaphore, UNKNOWN_BOOT).expect("decode");
        assert_eq!(seen.table.entries.len(), rec.table.entries.len());
        let later = decode_as(&seen.render("k"), Kind::Semaphore, "y").expect("decode");
        assert_eq!(
            later.table.entries.len(),
            rec.table.entries.len(),
            "a process of another boot dropped the entries a process without a boot id wrote"
        );
        let mut empty = TableRecord::new(Kind::Semaphore);
        empty.boot = UNKNOWN_BOOT.into();
        assert_eq!(decode_as(&empty.render("k"), Kind::Semaphore, "y").expect("decode").boot, "y");
    }

    #[test]
    fn holders_of_an_unknown_boot_are_kept() {
        let mut rec = full(Kind::Semaphore);
        rec.boot = UNKNOWN_BOOT.into();
        let back = decode(&rec.render("k"), Kind::Semaphore).expect("decode");
        assert_eq!(
            back.table.entries.len(),
            rec.table.entries.len(),
            "holders of a process without a boot id were dropped"
        );
    }

    #[test]
    fn holders_of_another_boot_are_dropped() {
        let mut rec = full(Kind::Semaphore);
        rec.boot = "another-boot".into();
        let back = decode(&rec.render("k"), Kind::Semaphore).expect("decode");
        assert!(back.table.entries.is_empty());
        assert_eq!(back.table.fence, rec.table.fence);
    }
}
