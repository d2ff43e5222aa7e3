//! Semaphores on DynamoDB, on both emulators, beyond the conformance suite:
//! - a semaphore whose only holders crashed can be taken with another number of permits
//!   once they are taken over (a mismatch with live holders is refused);
//! - a semaphore item that would pass DynamoDB's 400 KB limit is a typed error, never a
//!   backend failure that looks retryable;
//! - a permit's metadata can be replaced while it is held.

mod support;

use std::time::Duration;

use lock_core::{Error, Metadata, Mode};
use lock_dynamo::{DynamoBackend, DynamoOptions};
use support::Emulator;

fn opts() -> DynamoOptions {
    DynamoOptions::new("semaphore_locks")
}

async fn crashed_holders_of_another_size_are_taken_over(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let (a, b) = (support::locks(&emu.endpoint, opts()), support::locks(&emu.endpoint, opts()));
    let name = support::key("sem", "resized");
    let ttl = Duration::from_secs(1);
    let crashed = a.semaphore(&name, 2).ttl(ttl).acquire().await.expect("a permit of 2").detach();
    match b.semaphore(&name, 3).ttl(ttl).acquire().await {
        Err(Error::PermitsMismatch { asked: 3, held: 2, .. }) => {}
        other => panic!("a live holder of 2 permits, asked for 3: {other:?}"),
    }
    // Once b has seen the crashed permit unchanged for a whole lease, it takes it over, and
    // the semaphore is b's size from then on.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let g =
        b.semaphore(&name, 3).ttl(ttl).try_acquire().await.expect("try").expect("taken over with 3 permits");
    assert!(g.fencing_token() > crashed.fencing_token());
    let holders = b.holders(&name, Mode::Permit { limit: 3 }).await.expect("holders");
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_eq!(holders[0].mode, Mode::Permit { limit: 3 });
    g.release().await.expect("release");
}

async fn an_item_past_the_size_limit_is_a_typed_error(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let c = support::locks(&emu.endpoint, opts());
    let name = support::key("sem", "big");
    let value = "v".repeat(lock_core::MAX_VALUE_LEN);
    let mut held = Vec::new();
    let err = loop {
        match c
            .semaphore(&name, lock_dynamo::MAX_PERMITS)
            .ttl(Duration::from_secs(60))
            .value(&value)
            .acquire()
            .await
        {
            Ok(g) => held.push(g.detach()),
            Err(e) => break e,
        }
        assert!(held.len() < 1000, "1,000 permits of 1 KiB values fit one item?");
    };
    assert!(matches!(err, Error::InvalidMetadata(_)) && !err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("400 KB"), "{err}");
    // With 1 KiB values about 300 permits fit; the semaphore still works for them.
    assert!(held.len() > 200, "only {} permits fit", held.len());
    for l in &held {
        c.release_lease(l).await.expect("release");
    }
    assert!(c.holders(&name, Mode::Permit { limit: 1000 }).await.expect("holders").is_empty());
}

async fn a_permits_metadata_can_be_replaced(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let backend = DynamoBackend::with_client(support::client(&emu.endpoint), opts());
    let c = lock_core::LockClient::new(backend.clone());
    let name = support::key("sem", "meta");
    let g =
        c.semaphore(&name, 2).ttl(Duration::from_secs(30)).value("first").acquire().await.expect("permit");
    let md = Metadata::current().with_value("second").expect("value");
    let out = lock_core::LockBackend::update_metadata(&backend, &g.lease(), &md).await.expect("update");
    assert!(matches!(out, lock_core::ExtendOutcome::Extended { .. }), "{out:?}");
    let holders = c.holders(&name, Mode::Permit { limit: 2 }).await.expect("holders");
    assert_eq!(holders[0].metadata.as_ref().and_then(|m| m.value.as_deref()), Some("second"));
    let lease = g.lease();
    g.release().await.expect("release");
    let out = lock_core::LockBackend::update_metadata(&backend, &lease, &md).await.expect("update");
    assert_eq!(out, lock_core::ExtendOutcome::NotHeld);
}

/// Deletes every item of the table whose partition key holds `name` (an operator's cleanup).
async fn delete_items_of(endpoint: &str, name: &str) {
    let raw = support::client(endpoint);
    let items =
        raw.scan().table_name("semaphore_locks").send().await.expect("scan").items.unwrap_or_default();
    for item in items {
        let Some(pk) = item.get("lock_key") else { continue };
        if pk.as_s().is_ok_and(|k| k.contains(name)) {
            raw.delete_item()
                .table_name("semaphore_locks")
                .key("lock_key", pk.clone())
                .send()
                .await
                .expect("delete");
        }
    }
}

/// A semaphore (or read-write lock) item deleted from outside after a client saw its entries
/// go stale: the client's next attempts do not keep asking to take over entries that are gone
/// (each such condition fails on a missing item), they create the item again.
async fn a_deleted_item_with_stale_entries_is_created_again(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let (a, b) = (support::locks(&emu.endpoint, opts()), support::locks(&emu.endpoint, opts()));
    let ttl = Duration::from_millis(500);
    for mode in [Mode::Permit { limit: 1 }, Mode::Write] {
        let name = support::key("sem", "deleted");
        let builder = |c: &lock_core::LockClient| match mode {
            Mode::Write => c.write_lock(&name),
            _ => c.semaphore(&name, 1),
        };
        let _crashed = builder(&a).ttl(ttl).acquire().await.expect("a holds").detach();
        // b sees the entry, and again once it has stood unchanged for a whole lease.
        assert!(builder(&b).ttl(ttl).try_acquire().await.expect("try").is_none());
        tokio::time::sleep(ttl + Duration::from_millis(200)).await;
        b.holders(&name, mode).await.expect("holders");
        delete_items_of(&emu.endpoint, &name).await;
        let g = builder(&b).ttl(Duration::from_secs(30)).wait(Duration::from_secs(3)).acquire().await;
        let g =
            g.unwrap_or_else(|e| panic!("{mode:?}: a deleted item blocked a client that had seen it: {e}"));
        g.release().await.expect("release");
    }
}

/// More crashed permits than one write can take over (40) do not fix the semaphore's size for
/// ever: once they are seen stale, another size can be had.
async fn many_crashed_permits_do_not_fix_the_size_for_ever(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let (a, b) = (support::locks(&emu.endpoint, opts()), support::locks(&emu.endpoint, opts()));
    let name = support::key("sem", "many-crashed");
    let ttl = Duration::from_millis(500);
    for _ in 0..45 {
        let _crashed = a.semaphore(&name, 50).ttl(ttl).acquire().await.expect("a permit of 50").detach();
    }
    // b sees the permits, then again once they have stood unchanged for a whole lease.
    assert_eq!(b.holders(&name, Mode::Permit { limit: 50 }).await.expect("holders").len(), 45);
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let g = b.semaphore(&name, 10).ttl(Duration::from_secs(30)).wait(Duration::from_secs(5)).acquire().await;
    let g = g.expect("45 crashed permits, all stale, kept the semaphore at 50 for ever");
    let holders = b.holders(&name, Mode::Permit { limit: 10 }).await.expect("holders");
    assert_eq!(holders.len(), 1, "{holders:?}");
    g.release().await.expect("release");
}

on_each_emulator!(
    many_crashed_permits_do_not_fix_the_size_for_ever,
    a_deleted_item_with_stale_entries_is_created_again,
    crashed_holders_of_another_size_are_taken_over,
    an_item_past_the_size_limit_is_a_typed_error,
    a_permits_metadata_can_be_replaced
);
