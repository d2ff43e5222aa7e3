//! The file mechanics of the file backend: one small file per key and primitive under a
//! directory, read and rewritten under an exclusive `flock`.
//!
//! Each key maps to `<dir>/<first 32 hex digits of sha256(key)>.<ext>`: `.lock` for the lock
//! and `.elect` for the election of that name, each holding a [`Record`] (see
//! [`record`](crate::record) for the format and how a damaged one is read); `.sem` for the
//! semaphore and `.rw` for the read-write lock of that name, each holding a [`TableRecord`]
//! (see [`table_record`](crate::table_record)). The name cannot be read back from the file
//! name (a hash): every record file ends with a `key <full key>` line, which listing reads
//! ([`listing`](crate::listing)). Beside a record, `<record file>.meta` holds its holders'
//! metadata ([`metafile`](crate::metafile)).
//!
//! - Mutual exclusion: every read-modify-write of a record happens under `flock`, which the
//!   kernel drops when the process holding it dies, so a killed process never wedges a key.
//! - No unbounded wait: the `flock` is only ever *tried* (`LOCK_NB`), on a blocking thread
//!   that returns at once; while another process holds it (a holder stopped in the middle of
//!   a write, an operator's `flock(1)`), the operation retries with a short backoff, sleeping
//!   on the async runtime, for at most its bound (the request timeout, and for a waiting
//!   acquire never past its deadline), and then reports [`OpResult::Busy`]. No blocking thread
//!   is pinned by a waiter.
//! - Crash safety: a record is written in place with one `pwrite` of the bytes that change
//!   (a table record's write changes one of its two copies), always the same length for a
//!   key; a file is never shortened. A new file is created with its first record
//!   already in it (written to a temporary file, flushed, and hard-linked into place), so a
//!   record file is never empty. With `sync` (the default) a grant is flushed with
//!   `fdatasync` before it is returned, so the fencing counter also survives a power loss.
//! - Files are never deleted: the fencing counter must outlive releases. One file per key
//!   and primitive ever used: about 300 bytes for a lock, 10 KB for a semaphore or a
//!   read-write lock.
//! - An acquire whose caller is cancelled is undone once its blocking task finishes
//!   ([`PendingOp`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lock_core::{Backoff, Instant, LockKey, Mode, OwnerToken, Result};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::error::{io_err, other, task_failed, NAME};
use crate::metafile;
use crate::record::{self, mono_ns, Record};
use crate::table::{Kind, Role};
use crate::table_record::{self, TableRecord};

/// One read-modify-write of a record, on the grant of `mode`.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// `intent`: for a waiting writer, how long its intent lasts if it is not refreshed;
    /// `meta`: the holder's metadata, encoded, for the side file.
    Acquire {
        owner: OwnerToken,
        ttl: Duration,
        mode: Mode,
        intent: Option<Duration>,
        meta: Option<Arc<str>>,
    },
    Extend {
        owner: OwnerToken,
        ttl: Duration,
        mode: Mode,
    },
    Release {
        owner: OwnerToken,
        mode: Mode,
    },
    /// Replaces the metadata of `owner`'s unexpired grant (the record is not written).
    SetMeta {
        owner: OwnerToken,
        mode: Mode,
        meta: Arc<str>,
    },
    /// Raises the fencing counter so that the next token is above `at_least`.
    Raise {
        mode: Mode,
        at_least: u64,
    },
}

impl Op {
    pub(crate) fn mode(&self) -> Mode {
        match *self {
            Op::Acquire { mode, .. }
            | Op::Extend { mode, .. }
            | Op::Release { mode, .. }
            | Op::SetMeta { mode, .. }
            | Op::Raise { mode, .. } => mode,
        }
    }

    /// What the metadata side file must do after this op found `result`: `None` when it stays
    /// as it is; otherwise follow the record's holders, and set this holder's metadata if any.
    fn side_file(&self, result: &OpResult, changed: bool) -> Option<Option<(OwnerToken, Role, Arc<str>)>> {
        let role = Role::of(self.mode(), NAME).ok()?;
        match (self, result) {
            (Op::Acquire { owner, meta, .. }, OpResult::Acquired(_)) => {
                Some(meta.clone().map(|m| (*owner, role, m)))
            }
            (Op::SetMeta { owner, meta, .. }, OpResult::Extended) => Some(Some((*owner, role, meta.clone()))),
            (Op::Release { .. }, _) if changed => Some(None),
            _ => None,
        }
    }
}

