//! The single-host backend: [`FileBackend`], one small file per key and primitive under a
//! directory (see [`files`](crate::files) for the mechanics, [`record`](crate::record) and
//! [`table_record`](crate::table_record) for the formats).

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, CounterPage, ExtendOutcome, FencingToken, Instant,
    Lease, ListPage, LockBackend, LockInfo, LockKey, Metadata, Mode, ReleaseOutcome, Result, UndoOnDrop,
    WakeMode,
};

use crate::error::{busy, damaged, io_err, mismatch, other, task_failed, NAME};
use crate::files::{self, path_of, waker, Op, OpResult};
use crate::listing;
use crate::options::FileOptions;
use crate::record::mono_ns;
use crate::table::Role;
use crate::table_record::SLOTS;

/// How long the last attempt of a waiting acquire, at its deadline, may wait for a busy
/// record's `flock`.
const LAST_TRY: Duration = Duration::from_millis(10);

/// How long a waiting writer that ends without the lock waits for its intent's withdrawal
/// before it returns (the withdrawal goes on in the background past it).
const WITHDRAW_WAIT: Duration = Duration::from_millis(100);

/// Locks shared by the processes of one host through files in one directory.
///
/// # Behavior
/// - Every process (and every `FileBackend`) opened on the same directory sees the same
///   locks; point them at a local file system (`flock` is not reliable over NFS).
/// - A holder killed with `SIGKILL` blocks others for at most its TTL: the kernel drops its
///   `flock` at once, and its grant expires on CLOCK_MONOTONIC, shared by all processes.
/// - Fencing tokens increase per key across releases, expiries, crashes and reboots: the
///   counter lives in the key's file, which is never deleted.
/// - Waiting polls with jittered backoff (at most [`FileOptions::poll_interval`] between
///   attempts, never past the holder's expiry); waiters in the same process wake at once.
/// - Nothing waits unboundedly for a record file's `flock`: a process that holds one and does
///   not let go (stopped in the middle of a write, or an operator's `flock(1)` on the file)
///   makes `try_acquire` report the lock held after at most
///   [`FileOptions::request_timeout`], a waiting acquire return `WaitTimedOut` by its deadline
///   plus at most that, and extend, release and inspect fail with a retryable error. No
///   thread is pinned meanwhile.
/// - A record torn by a power loss or damaged is recovered without ever lowering its fencing
///   counter, or refused with an error naming the file (the crate docs say how).
/// - Semaphores (at most 64 permits) and read-write locks (at most 64 readers at once, with
///   writer preference) keep their holders in one record file per name, under the same
///   `flock` and the same torn-write-safe format (see the crate docs). Multi-key locks are
///   taken one key at a time, in canonical order, by `lock_core`.
/// - Elections keep their leader in a lock record of their own (`.elect`); observers poll.
///   Every grant's holder metadata is kept in a side file beside its record; `list` reads the
///   directory (see the crate docs).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> lock_core::Result<()> {
/// use lock_core::LockClient;
/// use lock_local::{FileBackend, FileOptions};
///
/// let dir = std::env::temp_dir().join(format!("distlock-doc-{}", std::process::id()));
/// let locks = LockClient::new(FileBackend::connect(FileOptions::new(&dir))?);
/// // or, from a URL: FileBackend::connect(format!("file://{}", dir.display()).parse()?)
/// let guard = locks.lock("jobs/nightly").acquire().await?;
/// guard.release().await?;
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FileBackend {
    opts: Arc<FileOptions>,
}

/// The last default directory, under the world-writable `/var/tmp`: anyone could have made it.
const SHARED_FALLBACK: &str = "/var/tmp/distlock";

