//! Reading the file backend's records back: the holders of one record (for `inspect`,
//! `holders` and `list`), and pages of the records of a directory under a key prefix (`list`,
//! `fencing_counters`).
//!
//! A record's file name is a hash of its key (see [`files`](crate::files)), so it cannot be
//! decoded back: a listing reads every record file of the directory in file-name order and
//! takes the key from its last line, `key <full key>` (or, for a file of the previous format,
//! the first line's last field), keeping those under the prefix. The cursor is the last file
//! name read. Listing costs one read per record file in the directory, whatever the prefix:
//! it is an operator's tool. Files are read under a shared `flock` when it can be had within a
//! few milliseconds, and without it otherwise (the formats are read safely while being
//! rewritten: a torn read yields a state the record was in, or is skipped).

use std::fs::{File, TryLockError};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use lock_core::{CounterPage, FencingToken, ListPage, LockInfo, Mode, Result};

use crate::error::{damaged, io_err};
use crate::files::{is_single, kind_of_ext};
use crate::metafile;
use crate::record::{self, mono_ns};
use crate::table::{Kind, Role};
use crate::table_record;

/// The holders a record's `bytes` (of `kind`) hold at `now`, each with its mode, token, time
/// left and metadata (from `meta`, the side file read with the record).
///
/// # Errors
/// Why the record cannot be read; the caller names the file.
pub(crate) fn infos(
    bytes: &[u8],
    mut meta: metafile::Holders,
    kind: Kind,
    now: u64,
) -> Result<Vec<LockInfo>, &'static str> {
    let infos: Vec<(Role, LockInfo)> = if is_single(kind) {
        let rec = record::decode(bytes)?;
        let (role, mode) =
            if kind == Kind::Election { (Role::Leader, Mode::Leader) } else { (Role::Lock, Mode::Exclusive) };
        if !rec.live(now) {
            return Ok(Vec::new());
        }
        let left = Duration::from_nanos(rec.expires_ns - now);
        vec![(role, LockInfo::new(Some(FencingToken::new(rec.fence)), rec.owner, Some(left)).with_mode(mode))]
    } else {
        let rec = table_record::decode(bytes, kind)?;
        table_record::holders(&rec, now)
            .into_iter()
            .map(|(e, mode, left)| {
                (
                    e.role,
                    LockInfo::new(Some(FencingToken::new(e.fence)), Some(e.owner), Some(left))
                        .with_mode(mode),
                )
            })
            .collect()
    };
    Ok(infos
        .into_iter()
        .map(|(role, info)| {
            let m = info.owner.and_then(|o| meta.remove(&(o, role)));
            info.with_metadata(m)
        })
        .collect())
}

/// The full key a record file names: its last line `key <key>`, or the last field of a
/// previous-format first line.
fn key_of(bytes: &[u8]) -> Option<String> {
    let last = bytes.split(|&b| b == b'\n').rev().find(|l| l.starts_with(b"key "));
    if let Some(line) = last {
        return std::str::from_utf8(&line[4..]).ok().map(str::to_owned);
    }
    let first = bytes.split(|&b| b == b'\n').next()?;
    let text = std::str::from_utf8(first).ok()?;
    text.starts_with("distlock1 ").then(|| text.splitn(6, ' ').nth(5)).flatten().map(str::to_owned)
}

/// Reads a record file and, when `meta` says so of its bytes, its side file, under a shared
/// `flock` if it comes within a few milliseconds.
fn read_record(path: &Path, meta: impl Fn(&[u8]) -> bool) -> std::io::Result<(Vec<u8>, metafile::Holders)> {
    let mut file = File::open(path)?;
    for _ in 0..20 {
        match file.try_lock_shared() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
            Err(TryLockError::Error(_)) => break,
        }
    }
    let mut bytes = Vec::with_capacity(512);
    file.read_to_end(&mut bytes)?;
    let meta = if meta(&bytes) { metafile::read(path) } else { metafile::Holders::new() };
    Ok((bytes, meta))
}

/// One record file met by a listing: its name, kind, bytes, key and holder metadata.
struct Found {
    name: String,
    kind: Kind,
    bytes: Vec<u8>,
    meta: metafile::Holders,
}

