//! Listing on DynamoDB, on both emulators: pages of a scan (the cursor carries the last key,
//! with the sort key when the table has one), every primitive with its mode, nothing released,
//! nothing of another namespace sharing the table; and the fencing counters a migration reads
//! and raises.

mod support;

use std::time::Duration;

use lock_core::{LockBackend, Mode};
use lock_dynamo::{DynamoBackend, DynamoOptions};
use support::Emulator;

async fn pages_list_every_grant_once(emulator: Emulator) {
    let shared = |ns: &str| DynamoOptions::new("list_shared").sort_key("ns", ns);
    for (opts, neighbour) in
        [(DynamoOptions::new("list_locks"), None), (shared("team-a"), Some(shared("team-b")))]
    {
        let emu = emulator.with_table(&opts).await;
        let backend = DynamoBackend::with_client(support::client(&emu.endpoint), opts.clone());
        let c = lock_core::LockClient::new(backend.clone());
        let base = support::key("list", "");
        let mut held = Vec::new();
        for i in 0..4 {
            held.push(
                c.lock(&format!("{base}lock-{i}"))
                    .ttl(Duration::from_secs(30))
                    .acquire()
                    .await
                    .expect("lock"),
            );
        }
        held.push(
            c.semaphore(&format!("{base}sem"), 3)
                .ttl(Duration::from_secs(30))
                .acquire()
                .await
                .expect("permit"),
        );
        held.push(
            c.semaphore(&format!("{base}sem"), 3)
                .ttl(Duration::from_secs(30))
                .acquire()
                .await
                .expect("permit"),
        );
        held.push(
            c.read_lock(&format!("{base}rw")).ttl(Duration::from_secs(30)).acquire().await.expect("reader"),
        );
        held.push(
            c.election(&format!("{base}vote"))
                .ttl(Duration::from_secs(30))
                .campaign("me")
                .await
                .expect("leader"),
        );
        let gone = c.lock(&format!("{base}gone")).acquire().await.expect("lock");
        gone.release().await.expect("release");
        if neighbour.is_none() {
            // An item under the prefix that is not a grant (another user of the table, or
            // damage): skipped, never failing the whole listing.
            use aws_sdk_dynamodb::types::AttributeValue as V;
            support::client(&emu.endpoint)
                .put_item()
                .table_name("list_locks")
                .item("lock_key", V::S(format!("{base}foreign")))
                .item("owner", V::N("7".into()))
                .send()
                .await
                .expect("put a foreign item");
        }
        if let Some(neighbour) = neighbour {
            // Another namespace of the same table: never listed by this one.
            let other = support::locks(&emu.endpoint, neighbour);
            let g = other
                .lock(&format!("{base}other"))
                .ttl(Duration::from_secs(30))
                .acquire()
                .await
                .expect("lock");
            let _ = g.detach();
        }
        let listed = in_pages_of_one(&backend, &base).await;
        let mut keys: Vec<String> = listed.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        let mut want: Vec<String> = held.iter().map(|g| g.key().to_owned()).collect();
        want.sort();
        assert_eq!(keys, want, "listed {listed:?}");
        let mode_of = |suffix: &str| {
            listed.iter().filter(|(k, _)| k.ends_with(suffix)).map(|(_, i)| i.mode).collect::<Vec<_>>()
        };
        assert_eq!(mode_of("sem"), vec![Mode::Permit { limit: 3 }; 2]);
        assert_eq!(mode_of("rw"), vec![Mode::Read]);
        assert_eq!(mode_of("vote"), vec![Mode::Leader]);
        assert!(listed.iter().all(|(_, i)| i.metadata.is_some() && i.fencing_token.is_some()));
        assert_eq!(c.list(&base).await.expect("list").len(), listed.len());
        for g in held {
            g.release().await.expect("release");
        }
        assert!(c.list(&base).await.expect("list").is_empty(), "released grants are listed");
    }
}

