//! `list` on etcd from the root of the key space: each grant once, with its primitive and
//! metadata, and never the keys that hold the lock's metadata.

use std::time::Duration;

use conformance_tests::fixtures::etcd::EtcdCluster;
use lock_core::{LockClient, Mode};
use lock_etcd::{EtcdBackend, EtcdOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_from_the_root_shows_each_grant_once_and_no_metadata_key() {
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