/// What an [`Op`] found and did.
#[derive(Debug)]
pub(crate) enum OpResult {
    Acquired(u64),
    /// Held; the earliest expiry among what stands in the way.
    Held(Option<Duration>),
    /// The semaphore's holders use this other number of permits.
    Mismatch(u32),
    Extended,
    Released,
    NotHeld,
    /// The fencing counter after a raise.
    Raised(u64),
    /// Another process held the record's `flock` for the whole bound; nothing was done.
    Busy,
}

/// The file of `key`'s primitive of `mode` under `dir`.
pub(crate) fn path_of(dir: &Path, key: &LockKey, mode: Mode) -> PathBuf {
    let digest = Sha256::digest(key.full().as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let kind = Role::of(mode, NAME).map_or(Kind::Lock, Role::kind);
    dir.join(format!("{hex}.{}", ext_of(kind)))
}

/// The file extension of a record of `kind`.
pub(crate) fn ext_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Lock => "lock",
        Kind::Semaphore => "sem",
        Kind::ReadWrite => "rw",
        Kind::Election => "elect",
    }
}

/// The kind of record a file extension names (`None`: not a record file).
pub(crate) fn kind_of_ext(ext: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| ext_of(*k) == ext)
}

/// Whether `kind`'s records are lock records ([`Record`]) rather than tables.
pub(crate) fn is_single(kind: Kind) -> bool {
    matches!(kind, Kind::Lock | Kind::Election)
}

/// In-process wake-ups, shared by every `FileBackend` of this process, keyed by file path.
pub(crate) fn waker(path: &Path) -> Arc<Notify> {
    static WAKERS: OnceLock<Mutex<HashMap<PathBuf, Arc<Notify>>>> = OnceLock::new();
    let mut map = WAKERS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, n| Arc::strong_count(n) > 1);
    map.entry(path.to_owned()).or_default().clone()
}

/// The bytes a new record file of `mode`'s primitive starts with.
fn initial(mode: Mode, key: &str) -> Result<Vec<u8>> {
    Ok(match Role::of(mode, NAME)?.kind() {
        kind if is_single(kind) => Record::default().render(key),
        kind => TableRecord::new(kind).render(key),
    })
}

/// Opens a record file, creating it (with its first record, made by `initial`) if needed.
fn open_file(path: &Path, initial: impl FnOnce() -> Result<Vec<u8>>, sync: bool) -> Result<File> {
    let open = || OpenOptions::new().read(true).write(true).open(path);
    match open() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_file(path, &initial()?, sync)?;
            open().map_err(|e| io_err("cannot open lock file", path, e))
        }
        Err(e) => Err(io_err("cannot open lock file", path, e)),
    }
}

/// Creates `path` holding `initial` (a fresh record, fence 0): the record is written to a
/// temporary file (flushed with `sync`), which is then hard-linked into place, so that no
/// process ever sees the lock file empty. The new directory entry is flushed too (with
/// `sync`), so the counter the file will hold cannot vanish with a power loss. Another process
/// creating it first is fine.
fn create_file(path: &Path, initial: &[u8], sync: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), OwnerToken::random()));
    let write_tmp = || -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(initial)?;
        if sync {
            f.sync_data()?;
        }
        Ok(())
    };
    let linked = write_tmp().and_then(|()| match std::fs::hard_link(&tmp, path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        r => r.map(|()| true),
    });
    let _ = std::fs::remove_file(&tmp);
    let created = linked.map_err(|e| io_err("cannot create lock file", path, e))?;
    if created && sync {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("cannot sync lock directory", dir, e))?;
    }
    Ok(())
}

fn read_bytes(file: &mut File, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(320);
    file.read_to_end(&mut bytes).map_err(|e| io_err("cannot read lock file", path, e))?;
    Ok(bytes)
}

/// Tries the `flock` once: `false` when another open file description holds it.
fn try_flock(file: &File, path: &Path, shared: bool) -> Result<bool> {
    let tried = if shared { file.try_lock_shared() } else { file.try_lock() };
    match tried {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(io_err("cannot lock", path, e)),
    }
}

