//! A lock is independent of every lock whose name extends it, and of other namespaces. The
//! queue of `jobs` is the keys `jobs/<lease id in hex>` (the layout of `etcdctl lock` and Go's
//! `concurrency.Mutex`); the keys of `jobs/nightly` are `jobs/nightly/<lease>`, under the same
//! prefix but two levels down. Only direct children named by a lease id count as contenders
//! of `jobs`: for acquire, for a waiter's predecessor, and for inspect.

mod support;

use std::time::Duration;

use conformance_tests::fixtures::etcd::EtcdCluster;
use lock_core::{Instant, LockClient, ReleaseOutcome};
use lock_etcd::{rpc, LeaseMode};
use support::{client, MODES};

const LONG: Duration = Duration::from_secs(60);

/// Names that extend `base`; the second looks exactly like a lease id, so its keys are
/// `<base>/694d8a0b8c2a1f03/<lease>`. More than one page of a queue read (32 keys), so the
/// reads that skip them must read on.
fn nested(base: &str) -> Vec<String> {
    let odd = ["nightly", "694d8a0b8c2a1f03", "0000000001", "a/b"].map(String::from);
    odd.into_iter().chain((0..40).map(|i| format!("n{i}"))).map(|n| format!("{base}/{n}")).collect()
}

fn mode_name(mode: LeaseMode) -> &'static str {
    match mode {
        LeaseMode::Session => "session",
        _ => "per-lock",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_namespaces_that_extend_a_lock_do_not_hold_it() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    for mode in MODES {
        let base = format!("jobs-{}", mode_name(mode));
        let (a, b) = (client(&eps, mode).await, client(&eps, mode).await);
        let mut held = Vec::new();
        for name in nested(&base) {
            held.push(a.lock(&name).ttl(LONG).acquire().await.unwrap_or_else(|e| panic!("{name}: {e}")));
        }
        // A lock of the namespace `base`: its key is `<base>/x/<lease>`.
        let spaced = client(&eps, mode).await.with_namespace(&base).expect("namespace");
        held.push(spaced.lock("x").ttl(LONG).acquire().await.expect("namespaced lock"));

        let seen = b.inspect(&base).await.expect("inspect");
        let g = b.lock(&base).ttl(LONG).try_acquire().await.expect("try");
        let g = g.unwrap_or_else(|| {
            panic!("{mode:?}: holding names that extend {base} blocked {base} itself (inspect: {seen:?})")
        });
        assert!(
            seen.is_none(),
            "{mode:?}: inspect of {base} reports {seen:?}; only names extending it are held"
        );
        let info = a.inspect(&base).await.expect("inspect").expect("the holder of the base lock is visible");
        assert_eq!(info.fencing_token, Some(g.fencing_token()), "{mode:?}: inspect reports another holder");
        // The other way round: holding the base lock blocks none of the names extending it.
        let later = a.lock(&format!("{base}/later")).ttl(LONG).try_acquire().await.expect("try");
        assert!(later.is_some(), "{mode:?}: holding {base} blocked a name that extends it");
        let again = spaced.lock("y").ttl(LONG).try_acquire().await.expect("try");
        assert!(again.is_some(), "{mode:?}: holding {base} blocked a lock of the namespace {base}");
        for g in held.into_iter().chain(later).chain(again).chain([g]) {
            assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
        }
    }
}

/// A key `<name>/<lease id in hex>` on a lease, as `etcdctl lock` and Go's Mutex write it, is
/// a contender of `<name>`: the direct-child rule keeps the interop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_key_in_the_shared_layout_still_holds_the_lock() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let raw = support::raw(&eps).await;
    let lease = raw.lease_grant(30).await.expect("grant").id;
    raw.put(rpc::pb::PutRequest::new(format!("go/{lease:x}"), "", lease)).await.expect("put");
    for mode in MODES {
        let c = client(&eps, mode).await;
        assert!(
            c.lock("go").try_acquire().await.expect("try").is_none(),
            "{mode:?}: the Go holder was ignored"
        );
        let info = c.inspect("go").await.expect("inspect").expect("the Go holder is visible");
        assert!(info.owner.is_none() && info.fencing_token.is_some(), "{info:?}");
    }
    raw.lease_revoke(lease).await.expect("revoke");
    let c = client(&eps, LeaseMode::Session).await;
    let g = c.lock("go").try_acquire().await.expect("try").expect("free once the Go holder is gone");
    g.release().await.expect("release");
}

/// A waiter whose neighbour in create order is a key of a nested lock (created between the
/// holder's key and the waiter's) waits for the holder, and gets the lock when the holder
/// releases, while the nested lock is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_not_queued_behind_a_nested_lock() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let raw = support::raw(&eps).await;
    for mode in MODES {
        let base = format!("queue-{}", mode_name(mode));
        let (a, b, c) = (client(&eps, mode).await, client(&eps, mode).await, client(&eps, mode).await);
        let ga = a.lock(&base).ttl(LONG).acquire().await.expect("a holds");
        let nested: Vec<_> = hold_nested(&c, &base).await;
        let name = base.clone();
        let waiter = tokio::spawn(async move {
            let g = b.lock(&name).ttl(LONG).wait(Duration::from_secs(20)).acquire().await;
            (g, Instant::now())
        });
        // The waiter queued: two direct children of `<base>/`.
        let pfx = format!("{base}/");
        support::eventually("the waiter queues", Duration::from_secs(10), || async {
            let keys = support::keys_under(&raw, &pfx).await;
            (keys.iter().filter(|(k, _, _)| !k[pfx.len()..].contains('/')).count() == 2).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let released = Instant::now();
        assert_eq!(ga.release().await.expect("release"), ReleaseOutcome::Released);
        let (g, got) = waiter.await.expect("join");
        let g = g.unwrap_or_else(|e| panic!("{mode:?}: the waiter did not get the lock: {e}"));
        assert!(got >= released, "{mode:?}: the waiter got the lock while its holder held it");
        assert!(
            got - released < Duration::from_secs(3),
            "{mode:?}: the waiter got the lock {:?} after the release",
            got - released
        );
        for g in nested.into_iter().chain([g]) {
            assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
        }
    }
}

/// Locks of `c` on names extending `base`, taken after `base`'s holder queued.
async fn hold_nested(c: &LockClient, base: &str) -> Vec<lock_core::Guard> {
    let mut held = Vec::new();
    for name in nested(base) {
        held.push(c.lock(&name).ttl(LONG).acquire().await.unwrap_or_else(|e| panic!("{name}: {e}")));
    }
    held
}

/// A lock whose name would put its key in a primitive's queue (`a#election/x` in election
/// `a`'s), or queue among a name's undo markers (`a#undo`), is refused with a typed error: it
/// would otherwise lead that election, hold one of a semaphore's permits or keep a read-write
/// lock's readers waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_would_share_a_primitives_queue_are_refused() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let c = client(&etcd.endpoints(), LeaseMode::Session).await;
    for name in ["a#election/x", "a#semaphore/x", "a#rwlock/w-x", "b#election", "a#undo", "a#undo/x"] {
        let got = c.lock(name).try_acquire().await;
        assert!(matches!(got, Err(lock_core::Error::Unsupported { .. })), "{name}: {got:?}");
    }
    assert!(c.election("a").leader().await.expect("leader").is_none(), "a lock leads election a");
    let p = c.semaphore("a", 1).try_acquire().await.expect("try");
    assert!(p.is_some(), "a lock took semaphore a's only permit");
}
