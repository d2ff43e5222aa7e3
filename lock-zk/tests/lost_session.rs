//! The truth when a reply or a session is lost: a `try_acquire` whose create was applied but
//! whose call failed leaves no child behind, and a waiter whose session expires while it waits
//! queues again with a fresh session, never holding on the lost one.

mod support;

use std::time::Duration;

use conformance_tests::fixtures::zk::ZkEnsemble;
use lock_core::Instant;
use support::proxy::{ZkProxy, CREATE, LIST};
use zookeeper_client::{Acls, CreateMode};

/// The children of `dir` with the session that owns each.
async fn owners(raw: &zookeeper_client::Client, dir: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for name in support::children(raw, dir).await {
        if let Ok(Some(stat)) = raw.check_stat(&format!("{dir}/{name}")).await {
            out.push((name, stat.ephemeral_owner));
        }
    }
    out
}

/// The create of a `try_acquire` is applied but its reply is lost, and so is the reply to the
/// look-up that would find the child again: the call fails, and the child is deleted by its
/// uuid, so another client takes the lock at once (not after the session timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_try_acquire_whose_create_was_applied_leaves_no_child() {
    lost_create_and_lookups(1, false).await;
}

/// The same for a semaphore's one try: its mutex node whose create reply was lost is deleted
/// (left in the mutex's queue, it kept every contender from the permits for the session's
/// life).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_try_for_a_permit_whose_create_was_applied_leaves_no_child() {
    lost_create_and_lookups(1, true).await;
}

/// As above, and the undo's own first look-up is lost too: the undo looks again (it gave up
/// after one failed look-up, and the child of our live session blocked the name for as long
/// as the session lived).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_undo_of_a_lost_create_looks_again_when_its_look_up_is_lost() {
    lost_create_and_lookups(2, false).await;
}

/// A try (for the lock, or for one of a semaphore's permits) whose first create's reply is
/// lost, and the replies to `lookups` look-ups after it.
async fn lost_create_and_lookups(lookups: usize, permit: bool) {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = ZkProxy::start(zk.connect_string()).await;
    let raw = support::raw(&zk.connect_string()).await;
    let key = support::key("lost-try");
    // A semaphore's first create is its mutex node's.
    let dir = if permit { format!("/distlock/{key}#semaphore/locks") } else { format!("/distlock/{key}") };
    // A persistent directory, so that the swallowed create is the contender's child.
    raw.mkdir(&dir, &CreateMode::Persistent.with_acls(Acls::anyone_all())).await.expect("directory");
    let through = support::client(&proxy.addr, Duration::from_secs(10)).await;

    proxy.swallow_next(CREATE);
    for _ in 0..lookups {
        proxy.swallow_next(LIST);
    }
    let got = if permit {
        through.semaphore(&key, 1).try_acquire().await
    } else {
        through.lock(&key).try_acquire().await
    };
    let e = got.expect_err("a try whose create and look-up replies were lost must fail");
    assert!(e.is_retryable(), "{e:?}");

    let other = support::client(&zk.connect_string(), Duration::from_secs(10)).await;
    let asked = Instant::now();
    let g = if permit {
        other.semaphore(&key, 1).wait(Duration::from_secs(8)).acquire().await
    } else {
        other.lock(&key).wait(Duration::from_secs(8)).acquire().await
    };
    let g = g.expect("the lock is free");
    assert_eq!(proxy.swallowed(), 1 + lookups, "the create's and the look-ups' replies were not all lost");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "the failed try's child blocked for {:?}",
        asked.elapsed()
    );
    // The other's lock node; a permit's mutex node is deleted once the permit is taken.
    let left = support::children(&raw, &dir).await;
    assert_eq!(left.len(), usize::from(!permit), "an orphan child stayed behind: {left:?}");
    g.release().await.expect("release");
}