/// One read-modify-write of a record under an exclusive `flock`, if the `flock` can be had
/// at once ([`OpResult::Busy`] otherwise). Blocking I/O: run it on a blocking thread.
pub(crate) fn apply(path: &Path, key: &str, sync: bool, op: &Op) -> Result<OpResult> {
    let mut file = open_file(path, || initial(op.mode(), key), sync)?;
    if !try_flock(&file, path, false)? {
        return Ok(OpResult::Busy);
    }
    let bytes = read_bytes(&mut file, path)?;
    let now = mono_ns();
    let kind = Role::of(op.mode(), NAME)?.kind();
    let (result, new) = if is_single(kind) {
        let (result, new) = record::apply(path, &bytes, key, op, now)?;
        (result, new.map(|first| table_record::Writes { first, second: None }))
    } else {
        table_record::apply(path, &bytes, key, op, now)?
    };
    let grant = sync && matches!(result, OpResult::Acquired(_) | OpResult::Raised(_));
    let new = new.map(|w| write_copies(&file, path, &bytes, w, grant)).transpose()?;
    if let Some(set) = op.side_file(&result, new.is_some()) {
        // Still under the record's flock: the side file follows the record's holders.
        let holders = holders_of(new.as_deref().unwrap_or(&bytes), kind, now);
        metafile::update(path, &holders, set);
    }
    Ok(result)
    // The flock is dropped with the file.
}

/// Writes a record's new bytes over `old` (the second copy's after the first's), syncing each
/// when `sync`; returns the bytes the file ends with.
fn write_copies(
    file: &File,
    path: &Path,
    old: &[u8],
    w: table_record::Writes,
    sync: bool,
) -> Result<Vec<u8>> {
    write_over(file, path, old, &w.first, sync)?;
    let Some(second) = w.second else { return Ok(w.first) };
    // The grant is on the disk already (its copy synced): a failure here only leaves the other
    // copy a write behind, as before this second write existed; the grant is returned, not
    // left behind an error.
    match write_over(file, path, &w.first, &second, sync) {
        Ok(()) => Ok(second),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the record's second copy was not brought up to date");
            Ok(w.first)
        }
    }
}

/// Writes `new` over the file's bytes `old` in place (the same length for a key every time:
/// never shortened; only the bytes that change, which for a table record is one of its two
/// copies), and syncs them when `sync`.
fn write_over(file: &File, path: &Path, old: &[u8], new: &[u8], sync: bool) -> Result<()> {
    let from = new.iter().zip(old).position(|(a, b)| a != b).unwrap_or(new.len().min(old.len()));
    let to = if new.len() == old.len() {
        new.iter().zip(old).rposition(|(a, b)| a != b).map_or(from, |i| i + 1)
    } else {
        new.len()
    };
    file.write_all_at(&new[from..to.max(from)], from as u64)
        .map_err(|e| io_err("cannot write lock file", path, e))?;
    if sync {
        file.sync_data().map_err(|e| io_err("cannot sync lock file", path, e))?;
    }
    Ok(())
}

/// The grants a record's bytes hold at `now` (none when they cannot be read).
pub(crate) fn holders_of(bytes: &[u8], kind: Kind, now: u64) -> Vec<(OwnerToken, Role)> {
    let single_role = if kind == Kind::Election { Role::Leader } else { Role::Lock };
    if is_single(kind) {
        return match record::decode(bytes) {
            Ok(rec) if rec.live(now) => rec.owner.map(|o| (o, single_role)).into_iter().collect(),
            _ => Vec::new(),
        };
    }
    match table_record::decode(bytes, kind) {
        Ok(rec) => rec.table.holders(now).map(|(e, _)| (e.owner, e.role)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Retries `once` (a non-blocking try on a blocking thread) while it reports the record's
/// `flock` busy, sleeping on the runtime between tries, for at most `bound`.
async fn retry_while_busy<T, F, Fut>(bound: Duration, busy: impl Fn(&T) -> bool, mut once: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let give_up = lock_core::lease::add_saturating(Instant::now(), bound);
    let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(20));
    loop {
        let r = once().await?;
        let now = Instant::now();
        if !busy(&r) || now >= give_up {
            return Ok(r);
        }
        tokio::time::sleep_until(lock_core::lease::add_saturating(now, backoff.next_delay()).min(give_up))
            .await;
    }
}

/// A record file's bytes and its holders' metadata, read under one `flock`.
pub(crate) type RecordRead = (Vec<u8>, metafile::Holders);

/// Reads the bytes of the record file `path` and its holders' metadata under one shared
/// `flock`, waiting at most `bound` for it; `Ok(None)` when the file does not exist (never
/// used), `Err` (retryable) when the `flock` stayed busy.
pub(crate) async fn read(path: PathBuf, bound: Duration) -> Result<Option<RecordRead>> {
    let once = || {
        let path = path.clone();
        async move {
            tokio::task::spawn_blocking(move || -> Result<Option<Option<RecordRead>>> {
                let mut file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(None)),
                    Err(e) => return Err(io_err("cannot open lock file", &path, e)),
                };
                if !try_flock(&file, &path, true)? {
                    return Ok(None);
                }
                let bytes = read_bytes(&mut file, &path)?;
                Ok(Some(Some((bytes, metafile::read(&path)))))
            })
            .await
            .map_err(task_failed)?
        }
    };
    retry_while_busy(bound, Option::is_none, once).await?.ok_or_else(|| crate::error::busy(&path, bound))
}

