//! Semaphores and read-write locks on the local backends: what the conformance suite cannot
//! see. The file record with many holders (a fixed size, the 64-slot bound), a torn or cut
//! semaphore record never lowering the fence, and a waiting writer's intent: lapsing when the
//! writer's process is killed (file) or its future forgotten (memory), withdrawn at once when
//! it is cancelled.
//!
//! The killed writer is this test binary run again with `DISTLOCK_CHILD_DIR` set: the ignored
//! test `child_waiting_writer` then waits for the write lock, says so, and sleeps until killed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lock_core::{Error, Instant, LockClient, Mode};
use lock_local::{FileBackend, FileOptions, MemoryBackend};
use tokio::io::{AsyncBufReadExt, BufReader};

const LONG: Duration = Duration::from_secs(60);

fn file_client(dir: &Path) -> LockClient {
    LockClient::new(FileBackend::connect(FileOptions::new(dir).sync(false)).expect("open"))
}

/// The one record file with extension `ext` in `dir`.
fn record_file(dir: &Path, ext: &str) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    assert_eq!(files.len(), 1, "one .{ext} record expected: {files:?}");
    files.remove(0)
}

#[tokio::test]
async fn the_file_record_holds_64_permits_at_a_fixed_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locks = file_client(dir.path());
    assert_eq!(locks.capabilities().max_permits, 64);
    let first = locks.semaphore("pool", 64).ttl(LONG).acquire().await.expect("permit");
    let file = record_file(dir.path(), "sem");
    let size = std::fs::metadata(&file).expect("stat").len();
    let mut guards = vec![first];
    for _ in 1..64 {
        guards.push(locks.semaphore("pool", 64).ttl(LONG).acquire().await.expect("permit"));
    }
    assert_eq!(std::fs::metadata(&file).expect("stat").len(), size, "the record grew with its holders");
    assert!(locks.semaphore("pool", 64).try_acquire().await.expect("try").is_none(), "a 65th permit of 64");
    let holders = locks.holders("pool", Mode::Permit { limit: 64 }).await.expect("holders");
    assert_eq!(holders.len(), 64);
    let text = std::fs::read_to_string(&file).expect("read");
    assert!(text.starts_with("distlock-set1 sem "), "{}", &text[..40]);
    assert!(text.ends_with("key pool\n"));
    for g in guards.drain(..10) {
        g.release().await.expect("release");
    }
    assert_eq!(std::fs::metadata(&file).expect("stat").len(), size, "the record was shortened");
    assert_eq!(locks.holders("pool", Mode::Permit { limit: 64 }).await.expect("holders").len(), 54);
    let e = locks.semaphore("pool", 65).acquire().await.expect_err("beyond the file backend's bound");
    assert!(matches!(e, Error::InvalidPermits { permits: 65, .. }), "{e:?}");
    assert!(locks.inspect("pool").await.expect("inspect").is_none(), "the semaphore took the lock's name");
}

