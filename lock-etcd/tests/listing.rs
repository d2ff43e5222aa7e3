//! `list` on etcd from the root of the key space: each grant once, with its primitive and
//! metadata; and the lock's layout behind it: one key per grant, holding the owner token and
//! the holder metadata.

use std::time::Duration;

use conformance_tests::fixtures::etcd::EtcdCluster;
use lock_core::{
    ExtendOutcome, Instant, Lease, LockBackend, LockClient, LockKey, Metadata, Mode, OwnerToken,
    ReleaseOutcome,
};
use lock_etcd::rpc::pb::RangeRequest;
use lock_etcd::{rpc, EtcdBackend, EtcdOptions};

/// Every key in the store: (key, value).
async fn every_key(raw: &rpc::Client) -> Vec<(String, String)> {
    // From "\0" to the end of the key space (etcd refuses an empty key).
    let all = RangeRequest { key: vec![0], range_end: vec![0], ..RangeRequest::default() };
    let r = raw.range(all).await.expect("range");
    r.kvs
        .iter()
        .map(|kv| {
            (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned())
        })
        .collect()
}

/// A lock grant writes one key, whose value is its owner token, a newline and its metadata.
/// A lease rebuilt from the owner token alone (as an operator's tool rebuilds one) rewrites the
/// metadata and releases the lock through the server's comparison of the token (the value's
/// metadata is not needed), keeping the fencing token; a lease with another token does neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_grant_is_one_key_holding_its_owner_and_metadata() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let opts = EtcdOptions::new(etcd.endpoints()).session_ttl(Duration::from_secs(5));
    let backend = EtcdBackend::connect(opts).await.expect("connect");
    let locks = LockClient::new(backend.clone());
    let raw = rpc::Client::connect(&EtcdOptions::new(etcd.endpoints())).await.expect("raw client");

    let lease = locks.lock("one/a").value("first").acquire().await.expect("lock").detach();
    let keys = every_key(&raw).await;
    assert_eq!(keys.len(), 1, "one key per grant: {keys:?}");
    let (owner, meta) = keys[0].1.split_once('\n').expect("owner token, newline, metadata");
    assert_eq!(owner, lease.owner().to_string());
    assert_eq!(Metadata::decode(meta).and_then(|m| m.value).as_deref(), Some("first"));

    let key = LockKey::new("one/a").expect("key");
    let ttl = Duration::from_secs(5);
    let rebuilt = Lease::new(key.clone(), lease.owner(), lease.fencing_token(), ttl, Instant::now());
    let stranger = Lease::new(key, OwnerToken::random(), lease.fencing_token(), ttl, Instant::now());
    let second = Metadata::current().with_value("second").expect("value");
    assert_eq!(backend.update_metadata(&stranger, &second).await.expect("update"), ExtendOutcome::NotHeld);
    assert_eq!(backend.release(&stranger).await.expect("release"), ReleaseOutcome::NotHeld);
    assert!(matches!(
        backend.update_metadata(&rebuilt, &second).await.expect("update"),
        ExtendOutcome::Extended { .. }
    ));
    let info = locks.inspect("one/a").await.expect("inspect").expect("held");
    assert_eq!(info.metadata.and_then(|m| m.value).as_deref(), Some("second"));
    assert_eq!((info.fencing_token, info.owner), (Some(lease.fencing_token()), Some(lease.owner())));
    assert_eq!(every_key(&raw).await.len(), 1);

    assert_eq!(backend.release(&rebuilt).await.expect("release"), ReleaseOutcome::Released);
    assert!(every_key(&raw).await.is_empty(), "the release left a key behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_from_the_root_shows_each_grant_once() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let opts = EtcdOptions::new(etcd.endpoints()).session_ttl(Duration::from_secs(5));
    let locks = LockClient::new(EtcdBackend::connect(opts).await.expect("connect"));
    let lock = locks.lock("jobs/a").value("v-a").acquire().await.expect("lock");
    let permit = locks.semaphore("jobs/s", 2).acquire().await.expect("permit");
    let leader = locks.election("jobs/e").campaign("lead").await.expect("leader");
    let mut listed = locks.list("").await.expect("list");
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["jobs/a", "jobs/e", "jobs/s"], "{listed:?}");
    let modes: Vec<Mode> = listed.iter().map(|(_, i)| i.mode).collect();
    assert_eq!(modes, [Mode::Exclusive, Mode::Leader, Mode::Permit { limit: 2 }]);
    let value = |i: usize| listed[i].1.metadata.as_ref().and_then(|m| m.value.clone());
    assert_eq!((value(0).as_deref(), value(1).as_deref()), (Some("v-a"), Some("lead")));
    assert_eq!(listed[0].1.fencing_token, Some(lock.fencing_token()));
    for g in [lock, permit, leader] {
        g.release().await.expect("release");
    }
    assert!(locks.list("").await.expect("list").is_empty(), "released grants are still listed");
}

