//! The single-host backend: one small file per key under a directory.
//!
//! Each key maps to `<dir>/<first 32 hex digits of sha256(key)>.lock`. The file holds one
//! line, rewritten in place under an exclusive `flock`:
//!
//! ```text
//! distlock1 <fence> <owner hex or -> <expires, CLOCK_MONOTONIC ns> <boot id> <key>
//! ```
//!
//! - Mutual exclusion: every read-modify-write of a record happens under `flock`, which the
//!   kernel drops when the process holding it dies, so a killed process never wedges a key.
//! - Expiry: CLOCK_MONOTONIC is one clock for every process of a boot; a record written under
//!   another boot id is expired (its holder died with that boot).
//! - Crash safety: a record is written with one `pwrite` at offset 0 and the file is then cut
//!   to length. A process killed between the two leaves the new line followed by a tail of the
//!   old one, and only the first line is read. With [`FileOptions::sync`] (the default) the
//!   write is flushed with `fdatasync` before a grant is returned, so the fencing counter also
//!   survives a power loss.
//! - If `/proc/sys/kernel/random/boot_id` cannot be read, the boot id is `unknown` and a
//!   record left by a holder that died with an earlier boot blocks its key until the
//!   machine's uptime passes that record's expiry; Linux always provides it.
//! - Files are never deleted: the fencing counter must outlive releases. One file per key
//!   ever locked, about 120 bytes each.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use lock_core::{
    async_trait, AcquireRequest, Attempt, BackendErrorKind, Capabilities, Error, ExtendOutcome, FencingToken,
    Instant, Lease, LockBackend, LockInfo, LockKey, OwnerToken, ReleaseOutcome, Result, WakeMode,
};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

const NAME: &str = "file";
const MAGIC: &str = "distlock1";

/// Options of a [`FileBackend`].
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Flush every grant to disk with `fdatasync` before returning it (default true). Without
    /// it a power loss may roll the fencing counter back; a killed process never does.
    pub sync: bool,
    /// The longest sleep between two attempts of a waiting acquire (default 20 ms). Waiters in
    /// the same process are also woken at once on release.
    pub poll_interval: Duration,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self { sync: true, poll_interval: Duration::from_millis(20) }
    }
}

/// Locks shared by the processes of one host through files in one directory.
///
/// # Behavior
/// - Every process (and every `FileBackend`) opened on the same directory sees the same
///   locks; point them at a local file system (`flock` is not reliable over NFS).
/// - A holder killed with `SIGKILL` blocks others for at most its TTL: the kernel drops its
///   `flock` at once, and its grant expires on CLOCK_MONOTONIC, shared by all processes.
/// - Fencing tokens increase per key across releases, expiries, crashes and reboots.
/// - Waiting polls with jittered backoff (at most [`FileOptions::poll_interval`] between
///   attempts, never past the holder's expiry); waiters in the same process wake at once.
#[derive(Debug, Clone)]
pub struct FileBackend {
    dir: Arc<PathBuf>,
    opts: FileOptions,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Record {
    fence: u64,
    owner: Option<OwnerToken>,
    expires_ns: u64,
    boot: String,
}

impl Record {
    fn live(&self, now_ns: u64) -> bool {
        self.owner.is_some() && self.boot == boot_id() && self.expires_ns > now_ns
    }

    /// Parses the first line of `bytes` (anything after it is a torn tail and is ignored,
    /// even if it is not UTF-8).
    fn parse(bytes: &[u8]) -> Option<Self> {
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

    fn render(&self, key: &str) -> String {
        let owner = self.owner.map_or_else(|| "-".to_owned(), |o| o.to_string());
        format!("{MAGIC} {} {} {} {} {}\n", self.fence, owner, self.expires_ns, self.boot, key)
    }
}

fn boot_id() -> &'static str {
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
fn mono_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

fn dur_ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// In-process wake-ups, shared by every `FileBackend` of this process, keyed by file path.
fn waker(path: &Path) -> Arc<Notify> {
    static WAKERS: OnceLock<Mutex<HashMap<PathBuf, Arc<Notify>>>> = OnceLock::new();
    let mut map = WAKERS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, n| Arc::strong_count(n) > 1);
    map.entry(path.to_owned()).or_default().clone()
}

fn io_err(what: &str, path: &Path, e: io::Error) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::PermissionDenied => BackendErrorKind::Auth,
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            BackendErrorKind::Unavailable
        }
        _ => BackendErrorKind::Other,
    };
    Error::backend(NAME, kind, format!("{what} {}: {e}", path.display()), e)
}

