//! Options of the two backends, built in code or parsed from URLs.
//!
//! | URL | backend | options |
//! |---|---|---|
//! | `mem://` or `mem://NAME` | [`MemoryBackend::named`]: the same `NAME` shares one store within the process | |
//! | `file:///PATH` or `file://` | [`FileBackend`] in `PATH` (default: [`FileBackend::default_dir`]) | `sync=true\|false`, `poll=20ms`, `timeout=500ms` |

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lock_core::url::{BackendOptions, ConnectUrl};
use lock_core::{Error, LockBackend, Result};

use crate::{FileBackend, MemoryBackend};

/// How long one operation waits for a record's `flock` unless the options choose otherwise.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// Options of a [`FileBackend`]: its directory, whether grants are flushed to disk, how often
/// waiters poll, and how long one operation waits for a record file's `flock`.
///
/// [`FileOptions::default`] names [`FileBackend::default_dir`].
///
/// ```
/// use std::time::Duration;
/// use lock_local::FileOptions;
///
/// let opts = FileOptions::new("/var/lib/app/locks")
///     .sync(false)
///     .poll_interval(Duration::from_millis(5))
///     .request_timeout(Duration::from_millis(200));
/// assert!(opts.validate().is_ok());
/// let parsed: FileOptions = "file:///var/lib/app/locks?sync=false&poll=5ms&timeout=200ms".parse()?;
/// assert_eq!(parsed, opts);
/// # Ok::<(), lock_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOptions {
    pub(crate) dir: PathBuf,
    pub(crate) sync: bool,
    pub(crate) poll_interval: Duration,
    pub(crate) request_timeout: Duration,
}

impl FileOptions {
    /// Locks in the directory `dir` (created if missing), synced, polling at most 20 ms apart,
    /// waiting at most 500 ms for a record's `flock`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            sync: true,
            poll_interval: Duration::from_millis(20),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Flush every grant to disk with `fdatasync` before returning it (default true). Without
    /// it a power loss may roll the fencing counter back; a killed process never does.
    pub fn sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// The longest sleep between two attempts of a waiting acquire (default 20 ms). Waiters in
    /// the same process are also woken at once on release.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long one operation waits for a record file's `flock` while another process holds
    /// it (default 500 ms; URL `timeout=`). Records are locked for microseconds (a grant's
    /// `fdatasync` included, milliseconds), so this only matters when a process holds one and
    /// does not let go: one stopped in the middle of a write, or an operator's `flock(1)` on
    /// the file. Then `try_acquire` reports the lock held, a waiting acquire keeps waiting
    /// (never past its deadline), and extend, release and inspect fail with a retryable error.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The lock directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks the options without touching the file system.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty directory path, a zero poll interval or a zero
    /// request timeout.
    pub fn validate(&self) -> Result<()> {
        if self.poll_interval.is_zero() {
            return Err(Error::InvalidConfig("file backend: poll_interval must be greater than zero".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "file backend: request_timeout must be greater than zero".into(),
            ));
        }
        if self.dir.as_os_str().is_empty() {
            return Err(Error::InvalidConfig("file backend: the lock directory path is empty".into()));
        }
        Ok(())
    }
}

impl Default for FileOptions {
    /// [`FileOptions::new`] on [`FileBackend::default_dir`] (read from the environment now).
    fn default() -> Self {
        Self::new(FileBackend::default_dir())
    }
}

/// Which in-process store a `mem://` URL names: see [`MemoryBackend::named`].
///
/// The default is the store named `""` (what `mem://` connects to). A private store, shared
/// with nobody, is [`MemoryBackend::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryOptions {
    pub(crate) name: String,
}

impl MemoryOptions {
    /// The process-wide store called `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the options (every name is valid).
    ///
    /// # Errors
    /// None today; kept for symmetry with the other options types.
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }
}

#[lock_core::async_trait]
impl BackendOptions for FileOptions {
    /// `file:///PATH` or `file://` (the default directory); `file://localhost/PATH` too.
    fn from_url(u: &ConnectUrl) -> Result<Self> {
        u.expect_scheme(&["file"])?;
        u.check_options(&["sync", "poll", "timeout"])?;
        u.no_credentials("")?;
        if !u.hosts.is_empty() && u.hosts != ["localhost"] {
            return Err(u.error(format!(
                "file URLs name a local path: file:///absolute/path (got host '{}')",
                u.hosts.join(",")
            )));
        }
        let mut opts = if u.path.is_empty() || u.path == "/" {
            FileOptions::default()
        } else {
            FileOptions::new(&u.path)
        };
        if let Some(sync) = u.flag("sync")? {
            opts = opts.sync(sync);
        }
        if let Some(poll) = u.duration("poll")? {
            opts = opts.poll_interval(poll);
        }
        if let Some(timeout) = u.duration("timeout")? {
            opts = opts.request_timeout(timeout);
        }
        opts.validate().map_err(|e| match e {
            Error::InvalidConfig(m) => u.error(m),
            e => e,
        })?;
        Ok(opts)
    }

