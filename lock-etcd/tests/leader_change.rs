//! etcd's leases across a leader change, measured through distlock. Without lease
//! checkpointing (Debian's etcd 3.4 crashes with `--experimental-enable-lease-checkpoint`), a
//! new leader renews every lease to its full TTL plus an election timeout, so a crashed holder
//! can block others for about two leases plus the election. The test crashes a holder (its
//! session's keep-alive stopped without a revoke, or its per-lock lease left to run out),
//! kills the leader just before the lease would end, and times how long until another client
//! gets the lock: never before the holder's `valid_until`, always within the capabilities'
//! `crash_bound`. It prints the figures (`DISTLOCK_ETCD_TAKEOVER_ROUNDS` rounds per mode,
//! default 2).

mod support;

use std::time::Duration;

use conformance_tests::fixtures::etcd::EtcdCluster;
use lock_core::{Instant, LockClient, ReleaseOutcome};
use lock_etcd::{EtcdOptions, LeaseMode};
use support::{eventually, leader_index};

/// The holder's lease: the session TTL, or the lock's TTL.
const LEASE: Duration = Duration::from_secs(3);

/// One crash, leader kill and takeover: how long after the crash another client got the lock.
async fn takeover(etcd: &mut EtcdCluster, mode: LeaseMode, name: &str) -> Duration {
    let eps = etcd.endpoints();
    let hb = support::backend(&eps, mode, LEASE).await;
    let holder = LockClient::new(hb.clone());
    let caps = holder.capabilities().clone();
    let g = holder.lock(name).ttl(LEASE).acquire().await.expect("hold");
    let (told, first) = (g.valid_until(), g.fencing_token());
    // The crash: no release, no renewal, no revoke.
    let crashed = Instant::now();
    let _ = g.detach();
    hb.abandon_session().await;
    drop((holder, hb));
    let waiter = support::client(&eps, mode).await;
    let n = name.to_owned();
    let bound = caps.crash_bound(LEASE);
    let task = tokio::spawn(async move {
        let g = waiter.lock(&n).ttl(LEASE).wait(bound * 3).acquire().await;
        (g, Instant::now())
    });
    // The leader dies just before the holder's lease would end.
    tokio::time::sleep_until(told - Duration::from_millis(250)).await;
    let leader = leader_index(etcd).await;
    etcd.members[leader].process().kill().await;
    let (g, got) = task.await.expect("join");
    let g = g.unwrap_or_else(|e| panic!("{mode:?}: no takeover: {e}"));
    let took = got - crashed;
    assert!(got >= told, "{mode:?}: the lock was taken {:?} before the holder's valid_until", told - got);
    assert!(g.fencing_token() > first);
    assert!(took <= bound, "{mode:?}: a crashed holder blocked for {took:?}; crash_bound is {bound:?}");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    etcd.members[leader].process().restart().await.expect("restart");
    let ep = etcd.members[leader].endpoint();
    eventually("the member rejoins", Duration::from_secs(30), || async {
        let c = lock_etcd::rpc::Client::connect(&EtcdOptions::new([&ep])).await.ok()?;
        c.status().await.ok().filter(|s| s.leader != 0)
    })
    .await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_blocks_at_most_the_crash_bound_across_a_leader_change() {
    let rounds: usize =
        std::env::var("DISTLOCK_ETCD_TAKEOVER_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let mut etcd = EtcdCluster::start(3).await.expect("etcd cluster");
    for mode in support::MODES {
        let mut took = Vec::new();
        for round in 0..rounds {
            took.push(takeover(&mut etcd, mode, &format!("crash-{mode:?}-{round}")).await);
        }
        took.sort();
        let ms: Vec<u128> = took.iter().map(Duration::as_millis).collect();
        eprintln!(
            "etcd takeover after a crash and a leader kill ({mode:?}, lease {LEASE:?}): p50 {:?}, max {:?}, all (ms) {ms:?}",
            took[took.len() / 2],
            took[took.len() - 1]
        );
    }
}
