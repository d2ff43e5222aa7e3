//! The single-host backend: [`FileBackend`], one small file per key under a directory (see
//! [`files`](crate::files) for the mechanics and [`record`](crate::record) for the format).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, ExtendOutcome, FencingToken, Instant, Lease,
    LockBackend, LockInfo, LockKey, ReleaseOutcome, Result, WakeMode,
};

use crate::error::{busy, io_err, other, NAME};
use crate::files::{self, path_of, waker, Op, OpResult};
use crate::options::FileOptions;
use crate::record::mono_ns;

/// How long the last attempt of a waiting acquire, at its deadline, may wait for a busy
/// record's `flock`.
const LAST_TRY: Duration = Duration::from_millis(10);

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

impl FileBackend {
    /// Opens (creating it if needed) the lock directory of `opts`. Synchronous: it creates the
    /// directory and checks that it can be written.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](lock_core::Error::InvalidConfig) for invalid options (see
    /// [`FileOptions::validate`]); a backend error when the directory cannot be created or
    /// written.
    pub fn connect(opts: FileOptions) -> Result<Self> {
        opts.validate()?;
        let dir = &opts.dir;
        std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create lock directory", dir, e))?;
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".distlock-probe"))
            .map_err(|e| io_err("cannot write in lock directory", dir, e))?;
        Ok(Self { opts: Arc::new(opts) })
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

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    async fn run(&self, key: &LockKey, op: Op) -> Result<OpResult> {
        files::run(&self.opts.dir, key, self.opts.sync, op, self.opts.request_timeout).await
    }

    /// An extend or release that found the record's `flock` held throughout is an error.
    async fn run_or_busy(&self, key: &LockKey, op: Op) -> Result<OpResult> {
        match self.run(key, op).await? {
            OpResult::Busy => Err(busy(&path_of(&self.opts.dir, key), self.opts.request_timeout)),
            r => Ok(r),
        }
    }

    /// One attempt, waiting at most `bound` for the record's `flock`; a record locked by
    /// another process throughout reads as held (its holder is acquiring, extending or
    /// releasing, or is an operator's `flock(1)`).
    async fn attempt(&self, req: &AcquireRequest, bound: Duration) -> Result<Attempt> {
        let sent = Instant::now();
        let op = Op::Acquire { owner: req.owner, ttl: req.ttl };
        match files::run(&self.opts.dir, &req.key, self.opts.sync, op, bound).await? {
            OpResult::Acquired(fence) => Ok(Attempt::Acquired(Lease::new(
                req.key.clone(),
                req.owner,
                FencingToken::new(fence),
                req.ttl,
                sent,
            ))),
            OpResult::Held(left) => Ok(Attempt::Held { expires_in: Some(left) }),
            OpResult::Busy => Ok(Attempt::Held { expires_in: None }),
            _ => Err(other("unexpected file operation result")),
        }
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
            .with_min_ttl(Duration::from_millis(1))
            .with_expiry_margin(Duration::from_millis(50))
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.attempt(req, self.opts.request_timeout).await
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        // Waiters in this process wake at once on release; others poll. No attempt waits for
        // a busy record's flock past the deadline (the last one gets a short try).
        let wake = waker(&path_of(&self.opts.dir, &req.key));
        lock_core::wait_for_lock(&[&wake], &req.key, deadline, self.opts.poll_interval, || {
            let left = deadline.saturating_duration_since(Instant::now());
            self.attempt(req, self.opts.request_timeout.min(left.max(LAST_TRY)))
        })
        .await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let sent = Instant::now();
        match self.run_or_busy(lease.key(), Op::Extend { owner: lease.owner(), ttl }).await? {
            OpResult::Extended => {
                Ok(ExtendOutcome::Extended { valid_until: lock_core::lease::valid_until(sent, ttl) })
            }
            _ => Ok(ExtendOutcome::NotHeld),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let res = self.run_or_busy(lease.key(), Op::Release { owner: lease.owner() }).await?;
        waker(&path_of(&self.opts.dir, lease.key())).notify_waiters();
        Ok(match res {
            OpResult::Released => ReleaseOutcome::Released,
            _ => ReleaseOutcome::NotHeld,
        })
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        let rec = files::read(path_of(&self.opts.dir, key), self.opts.request_timeout).await?;
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