enum Op {
    Acquire { owner: OwnerToken, ttl: Duration },
    Extend { owner: OwnerToken, ttl: Duration },
    Release { owner: OwnerToken },
}

enum OpResult {
    Acquired(u64),
    Held(Duration),
    Extended,
    Released,
    NotHeld,
}

impl FileBackend {
    /// Opens (creating it if needed) the lock directory `dir`.
    ///
    /// # Errors
    /// A backend error when the directory cannot be created or written.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(dir, FileOptions::default())
    }

    /// Opens `dir` with options.
    ///
    /// # Errors
    /// A backend error when the directory cannot be created or written;
    /// [`Error::InvalidConfig`] for a zero poll interval.
    pub fn open_with(dir: impl Into<PathBuf>, opts: FileOptions) -> Result<Self> {
        if opts.poll_interval.is_zero() {
            return Err(Error::InvalidConfig("file backend: poll_interval must be greater than zero".into()));
        }
        let dir = dir.into();
        if dir.as_os_str().is_empty() {
            return Err(Error::InvalidConfig("file backend: the lock directory path is empty".into()));
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create lock directory", &dir, e))?;
        let probe = dir.join(".distlock-probe");
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&probe)
            .map_err(|e| io_err("cannot write in lock directory", &dir, e))?;
        Ok(Self { dir: Arc::new(dir), opts })
    }

    /// The directory used when none is named: `$DISTLOCK_DIR`, else
    /// `$XDG_STATE_HOME/distlock`, else `$HOME/.local/state/distlock`, else
    /// `/var/tmp/distlock`. All of these outlive a reboot, as the fencing counters must.
    pub fn default_dir() -> PathBuf {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(d) = env("DISTLOCK_DIR") {
            return d;
        }
        if let Some(d) = env("XDG_STATE_HOME") {
            return d.join("distlock");
        }
        if let Some(h) = env("HOME") {
            return h.join(".local/state/distlock");
        }
        PathBuf::from("/var/tmp/distlock")
    }

    /// Opens [`FileBackend::default_dir`].
    ///
    /// # Errors
    /// As [`FileBackend::open`].
    pub fn open_default() -> Result<Self> {
        Self::open(Self::default_dir())
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, key: &LockKey) -> PathBuf {
        let digest = Sha256::digest(key.full().as_bytes());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.lock"))
    }

    /// Opens (creating if needed) a record file. A new file's directory entry is flushed
    /// (with `sync`), so the counter it will hold cannot vanish with a power loss.
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
        Record::parse(&bytes).ok_or_else(|| {
            Error::backend_msg(
                NAME,
                BackendErrorKind::Protocol,
                format!("lock file {} is corrupt; refusing to reset its fencing counter", path.display()),
            )
        })
    }

    /// One read-modify-write of a record under an exclusive `flock` (blocking; run it on a
    /// blocking thread).
    fn apply(path: &Path, key: &str, sync: bool, op: Op) -> Result<OpResult> {
        let mut file = Self::open_file(path, sync)?;
        file.lock().map_err(|e| io_err("cannot lock", path, e))?;
        let mut rec = Self::read_record(&mut file, path)?;
        let now = mono_ns();
        let live = rec.live(now);
        let (result, dirty) = match op {
            Op::Acquire { owner, ttl } => {
                if live {
                    (OpResult::Held(Duration::from_nanos(rec.expires_ns - now)), false)
                } else {
                    rec.fence = rec.fence.checked_add(1).ok_or_else(|| {
                        Error::backend_msg(NAME, BackendErrorKind::Other, "fencing counter exhausted")
                    })?;
                    rec.owner = Some(owner);
                    rec.expires_ns = now.saturating_add(dur_ns(ttl));
                    rec.boot = boot_id().to_owned();
                    (OpResult::Acquired(rec.fence), true)
                }
            }
            Op::Extend { owner, ttl } => {
                if live && rec.owner == Some(owner) {
                    rec.expires_ns = now.saturating_add(dur_ns(ttl));
                    (OpResult::Extended, true)
                } else {
                    (OpResult::NotHeld, false)
                }
            }
            Op::Release { owner } => {
                if rec.owner == Some(owner) {
                    rec.owner = None;
                    rec.expires_ns = 0;
                    (if live { OpResult::Released } else { OpResult::NotHeld }, true)
                } else {
                    (OpResult::NotHeld, false)
                }
            }
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

    async fn run(&self, key: &LockKey, op: Op) -> Result<OpResult> {
        let path = self.path_of(key);
        let full = key.full().to_owned();
        let sync = self.opts.sync;
        // An acquire whose caller goes away before the reply must not leave its grant behind:
        // the blocking task runs on regardless, so the undo waits for it and releases what it
        // granted.
        let undo_owner = match op {
            Op::Acquire { owner, .. } => Some(owner),
            _ => None,
        };
        let task = {
            let (path, full) = (path.clone(), full.clone());
            tokio::task::spawn_blocking(move || Self::apply(&path, &full, sync, op))
        };
        PendingOp { task: Some(task), undo: undo_owner.map(|o| (path, full, sync, o)) }.join().await
    }
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
            return Err(Error::backend_msg(NAME, BackendErrorKind::Other, "lock file task already joined"));
        };
        let joined = task.await;
        self.task = None;
        joined.map_err(|e| Error::backend(NAME, BackendErrorKind::Other, "lock file task failed", e))?
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
                let undone = tokio::task::spawn_blocking(move || {
                    FileBackend::apply(&p, &full, sync, Op::Release { owner })
                })
                .await;
                if matches!(undone, Ok(Ok(OpResult::Released))) {
                    waker(&path).notify_waiters();
                }
            }
        });
    }
}

