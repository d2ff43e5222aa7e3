//! Listing on DynamoDB, on both emulators: pages of a scan (the cursor carries the last key,
//! with the sort key when the table has one), every primitive with its mode, nothing released,
//! nothing of another namespace sharing the table.

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

on_each_emulator!(pages_list_every_grant_once);
