//! A session holding many grants watches its prefix as a whole (one persistent recursive
//! watch) instead of one node per grant, and still fires the loss signal of exactly the grant
//! whose node someone else deleted: while connected, across a reconnection (whose deletions
//! the server does not replay to a persistent watch), and after it (the server forgets a
//! connection's watches). Watches are counted by the server (`wchs`).

mod support;

use std::time::Duration;

use conformance_tests::fixtures::zk::{four_letter, ZkEnsemble};
use lock_core::{Guard, LockClient, LossReason};
use support::proxy::ZkProxy;

/// More than the 32 grants from which a session watches its prefix.
const HELD: usize = 80;

/// The paths the server has watches on, by `wchs` ("N connections watching M paths").
async fn watched_paths(addr: &str) -> usize {
    let out = four_letter(addr, "wchs").await.expect("wchs");
    out.split("watching ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected wchs output: {out}"))
}

/// Takes `HELD` locks named `{base}/{i}`.
async fn hold_many(locks: &LockClient, base: &str) -> Vec<Guard> {
    let mut held = Vec::with_capacity(HELD);
    for i in 0..HELD {
        held.push(locks.lock(&format!("{base}/{i}")).try_acquire().await.expect("try").expect("free"));
    }
    held
}

/// The path of the one node in lock `name`'s directory.
async fn node_of(raw: &zookeeper_client::Client, name: &str) -> String {
    let dir = format!("/distlock/{name}");
    let children = support::children(raw, &dir).await;
    assert_eq!(children.len(), 1, "{dir}: {children:?}");
    format!("{dir}/{}", children[0])
}

/// Waits up to `within` for `g`'s loss signal.
async fn lost_within(g: &Guard, within: Duration) -> Option<LossReason> {
    tokio::time::timeout(within, g.lost()).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_held_locks_share_one_watch_and_a_deletion_fires_only_its_own() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let addr = zk.servers[0].address();
    let locks = support::client(&zk.connect_string(), Duration::from_secs(10)).await;
    let raw = support::raw(&zk.connect_string()).await;
    let base = support::key("held-watch");
    let held = hold_many(&locks, &base).await;
    // The node-by-node watches are set 100 ms after their grants.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paths = watched_paths(&addr).await;
    // 31 nodes watched one by one, and the prefix; one watch per lock would be 80.
    assert!(paths <= 32, "{paths} watched paths for {HELD} held locks");

    // A lock watched through the prefix, and one watched on its own.
    for i in [HELD - 1, 3] {
        let node = node_of(&raw, &format!("{base}/{i}")).await;
        raw.delete(&node, None).await.expect("delete someone else's node");
        let reason = lost_within(&held[i], Duration::from_secs(5)).await;
        assert_eq!(reason, Some(LossReason::NotHeld), "lock {i}: its node was deleted");
        assert!(!held[i].is_held());
    }
    for (i, g) in held.iter().enumerate() {
        if i != HELD - 1 && i != 3 {
            assert!(
                g.is_held() && lost_within(g, Duration::ZERO).await.is_none(),
                "lock {i} was reported lost"
            );
        }
    }
    // Released locks are forgotten; the session's watch stays.
    for g in held {
        let _ = g.release().await;
    }
    let again = hold_many(&locks, &support::key("held-watch-again")).await;
    let g = &again[0];
    assert!(g.is_held());
    for g in again {
        g.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_while_disconnected_is_reported_on_reconnection() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = ZkProxy::start(zk.servers[0].address()).await;
    // A session of 20 s: the cut below (about 1 s) stays well within its grace.
    let locks = support::client(&proxy.addr, Duration::from_secs(20)).await;
    let raw = support::raw(&zk.connect_string()).await;
    let base = support::key("held-reconnect");
    let held = hold_many(&locks, &base).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.cut();
    let i = HELD - 2;
    let node = node_of(&raw, &format!("{base}/{i}")).await;
    raw.delete(&node, None).await.expect("delete while our session is cut off");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(lost_within(&held[i], Duration::ZERO).await.is_none(), "no event can have come while cut off");
    proxy.heal();

    let reason = lost_within(&held[i], Duration::from_secs(15)).await;
    assert_eq!(reason, Some(LossReason::NotHeld), "the deletion was not reported after the reconnection");
    for (j, g) in held.iter().enumerate() {
        if j != i {
            assert!(lost_within(g, Duration::ZERO).await.is_none(), "lock {j} was reported lost");
        }
    }
    // The server forgot the prefix's watch with the old connection: it was set again, so a
    // deletion after the reconnection is reported as it happens.
    let k = HELD - 1;
    let node = node_of(&raw, &format!("{base}/{k}")).await;
    raw.delete(&node, None).await.expect("delete after the reconnection");
    let reason = lost_within(&held[k], Duration::from_secs(5)).await;
    assert_eq!(reason, Some(LossReason::NotHeld), "a deletion after the reconnection was not reported");
    for g in held {
        let _ = g.release().await;
    }
}
