//! The file mechanics of the file backend: one small file per key under a directory, read and
//! rewritten under an exclusive `flock`.
//!
//! Each key maps to `<dir>/<first 32 hex digits of sha256(key)>.lock`, holding one
//! [`Record`] line.
//!
//! - Mutual exclusion: every read-modify-write of a record happens under `flock`, which the
//!   kernel drops when the process holding it dies, so a killed process never wedges a key.
//! - Crash safety: a record is written with one `pwrite` at offset 0 and the file is then cut
//!   to length. A process killed between the two leaves the new line followed by a tail of the
//!   old one, and only the first line is read. With `sync` (the default) the write is flushed
//!   with `fdatasync` before a grant is returned, so the fencing counter also survives a
//!   power loss.
//! - Files are never deleted: the fencing counter must outlive releases. One file per key
//!   ever locked, about 120 bytes each.
//! - Operations run on tokio's blocking threads; an acquire whose caller is cancelled is
//!   undone once its blocking task finishes ([`PendingOp`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lock_core::{LockKey, OwnerToken, Result};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::error::{corrupt, io_err, other, task_failed};
use crate::record::{boot_id, dur_ns, mono_ns, Record};

/// One read-modify-write of a record.
pub(crate) enum Op {
    Acquire { owner: OwnerToken, ttl: Duration },
    Extend { owner: OwnerToken, ttl: Duration },
    Release { owner: OwnerToken },
}

/// What an [`Op`] found and did.
pub(crate) enum OpResult {
    Acquired(u64),
    Held(Duration),
    Extended,
    Released,
    NotHeld,
}

/// The file of `key` under `dir`.
pub(crate) fn path_of(dir: &Path, key: &LockKey) -> PathBuf {
    let digest = Sha256::digest(key.full().as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{hex}.lock"))
}

/// In-process wake-ups, shared by every `FileBackend` of this process, keyed by file path.
pub(crate) fn waker(path: &Path) -> Arc<Notify> {
    static WAKERS: OnceLock<Mutex<HashMap<PathBuf, Arc<Notify>>>> = OnceLock::new();
    let mut map = WAKERS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, n| Arc::strong_count(n) > 1);
    map.entry(path.to_owned()).or_default().clone()
}

/// Opens (creating if needed) a record file. A new file's directory entry is flushed (with
/// `sync`), so the counter it will hold cannot vanish with a power loss.
fn open_file(path: &Path, sync: bool) -> Result<File> {
    let open = |create: bool| OpenOptions::new().read(true).write(true).create_new(create).open(path);
    match open(false) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let f = match open(true) {
                Ok(f) => f,
                // Another process created it in between.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    open(false).map_err(|e| io_err("cannot open lock file", path, e))?
                }
                Err(e) => return Err(io_err("cannot create lock file", path, e)),
            };
            if sync {
                if let Some(dir) = path.parent() {
                    File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| io_err("cannot sync lock directory", dir, e))?;
                }
            }
            Ok(f)
        }
        Err(e) => Err(io_err("cannot open lock file", path, e)),
    }
}

fn read_record(file: &mut File, path: &Path) -> Result<Record> {
    let mut bytes = Vec::with_capacity(160);
    file.read_to_end(&mut bytes).map_err(|e| io_err("cannot read lock file", path, e))?;
    if bytes.is_empty() {
        return Ok(Record::default());
    }
    Record::parse(&bytes).ok_or_else(|| corrupt(path))
}

