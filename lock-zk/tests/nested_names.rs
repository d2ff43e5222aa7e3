//! A lock is independent of every lock whose name extends it. On ZooKeeper the lock `jobs` is
//! the directory `/distlock/jobs`, and the directory of `jobs/0000000001` is its child
//! `0000000001`, named like a sequential node (so is `jobs/x-lock-0000000007`, named like a
//! Curator child): neither may count as a contender of `jobs`, for acquire, waiting or inspect.

mod support;

use std::time::Duration;

use conformance_tests::fixtures::zk::ZkEnsemble;

/// Names that extend `base`, some of them named like lock nodes.
fn nested(base: &str) -> Vec<String> {
    [
        "0000000001",
        "nightly",
        "x-lock-0000000007",
        "_c_0b7c5a3e-1d2f-4a5b-8c9d-0e1f2a3b4c5d-lock-0000000002",
        "abc__lock__0000000003",
        "a/0000000004",
    ]
    .iter()
    .map(|n| format!("{base}/{n}"))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_whose_names_extend_a_lock_do_not_hold_it() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let (a, b) = (
        support::client(&connect, Duration::from_secs(10)).await,
        support::client(&connect, Duration::from_secs(10)).await,
    );
    let base = support::key("nested");
    let mut held = Vec::new();
    for name in nested(&base) {
        held.push(a.lock(&name).acquire().await.unwrap_or_else(|e| panic!("{name}: {e}")));
    }
    let seen = b.inspect(&base).await.expect("inspect");
    let g = b.lock(&base).try_acquire().await.expect("try");
    let g = g.unwrap_or_else(|| {
        panic!("holding names that extend {base} blocked {base} itself (inspect: {seen:?})")
    });
    assert!(seen.is_none(), "inspect of {base} reports {seen:?} while only names extending it are held");
    let info = a.inspect(&base).await.expect("inspect").expect("the holder of the base lock is visible");
    assert_eq!(info.fencing_token, Some(g.fencing_token()), "inspect reports another holder: {info:?}");
    // And the other way round: holding the base lock blocks none of the names that extend it.
    let later = a.lock(&format!("{base}/later")).try_acquire().await.expect("try");
    assert!(later.is_some(), "holding {base} blocked a name that extends it");
    for g in held.into_iter().chain(later) {
        assert_eq!(g.release().await.expect("release"), lock_core::ReleaseOutcome::Released);
    }
    g.release().await.expect("release");
}

/// A waiter whose predecessor in order is the directory of a nested lock (a child that looks
/// like a sequential node, between the holder's child and the waiter's) still waits for the
/// holder, and gets the lock when the holder releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_waits_for_the_holder_not_for_a_nested_lock() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let (a, b) = (
        support::client(&connect, Duration::from_secs(10)).await,
        support::client(&connect, Duration::from_secs(10)).await,
    );
    let raw = support::raw(&connect).await;
    let base = support::key("nested-wait");
    let dir = format!("/distlock/{base}");
    let holder = a.lock(&base).acquire().await.expect("a holds");
    let first = support::children(&raw, &dir).await;
    let seq: u64 = first[0][first[0].len() - 10..].parse().expect("sequence");
    // The next child of the directory gets the next sequence: make it a nested lock's
    // directory named like the sequence after the holder's, so the waiter comes after it.
    let nested = a.lock(&format!("{base}/{:010}", seq + 1)).acquire().await.expect("the nested lock");
    let waiter = {
        let (b, base) = (b.clone(), base.clone());
        tokio::spawn(async move { b.lock(&base).wait(Duration::from_secs(20)).acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let names = support::children(&raw, &dir).await;
    assert_eq!(names.len(), 3, "the holder, the nested lock's directory and the waiter: {names:?}");
    assert!(!waiter.is_finished(), "the waiter got past the holder");
    let released = lock_core::Instant::now();
    holder.release().await.expect("release");
    let g = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter was not woken by the holder's release")
        .expect("join")
        .expect("the waiter gets the lock");
    assert!(released.elapsed() < Duration::from_secs(2), "woken only after {:?}", released.elapsed());
    g.release().await.expect("release");
    nested.release().await.expect("release");
}

/// Two directories of nested names whose digits lie half the sequence range apart (the
/// holder's node 0, `b-lock-0000000002`, `a-lock--2147483647`, the contender's node 3) must
/// not reorder the queue: the contender never gets the lock while the holder has it. The
/// order used to depend on how ZooKeeper listed the children (about one listing in six put
/// the contender first: two holders).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_directories_half_the_range_apart_never_let_a_second_holder_in() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let (a, b) = (
        support::client(&connect, Duration::from_secs(10)).await,
        support::client(&connect, Duration::from_secs(10)).await,
    );
    for round in 0..30 {
        // A fresh directory: the holder's node is its first child (sequence 0), the two
        // nested directories take 1 and 2, the contender's node is 3.
        let base = support::key(&format!("wrap{round}"));
        let holder = a.lock(&base).acquire().await.expect("hold");
        let mut nested = Vec::new();
        for n in ["b-lock-0000000002", "a-lock--2147483647"] {
            nested.push(a.lock(&format!("{base}/{n}")).acquire().await.expect("nested"));
        }
        let second = b.lock(&base).try_acquire().await.expect("try");
        assert!(second.is_none(), "round {round}: a second holder of {base} got in beside the first");
        for g in nested {
            g.release().await.expect("release");
        }
        holder.release().await.expect("release");
    }
}