/// A prefix that ends inside a queue (a lock's name and part of a waiter's key) lists none of
/// that queue: the part read held the waiter alone, which was listed as the holder (with its
/// own token), under a name outside the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_that_cuts_into_a_queue_lists_none_of_it() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let connect = || async {
        let opts = EtcdOptions::new(etcd.endpoints()).session_ttl(Duration::from_secs(5));
        LockClient::new(EtcdBackend::connect(opts).await.expect("connect"))
    };
    let (a, b) = (connect().await, connect().await);
    let raw = rpc::Client::connect(&EtcdOptions::new(etcd.endpoints())).await.expect("raw client");
    let g = a.lock("t").acquire().await.expect("hold");
    let waiter = tokio::spawn(async move { b.lock("t").wait(Duration::from_secs(20)).acquire().await });
    let keys = loop {
        let r = raw.range(RangeRequest::prefix("t/").oldest_first()).await.expect("range");
        if r.kvs.len() == 2 {
            break r.kvs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let waiter_key = String::from_utf8(keys[1].key.clone()).expect("utf-8");
    let listed = a.list(&waiter_key).await.expect("list");
    assert!(listed.is_empty(), "a listing under {waiter_key} named {listed:?}");
    // The whole queue, read whole, names the holder.
    let listed = a.list("t").await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].1.fencing_token, Some(g.fencing_token()));
    g.release().await.expect("release");
    waiter.await.expect("join").expect("the waiter").release().await.expect("release");
}

/// A listing longer than one read (a thousand keys) is one state of the store: its later pages
/// are read at the first page's revision. A client moves one grant back and forth between
/// `a-first` (on the first page) and `c-last` (past a thousand held `b-…` locks, on the
/// second), never holding both; read at their own revisions, a page before the move and a
/// page after it showed both held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_over_several_reads_is_one_state_of_the_store() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let opts = EtcdOptions::new(etcd.endpoints()).session_ttl(Duration::from_secs(30));
    let locks = LockClient::new(EtcdBackend::connect(opts).await.expect("connect"));
    let fillers: Vec<lock_core::Guard> =
        futures::future::try_join_all((0..1100).map(|i| locks.lock(&format!("paged/b-{i:04}")).acquire()))
            .await
            .expect("fillers");
    let mover = locks.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let moves = tokio::spawn(async move {
        let mut n = 0u32;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            for name in ["paged/a-first", "paged/c-last"] {
                let g = mover.lock(name).acquire().await.expect("move");
                assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
                n += 1;
            }
        }
        n
    });
    let mut both = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut lists = 0;
    while Instant::now() < deadline {
        let listed = locks.list("paged/").await.expect("list");
        lists += 1;
        let held = |n: &str| listed.iter().any(|(name, _)| name == n);
        if held("paged/a-first") && held("paged/c-last") {
            both += 1;
        }
        assert!(listed.len() >= 1100, "{} entries listed", listed.len());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let moved = moves.await.expect("mover");
    assert!(moved > 20, "the grant moved only {moved} times");
    assert_eq!(both, 0, "{both} of {lists} listings showed both names held; they never were at once");
    drop(fillers);
}