/// One read-modify-write of a record under an exclusive `flock` (blocking; run it on a
/// blocking thread).
pub(crate) fn apply(path: &Path, key: &str, sync: bool, op: Op) -> Result<OpResult> {
    let mut file = open_file(path, sync)?;
    file.lock().map_err(|e| io_err("cannot lock", path, e))?;
    let mut rec = read_record(&mut file, path)?;
    let now = mono_ns();
    let live = rec.live(now);
    let (result, dirty) = match op {
        Op::Acquire { .. } if live => (OpResult::Held(Duration::from_nanos(rec.expires_ns - now)), false),
        Op::Acquire { owner, ttl } => {
            rec.fence = rec.fence.checked_add(1).ok_or_else(|| other("fencing counter exhausted"))?;
            rec.owner = Some(owner);
            rec.expires_ns = now.saturating_add(dur_ns(ttl));
            rec.boot = boot_id().to_owned();
            (OpResult::Acquired(rec.fence), true)
        }
        Op::Extend { owner, ttl } if live && rec.owner == Some(owner) => {
            rec.expires_ns = now.saturating_add(dur_ns(ttl));
            (OpResult::Extended, true)
        }
        Op::Release { owner } if rec.owner == Some(owner) => {
            rec.owner = None;
            rec.expires_ns = 0;
            (if live { OpResult::Released } else { OpResult::NotHeld }, true)
        }
        Op::Extend { .. } | Op::Release { .. } => (OpResult::NotHeld, false),
    };
    if dirty {
        let line = rec.render(key);
        file.write_all_at(line.as_bytes(), 0).map_err(|e| io_err("cannot write lock file", path, e))?;
        file.set_len(line.len() as u64).map_err(|e| io_err("cannot write lock file", path, e))?;
        if sync && matches!(result, OpResult::Acquired(_)) {
            file.sync_data().map_err(|e| io_err("cannot sync lock file", path, e))?;
        }
    }
    Ok(result)
    // The flock is dropped with the file.
}

/// Reads the record of `path` under a shared `flock`; `None` when the key was never locked.
pub(crate) async fn read(path: PathBuf) -> Result<Option<Record>> {
    tokio::task::spawn_blocking(move || -> Result<Option<Record>> {
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot open lock file", &path, e)),
        };
        file.lock_shared().map_err(|e| io_err("cannot lock", &path, e))?;
        read_record(&mut file, &path).map(Some)
    })
    .await
    .map_err(task_failed)?
}

/// Runs `op` on the record of `key` in `dir`, on a blocking thread.
pub(crate) async fn run(dir: &Path, key: &LockKey, sync: bool, op: Op) -> Result<OpResult> {
    let path = path_of(dir, key);
    let full = key.full().to_owned();
    // An acquire whose caller goes away before the reply must not leave its grant behind: the
    // blocking task runs on regardless, so the undo waits for it and releases what it granted.
    let undo_owner = match op {
        Op::Acquire { owner, .. } => Some(owner),
        _ => None,
    };
    let task = {
        let (path, full) = (path.clone(), full.clone());
        tokio::task::spawn_blocking(move || apply(&path, &full, sync, op))
    };
    PendingOp { task: Some(task), undo: undo_owner.map(|o| (path, full, sync, o)) }.join().await
}

/// A file operation in flight. Dropped before its task was joined (the caller was cancelled),
/// an acquire is undone once its task has finished: what it granted is released.
struct PendingOp {
    task: Option<tokio::task::JoinHandle<Result<OpResult>>>,
    undo: Option<(PathBuf, String, bool, OwnerToken)>,
}

impl PendingOp {
    async fn join(mut self) -> Result<OpResult> {
        let Some(task) = self.task.as_mut() else {
            return Err(other("lock file task already joined"));
        };
        let joined = task.await;
        self.task = None;
        joined.map_err(task_failed)?
    }
}

impl Drop for PendingOp {
    fn drop(&mut self) {
        let (Some(task), Some((path, full, sync, owner))) = (self.task.take(), self.undo.take()) else {
            return;
        };
        lock_core::cancel::spawn_detached(async move {
            if let Ok(Ok(OpResult::Acquired(_))) = task.await {
                let p = path.clone();
                let undone =
                    tokio::task::spawn_blocking(move || apply(&p, &full, sync, Op::Release { owner })).await;
                if matches!(undone, Ok(Ok(OpResult::Released))) {
                    waker(&path).notify_waiters();
                }
            }
        });
    }
}