#[async_trait]
impl LockBackend for FileBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.wake = WakeMode::Poll { max_interval: self.opts.poll_interval };
        c.min_ttl = Duration::from_millis(1);
        c.expiry_margin = Duration::from_millis(50);
        c
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let sent = Instant::now();
        match self.run(&req.key, Op::Acquire { owner: req.owner, ttl: req.ttl }).await? {
            OpResult::Acquired(fence) => Ok(Attempt::Acquired(Lease::new(
                req.key.clone(),
                req.owner,
                FencingToken::new(fence),
                req.ttl,
                sent,
            ))),
            OpResult::Held(left) => Ok(Attempt::Held { expires_in: Some(left) }),
            _ => Err(Error::backend_msg(NAME, BackendErrorKind::Other, "unexpected file operation result")),
        }
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        // Waiters in this process wake at once on release; others poll.
        let wake = waker(&self.path_of(&req.key));
        lock_core::wait_for_lock(&[&wake], &req.key, deadline, self.opts.poll_interval, || {
            self.try_acquire(req)
        })
        .await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let sent = Instant::now();
        match self.run(lease.key(), Op::Extend { owner: lease.owner(), ttl }).await? {
            OpResult::Extended => {
                Ok(ExtendOutcome::Extended { valid_until: lock_core::lease::valid_until(sent, ttl) })
            }
            _ => Ok(ExtendOutcome::NotHeld),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let res = self.run(lease.key(), Op::Release { owner: lease.owner() }).await?;
        waker(&self.path_of(lease.key())).notify_waiters();
        Ok(match res {
            OpResult::Released => ReleaseOutcome::Released,
            _ => ReleaseOutcome::NotHeld,
        })
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        let path = self.path_of(key);
        let rec = tokio::task::spawn_blocking(move || -> Result<Option<Record>> {
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err("cannot open lock file", &path, e)),
            };
            file.lock_shared().map_err(|e| io_err("cannot lock", &path, e))?;
            Self::read_record(&mut file, &path).map(Some)
        })
        .await
        .map_err(|e| Error::backend(NAME, BackendErrorKind::Other, "lock file task failed", e))??;
        let now = mono_ns();
        Ok(rec.filter(|r| r.live(now)).map(|r| {
            LockInfo::new(
                Some(FencingToken::new(r.fence)),
                r.owner,
                Some(Duration::from_nanos(r.expires_ns - now)),
            )
        }))
    }
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
}
