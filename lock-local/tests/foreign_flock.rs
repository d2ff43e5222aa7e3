//! A process that holds a record file's `flock` and does not let go (an operator's `flock(1)`,
//! a holder stopped with SIGSTOP in the middle of a write) never blocks an acquire past its
//! deadline: `try_acquire` answers within a short bound, a waiting acquire returns
//! `WaitTimedOut` within its wait plus that bound, and no blocking thread stays pinned.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lock_core::{Error, Instant, LockClient};
use lock_local::{FileBackend, FileOptions};

/// How long the file backend may wait for a record's flock in one operation (its default).
const BOUND: Duration = Duration::from_millis(500);
const SLACK: Duration = Duration::from_millis(500);

fn lock_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "lock"))
        .collect()
}

/// Starts `flock -x -o FILE sleep 30` (util-linux; `-o`: the lock stays with `flock` itself,
/// not its child, so killing it lets go) and waits until it holds the flock.
async fn foreign_holder(file: &Path) -> tokio::process::Child {
    let child = tokio::process::Command::new("flock")
        .args(["-x", "-o"])
        .arg(file)
        .args(["sleep", "30"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("flock(1) from util-linux");
    let probe = File::open(file).expect("open the record file");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match probe.try_lock() {
            Ok(()) => {
                probe.unlock().expect("unlock");
                assert!(Instant::now() < deadline, "flock(1) never took the file");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => return child,
            Err(std::fs::TryLockError::Error(e)) => panic!("probe: {e}"),
        }
    }
}

#[test]
fn a_foreign_flock_holder_never_blocks_an_acquire_past_its_deadline() {
    // One blocking thread: if an operation stayed pinned behind the foreign flock, every other
    // file operation of this runtime would queue behind it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let locks = LockClient::new(FileBackend::connect(FileOptions::new(dir.path())).expect("open"));
        let first = locks.lock("k").acquire().await.expect("acquire");
        let t1 = first.fencing_token();
        let _ = first.release().await.expect("release");
        let file = lock_files(dir.path()).pop().expect("the record file");
        let mut holder = foreign_holder(&file).await;

        let start = Instant::now();
        let tried = tokio::time::timeout(Duration::from_secs(5), locks.lock("k").try_acquire()).await;
        let took = start.elapsed();
        let tried = tried.expect("try_acquire blocked behind a foreign flock for 5 s");
        assert!(matches!(tried, Ok(None)), "a foreign flock holder should read as held: {tried:?}");
        assert!(took < BOUND + SLACK, "try_acquire took {took:?}");

        let wait = Duration::from_millis(300);
        let start = Instant::now();
        let waited = tokio::time::timeout(Duration::from_secs(5), locks.lock("k").wait(wait).acquire()).await;
        let took = start.elapsed();
        let waited = waited.expect("a waiting acquire blocked behind a foreign flock for 5 s");
        assert!(matches!(waited, Err(Error::WaitTimedOut { .. })), "{waited:?}");
        assert!(took < wait + BOUND + SLACK, "a {wait:?} wait returned after {took:?}");

        // No blocking thread is left pinned: another key's operations go through at once.
        let other = tokio::time::timeout(Duration::from_secs(2), locks.lock("other").acquire())
            .await
            .expect("a blocking thread stayed pinned behind the foreign flock")
            .expect("acquire another key");
        let _ = other.release().await.expect("release");

        holder.start_kill().expect("kill flock(1)");
        holder.wait().await.expect("reap");
        let g = locks.lock("k").wait(Duration::from_secs(5)).acquire().await.expect("acquire once it let go");
        assert!(g.fencing_token() > t1);
        let _ = g.release().await.expect("release");
    });
}

/// A waiting writer that times out behind a foreign flock withdraws its intent without
/// overrunning its deadline by a whole flock wait: the withdraw goes on in the background
/// (it waited the request timeout for the flock before the error came).
#[test]
fn a_writer_timed_out_behind_a_foreign_flock_returns_near_its_deadline() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let locks = LockClient::new(FileBackend::connect(FileOptions::new(dir.path())).expect("open"));
        let w = locks.write_lock("rw").acquire().await.expect("write lock");
        let _ = w.release().await.expect("release");
        let file = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|e| e == "rw"))
            .expect("the record file");
        let mut holder = foreign_holder(&file).await;

        let wait = Duration::from_millis(300);
        let start = Instant::now();
        let waited = locks.write_lock("rw").wait(wait).acquire().await;
        let took = start.elapsed();
        assert!(matches!(waited, Err(Error::WaitTimedOut { .. })), "{waited:?}");
        assert!(took < wait + Duration::from_millis(350), "a {wait:?} wait returned after {took:?}");

        holder.start_kill().expect("kill flock(1)");
        holder.wait().await.expect("reap");
        let r =
            locks.read_lock("rw").wait(Duration::from_secs(5)).acquire().await.expect("read once it let go");
        let _ = r.release().await.expect("release");
    });
}
