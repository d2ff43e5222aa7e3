//! Read-write locks on DynamoDB, on both emulators, beyond the conformance suite: a waiting
//! writer's intent goes when the writer gives up (readers are served at once), and a crashed
//! waiting writer's intent is taken over like a crashed holder's grant, not kept for ever.

mod support;

use std::time::Duration;

use lock_core::{Instant, Mode};
use lock_dynamo::DynamoOptions;
use support::Emulator;

fn opts() -> DynamoOptions {
    DynamoOptions::new("rw_locks")
}

async fn a_writer_that_gives_up_withdraws_its_intent(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let (r, w) = (support::locks(&emu.endpoint, opts()), support::locks(&emu.endpoint, opts()));
    let name = support::key("rw", "give-up");
    let reader = r.read_lock(&name).ttl(Duration::from_secs(30)).acquire().await.expect("reader");
    // The writer waits (its intent blocks new readers), then gives up.
    let got =
        w.write_lock(&name).ttl(Duration::from_secs(30)).wait(Duration::from_millis(600)).acquire().await;
    assert!(got.is_err(), "a writer was granted beside a reader");
    // Its intent is gone: a new reader is granted at once.
    let second = r.read_lock(&name).ttl(Duration::from_secs(30)).try_acquire().await.expect("try");
    let second = second.expect("a reader was refused after the waiting writer gave up");
    // A dropped waiting writer withdraws too (in the background).
    let waiting = w.write_lock(&name).ttl(Duration::from_secs(30)).wait(Duration::from_secs(30)).acquire();
    assert!(tokio::time::timeout(Duration::from_millis(500), waiting).await.is_err());
    let start = Instant::now();
    loop {
        if let Some(g) = r.read_lock(&name).ttl(Duration::from_secs(30)).try_acquire().await.expect("try") {
            g.release().await.expect("release");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3), "a dropped writer's intent stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let holders = r.holders(&name, Mode::Read).await.expect("holders");
    assert_eq!(holders.len(), 2, "holders: {holders:?}");
    assert!(holders.iter().all(|h| h.mode == Mode::Read && h.metadata.is_some()));
    reader.release().await.expect("release");
    second.release().await.expect("release");
}

async fn a_crashed_waiting_writers_intent_is_taken_over(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let (r, w) = (support::locks(&emu.endpoint, opts()), support::locks(&emu.endpoint, opts()));
    let name = support::key("rw", "crashed-writer");
    let ttl = Duration::from_secs(1);
    let reader =
        r.read_lock(&name).ttl(Duration::from_secs(30)).auto_renew().acquire().await.expect("reader");
    // The writer waits long enough to leave its intent, then its process "crashes": the task
    // is aborted mid-wait and nothing of it runs again (no undo: the runtime ends with it).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let w2 = w.clone();
    let key = name.clone();
    std::thread::spawn(move || {
        rt.block_on(async move {
            let _ = tokio::time::timeout(
                Duration::from_millis(400),
                w2.write_lock(&key).ttl(ttl).wait(Duration::from_secs(30)).acquire(),
            )
            .await;
        });
        // Dropping the runtime here cancels whatever the undo spawned.
        drop(rt);
    })
    .join()
    .expect("writer thread");
    // The intent blocks new readers for now, and is taken over after at most two intent
    // leases (the writer's TTL here).
    let start = Instant::now();
    let blocked = r.read_lock(&name).ttl(Duration::from_secs(30)).try_acquire().await.expect("try");
    assert!(blocked.is_none(), "the waiting writer left no intent");
    let g = r.read_lock(&name).ttl(Duration::from_secs(30)).wait(Duration::from_secs(10)).acquire().await;
    let g = g.expect("a crashed writer's intent blocked readers for good");
    assert!(start.elapsed() <= ttl * 2 + Duration::from_millis(1500), "took {:?}", start.elapsed());
    g.release().await.expect("release");
    reader.release().await.expect("release");
}

/// More crashed readers than one write may remove (40): the writer still gets in, the stale
/// readers going in writes of their own first.
async fn a_writer_gets_past_more_crashed_readers_than_one_write_removes(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let (r, w) = (support::locks(&emu.endpoint, opts()), support::locks(&emu.endpoint, opts()));
    let name = support::key("rw", "many-crashed");
    for _ in 0..45 {
        let g = r.read_lock(&name).ttl(Duration::from_millis(300)).acquire().await.expect("reader");
        // Crashed: never renewed, never released.
        let _ = g.detach();
    }
    let g = w.write_lock(&name).ttl(Duration::from_secs(5)).wait(Duration::from_secs(15)).acquire().await;
    let g = g.expect("a writer never got past 45 crashed readers");
    g.release().await.expect("release");
}

on_each_emulator!(
    a_writer_that_gives_up_withdraws_its_intent,
    a_crashed_waiting_writers_intent_is_taken_over,
    a_writer_gets_past_more_crashed_readers_than_one_write_removes
);