/// Refuses `dir` (the shared fallback) unless it belongs to this process's user and no other
/// user can write in it: another user who made it first could delete or replace its lock
/// files (restarting counters: tokens issued twice) or plant grants that never end.
fn check_own_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| io_err("cannot read lock directory", dir, e))?;
    let ours = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != ours || meta.mode() & 0o022 != 0 {
        return Err(lock_core::Error::InvalidConfig(format!(
            "lock directory {}: not a directory of this user (uid {ours}) that only it can write in (owner uid {}, mode {:o}); \
             set DISTLOCK_DIR or name a directory (file:///PATH)",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

impl FileBackend {
    /// Opens (creating it if needed) the lock directory of `opts`. Synchronous: it creates the
    /// directory and checks that it can be written.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](lock_core::Error::InvalidConfig) for invalid options (see
    /// [`FileOptions::validate`]), or when the directory is the shared fallback
    /// `/var/tmp/distlock` and another user owns it or can write in it; a backend error when
    /// the directory cannot be created or written (also when its probe file `.distlock-probe`
    /// is a symbolic link, which is not followed).
    pub fn connect(opts: FileOptions) -> Result<Self> {
        opts.validate()?;
        let dir = &opts.dir;
        if dir == Path::new(SHARED_FALLBACK) {
            // Writable by this user alone whatever the umask, and refused if someone else's.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| io_err("cannot create lock directory", dir, e))?;
            check_own_dir(dir)?;
        } else {
            std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create lock directory", dir, e))?;
        }
        // Not through a symbolic link planted in the directory: that would create (or touch)
        // a file wherever it points, with this process's rights.
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(dir.join(".distlock-probe"))
            .map_err(|e| io_err("cannot write in lock directory", dir, e))?;
        Ok(Self { opts: Arc::new(opts) })
    }

    /// The directory used when none is named: `$DISTLOCK_DIR`, else
    /// `$XDG_STATE_HOME/distlock`, else `$HOME/.local/state/distlock`, else
    /// `/var/tmp/distlock`. All of these outlive a reboot, as the fencing counters must; stock
    /// `systemd-tmpfiles` deletes files under `/var/tmp` after 30 days unused, which restarts
    /// their keys' counters: set `DISTLOCK_DIR` where that matters.
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
        PathBuf::from(SHARED_FALLBACK)
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    async fn run(&self, key: &LockKey, op: Op) -> Result<OpResult> {
        files::run(&self.opts.dir, key, self.opts.sync, op, self.opts.request_timeout).await
    }

    /// An extend or release that found the record's `flock` held throughout is an error.
    async fn run_or_busy(&self, key: &LockKey, op: Op) -> Result<OpResult> {
        let mode = op.mode();
        match self.run(key, op).await? {
            OpResult::Busy => Err(busy(&path_of(&self.opts.dir, key, mode), self.opts.request_timeout)),
            r => Ok(r),
        }
    }

    /// A release (of a grant or a waiting writer's intent) that wakes this process's waiters.
    async fn release_op(&self, key: &LockKey, op: Op) -> Result<OpResult> {
        let mode = op.mode();
        let res = self.run_or_busy(key, op).await?;
        waker(&path_of(&self.opts.dir, key, mode)).notify_waiters();
        Ok(res)
    }

    /// One attempt, waiting at most `bound` for the record's `flock`; a record locked by
    /// another process throughout reads as held (its holder is acquiring, extending or
    /// releasing, or is an operator's `flock(1)`). `intent`: for a waiting writer, how long
    /// its intent lasts.
    async fn attempt(
        &self,
        req: &AcquireRequest,
        bound: Duration,
        intent: Option<Duration>,
    ) -> Result<Attempt> {
        let sent = Instant::now();
        let meta = Some(req.metadata.encode().into());
        let op = Op::Acquire { owner: req.owner, ttl: req.ttl, mode: req.mode, intent, meta };
        match files::run(&self.opts.dir, &req.key, self.opts.sync, op, bound).await? {
            OpResult::Acquired(fence) => Ok(Attempt::Acquired(
                Lease::new(req.key.clone(), req.owner, FencingToken::new(fence), req.ttl, sent)
                    .with_mode(req.mode),
            )),
            OpResult::Held(left) => Ok(Attempt::Held { expires_in: left }),
            OpResult::Busy => Ok(Attempt::Held { expires_in: None }),
            OpResult::Mismatch(held) => Err(mismatch(req, held)),
            _ => Err(other("unexpected file operation result")),
        }
    }

    /// The unexpired holders of `key`'s primitive of `mode`, with their metadata.
    async fn read_holders(&self, key: &LockKey, mode: Mode) -> Result<Vec<LockInfo>> {
        let kind = Role::of(mode, NAME)?.kind();
        let path = path_of(&self.opts.dir, key, mode);
        let Some((bytes, meta)) = files::read(path.clone(), self.opts.request_timeout).await? else {
            return Ok(vec![]);
        };
        listing::infos(&bytes, meta, kind, mono_ns()).map_err(|why| damaged(&path, why))
    }

    /// How long a waiting writer's intent lasts unless its next attempt refreshes it: twice the
    /// longest gap between two attempts (a poll interval and a busy record's bound). A writer
    /// that dies while waiting blocks new readers for at most this long.
    pub fn writer_intent_ttl(&self) -> Duration {
        self.opts.poll_interval.saturating_add(self.opts.request_timeout).saturating_mul(2)
    }
}

#[async_trait]
impl LockBackend for FileBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_wake(WakeMode::Poll { max_interval: self.opts.poll_interval })
            .with_min_ttl(lock_core::SHORTEST_TTL)
            .with_expiry_margin(Duration::from_millis(50))
            .with_max_permits(SLOTS as u32)
            .with_read_write(true)
            .with_writer_preference(true)
            .with_elections(true)
            .with_listing(true)
            .with_holder_metadata(true)
            .with_fencing_counters(true)
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.attempt(req, self.opts.request_timeout, None).await
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        // Waiters in this process wake at once on release; others poll. No attempt waits for
        // a busy record's flock past the deadline (the last one gets a short try).
        let wake = waker(&path_of(&self.opts.dir, &req.key, req.mode));
        let intent = (req.mode == Mode::Write).then(|| self.writer_intent_ttl());
        // A waiting writer that ends without the lock (dropped, timed out, failed) withdraws
        // its intent, so readers do not wait for it to expire.
        let withdraw = || {
            let (this, key, owner) = (self.clone(), req.key.clone(), req.owner);
            async move {
                let _ = this.release_op(&key, Op::Release { owner, mode: Mode::Write }).await;
            }
        };
        let undo = intent.map(|_| UndoOnDrop::new(withdraw()));
        let res = lock_core::wait_for_lock(&[&wake], &req.key, deadline, self.opts.poll_interval, || {
            let left = deadline.saturating_duration_since(Instant::now());
            self.attempt(req, self.opts.request_timeout.min(left.max(LAST_TRY)), intent)
        })
        .await;
        if let Some(undo) = undo {
            if res.is_err() {
                // Withdrawn before the error returns, unless a foreign `flock` keeps the record
                // longer than WITHDRAW_WAIT: then in the background, so the deadline is not
                // overrun by a whole flock wait.
                let _ = tokio::time::timeout(WITHDRAW_WAIT, tokio::spawn(withdraw())).await;
            }
            undo.disarm();
        }
        res
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let sent = Instant::now();
        let op = Op::Extend { owner: lease.owner(), ttl, mode: lease.mode() };
        match self.run_or_busy(lease.key(), op).await? {
            OpResult::Extended => {
                Ok(ExtendOutcome::Extended { valid_until: lock_core::lease::valid_until(sent, ttl) })
            }
            _ => Ok(ExtendOutcome::NotHeld),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let res =
            self.release_op(lease.key(), Op::Release { owner: lease.owner(), mode: lease.mode() }).await?;
        Ok(match res {
            OpResult::Released => ReleaseOutcome::Released,
            _ => ReleaseOutcome::NotHeld,
        })
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        Ok(self.read_holders(key, Mode::Exclusive).await?.into_iter().next())
    }

    async fn holders(&self, key: &LockKey, mode: Mode) -> Result<Vec<LockInfo>> {
        Role::of(mode, NAME)?;
        self.read_holders(key, mode).await
    }

    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<ExtendOutcome> {
        let op = Op::SetMeta { owner: lease.owner(), mode: lease.mode(), meta: metadata.encode().into() };
        Ok(match self.run_or_busy(lease.key(), op).await? {
            OpResult::Extended => ExtendOutcome::Extended { valid_until: lease.valid_until() },
            _ => ExtendOutcome::NotHeld,
        })
    }

    async fn list(&self, prefix: &str, cursor: Option<String>, limit: usize) -> Result<ListPage> {
        let (dir, prefix) = (self.opts.dir.clone(), prefix.to_owned());
        tokio::task::spawn_blocking(move || listing::list_page(&dir, &prefix, cursor.as_deref(), limit))
            .await
            .map_err(task_failed)?
    }

    async fn fencing_counters(
        &self,
        prefix: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<CounterPage> {
        let (dir, prefix) = (self.opts.dir.clone(), prefix.to_owned());
        tokio::task::spawn_blocking(move || listing::counters_page(&dir, &prefix, cursor.as_deref(), limit))
            .await
            .map_err(task_failed)?
    }

    /// Raises the counter in the key's record file (created if needed), flushed with `sync`.
    async fn raise_fencing_counter(
        &self,
        key: &LockKey,
        mode: Mode,
        at_least: FencingToken,
    ) -> Result<FencingToken> {
        crate::table::raisable(NAME, at_least.get())?;
        match self.run_or_busy(key, Op::Raise { mode, at_least: at_least.get() }).await? {
            OpResult::Raised(f) => Ok(FencingToken::new(f)),
            _ => Err(other("unexpected file operation result")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A probe file planted as a symbolic link is not followed: nothing is created where it
    /// points (a root service's connect created any file a local user named).
    #[test]
    fn a_planted_probe_link_is_not_followed() {
        let d = tempfile::tempdir().expect("tempdir");
        let victim = d.path().join("victim");
        let locks = d.path().join("locks");
        std::fs::create_dir(&locks).expect("mkdir");
        std::os::unix::fs::symlink(&victim, locks.join(".distlock-probe")).expect("symlink");
        let connected = FileBackend::connect(FileOptions::new(&locks));
        assert!(connected.is_err(), "connected through a planted link");
        assert!(!victim.exists(), "the probe followed the link and created {}", victim.display());
    }

    /// The shared fallback's check: a directory others can write in, or not a directory, is
    /// refused; one of this user's own is not.
    #[test]
    fn a_directory_others_can_write_in_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        check_own_dir(d.path()).expect("our own directory");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let refused = check_own_dir(d.path());
        assert!(matches!(refused, Err(lock_core::Error::InvalidConfig(_))), "{refused:?}");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o775)).expect("chmod");
        assert!(check_own_dir(d.path()).is_err());
        let file = d.path().join("f");
        std::fs::write(&file, b"").expect("write");
        assert!(check_own_dir(&file).is_err());
    }
}
