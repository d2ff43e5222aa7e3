//! A semaphore's release costs its waiters no request: each waiter counts the deletions of
//! the keys older than its own off its watch (no re-read per release), and the waiter the
//! release admits gets the permit, in both lease modes.

mod support;

use std::time::Duration;

use conformance_tests::fixtures::etcd::EtcdCluster;
use lock_core::ReleaseOutcome;
use support::{client, handled, raw, settled_watchers, until_queued, until_watching, MODES};

const LONG: Duration = Duration::from_secs(60);
const WAITERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_admit_waiters_in_order_without_a_request_from_each_waiter() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let ep = eps[0].as_str();
    let raw = raw(&eps).await;
    for mode in MODES {
        let name = format!("pool-{mode:?}");
        let (holder, waiting) = (client(&eps, mode).await, client(&eps, mode).await);
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(holder.semaphore(&name, 2).ttl(LONG).acquire().await.expect("permit"));
        }
        // The server-wide count, once the previous round's clients have closed theirs.
        let base = settled_watchers(ep).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..WAITERS {
            let (c, n, tx) = (waiting.clone(), name.clone(), tx.clone());
            tokio::spawn(async move {
                let g = c.semaphore(&n, 2).ttl(LONG).wait(LONG).acquire().await.expect("waiting acquire");
                let _ = tx.send((i, g));
            });
            // Queued one after another, so the order of their keys is known.
            until_queued(&raw, &format!("{name}#semaphore/"), 3 + i).await;
        }
        until_watching(ep, base + WAITERS as f64).await;
        // Each release admits the oldest waiter; the others send nothing.
        let before = handled(ep, &["Txn", "Range"]).await;
        for round in 0..4 {
            let g = held.remove(0);
            assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
            let (i, g) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("a waiter is admitted")
                .expect("channel");
            assert_eq!(i, round, "{mode:?}: waiters are admitted in the order they queued");
            held.push(g);
        }
        // Quiet for a moment: a waiter that re-read on each release would show here.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = handled(ep, &["Txn", "Range"]).await - before;
        // Four releases, one transaction each (and room for a waiter whose stream a slow
        // machine made it re-read); re-reading on each release costs 29.
        assert!(sent <= 6.0, "{mode:?}: four releases with {WAITERS} waiters cost {sent} KV requests");
        for g in held {
            assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
        }
        for _ in 4..WAITERS {
            let (_, g) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("the rest are admitted")
                .expect("channel");
            assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
        }
    }
}
