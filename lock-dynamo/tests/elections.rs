//! Elections on DynamoDB, on both emulators, beyond the conformance suite:
//! - proclaim changes only the value: the term and the expiry stay;
//! - the election and the lock of one name are independent.

mod support;

use std::time::Duration;

use lock_core::{Error, Mode};
use lock_dynamo::DynamoOptions;
use support::Emulator;

fn opts() -> DynamoOptions {
    DynamoOptions::new("election_locks")
}

async fn proclaim_changes_only_the_value(emulator: Emulator) {
    let emu = emulator.with_table(&opts()).await;
    let c = support::locks(&emu.endpoint, opts());
    let name = support::key("proclaim", "election");
    let e = c.election(&name).ttl(Duration::from_secs(30));
    let g = e.campaign("v1").await.expect("elected");
    let until = g.valid_until();
    e.proclaim(&g, "v2").await.expect("proclaim");
    let leader = e.leader().await.expect("leader").expect("a leader");
    assert_eq!(leader.value.as_deref(), Some("v2"));
    assert_eq!(leader.term, Some(g.fencing_token()), "proclaim changed the term");
    assert_eq!(leader.info.mode, Mode::Leader);
    assert_eq!(g.valid_until(), until, "proclaim moved the expiry");
    // The lock of the same name is another resource.
    let lock = c.lock(&name).try_acquire().await.expect("try").expect("the lock is free");
    assert!(c.inspect(&name).await.expect("inspect").is_some());
    lock.release().await.expect("release");
    let lease = g.lease();
    g.release().await.expect("resign");
    assert!(e.leader().await.expect("leader").is_none(), "a leader after resigning");
    match e.proclaim(&c.resume(lease, false), "v3").await {
        Err(Error::NotHeld { .. }) => {}
        other => panic!("proclaim after resigning gave {other:?}"),
    }
}

on_each_emulator!(proclaim_changes_only_the_value);
