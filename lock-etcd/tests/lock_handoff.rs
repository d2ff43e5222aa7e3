//! A lock's hand-off costs the woken waiter no request: each waiter counts the deletions of
//! the keys older than its own off one watch (no read after its predecessor's deletion), and
//! waiters get the lock in the order they queued, in both lease modes. Only the first few
//! waiters watch the whole prefix: a release's event reaches a bounded number of them.

mod support;

use std::time::Duration;

use conformance_tests::fixtures::etcd::EtcdCluster;
use lock_core::{Guard, ReleaseOutcome};
use lock_etcd::{rpc, LeaseMode};
use support::{
    client, handled, keys_under, metric, raw, settled_watchers, until_queued, until_watching, MODES,
};
use tokio::sync::mpsc::UnboundedReceiver;

const LONG: Duration = Duration::from_secs(60);
const WAITERS: usize = 6;
const HANDOFFS: usize = 4;
/// The most contenders ahead of it with which a waiter counts down on the prefix's watch
/// (lock-etcd's `FAN_OUT`); a waiter further back watches the one key `FAN_OUT + 1` places
/// ahead of it, its gate.
const FAN_OUT: usize = 4;

/// The next waiter to get the lock (its place in the queue, its guard), within 20 s.
async fn next_holder(rx: &mut UnboundedReceiver<(usize, Guard)>, what: &str) -> (usize, Guard) {
    tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect(what).expect("channel")
}

/// A holder of `name` and `n` waiters, each its own client, queued one after another and
/// watching; each waiter's guard comes on the channel with its place in the queue.
async fn queue(
    eps: &[String],
    raw: &rpc::Client,
    name: &str,
    mode: LeaseMode,
    n: usize,
) -> (Guard, UnboundedReceiver<(usize, Guard)>) {
    let ep = eps[0].as_str();
    let holder = client(eps, mode).await;
    let current = holder.lock(name).ttl(LONG).acquire().await.expect("free");
    let base = settled_watchers(ep).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..n {
        let (c, n, tx) = (client(eps, mode).await, name.to_owned(), tx.clone());
        tokio::spawn(async move {
            let g = c.lock(&n).ttl(LONG).wait(LONG).acquire().await.expect("waiting acquire");
            let _ = tx.send((i, g));
            // The client lives as long as its guard is used.
            std::future::pending::<()>().await;
        });
        // Queued one after another, so the order of their keys is known.
        until_queued(raw, &format!("{name}/"), 2 + i).await;
    }
    // One watcher each: the prefix's, or its gate's.
    until_watching(ep, base + n as f64).await;
    (current, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hand_off_costs_the_release_alone() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let ep = eps[0].as_str();
    let raw = raw(&eps).await;
    for mode in MODES {
        let name = format!("handoff-{mode:?}");
        // One client per waiter: a client's own tasks take turns on one queue key.
        let (mut current, mut rx) = queue(&eps, &raw, &name, mode, WAITERS).await;
        let before = handled(ep, &["Txn", "Range", "DeleteRange"]).await;
        for round in 0..HANDOFFS {
            assert_eq!(current.release().await.expect("release"), ReleaseOutcome::Released);
            let (i, g) = next_holder(&mut rx, "a waiter gets the lock").await;
            assert_eq!(i, round, "{mode:?}: waiters get the lock in the order they queued");
            current = g;
        }
        // Quiet for a moment: a waiter that read after each deletion would show here.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = handled(ep, &["Txn", "Range", "DeleteRange"]).await - before;
        // One delete per release, and one read for each of the two waiters behind the first
        // `FAN_OUT`, once its gate is gone (and room for one waiter whose stream a slow
        // machine made it read again); a read by each woken waiter makes it 10.
        let moved = (WAITERS - FAN_OUT) as f64;
        assert!(
            sent <= HANDOFFS as f64 + moved + 1.0,
            "{mode:?}: {HANDOFFS} hand-offs with {WAITERS} waiters cost {sent} KV requests"
        );
        assert_eq!(current.release().await.expect("release"), ReleaseOutcome::Released);
        for _ in HANDOFFS..WAITERS {
            let (_, g) = next_holder(&mut rx, "the rest get the lock").await;
            assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
        }
    }
}

/// A held lock's release is one plain delete, as etcd's own `Mutex.Unlock` (no transaction:
/// only this client writes the key, see `delete_own_key`), and it still says whether the key
/// it deleted was its grant: after an operator deleted the grant and an orphan put landed at
/// the same key, the release deletes the orphan and says `NotHeld`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_is_one_plain_delete_that_knows_its_grant() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let ep = eps[0].as_str();
    let raw = raw(&eps).await;
    for mode in MODES {
        let name = format!("plain-{mode:?}");
        let c = client(&eps, mode).await;
        let g = c.lock(&name).ttl(LONG).acquire().await.expect("free");
        let (txn, del) = (handled(ep, &["Txn"]).await, handled(ep, &["DeleteRange"]).await);
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
        let (txn, del) = (handled(ep, &["Txn"]).await - txn, handled(ep, &["DeleteRange"]).await - del);
        assert_eq!((txn, del), (0.0, 1.0), "{mode:?}: (transactions, deletes) of one release");
        assert!(keys_under(&raw, &format!("{name}/")).await.is_empty(), "{mode:?}: the key is gone");

        // The grant deleted by an operator, then an orphan put at its key.
        let lease = c.lock(&name).ttl(LONG).acquire().await.expect("free again").detach();
        let keys = keys_under(&raw, &format!("{name}/")).await;
        let [(key, _, _)] = keys.as_slice() else { panic!("{mode:?}: one key, not {keys:?}") };
        raw.delete_range(rpc::pb::DeleteRangeRequest::key(key.as_str())).await.expect("operator delete");
        raw.put(rpc::pb::PutRequest::new(key.as_str(), "orphan", 0)).await.expect("orphan put");
        assert_eq!(c.release_lease(&lease).await.expect("release"), ReleaseOutcome::NotHeld, "{mode:?}");
        assert!(keys_under(&raw, &format!("{name}/")).await.is_empty(), "{mode:?}: the orphan is gone");
    }
}

/// A release's deletion reaches the first `FAN_OUT` waiters and the one gated waiter behind
/// them, not every waiter (etcd's own count of the events it sent), and the waiters behind
/// their gates still get the lock in the order they queued, in both lease modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_reaches_a_bounded_number_of_waiters() {
    const MANY: usize = 12;
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let ep = eps[0].as_str();
    let raw = raw(&eps).await;
    let events = || metric(ep, "etcd_debugging_mvcc_events_total", |_| true);
    for mode in MODES {
        let name = format!("fanout-{mode:?}");
        let (mut current, mut rx) = queue(&eps, &raw, &name, mode, MANY).await;
        let mut reached = Vec::new();
        for round in 0..MANY {
            let before = events().await;
            assert_eq!(current.release().await.expect("release"), ReleaseOutcome::Released);
            let (i, g) = next_holder(&mut rx, "a waiter gets the lock").await;
            assert_eq!(i, round, "{mode:?}: waiters get the lock in the order they queued");
            // The events of this release only, late ones included.
            tokio::time::sleep(Duration::from_millis(300)).await;
            reached.push(events().await - before);
            current = g;
        }
        assert_eq!(current.release().await.expect("release"), ReleaseOutcome::Released);
        // Every waiter got each release's event before (12 for the first release).
        assert!(
            reached.iter().all(|&n| n <= (FAN_OUT + 1) as f64),
            "{mode:?}: waiters a release's event reached, release by release: {reached:?}"
        );
    }
}