/// A waiter's link is cut past its session timeout while a holder keeps the lock: the server
/// expires the waiter's session and deletes its child. Healed, the waiter queues again on a
/// new session (it never holds on the lost one), and gets the lock when the holder releases,
/// with a greater fencing token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_session_expires_queues_again_with_a_fresh_one() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = ZkProxy::start(zk.connect_string()).await;
    let raw = support::raw(&zk.connect_string()).await;
    let key = support::key("waiter-expiry");
    let dir = format!("/distlock/{key}");
    let holder = support::client(&zk.connect_string(), Duration::from_secs(10)).await;
    let held = holder.lock(&key).acquire().await.expect("the holder");

    let session = Duration::from_secs(2);
    let wb = support::backend(&proxy.addr, session).await;
    let first_session = wb.session_id().await;
    let waiter = {
        let (w, key) = (lock_core::LockClient::new(wb.clone()), key.clone());
        tokio::spawn(async move { w.lock(&key).wait(Duration::from_secs(40)).acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = owners(&raw, &dir).await;
    assert!(queued.iter().any(|(_, o)| *o == first_session), "the waiter is not queued: {queued:?}");

    // Past the session timeout without a link: the server expires the waiter's session.
    proxy.cut();
    tokio::time::sleep(session * 2).await;
    let now = owners(&raw, &dir).await;
    assert!(!now.iter().any(|(_, o)| *o == first_session), "the expired session's child stayed: {now:?}");
    assert!(!waiter.is_finished(), "the waiter ended while cut off: {:?}", waiter.await);

    // Healed: the waiter queues again, on a new session, and still waits for the holder.
    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(15);
    let requeued = loop {
        let now = owners(&raw, &dir).await;
        if now.len() == 2 {
            break now;
        }
        assert!(Instant::now() < deadline, "the waiter did not queue again: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let second_session = wb.session_id().await;
    assert_ne!(second_session, first_session, "the waiter still uses the expired session");
    assert!(
        requeued.iter().any(|(_, o)| *o == second_session),
        "queued again on another session: {requeued:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the waiter got past the holder: {:?}", waiter.await);

    let fence = held.fencing_token();
    held.release().await.expect("release");
    let g = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter was not woken by the release")
        .expect("join")
        .expect("the waiter gets the lock on its new session");
    assert!(g.fencing_token() > fence, "{} is not greater than the holder's {fence}", g.fencing_token());
    assert!(g.is_held());
    g.release().await.expect("release");
}

/// A holder cut off long enough that its client gives the session up (the guard reports the
/// loss), healed before the server expires the session: the client resumes the session, and
/// deletes its nodes at once, so that the lock it reported lost is free for others, not kept
/// by a session nothing uses any more (until the process ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_given_up_then_resumed_frees_what_it_held() {
    given_up_then_resumed("given-up", &[]).await;
}

/// As above, but the connection drops again as the resumed session lists its nodes (the
/// `getEphemerals` request is reset): the clean-up is tried again after the reconnection, not
/// given up, so the lock reported lost is still freed while nothing uses the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_whose_clean_up_is_cut_tries_again() {
    const GET_EPHEMERALS: i32 = 103;
    given_up_then_resumed("given-up-cut", &[GET_EPHEMERALS]).await;
}

/// A holder's session given up and resumed, the first request with one of `reset` (opcodes)
/// after the resumption reset: another client gets the lock reported lost.
async fn given_up_then_resumed(name: &str, reset: &'static [i32]) {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = ZkProxy::start(zk.connect_string()).await;
    let key = support::key(name);
    // Long, so that the server keeps the session while the client gives it up.
    let session = Duration::from_secs(16);
    let hb = support::backend(&proxy.addr, session).await;
    let holder = lock_core::LockClient::new(hb.clone());
    let g = holder.lock(&key).acquire().await.expect("the holder");

    let cut_at = Instant::now();
    proxy.cut();
    tokio::time::timeout(session, g.lost()).await.expect("the cut-off guard never reported its loss");
    assert!(!g.is_held());
    if !reset.is_empty() {
        proxy.reset_next(reset);
    }
    proxy.heal();

    let other = support::client(&zk.connect_string(), Duration::from_secs(10)).await;
    let got = other.lock(&key).wait(Duration::from_secs(6)).acquire().await;
    let g2 = got.expect("the lock reported lost stayed held by the resumed session");
    assert!(
        cut_at.elapsed() < session,
        "inconclusive: {:?} after the cut, the server may have expired the session itself",
        cut_at.elapsed()
    );
    assert!(g2.fencing_token() > g.fencing_token());
    g2.release().await.expect("release");
    drop(hb);
}