#[tokio::test]
async fn a_65th_reader_waits_for_a_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locks = file_client(dir.path());
    let mut readers = Vec::new();
    for _ in 0..64 {
        readers.push(locks.read_lock("doc").ttl(LONG).acquire().await.expect("reader"));
    }
    assert!(
        locks.read_lock("doc").try_acquire().await.expect("try").is_none(),
        "a 65th reader fit in 64 slots"
    );
    let waiting = tokio::spawn({
        let locks = locks.clone();
        async move { locks.read_lock("doc").ttl(LONG).wait(Duration::from_secs(10)).acquire().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    readers.pop().expect("a reader").release().await.expect("release");
    let g = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken")
        .expect("task")
        .expect("reader");
    assert_eq!(locks.holders("doc", Mode::Read).await.expect("holders").len(), 64);
    g.release().await.expect("release");
}

/// Takes one permit of "s" (waiting at most `wait`) and releases it: its token, or the error.
async fn permit(locks: &LockClient) -> Result<Option<u64>, Error> {
    match locks.semaphore("s", 4).ttl(Duration::from_secs(5)).try_acquire().await? {
        Some(g) => {
            let t = g.fencing_token().get();
            g.release().await?;
            Ok(Some(t))
        }
        None => Ok(None),
    }
}

#[tokio::test]
async fn a_cut_or_damaged_semaphore_record_never_lowers_the_fence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locks = file_client(dir.path());
    let mut last = 0;
    for _ in 0..5 {
        last = permit(&locks).await.expect("permit").expect("free");
    }
    let file = record_file(dir.path(), "sem");
    let whole = std::fs::read(&file).expect("read");
    let copy = (whole.len() - "key s\n".len()) / 2;
    // Every byte of the first header, then a sample across the rest of the file.
    let cuts = (0..120).chain((120..whole.len()).step_by(37));
    for cut in cuts {
        for damage in [false, true] {
            let mut bytes = whole.clone();
            if damage {
                bytes[cut] ^= 0x55;
                if cut < copy {
                    bytes[cut + copy] ^= 0x55; // both copies damaged at the same place
                }
            } else {
                bytes.truncate(cut);
            }
            std::fs::write(&file, &bytes).expect("write the damaged record");
            match permit(&locks).await {
                Ok(Some(t)) => assert!(t > last, "cut={cut} damage={damage}: token {t} after {last}"),
                Ok(None) => panic!("cut={cut} damage={damage}: a free semaphore read as full"),
                Err(e) => {
                    assert!(!e.is_retryable(), "cut={cut} damage={damage}: {e:?}");
                    assert!(
                        e.to_string().contains(&file.display().to_string()),
                        "the error does not name the file: {e}"
                    );
                }
            }
            std::fs::write(&file, &whole).expect("restore");
        }
    }
}

#[tokio::test]
#[ignore = "run only as the child of a_writer_process_killed_while_waiting_blocks_readers_only_until_its_intent_lapses"]
async fn child_waiting_writer() {
    let Ok(dir) = std::env::var("DISTLOCK_CHILD_DIR") else { return };
    let locks = LockClient::new(FileBackend::connect(FileOptions::new(dir)).expect("open"));
    let waiting =
        tokio::spawn(async move { locks.write_lock("doc").wait(Duration::from_secs(3600)).acquire().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the writer was granted beside the parent's reader");
    println!("WAITING");
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[tokio::test]
async fn a_writer_process_killed_while_waiting_blocks_readers_only_until_its_intent_lapses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = FileBackend::connect(FileOptions::new(dir.path())).expect("open");
    let lapse = backend.writer_intent_ttl();
    let locks = LockClient::new(backend);
    let reader = locks.read_lock("doc").ttl(LONG).acquire().await.expect("reader");
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", "child_waiting_writer", "--ignored", "--nocapture", "--test-threads=1"])
        .env("DISTLOCK_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the writer");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the writer answered in time")
            .expect("read")
            .expect("the writer said it waits");
        if line.contains("WAITING") {
            break;
        }
    }
    assert!(
        locks.read_lock("doc").try_acquire().await.expect("try").is_none(),
        "a reader jumped the waiting writer"
    );
    child.start_kill().expect("kill");
    child.wait().await.expect("reap");
    let killed = Instant::now();
    let g = locks
        .read_lock("doc")
        .ttl(LONG)
        .wait(lapse * 3)
        .acquire()
        .await
        .expect("a reader once the intent lapsed");
    let took = killed.elapsed();
    assert!(took + Duration::from_millis(200) >= lapse, "the intent lapsed after {took:?}, before {lapse:?}");
    assert!(took <= lapse + Duration::from_millis(1500), "a killed writer blocked readers for {took:?}");
    g.release().await.expect("release");
    reader.release().await.expect("release");
}

/// A waiting writer is cancelled: a reader is admitted at once, not when the intent lapses.
/// (The reader and the writer are two clients, as two processes would be: a task that holds
/// a read lock and waits for the write lock of one client is refused with `AlreadyHeld`.)
async fn cancelled_writer_withdraws(locks: &LockClient, writer: &LockClient) {
    let reader = locks.read_lock("doc").ttl(LONG).acquire().await.expect("reader");
    let waiting = writer.write_lock("doc").ttl(LONG).wait(Duration::from_secs(30)).acquire();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), waiting).await.is_err(),
        "writer beside a reader"
    );
    let start = Instant::now();
    let g = locks.read_lock("doc").ttl(LONG).wait(Duration::from_secs(5)).acquire().await.expect("reader");
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "the cancelled writer's intent held readers {:?}",
        start.elapsed()
    );
    g.release().await.expect("release");
    reader.release().await.expect("release");
}