/// Runs `op` on the record of `key` in `dir`, waiting at most `bound` for the record's
/// `flock` ([`OpResult::Busy`] if it stays held).
pub(crate) async fn run(dir: &Path, key: &LockKey, sync: bool, op: Op, bound: Duration) -> Result<OpResult> {
    let path = path_of(dir, key, op.mode());
    let full = key.full().to_owned();
    let once = || {
        let (path, full) = (path.clone(), full.clone());
        // An acquire whose caller goes away before the reply must not leave its grant behind:
        // the blocking task runs on regardless, so the undo waits for it and releases it.
        // A waiting writer's attempt refused for now leaves its intent: that is undone too
        // (the writer's own withdraw may have run before this task got the flock).
        let undo = match op {
            Op::Acquire { owner, mode, intent, .. } => Some((Op::Release { owner, mode }, intent.is_some())),
            _ => None,
        };
        let task = {
            let (path, full, op) = (path.clone(), full.clone(), op.clone());
            tokio::task::spawn_blocking(move || apply(&path, &full, sync, &op))
        };
        let undo = undo.map(|(release, intent)| Undo { path, key: full, sync, release, intent, bound });
        PendingOp { task: Some(task), undo }.join()
    };
    retry_while_busy(bound, |r| matches!(r, OpResult::Busy), once).await
}

/// A file operation in flight. Dropped before its task was joined (the caller was cancelled),
/// an acquire is undone once its task has finished: what it granted is released, and so is
/// the intent a waiting writer's refused attempt wrote.
struct PendingOp {
    task: Option<tokio::task::JoinHandle<Result<OpResult>>>,
    undo: Option<Undo>,
}

/// How a [`PendingOp`]'s acquire is undone.
struct Undo {
    /// The record's path and the key.
    path: PathBuf,
    key: String,
    sync: bool,
    release: Op,
    /// Whether the acquire writes an intent when refused (a waiting writer's).
    intent: bool,
    /// How long the operation waited for the record's `flock` (the undo waits at least as long).
    bound: Duration,
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
        let (Some(task), Some(Undo { path, key: full, sync, release, intent, bound })) =
            (self.task.take(), self.undo.take())
        else {
            return;
        };
        lock_core::cancel::spawn_detached(async move {
            let left = match task.await {
                Ok(Ok(OpResult::Acquired(_))) => true,
                Ok(Ok(OpResult::Held(_))) => intent,
                _ => false,
            };
            if left {
                // Waits for the flock as long as the operation could, and at least as long as
                // one may by default: nothing else will undo it before its TTL.
                let undone = retry_while_busy(
                    bound.max(crate::options::DEFAULT_REQUEST_TIMEOUT),
                    |r: &Result<OpResult>| matches!(r, Ok(OpResult::Busy)),
                    || {
                        let (p, full, release) = (path.clone(), full.clone(), release.clone());
                        async move {
                            let done =
                                tokio::task::spawn_blocking(move || apply(&p, &full, sync, &release)).await;
                            Ok(done.map_err(task_failed).and_then(|r| r))
                        }
                    },
                )
                .await;
                if matches!(undone, Ok(Ok(OpResult::Released))) {
                    waker(&path).notify_waiters();
                }
            }
        });
    }
}
