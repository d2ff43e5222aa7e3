//! Holder metadata on the file backend: a side file beside each record file.
//!
//! The record formats are fixed-width and torn-write safe (see [`record`](crate::record) and
//! [`table_record`](crate::table_record)); a metadata record is up to about 1.5 KB and of any
//! length, so it lives beside the record rather than in it, in `<record file>.meta` (for
//! example `1f…e2.lock.meta`), one line per holder:
//!
//! ```text
//! <owner token, 32 hex digits> <role tag> <metadata, compact JSON>
//! ```
//!
//! - It is rewritten under the record's `flock`, in the same critical section as the record,
//!   whenever the record's holders change (a grant, a release) or a holder replaces its
//!   metadata; the rewrite keeps only the lines of the record's unexpired holders, so lines of
//!   expired or crashed holders go with the next rewrite. A grant's line is written before the
//!   grant is returned.
//! - It is written whole to a temporary file (`.<side file>.tmp`, one name per side file,
//!   written over by the next write if a process was killed between the two steps) and
//!   renamed into place, so a reader never sees half of it; it is removed when the record has no holder left. It is not flushed
//!   (`fdatasync`): after a power loss it may be missing or old.
//! - It is informational and never decides anything: a line counts only for the holder the
//!   record names (owner token and role), and a missing, unreadable or garbled file (or line)
//!   means "no metadata", never an error. A failure to write it is logged at `debug` level and
//!   the operation goes on.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lock_core::{Metadata, OwnerToken};

use crate::table::Role;

/// The side file of the record file `record`.
pub(crate) fn path(record: &Path) -> PathBuf {
    let mut name = record.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".meta");
    record.with_file_name(name)
}

/// The raw lines of a side file's text: (owner, role) → JSON, skipping what cannot be read.
fn parse(text: &str) -> Vec<((OwnerToken, Role), String)> {
    text.lines()
        .filter_map(|line| {
            let (owner, rest) = line.split_once(' ')?;
            let (tag, json) = rest.split_once(' ')?;
            let mut chars = tag.chars();
            let role = match (chars.next(), chars.next()) {
                (Some(c), None) => Role::of_tag(c)?,
                _ => return None,
            };
            Some(((OwnerToken::parse_hex(owner)?, role), json.to_owned()))
        })
        .collect()
}

/// Holder metadata by owner and role.
pub(crate) type Holders = HashMap<(OwnerToken, Role), Metadata>;

/// The metadata of the holders of `record`, by owner and role; empty when there is no side
/// file or it cannot be read. Read under the record's shared `flock` where the record was, so
/// the two agree (the side file is rewritten under the exclusive one, after the record).
pub(crate) fn read(record: &Path) -> Holders {
    let Ok(text) = std::fs::read_to_string(path(record)) else { return HashMap::new() };
    parse(&text).into_iter().filter_map(|(k, json)| Metadata::decode(&json).map(|m| (k, m))).collect()
}

/// Rewrites the side file of `record` (under its `flock`) to hold the lines of `holders` only,
/// with `set` (a holder's new metadata, encoded) in place of its line. Never fails: a failure
/// is logged and the side file may be left as it was (it is only informational).
pub(crate) fn update(
    record: &Path,
    holders: &[(OwnerToken, Role)],
    set: Option<(OwnerToken, Role, Arc<str>)>,
) {
    let side = path(record);
    let old = std::fs::read_to_string(&side).unwrap_or_default();
    let mut lines: Vec<((OwnerToken, Role), String)> =
        parse(&old).into_iter().filter(|(k, _)| holders.contains(k)).collect();
    if let Some((owner, role, json)) = set {
        if holders.contains(&(owner, role)) {
            lines.retain(|(k, _)| *k != (owner, role));
            lines.push(((owner, role), json.to_string()));
        }
    }
    let text: String =
        lines.iter().map(|((owner, role), json)| format!("{owner} {} {json}\n", role.tag())).collect();
    if text == old {
        return;
    }
    let res = if text.is_empty() {
        match std::fs::remove_file(&side) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    } else {
        write_whole(&side, text.as_bytes())
    };
    if let Err(e) = res {
        tracing::debug!(file = %side.display(), error = %e, "cannot update the holder metadata file; the lock is not affected");
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place. The temporary
/// file's name is the same for every write of `path`: only the holder of the record's
/// exclusive `flock` writes it, so no two writes share it at once, and one left by a process
/// killed between the two steps is written over by the next write (with a name of its own
/// per write, each such kill left a file that nothing removed).
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    // Made anew, never through what is there: a symbolic link planted under this name would
    // have the write land wherever it points, with this process's rights (`create_new` is
    // `O_EXCL`, which fails on any name that exists, a link included).
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes));
    let placed = written.and_then(|()| std::fs::rename(&tmp, path));
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_follow_the_holders_and_garbage_is_no_metadata() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = dir.path().join("k.sem");
        let (a, b) = (OwnerToken::from_u128(1), OwnerToken::from_u128(2));
        let m = |v: &str| -> Arc<str> { Metadata::current().with_value(v).expect("value").encode().into() };
        update(&record, &[(a, Role::Permit)], Some((a, Role::Permit, m("a"))));
        update(&record, &[(a, Role::Permit), (b, Role::Permit)], Some((b, Role::Permit, m("b"))));
        let read_back = read(&record);
        assert_eq!(read_back.len(), 2);
        assert_eq!(read_back[&(b, Role::Permit)].value.as_deref(), Some("b"));
        // A is gone (released or expired): its line goes with the next rewrite.
        update(&record, &[(b, Role::Permit)], None);
        assert_eq!(read(&record).keys().copied().collect::<Vec<_>>(), vec![(b, Role::Permit)]);
        // Metadata for someone who does not hold is not written.
        update(&record, &[(b, Role::Permit)], Some((a, Role::Permit, m("late"))));
        assert!(!read(&record).contains_key(&(a, Role::Permit)));
        // A temporary file left by a writer killed before its rename is written over, not
        // left beside another one.
        let stale = record.with_file_name(".k.sem.meta.tmp");
        std::fs::write(&stale, "left by a killed writer").expect("write");
        update(&record, &[(b, Role::Permit)], Some((b, Role::Permit, m("b2"))));
        assert_eq!(read(&record)[&(b, Role::Permit)].value.as_deref(), Some("b2"));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["k.sem.meta"], "files left beside the side file");
        // A symbolic link planted under the temporary file's name is not written through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").expect("write");
        std::os::unix::fs::symlink(&victim, &stale).expect("symlink");
        update(&record, &[(b, Role::Permit)], Some((b, Role::Permit, m("b3"))));
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "untouched");
        assert_eq!(read(&record)[&(b, Role::Permit)].value.as_deref(), Some("b3"));
        // Garbage reads as no metadata; the last holder gone removes the file.
        std::fs::write(path(&record), "zz p {\n00000000000000000000000000000002 p not json\n")
            .expect("write");
        assert!(read(&record).is_empty());
        update(&record, &[], None);
        assert!(!path(&record).exists());
    }
}
