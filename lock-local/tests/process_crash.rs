//! The file backend across real processes: a holder process excludes this one, and a holder
//! killed with SIGKILL blocks others for at most its TTL, never less.
//!
//! The holder is this test binary run again with `DISTLOCK_CHILD_DIR` set: the ignored test
//! `child_holder` then takes the lock, prints its fencing token and sleeps until killed.

use std::process::Stdio;
use std::time::Duration;

use lock_core::{Instant, LockClient};
use lock_local::{FileBackend, FileOptions};
use tokio::io::{AsyncBufReadExt, BufReader};

const TTL: Duration = Duration::from_secs(2);

#[tokio::test]
#[ignore = "run only as the child of killed_holder_blocks_for_at_most_ttl"]
async fn child_holder() {
    let Ok(dir) = std::env::var("DISTLOCK_CHILD_DIR") else { return };
    let locks = LockClient::new(FileBackend::connect(FileOptions::new(dir)).expect("open"));
    let g = locks.lock("shared/job").ttl(TTL).acquire().await.expect("acquire");
    println!("ACQUIRED {}", g.fencing_token());
    let _lease = g.detach();
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[tokio::test]
async fn killed_holder_blocks_for_at_most_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current exe");
    let spawned = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .args(["--exact", "child_holder", "--ignored", "--nocapture", "--test-threads=1"])
        .env("DISTLOCK_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn holder");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let child_fence: u64 = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("holder answered in time")
            .expect("read")
            .expect("holder printed its token");
        // libtest prints "test child_holder ... " on the same line first.
        if let Some(i) = line.find("ACQUIRED ") {
            break line[i + "ACQUIRED ".len()..].trim().parse().expect("token");
        }
    };
    let seen = Instant::now();

    let locks = LockClient::new(FileBackend::connect(FileOptions::new(dir.path())).expect("open"));
    assert!(
        locks.lock("shared/job").try_acquire().await.expect("try").is_none(),
        "a live holder process did not exclude us"
    );
    let info = locks.inspect("shared/job").await.expect("inspect").expect("holder visible");
    assert_eq!(info.fencing_token.map(|f| f.get()), Some(child_fence));

    child.start_kill().expect("kill");
    child.wait().await.expect("reap");

    let g = locks.lock("shared/job").ttl(TTL).wait(TTL * 10).acquire().await.expect("takeover");
    let got = Instant::now();
    assert!(g.fencing_token().get() > child_fence, "takeover token must exceed the killed holder's");
    // Never before the holder's grant could have run out (it was sent after `spawned`)...
    assert!(
        got >= spawned + TTL - lock_core::drift_margin(TTL),
        "took over {:?} after spawn, before the TTL",
        got - spawned
    );
    // ...and at most TTL (+ margin for a loaded machine) after the holder surely had it.
    assert!(got - seen <= TTL + Duration::from_millis(1500), "a killed holder blocked for {:?}", got - seen);
    let _ = g.release().await.expect("release");
}

#[tokio::test]
async fn fencing_counter_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = {
        let locks = LockClient::new(FileBackend::connect(FileOptions::new(dir.path())).expect("open"));
        let g = locks.lock("k").acquire().await.expect("acquire");
        let t = g.fencing_token();
        let _ = g.release().await.expect("release");
        t
    };
    let locks = LockClient::new(FileBackend::connect(FileOptions::new(dir.path())).expect("reopen"));
    let g = locks.lock("k").acquire().await.expect("acquire");
    assert!(g.fencing_token() > first);
    let _ = g.release().await.expect("release");
}

#[tokio::test]
async fn corrupt_lock_file_is_an_error_not_a_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locks = LockClient::new(FileBackend::connect(FileOptions::new(dir.path())).expect("open"));
    let g = locks.lock("k").acquire().await.expect("acquire");
    let _ = g.release().await.expect("release");
    for entry in std::fs::read_dir(dir.path()).expect("ls") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|e| e == "lock") {
            std::fs::write(&p, "not a lock record").expect("corrupt");
        }
    }
    let err = locks.lock("k").acquire().await.expect_err("corrupt file must not be reset");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(!err.is_retryable());
}

#[test]
fn bad_directory_is_a_typed_error() {
    let e = FileBackend::connect(FileOptions::new("/proc/definitely/not/writable")).expect_err("must fail");
    assert!(e.to_string().contains("/proc/definitely"), "{e}");
    let e = FileBackend::connect(FileOptions::new("")).expect_err("empty path");
    assert!(matches!(e, lock_core::Error::InvalidConfig(_)), "{e}");
}