#[tokio::test]
async fn a_cancelled_waiting_writer_withdraws_its_intent_at_once() {
    let store = MemoryBackend::new();
    cancelled_writer_withdraws(&LockClient::new(store.clone()), &LockClient::new(store)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    cancelled_writer_withdraws(&file_client(dir.path()), &file_client(dir.path())).await;
}

/// A waiting writer cut while one of its attempts is in flight: the writer's withdraw and the
/// attempt run on two blocking threads, and when the withdraw got the record's flock first,
/// the attempt wrote the intent after it and nothing removed it (readers were refused until it
/// lapsed, about a second here). Polling every millisecond puts an attempt in flight at most
/// cuts; a reader must then get in at once, every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cut_during_an_attempt_leaves_no_intent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || {
        let opts = FileOptions::new(dir.path()).sync(false).poll_interval(Duration::from_millis(1));
        LockClient::new(FileBackend::connect(opts).expect("open"))
    };
    let (locks, writer) = (open(), open());
    let reader = locks.read_lock("doc").ttl(LONG).acquire().await.expect("reader");
    for round in 0..1000u32 {
        let mut waiting = Box::pin(writer.write_lock("doc").ttl(LONG).wait(LONG).acquire());
        // Until its intent is in place (a new reader refused).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            assert!(tokio::time::timeout(Duration::from_micros(300), &mut waiting).await.is_err());
            match locks.read_lock("doc").try_acquire().await.expect("try") {
                None => break,
                Some(g) => {
                    g.release().await.expect("release");
                }
            }
            assert!(std::time::Instant::now() < deadline, "round {round}: the writer left no intent");
        }
        let cut = Duration::from_micros(u64::from(round * 37 % 1500));
        assert!(tokio::time::timeout(cut, &mut waiting).await.is_err());
        drop(waiting);
        // The intent lapses after about a second: a reader refused for 700 ms met it.
        let g = locks.read_lock("doc").ttl(LONG).wait(Duration::from_millis(700)).acquire().await;
        let g = g.unwrap_or_else(|e| panic!("round {round} (cut after {cut:?}): a reader was refused: {e}"));
        g.release().await.expect("release");
    }
    reader.release().await.expect("release");
}

#[tokio::test(start_paused = true)]
async fn a_forgotten_waiting_writer_blocks_readers_only_until_its_intent_lapses() {
    let store = MemoryBackend::new();
    let (locks, writer) = (LockClient::new(store.clone()), LockClient::new(store));
    let reader = locks.read_lock("doc").ttl(LONG).acquire().await.expect("reader");
    let mut waiting = Box::pin(writer.write_lock("doc").ttl(LONG).wait(LONG).acquire());
    assert!(tokio::time::timeout(Duration::from_millis(100), &mut waiting).await.is_err());
    // The writer vanishes without its future being dropped: nothing withdraws the intent.
    std::mem::forget(waiting);
    assert!(locks.read_lock("doc").try_acquire().await.expect("try").is_none(), "a reader jumped the writer");
    tokio::time::advance(Duration::from_millis(1100)).await;
    let g = locks.read_lock("doc").try_acquire().await.expect("try").expect("the intent lapsed");
    g.release().await.expect("release");
    reader.release().await.expect("release");
}

/// A counter raised to `u64::MAX` would leave no greater token for any later grant: refused
/// with a typed error on both backends, the key still usable.
#[tokio::test]
async fn a_counter_raised_to_the_largest_token_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = FileBackend::connect(FileOptions::new(dir.path())).expect("open");
    let backends: [std::sync::Arc<dyn lock_core::LockBackend>; 2] =
        [std::sync::Arc::new(file), std::sync::Arc::new(MemoryBackend::new())];
    for backend in backends {
        let key = lock_core::LockKey::new("top").expect("key");
        let raised = backend
            .raise_fencing_counter(&key, Mode::Exclusive, lock_core::FencingToken::new(u64::MAX))
            .await;
        assert!(matches!(raised, Err(Error::Unsupported { .. })), "{}: {raised:?}", backend.name());
        let locks = LockClient::from_arc(backend);
        let g = locks.lock("top").try_acquire().await.expect("the key still takes grants").expect("free");
        g.release().await.expect("release");
    }
}

/// A reader of the file backend sees a new holder with its metadata, never without it: the
/// side file is read under the same shared `flock` as the record (it is rewritten under the
/// writer's exclusive one, after the record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_never_read_without_its_value() {
    let dir = tempfile::tempdir().expect("tmp");
    let (candidates, readers) = (file_client(dir.path()), file_client(dir.path()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cycles = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let g = candidates.election("e").campaign(format!("v{n}")).await.expect("campaign");
                g.release().await.expect("resign");
                n += 1;
            }
            n
        })
    };
    let (mut seen, deadline) = (0, Instant::now() + Duration::from_secs(3));
    while Instant::now() < deadline {
        if let Some(leader) = readers.election("e").leader().await.expect("leader") {
            assert!(leader.value.is_some(), "a leader read without its value: {leader:?}");
            seen += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = cycles.await.expect("join");
    assert!(seen > 50 && n > 50, "too few reads ({seen}) or terms ({n}) to tell");
}
