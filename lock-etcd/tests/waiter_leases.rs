//! A waiter's lease through its wait: kept alive through member restarts and stream errors;
//! and when it is lost all the same (revoked, or the process paused past it), the waiter
//! queues again with a fresh lease and waits on until its deadline, never getting the lock on
//! the lost lease.

mod support;

use std::time::Duration;

use conformance_tests::fixtures::etcd::EtcdCluster;
use lock_core::{Instant, LockClient, ReleaseOutcome};
use lock_etcd::{EtcdOptions, LeaseMode};
use support::{eventually, keys_under};

const LONG: Duration = Duration::from_secs(60);

/// A per-lock waiter (TTL 2 s) waits 30 s behind a holder that keeps the lock 20 s; from 3 s
/// on every member of the three is restarted in turn, the one serving the waiter's keep-alive
/// stream among them (the client takes the members in turn, so which one serves it
/// is not known; restarting one at a time keeps a quorum). The waiter's lease lives through
/// it: it gets the lock with the key it queued with (its token is that key's create
/// revision, greater than the holder's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiters_lease_lives_through_restarts_of_the_members_serving_it() {
    let mut etcd = EtcdCluster::start(3).await.expect("etcd cluster");
    let eps = etcd.endpoints();
    let raw = support::raw(&eps).await;
    let holder = support::client(&eps, LeaseMode::PerLock).await;
    let waiter = support::client(&eps, LeaseMode::PerLock).await;
    let start = Instant::now();
    let g = holder.lock("long").ttl(LONG).acquire().await.expect("hold");
    let task = tokio::spawn(async move {
        waiter.lock("long").ttl(Duration::from_secs(2)).wait(Duration::from_secs(30)).acquire().await
    });
    let (queued, rev, _) = eventually("the waiter queues", Duration::from_secs(10), || async {
        keys_under(&raw, "long/").await.get(1).cloned()
    })
    .await;
    tokio::time::sleep_until(start + Duration::from_secs(3)).await;
    for i in 0..etcd.members.len() {
        etcd.members[i].process().restart().await.expect("restart");
        let ep = etcd.members[i].endpoint();
        eventually("the restarted member answers", Duration::from_secs(20), || async {
            let c = lock_etcd::rpc::Client::connect(&EtcdOptions::new([&ep])).await.ok()?;
            c.status().await.ok()
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep_until(start + Duration::from_secs(20)).await;
    let keys = keys_under(&support::raw(&eps).await, "long/").await;
    assert!(
        keys.iter().any(|(k, r, _)| *k == queued && *r == rev),
        "the waiter's queue key {queued} is gone before its turn (its lease expired): {keys:?}"
    );
    let first = g.fencing_token();
    support::release_retrying(&holder, g).await;
    let got = task.await.expect("join").expect("the waiter gets the lock");
    assert_eq!(
        got.fencing_token().get(),
        rev as u64,
        "the waiter got the lock on another key than it queued with"
    );
    assert!(got.fencing_token() > first);
    assert_eq!(got.release().await.expect("release"), ReleaseOutcome::Released);
}

/// How a waiter loses its lease in the tests below.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// Revoked from outside (what the server does to a lease whose process was paused past
    /// its TTL).
    Revoked,
    /// Its session's keep-alive stopped without a revoke: the session expires after its TTL.
    Abandoned,
}

/// The waiter's queue key under `pfx` (the second contender) and its lease.
async fn waiter_key(raw: &lock_etcd::rpc::Client, pfx: &str) -> (String, i64, i64) {
    eventually("the waiter queues", Duration::from_secs(10), || async {
        keys_under(raw, pfx).await.get(1).cloned()
    })
    .await
}

/// A waiter whose lease is lost while it waits (revoked from outside, or its session
/// abandoned and expired) keeps waiting: when the holder releases before the waiter's
/// deadline, the waiter gets the lock on a new lease, never on the lost one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_loses_its_lease_queues_again_and_gets_the_lock() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let raw = support::raw(&eps).await;
    let cases = [
        (LeaseMode::Session, Loss::Revoked),
        (LeaseMode::Session, Loss::Abandoned),
        (LeaseMode::PerLock, Loss::Revoked),
    ];
    for (mode, loss) in cases {
        let name = format!("lost-{mode:?}-{loss:?}");
        let holder = support::client(&eps, mode).await;
        let g = holder.lock(&name).ttl(LONG).acquire().await.expect("hold");
        let wb = support::backend(&eps, mode, Duration::from_secs(3)).await;
        let waiter = LockClient::new(wb.clone());
        let n = name.clone();
        let task = tokio::spawn(async move {
            waiter.lock(&n).ttl(Duration::from_secs(5)).wait(Duration::from_secs(30)).acquire().await
        });
        let pfx = format!("{name}/");
        let (_, _, lost) = waiter_key(&raw, &pfx).await;
        match loss {
            Loss::Revoked => raw.lease_revoke(lost).await.expect("revoke"),
            Loss::Abandoned => wb.abandon_session().await,
        }
        // The lost lease is gone on the server (at once, or after the 3 s session TTL).
        eventually("the lost lease ends", Duration::from_secs(10), || async {
            (raw.lease_time_to_live(lost).await.ok()? <= 0).then_some(())
        })
        .await;
        // The waiter queued again on a new lease, and waits.
        let what = format!("{mode:?}/{loss:?}: the waiter queues again");
        let (_, _, fresh) = eventually(&what, Duration::from_secs(10), || async {
            keys_under(&raw, &pfx).await.get(1).filter(|k| k.2 != lost).cloned()
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!task.is_finished(), "{mode:?}/{loss:?}: the waiter stopped waiting: {:?}", task.await);
        let first = g.fencing_token();
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
        let got = task.await.expect("join");
        let got = got.unwrap_or_else(|e| panic!("{mode:?}/{loss:?}: the waiter did not get the lock: {e}"));
        assert!(got.fencing_token() > first);
        let keys = keys_under(&raw, &pfx).await;
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys[0].2, fresh, "{mode:?}/{loss:?}: the lock is held on another lease than the new one");
        assert_eq!(got.release().await.expect("release"), ReleaseOutcome::Released);
    }
}

/// A waiter whose lease was lost and whose deadline passes before the holder lets go gets
/// `WaitTimedOut`, not a backend error, and leaves no key behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_loses_its_lease_times_out_at_its_deadline() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let raw = support::raw(&eps).await;
    for mode in support::MODES {
        let name = format!("timeout-{mode:?}");
        let holder = support::client(&eps, mode).await;
        let g = holder.lock(&name).ttl(LONG).acquire().await.expect("hold");
        let waiter = LockClient::new(support::backend(&eps, mode, Duration::from_secs(3)).await);
        let n = name.clone();
        let start = Instant::now();
        let task = tokio::spawn(async move {
            waiter.lock(&n).ttl(Duration::from_secs(5)).wait(Duration::from_secs(6)).acquire().await
        });
        let (_, _, lost) = waiter_key(&raw, &format!("{name}/")).await;
        raw.lease_revoke(lost).await.expect("revoke");
        let res = task.await.expect("join");
        let waited = start.elapsed();
        assert!(
            matches!(res, Err(lock_core::Error::WaitTimedOut { .. })),
            "{mode:?}: not WaitTimedOut after {waited:?}: {res:?}"
        );
        assert!(waited >= Duration::from_secs(6), "{mode:?}: gave up after {waited:?}");
        let keys = keys_under(&raw, &format!("{name}/")).await;
        assert_eq!(keys.len(), 1, "{mode:?}: the waiter left a key behind: {keys:?}");
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    }
}