/// Every page of `list(prefix)`, one item evaluated per page: the cursor goes round every item
/// of the table.
async fn in_pages_of_one(backend: &DynamoBackend, prefix: &str) -> Vec<(String, lock_core::LockInfo)> {
    let (mut listed, mut cursor, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = backend.list(prefix, cursor, 1).await.expect("page");
        listed.extend(page.entries);
        pages += 1;
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert!(pages > 1, "one page only");
    listed
}

/// The fencing counters, as a migration's token carry-over reads and raises them: every
/// primitive's counter under a prefix, raised so that the next grant is fenced above a
/// given token, never lowered, made for a name that never had one.
async fn counters_are_read_and_raised_never_lowered(emulator: Emulator) {
    let opts = DynamoOptions::new("list_counters");
    let emu = emulator.with_table(&opts).await;
    let backend = DynamoBackend::with_client(support::client(&emu.endpoint), opts);
    let c = lock_core::LockClient::new(backend.clone());
    let base = support::key("counters", "");
    let ttl = Duration::from_secs(30);
    let lock = c.lock(&format!("{base}lock")).ttl(ttl).acquire().await.expect("lock");
    let permit = c.semaphore(&format!("{base}sem"), 2).ttl(ttl).acquire().await.expect("permit");
    let writer = c.write_lock(&format!("{base}rw")).ttl(ttl).acquire().await.expect("writer");
    let leader = c.election(&format!("{base}elect")).ttl(ttl).campaign("v").await.expect("leader");
    let full = |n: &str| lock_core::LockKey::new(&format!("{base}{n}")).expect("key").full().to_owned();
    let page = backend.fencing_counters(&base, None, 100).await.expect("counters");
    let mut found: Vec<(String, Mode, u64)> =
        page.counters.iter().map(|(k, m, t)| (k.clone(), *m, t.get())).collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![
        (full("elect"), Mode::Leader, leader.fencing_token().get()),
        (full("lock"), Mode::Exclusive, lock.fencing_token().get()),
        (full("rw"), Mode::Write, writer.fencing_token().get()),
        (full("sem"), Mode::Permit { limit: 2 }, permit.fencing_token().get()),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(found, want, "every primitive's counter, at its last grant's token");
    for g in [lock, permit, writer, leader] {
        g.release().await.expect("release");
    }

    // Raised: the next grant is above; a lower target leaves it; a fresh name gets one.
    let key = lock_core::LockKey::new(&format!("{base}lock")).expect("key");
    let high = lock_core::FencingToken::new(1_000_000);
    assert_eq!(backend.raise_fencing_counter(&key, Mode::Exclusive, high).await.expect("raise"), high);
    let again = backend.raise_fencing_counter(&key, Mode::Exclusive, lock_core::FencingToken::new(5)).await;
    assert_eq!(again.expect("raise lower"), high, "a lower target lowered the counter");
    let next = c.lock(&format!("{base}lock")).ttl(ttl).acquire().await.expect("lock after the raise");
    assert!(next.fencing_token() > high, "{:?} after raising to {high:?}", next.fencing_token());
    next.release().await.expect("release");
    // A counter raised to the top would overflow at the next grants (and break the item for
    // every later look): refused before anything is sent.
    for top in [u64::MAX, i64::MAX as u64] {
        let e = backend.raise_fencing_counter(&key, Mode::Exclusive, lock_core::FencingToken::new(top)).await;
        assert!(matches!(e, Err(lock_core::Error::Unsupported { .. })), "raise to {top}: {e:?}");
    }
    let next = c.lock(&format!("{base}lock")).ttl(ttl).acquire().await.expect("lock after a refused raise");
    next.release().await.expect("release");
    for (name, mode) in [("fresh-sem", Mode::Permit { limit: 3 }), ("fresh-rw", Mode::Write)] {
        let key = lock_core::LockKey::new(&format!("{base}{name}")).expect("key");
        backend.raise_fencing_counter(&key, mode, high).await.expect("raise a fresh counter");
    }
    let permit = c.semaphore(&format!("{base}fresh-sem"), 3).ttl(ttl).acquire().await.expect("permit");
    assert!(permit.fencing_token() > high);
    let reader = c.read_lock(&format!("{base}fresh-rw")).ttl(ttl).acquire().await.expect("reader");
    assert!(reader.fencing_token() > high);
}

on_each_emulator!(pages_list_every_grant_once, counters_are_read_and_raised_never_lowered);
