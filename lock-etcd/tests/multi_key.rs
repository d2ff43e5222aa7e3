//! A multi-key lock's first try is one transaction: every name's queue key put and every
//! queue read in one request, in both lease modes; names held by nested locks do not refuse
//! it; a name held elsewhere leaves nothing behind.

mod support;

use std::time::Duration;

use conformance_tests::fixtures::etcd::EtcdCluster;
use lock_core::ReleaseOutcome;
use lock_etcd::LeaseMode;
use support::{client, handled, MODES};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontended_multi_key_lock_is_one_transaction() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let c = client(&eps, LeaseMode::Session).await;
    // The session's lease is granted by a first lock.
    let _ = c.lock("warm-up").try_acquire().await.expect("warm-up").expect("free").release().await;
    let before = (handled(&eps[0], &["Txn"]).await, handled(&eps[0], &["Range", "Put", "DeleteRange"]).await);
    let g = c.lock_all(["m/a", "m/b", "m/c", "m/d"]).ttl(LONG).try_acquire().await.expect("try");
    let after = (handled(&eps[0], &["Txn"]).await, handled(&eps[0], &["Range", "Put", "DeleteRange"]).await);
    let g = g.expect("four free names");
    assert_eq!(after.0 - before.0, 1.0, "the multi-key try sent {} transactions", after.0 - before.0);
    assert_eq!(after.1 - before.1, 0.0, "the multi-key try sent other KV requests");
    let tokens = g.fencing_tokens();
    assert_eq!(tokens.len(), 4);
    assert!(tokens.iter().all(|(_, t)| *t == tokens[0].1), "one transaction: one create revision");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_name_refuses_the_try_and_leaves_nothing_behind() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    for mode in MODES {
        let (a, b) = (client(&eps, mode).await, client(&eps, mode).await);
        let p = format!("{mode:?}");
        let names = [format!("{p}/x"), format!("{p}/y"), format!("{p}/z")];
        let held = a.lock(&names[1]).ttl(LONG).acquire().await.expect("y");
        assert!(
            b.lock_all(&names).ttl(LONG).try_acquire().await.expect("try").is_none(),
            "{mode:?}: y is held"
        );
        for n in [&names[0], &names[2]] {
            assert!(a.inspect(n).await.expect("inspect").is_none(), "{mode:?}: {n} was left held");
        }
        // The same client again, at once: its own earlier keys must not be in the way.
        assert!(b.lock_all(&names).ttl(LONG).try_acquire().await.expect("try").is_none());
        assert_eq!(held.release().await.expect("release"), ReleaseOutcome::Released);
        let g = b.lock_all(&names).ttl(LONG).try_acquire().await.expect("try").expect("all free now");
        let tokens: Vec<u64> = g.fencing_tokens().iter().map(|(_, t)| t.get()).collect();
        assert_eq!(tokens.len(), 3);
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_locks_do_not_refuse_a_multi_key_lock() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    for mode in MODES {
        let (a, b) = (client(&eps, mode).await, client(&eps, mode).await);
        let base = format!("nest-{mode:?}");
        // More nested keys than one page of the transaction's queue read (32).
        let mut held = Vec::new();
        for i in 0..40 {
            held.push(a.lock(&format!("{base}/one/n{i}")).ttl(LONG).acquire().await.expect("nested"));
        }
        held.push(a.lock(&format!("{base}/two/694d8a0b8c2a1f03")).ttl(LONG).acquire().await.expect("nested"));
        let names = [format!("{base}/one"), format!("{base}/two")];
        let g = b.lock_all(&names).ttl(LONG).try_acquire().await.expect("try");
        let g = g.unwrap_or_else(|| panic!("{mode:?}: nested locks refused the multi-key lock"));
        // And the names are truly held: another client's lock on one is refused.
        assert!(a.lock(&names[0]).try_acquire().await.expect("try").is_none(), "{mode:?}: not exclusive");
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
        for h in held {
            let _ = h.release().await;
        }
    }
}

/// A multi-key lock puts its keys in one transaction, so they share a create revision, and a
/// queue read (32 keys a page) can end among them: the contender cut off at the page's end is
/// still found. `t` and 32 names nested in it held at once: `t` is held, for the lock and for
/// a waiter, whatever page its key falls on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_read_that_ends_among_keys_of_one_revision_finds_the_holder() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    for mode in MODES {
        let (a, b) = (client(&eps, mode).await, client(&eps, mode).await);
        let base = format!("tie-{mode:?}");
        let names: Vec<String> =
            std::iter::once(base.clone()).chain((0..32).map(|i| format!("{base}/{i:04}"))).collect();
        let held = b.lock_all(names.iter()).ttl(LONG).acquire().await.expect("b holds them all");
        let tokens = held.fencing_tokens();
        assert!(tokens.iter().all(|(_, t)| *t == tokens[0].1), "{mode:?}: not one transaction");
        assert!(
            a.lock(&base).try_acquire().await.expect("try").is_none(),
            "{mode:?}: a took '{base}', which b holds"
        );
        let waited = a.lock(&base).ttl(LONG).wait(Duration::from_secs(1)).acquire().await;
        assert!(waited.is_err(), "{mode:?}: a waiter took '{base}', which b holds");
        let info = a.inspect(&base).await.expect("inspect").expect("held");
        assert_eq!(info.fencing_token, Some(tokens[0].1), "{mode:?}");
        assert_eq!(held.release().await.expect("release"), ReleaseOutcome::Released);
    }
}
