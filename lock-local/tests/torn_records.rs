//! The file backend survives a torn or damaged record: a record file cut short at any byte,
//! garbled at any byte, or left half old, half new by a write that a power loss interrupted,
//! never yields a fencing token lower than one the file held. It either recovers (the next
//! grant's token is higher than every token the file ever held) or, when nothing trustworthy
//! is left, refuses with a typed error that names the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lock_core::{Error, LockClient};
use lock_local::{FileBackend, FileOptions};

fn lock_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "lock"))
        .collect();
    assert_eq!(files.len(), 1, "one record file expected: {files:?}");
    files.remove(0)
}

fn client(dir: &Path) -> LockClient {
    // Unsynced: the format is the same, and thousands of cases need no disk flushes.
    LockClient::new(FileBackend::connect(FileOptions::new(dir).sync(false)).expect("open"))
}

/// Takes and releases `name` `n` times; returns the last token.
async fn cycles(locks: &LockClient, name: &str, n: usize) -> u64 {
    let mut last = 0;
    for _ in 0..n {
        let g = locks.lock(name).acquire().await.expect("acquire");
        last = g.fencing_token().get();
        let _ = g.release().await.expect("release");
    }
    last
}

/// Writes `bytes` as the record file and tries the lock once: the token, or the error.
async fn try_with(dir: &Path, file: &Path, bytes: &[u8]) -> Result<Option<u64>, Error> {
    std::fs::write(file, bytes).expect("write the damaged record");
    let locks = client(dir);
    match locks.lock("k").ttl(Duration::from_secs(5)).try_acquire().await {
        Ok(Some(g)) => {
            let t = g.fencing_token().get();
            let _ = g.release().await.expect("release");
            Ok(Some(t))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A refusal must be typed, not retryable, and name the file.
fn check_refusal(e: &Error, file: &Path, what: &str) {
    assert!(matches!(e, Error::Backend { .. }), "{what}: {e:?}");
    assert!(!e.is_retryable(), "{what}: {e:?}");
    assert!(
        e.to_string().contains(&file.display().to_string()),
        "{what}: the error does not name the file: {e}"
    );
}

/// The smallest prefix of a record that still holds its whole fencing counter: `distlock1 `
/// and the 20 digits of the counter.
const COUNTER_END: usize = 30;

#[tokio::test]
async fn a_record_cut_short_at_any_byte_never_lowers_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locks = client(dir.path());
    let max = cycles(&locks, "k", 5).await;
    let file = lock_file(dir.path());
    let full = std::fs::read(&file).expect("read");
    for cut in 0..=full.len() {
        let what = format!("cut at byte {cut} of {}", full.len());
        match try_with(dir.path(), &file, &full[..cut]).await {
            Ok(Some(t)) => assert!(t > max, "{what}: token {t} is not above {max}, a token the file held"),
            Ok(None) => panic!("{what}: the record held no live grant, yet the lock reads as held"),
            Err(e) if cut < COUNTER_END => check_refusal(&e, &file, &what),
            Err(e) => panic!("{what}: the counter is still in the file, yet the key is refused: {e}"),
        }
    }
}

#[tokio::test]
async fn a_record_garbled_at_any_byte_never_lowers_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locks = client(dir.path());
    let max = cycles(&locks, "k", 5).await;
    let file = lock_file(dir.path());
    let full = std::fs::read(&file).expect("read");
    for at in 0..full.len() {
        for garbage in [0u8, b'0', b'9', b' ', b'\n', 0xff] {
            if full[at] == garbage {
                continue;
            }
            let mut bytes = full.clone();
            bytes[at] = garbage;
            let what = format!("byte {at} of {} set to {garbage:#04x}", full.len());
            match try_with(dir.path(), &file, &bytes).await {
                Ok(Some(t)) => assert!(t > max, "{what}: token {t} is not above {max}"),
                Ok(None) => panic!("{what}: the record held no live grant, yet the lock reads as held"),
                Err(e) => panic!("{what}: one damaged byte made the key refused: {e}"),
            }
        }
    }
    // Nothing left to trust: a typed refusal that names the file, never a reset.
    for (bytes, what) in [(vec![0u8; full.len()], "zeroed"), (b"not a lock record\n".to_vec(), "replaced")] {
        match try_with(dir.path(), &file, &bytes).await {
            Ok(t) => panic!("{what}: a record with nothing to trust was reset (got {t:?})"),
            Err(e) => check_refusal(&e, &file, what),
        }
    }
}

#[tokio::test]
async fn a_write_torn_by_a_power_loss_never_lowers_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locks = client(dir.path());
    let max = cycles(&locks, "k", 5).await;
    let file = lock_file(dir.path());
    let before = std::fs::read(&file).expect("read");
    // The next grant, with a TTL that has run out by the time the torn file is read...
    let g = locks.lock("k").ttl(lock_core::SHORTEST_TTL).acquire().await.expect("acquire");
    let granted_token = g.fencing_token().get();
    let lease = g.detach();
    let granted = std::fs::read(&file).expect("read");
    // ...and its release.
    let _ = locks.release_lease(&lease).await.expect("release");
    let released = std::fs::read(&file).expect("read");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(before.len(), granted.len(), "a grant changed the record's length");
    assert_eq!(granted.len(), released.len(), "a release changed the record's length");
    for k in 0..=granted.len() {
        // A grant torn after k bytes (it was never returned), and a release torn after k bytes.
        for (bytes, floor, what) in [
            ([&granted[..k], &before[k..]].concat(), max, "grant"),
            ([&released[..k], &granted[k..]].concat(), granted_token, "release"),
        ] {
            let what = format!("a {what} torn after {k} bytes");
            match try_with(dir.path(), &file, &bytes).await {
                Ok(Some(t)) => assert!(t > floor, "{what}: token {t} is not above {floor}"),
                Ok(None) => panic!("{what}: no live grant, yet the lock reads as held"),
                Err(e) => panic!("{what}: the key is refused: {e}"),
            }
        }
    }
}

#[tokio::test]
async fn records_are_written_in_place_and_never_shortened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locks = client(dir.path());
    let g = locks.lock("k").acquire().await.expect("acquire");
    let file = lock_file(dir.path());
    let len = std::fs::metadata(&file).expect("stat").len();
    let mut lease = g.detach();
    locks.extend_lease(&mut lease, Duration::from_secs(5)).await.expect("extend");
    assert_eq!(std::fs::metadata(&file).expect("stat").len(), len, "extend changed the record's length");
    let _ = locks.release_lease(&lease).await.expect("release");
    assert_eq!(std::fs::metadata(&file).expect("stat").len(), len, "release changed the record's length");
}

#[tokio::test]
async fn records_of_the_previous_format_are_read_and_upgraded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locks = client(dir.path());
    let _ = cycles(&locks, "k", 1).await;
    let file = lock_file(dir.path());
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    // As the previous release wrote it: one line, then (after a crash mid-write) a torn tail.
    let old = format!("distlock1 41 - 0 {} k\ntail of an older, longer lin", boot.trim());
    std::fs::write(&file, old).expect("write");
    let g = locks.lock("k").acquire().await.expect("acquire over a record of the previous format");
    assert_eq!(g.fencing_token().get(), 42);
    let _ = g.release().await.expect("release");
    // A live grant in the previous format excludes us.
    let held = format!("distlock1 50 {:032x} {} {} k\n", 7u128, u64::MAX, boot.trim());
    std::fs::write(&file, held).expect("write");
    assert!(locks.lock("k").try_acquire().await.expect("try").is_none(), "an old-format grant was ignored");
}