/// Goes through the record files of `dir` after `cursor` in name order (reading the holder
/// metadata of those under `prefix` too with `meta`), calling `each` on those whose key starts with `prefix` until it
/// has been called `limit` times; returns the cursor of the next page.
fn walk(
    dir: &Path,
    prefix: &str,
    cursor: Option<&str>,
    limit: usize,
    meta: bool,
    mut each: impl FnMut(&Path, Found, String) -> Result<()>,
) -> Result<Option<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("cannot list lock directory", dir, e))?;
    let mut names: Vec<(String, Kind)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kind = kind_of_ext(name.rsplit_once('.')?.1)?;
            (!name.starts_with('.') && cursor.is_none_or(|c| name.as_str() > c)).then_some((name, kind))
        })
        .collect();
    names.sort_unstable();
    let mut taken = 0;
    for (i, (name, kind)) in names.iter().enumerate() {
        let path = dir.join(name);
        let (bytes, holders) =
            match read_record(&path, |b| meta && key_of(b).is_some_and(|k| k.starts_with(prefix))) {
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("cannot read lock file", &path, e)),
            };
        let Some(key) = key_of(&bytes).filter(|k| k.starts_with(prefix)) else { continue };
        each(&path, Found { name: name.clone(), kind: *kind, bytes, meta: holders }, key)?;
        taken += 1;
        if taken >= limit.max(1) {
            return Ok((i + 1 < names.len()).then(|| name.clone()));
        }
    }
    Ok(None)
}

/// One page of the grants held under `prefix` (blocking I/O). A record that cannot be read is
/// skipped (and logged): a listing shows what it can.
///
/// # Errors
/// The directory cannot be listed or a file cannot be read.
pub(crate) fn list_page(dir: &Path, prefix: &str, cursor: Option<&str>, limit: usize) -> Result<ListPage> {
    let now = mono_ns();
    let mut entries = Vec::new();
    let next = walk(dir, prefix, cursor, limit, true, |_, found, key| {
        match infos(&found.bytes, found.meta, found.kind, now) {
            Ok(holders) => entries.extend(holders.into_iter().map(|i| (key.clone(), i))),
            Err(why) => tracing::debug!(file = %found.name, why, "listing skips a record it cannot read"),
        }
        Ok(())
    })?;
    Ok(ListPage::new(entries, next))
}

/// One page of the fencing counters under `prefix`, held or not (blocking I/O).
///
/// # Errors
/// The directory cannot be listed, a file cannot be read, or a record is damaged (its counter
/// cannot be known: the error names the file, as every operation on it does).
pub(crate) fn counters_page(
    dir: &Path,
    prefix: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<CounterPage> {
    let mut counters = Vec::new();
    let next = walk(dir, prefix, cursor, limit, false, |path, found, key| {
        let (fence, limit) = if is_single(found.kind) {
            (record::decode(&found.bytes).map_err(|why| damaged(path, why))?.fence, 0)
        } else {
            let rec = table_record::decode(&found.bytes, found.kind).map_err(|why| damaged(path, why))?;
            (rec.table.fence, rec.table.limit)
        };
        if fence > 0 {
            counters.push((key, found.kind.counter_mode(limit), FencingToken::new(fence)));
        }
        Ok(())
    })?;
    Ok(CounterPage::new(counters, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::OwnerToken;

    #[test]
    fn keys_are_read_back_from_both_formats() {
        let rec = record::Record {
            fence: 3,
            owner: Some(OwnerToken::from_u128(1)),
            expires_ns: 1,
            boot: "b".into(),
        };
        assert_eq!(key_of(&rec.render("jobs/a b")).as_deref(), Some("jobs/a b"));
        let sem = table_record::TableRecord::new(Kind::Semaphore);
        assert_eq!(key_of(&sem.render("pool/db")).as_deref(), Some("pool/db"));
        assert_eq!(key_of(b"distlock1 42 - 0 boot jobs/old key\n").as_deref(), Some("jobs/old key"));
        assert_eq!(key_of(b"garbage"), None);
    }
}