    fn validate(&self) -> Result<()> {
        FileOptions::validate(self)
    }

    async fn connect_dyn(self) -> Result<Arc<dyn LockBackend>> {
        Ok(Arc::new(FileBackend::connect(self)?))
    }
}

impl std::str::FromStr for FileOptions {
    type Err = Error;

    /// Parses `file:///PATH` or `file://`, with `?sync=&poll=&timeout=`.
    fn from_str(url: &str) -> Result<Self> {
        lock_core::url::parse(url)
    }
}

#[lock_core::async_trait]
impl BackendOptions for MemoryOptions {
    /// `mem://` or `mem://NAME` (the name is everything after `mem://`).
    fn from_url(u: &ConnectUrl) -> Result<Self> {
        u.expect_scheme(&["mem"])?;
        u.check_options(&[])?;
        u.no_credentials("")?;
        Ok(Self::named(format!("{}{}", u.hosts.join(","), u.path)))
    }

    fn validate(&self) -> Result<()> {
        MemoryOptions::validate(self)
    }

    async fn connect_dyn(self) -> Result<Arc<dyn LockBackend>> {
        Ok(Arc::new(MemoryBackend::named(&self.name)))
    }
}

impl std::str::FromStr for MemoryOptions {
    type Err = Error;

    /// Parses `mem://` or `mem://NAME`.
    fn from_str(url: &str) -> Result<Self> {
        lock_core::url::parse(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls() {
        let o: FileOptions = "file:///var/lib/x?sync=false&poll=5ms&namespace=app".parse().unwrap();
        assert_eq!(o, FileOptions::new("/var/lib/x").sync(false).poll_interval(Duration::from_millis(5)));
        let o: FileOptions = "file:///var/lib/x?timeout=2s".parse().unwrap();
        assert_eq!(o, FileOptions::new("/var/lib/x").request_timeout(Duration::from_secs(2)));
        let o: FileOptions = "file://localhost/var/lib/x".parse().unwrap();
        assert_eq!(o, FileOptions::new("/var/lib/x"));
        for url in ["file://", "file:///"] {
            let o: FileOptions = url.parse().unwrap();
            assert_eq!(o.dir(), FileBackend::default_dir(), "{url}");
            assert!(o.sync);
        }
    }

    #[test]
    fn mem_urls() {
        assert_eq!("mem://".parse::<MemoryOptions>().unwrap(), MemoryOptions::default());
        assert_eq!("mem://shared?ttl=5s".parse::<MemoryOptions>().unwrap().name(), "shared");
        assert_eq!("mem://a/b".parse::<MemoryOptions>().unwrap().name(), "a/b");
    }

    #[test]
    fn bad_urls_point_at_the_part() {
        let file = |u: &str| u.parse::<FileOptions>().unwrap_err().to_string();
        let mem = |u: &str| u.parse::<MemoryOptions>().unwrap_err().to_string();
        for (msg, expect) in [
            (file("file://somehost/x"), "file:///absolute/path (got host 'somehost')"),
            (file("file:///tmp/x?sync=maybe"), "not true or false"),
            (file("file:///tmp/x?poll=0ms"), "poll_interval must be greater than zero"),
            (file("file:///tmp/x?timeout=0s"), "request_timeout must be greater than zero"),
            (file("file:///tmp/x?poll=soon"), "option poll"),
            (file("file:///tmp/x?bogus=1"), "unknown option 'bogus'"),
            (file("file://u:hunter2@/tmp/x"), "no credentials"),
            (file("mem://x"), "scheme 'mem' is not one of file://"),
            (mem("mem://?bogus=1"), "unknown option 'bogus'"),
            (mem("mem://u:hunter2@x"), "no credentials"),
        ] {
            assert!(msg.contains(expect) && !msg.contains("hunter2"), "{msg}");
        }
    }

    #[test]
    fn validation() {
        assert!(FileOptions::new("").validate().unwrap_err().to_string().contains("empty"));
        assert!(FileOptions::new("/x").poll_interval(Duration::ZERO).validate().is_err());
        assert!(FileOptions::new("/x").request_timeout(Duration::ZERO).validate().is_err());
        FileOptions::default().validate().unwrap();
    }
}
