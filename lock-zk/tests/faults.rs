//! lock-zk against real ZooKeeper servers: mutual exclusion with Apache Curator's
//! `InterProcessMutex` (a Java contender compiled by the test), what kazoo's `Lock` does on
//! the same path, the disconnect grace, and empty lock directories removed by the server.

mod support;

use std::time::{Duration, Instant};

use conformance_tests::fixtures::zk::ZkEnsemble;
use lock_core::{LockClient, LossReason, ReleaseOutcome};
use lock_zk::{ZkBackend, ZkOptions};
use support::contender::Contender;

async fn client(connect: &str, session: Duration) -> LockClient {
    let o = ZkOptions::new(connect).session_timeout(session);
    LockClient::new(ZkBackend::connect(o).await.expect("connect to ZooKeeper"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_with_curators_interprocessmutex() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let ours = client(&connect, Duration::from_secs(10)).await;
    let key = format!("interop/{}", uuid::Uuid::new_v4().simple());
    let path = format!("/distlock/{key}");
    let mut curator = tokio::task::block_in_place(|| Contender::curator(&connect, &path));

    // Curator holds: we are excluded, and see a holder.
    assert_eq!(tokio::task::block_in_place(|| curator.send("acquire 5000")), "HELD");
    assert!(ours.lock(&key).try_acquire().await.expect("try").is_none(), "took a lock Curator holds");
    let info = ours.inspect(&key).await.expect("inspect").expect("Curator's holder is visible");
    assert!(info.fencing_token.is_some());
    // We queue behind Curator and get the lock when it releases.
    let waiter = {
        let (ours, key) = (ours.clone(), key.clone());
        tokio::spawn(async move { ours.lock(&key).wait(Duration::from_secs(20)).acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "our waiter got past Curator's holder");
    assert_eq!(tokio::task::block_in_place(|| curator.send("release")), "RELEASED");
    let g = waiter.await.expect("join").expect("our waiter gets the lock after Curator's release");
    assert!(g.fencing_token() > info.fencing_token.expect("token"), "fencing did not increase");

    // We hold: Curator is excluded, queues behind us, and gets the lock when we release.
    they_queue_behind_our_holder(&ours, &key, g, curator, "Curator", 300).await;
}

/// We hold `g` on `key`: `other` (another client's contender on the same path) is refused
/// within `busy_ms`, then waits in the queue, gets the lock once we release, excludes us
/// while it holds, and leaves the lock free for us after its release.
async fn they_queue_behind_our_holder(
    ours: &LockClient,
    key: &str,
    g: lock_core::Guard,
    mut other: Contender,
    who: &str,
    busy_ms: u64,
) {
    assert_eq!(
        tokio::task::block_in_place(|| other.send(&format!("acquire {busy_ms}"))),
        "BUSY",
        "{who} ignored our holder"
    );
    let waits = tokio::task::spawn_blocking(move || {
        let got = other.send("acquire 20000");
        (other, got)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waits.is_finished(), "{who} took the lock while we held it");
    g.release().await.expect("release");
    let (mut other, got) = waits.await.expect("the other client's waiter");
    assert_eq!(got, "HELD", "{who}'s waiter did not get the lock after our release");
    assert!(ours.lock(key).try_acquire().await.expect("try").is_none(), "took the lock {who} now holds");
    assert_eq!(tokio::task::block_in_place(|| other.send("release")), "RELEASED");
    let g = ours.lock(key).try_acquire().await.expect("try").expect("free after the other client's release");
    g.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_disconnect_keeps_the_lock_and_a_long_one_loses_it() {
    let mut zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let session = Duration::from_secs(4);
    let locks = client(&connect, session).await;
    let g = locks.lock("grace/k").auto_renew().acquire().await.expect("acquire");
    let fence = g.fencing_token();

    // A pause far shorter than the validity (half the session timeout): nothing is lost.
    zk.servers[0].process().pause().expect("pause");
    tokio::time::sleep(Duration::from_millis(500)).await;
    zk.servers[0].process().resume().expect("resume");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(g.is_held(), "a 500 ms pause lost the lock");
    assert!(tokio::time::timeout(Duration::from_millis(10), g.lost()).await.is_err());

    // A pause longer than the session timeout: the loss signal fires at the validity the
    // server last confirmed (half a session timeout after the last answered request was
    // sent), before the server could have expired the session.
    let paused_at = Instant::now();
    zk.servers[0].process().pause().expect("pause");
    let reason = tokio::time::timeout(session * 2, g.lost()).await;
    let after = paused_at.elapsed();
    zk.servers[0].process().resume().expect("resume");
    let reason = reason.expect("a long disconnect did not fire the loss signal");
    // The lease ends where the server last confirmed it, and the renewal that cannot confirm
    // it again (its check fails, or is answered too late) or the session's grace may report
    // it first.
    assert!(
        matches!(
            reason,
            LossReason::SessionLost | LossReason::Expired | LossReason::NotHeld | LossReason::RenewalFailed
        ),
        "loss reason {reason:?}"
    );
    assert!(!g.is_held(), "is_held is true after the session was lost");
    assert!(after < session, "the loss fired only after {after:?}, the session timeout is {session:?}");

    // The lost guard is given up: its child goes with it (the session may have survived the
    // pause, which was shorter than the session timeout, and then the child lives on until
    // this release), or went with the session. The lock can be taken again (on a new session
    // if the old one was given up), with a greater token.
    let _ = g.release().await;
    let g2 = locks.lock("grace/k").wait(Duration::from_secs(20)).acquire().await.expect("after the loss");
    assert!(g2.fencing_token() > fence);
    g2.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lock_directories_are_removed() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let locks = client(&connect, Duration::from_secs(10)).await;
    let key = format!("gc/{}", uuid::Uuid::new_v4().simple());
    let g = locks.lock(&key).acquire().await.expect("acquire");
    let raw = zookeeper_client::Client::connect(&connect).await.expect("raw client");
    let dir = format!("/distlock/{key}");
    assert!(raw.check_stat(&dir).await.expect("stat").is_some(), "no lock directory while held");
    g.release().await.expect("release");
    // A dropped waiting acquire leaves no child behind either.
    let holder = locks.lock(&key).acquire().await.expect("acquire");
    let waiting = {
        // In a task of its own: this task holds the lock, and would be refused at once.
        let (locks, key) = (locks.clone(), key.clone());
        tokio::spawn(async move { locks.lock(&key).wait(Duration::from_secs(30)).acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the waiter did not wait: {:?}", waiting.await);
    waiting.abort();
    let _ = waiting.await;
    holder.release().await.expect("release");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if raw.check_stat(&dir).await.expect("stat").is_none() {
            break;
        }
        let left = raw.list_children(&dir).await.unwrap_or_default();
        assert!(Instant::now() < deadline, "the empty lock directory {dir} stayed (children: {left:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// kazoo's `Lock` orders only children named `<uuid>__lock__<sequence>`: it excludes
/// distlock (distlock orders every sequential child), but does not see distlock's or
/// Curator's children, so it takes a lock distlock holds. The docs say not to mix them; this
/// checks that what they say is still true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_is_excluded_by_order_but_does_not_exclude_us() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let ours = client(&connect, Duration::from_secs(10)).await;
    let key = format!("kazoo/{}", uuid::Uuid::new_v4().simple());
    let path = format!("/distlock/{key}");
    let mut kazoo = tokio::task::block_in_place(|| Contender::kazoo(&connect, &path, ""));

    assert_eq!(tokio::task::block_in_place(|| kazoo.send("acquire 5000")), "HELD");
    assert!(ours.lock(&key).try_acquire().await.expect("try").is_none(), "distlock ignored kazoo's holder");
    assert_eq!(tokio::task::block_in_place(|| kazoo.send("release")), "RELEASED");

    let g = ours.lock(&key).try_acquire().await.expect("try").expect("free after kazoo's release");
    let kazoo_got = tokio::task::block_in_place(|| kazoo.send("acquire 1000"));
    assert_eq!(
        kazoo_got, "HELD",
        "kazoo now respects distlock's children: update the interoperability notes in lock-zk's docs"
    );
    assert_eq!(tokio::task::block_in_place(|| kazoo.send("release")), "RELEASED");
    g.release().await.expect("release");
}

/// Digest auth against a real server: clients of the same digest user share locks; a client
/// of another user, or with none, cannot create children in a lock directory made under that
/// user (its nodes get `creator_all`): it gets a typed auth error, never the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_auth_shares_locks_within_one_identity_and_refuses_others() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let as_user = |user: Option<&str>| {
        let mut o = ZkOptions::new(&connect).session_timeout(Duration::from_secs(10));
        if let Some(u) = user {
            o = o.credentials(u, "s3cret-pw");
        }
        async move { LockClient::new(ZkBackend::connect(o).await.expect("connect with digest auth")) }
    };
    let (a, b) = (as_user(Some("app")).await, as_user(Some("app")).await);
    let key = format!("digest/{}", uuid::Uuid::new_v4().simple());
    let g = a.lock(&key).acquire().await.expect("acquire as app");
    assert!(b.lock(&key).try_acquire().await.expect("try as app").is_none(), "same identity not excluded");
    for other in [Some("intruder"), None] {
        let c = as_user(other).await;
        let e = c.lock(&key).try_acquire().await.expect_err("another identity must not get the lock");
        assert!(
            matches!(e, lock_core::Error::Backend { kind: lock_core::BackendErrorKind::Auth, .. }),
            "{other:?}: {e:?}"
        );
        assert!(!format!("{e} {e:?}").contains("s3cret-pw"), "password leaked: {e:?}");
    }
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    let g = b.lock(&key).try_acquire().await.expect("try").expect("the same identity gets it after release");
    g.release().await.expect("release");
}

/// kazoo's `Lock` with `extra_lock_patterns=["-lock-"]` orders Curator-layout children (ours)
/// by their sequence too: then kazoo and distlock exclude each other, hand-off included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_with_the_lock_pattern_and_distlock_exclude_each_other() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let ours = client(&connect, Duration::from_secs(10)).await;
    let key = format!("kazoo-pattern/{}", uuid::Uuid::new_v4().simple());
    let path = format!("/distlock/{key}");
    let mut kazoo = tokio::task::block_in_place(|| Contender::kazoo(&connect, &path, "-lock-"));

    // kazoo holds: we are excluded.
    assert_eq!(tokio::task::block_in_place(|| kazoo.send("acquire 5000")), "HELD");
    assert!(ours.lock(&key).try_acquire().await.expect("try").is_none(), "distlock ignored kazoo's holder");
    assert_eq!(tokio::task::block_in_place(|| kazoo.send("release")), "RELEASED");

    // We hold: kazoo is excluded, waits in the queue, and gets the lock once we release.
    let g = ours.lock(&key).try_acquire().await.expect("try").expect("free after kazoo's release");
    they_queue_behind_our_holder(&ours, &key, g, kazoo, "kazoo", 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_while_holding_fires_the_loss_before_anyone_takes_over() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = support::proxy::ZkProxy::start(zk.connect_string()).await;
    let session = Duration::from_secs(2);
    let a = client(&proxy.addr, session).await;
    let b = client(&zk.connect_string(), Duration::from_secs(10)).await;
    let g = a.lock("expiry/k").auto_renew().acquire().await.expect("a holds");
    let fence = g.fencing_token();
    let waiter = tokio::spawn(async move {
        let got = b.lock("expiry/k").wait(Duration::from_secs(30)).acquire().await;
        (Instant::now(), got)
    });
    // The server stops hearing from a: it expires the session after 2 s and deletes its node.
    proxy.cut();
    tokio::time::timeout(Duration::from_secs(10), g.lost()).await.expect("a's loss signal fired");
    let lost_at = Instant::now();
    assert!(!g.is_held());
    let (got_at, got) = waiter.await.expect("join");
    let gb = got.expect("b takes over once the expired node is gone");
    assert!(got_at >= lost_at, "b got the lock {:?} before a's loss fired", lost_at - got_at);
    assert!(gb.fencing_token() > fence);
    proxy.heal();
    gb.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_reply_was_lost_is_found_again_by_its_uuid() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = support::proxy::ZkProxy::start(zk.connect_string()).await;
    let locks = client(&proxy.addr, Duration::from_secs(10)).await;
    let key = format!("lost-create/{}", uuid::Uuid::new_v4().simple());
    // Make the directory first, so the swallowed create is the contender's child.
    locks.lock(&key).acquire().await.expect("first").release().await.expect("release");
    proxy.swallow_next(support::proxy::CREATE);
    let g =
        locks.lock(&key).wait(Duration::from_secs(20)).acquire().await.expect("acquire despite a lost reply");
    assert_eq!(proxy.swallowed(), 1, "no create reply was swallowed");
    let raw = zookeeper_client::Client::connect(&zk.connect_string()).await.expect("raw client");
    let dir = format!("/distlock/{key}");
    let children = raw.list_children(&dir).await.expect("children");
    assert_eq!(children.len(), 1, "an orphan child stayed behind: {children:?}");
    g.release().await.expect("release");
    let other = client(&zk.connect_string(), Duration::from_secs(10)).await;
    let g2 = other.lock(&key).try_acquire().await.expect("try").expect("nothing blocks the queue");
    g2.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_with_queued_waiters() {
    let mut zk = ZkEnsemble::start(3).await.expect("a three-server ensemble");
    let connect = zk.connect_string();
    let session = Duration::from_secs(8);
    let a = client(&connect, session).await;
    let g = a.lock("leader/k").acquire().await.expect("a holds");
    let first = g.fencing_token();
    // The waiters must never hold at once (the first holder's session may be lost during the
    // election, which lets a waiter in before its release: that is a loss, not an overlap).
    let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let c = client(&connect, session).await;
        let inside = inside.clone();
        waiters.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering::SeqCst;
            let g = c.lock("leader/k").wait(Duration::from_secs(60)).acquire().await?;
            assert_eq!(inside.fetch_add(1, SeqCst), 0, "two waiters held the lock at once");
            let t = g.fencing_token();
            tokio::time::sleep(Duration::from_millis(100)).await;
            inside.fetch_sub(1, SeqCst);
            let _ = g.release().await;
            Ok::<_, lock_core::Error>(t)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut leader = None;
    for (i, s) in zk.servers.iter().enumerate() {
        let srvr =
            conformance_tests::fixtures::zk::four_letter(&s.address(), "srvr").await.unwrap_or_default();
        if srvr.contains("Mode: leader") {
            leader = Some(i);
        }
    }
    let leader = leader.expect("no leader found");
    zk.servers[leader].process().kill().await;
    // a releases through the survivors (or its session is lost: its node goes either way).
    let deadline = Instant::now() + Duration::from_secs(30);
    let lease = g.detach();
    loop {
        match a.release_lease(&lease).await {
            Ok(_) => break,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(_) => break,
        }
    }
    let mut tokens = vec![first];
    for w in waiters {
        tokens.push(w.await.expect("join").expect("a waiter gets the lock after the leader died"));
    }
    assert!(tokens[1] != tokens[2], "two waiters got the same token: {tokens:?}");
    assert!(tokens[1..].iter().all(|t| *t > first), "tokens must exceed the first holder's: {tokens:?}");
}

/// A release whose delete was lost with its connection (the server never saw it) is sent
/// again once the client has reconnected, as Curator's guaranteed delete does: on a session
/// that lives on, the node would otherwise hold the lock for the session's whole life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_delete_was_lost_with_its_connection_is_sent_again() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = support::proxy::ZkProxy::start(zk.connect_string()).await;
    let a = client(&proxy.addr, Duration::from_secs(10)).await;
    let b = client(&zk.connect_string(), Duration::from_secs(10)).await;
    let key = format!("lost-delete/{}", uuid::Uuid::new_v4().simple());
    let g = a.lock(&key).acquire().await.expect("a holds");
    proxy.stall();
    let release = tokio::spawn(async move { g.release().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.heal();
    let released = tokio::time::timeout(Duration::from_secs(15), release)
        .await
        .expect("release returned")
        .expect("join");
    assert_eq!(released.expect("the release is sent again after the reconnect"), ReleaseOutcome::Released);
    let got = b.lock(&key).wait(Duration::from_secs(3)).acquire().await;
    got.expect("a's node outlived its release").release().await.expect("release");
}

/// A semaphore `try_acquire` dropped right after its permit was granted (while it gives up
/// the semaphore's mutex) loses no permit: the permit's node is deleted, not left for the
/// session's life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_try_dropped_after_its_grant_leaks_no_permit() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = support::proxy::ZkProxy::start(zk.connect_string()).await;
    let a = client(&proxy.addr, Duration::from_secs(10)).await;
    let c = client(&zk.connect_string(), Duration::from_secs(10)).await;
    let key = format!("try-permit/{}", uuid::Uuid::new_v4().simple());
    // The first delete after the grant (the mutex node's) is never answered.
    proxy.stall_at_next(support::proxy::DELETE);
    let tried = tokio::time::timeout(Duration::from_secs(1), a.semaphore(&key, 1).try_acquire()).await;
    drop(tried); // the guard, if the call returned one, or the call itself
                 // Stalled long enough for every connection to see it (healed, each is closed).
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.heal();
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        if let Some(g) = c.semaphore(&key, 1).try_acquire().await.expect("try") {
            g.release().await.expect("release");
            break;
        }
        assert!(Instant::now() < deadline, "the dropped try's permit stays taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A release whose delete is applied but whose reply is lost with its connection: the delete
/// is sent again, finds the node gone, and the release says `Released` (it said `NotHeld`, as
/// if the lock had expired or been taken while held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_reply_is_lost_says_released() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = support::proxy::ZkProxy::start(zk.connect_string()).await;
    let a = client(&proxy.addr, Duration::from_secs(10)).await;
    let key = format!("lost-release/{}", uuid::Uuid::new_v4().simple());
    let g = a.lock(&key).acquire().await.expect("a holds");
    proxy.swallow_next(support::proxy::DELETE);
    let released =
        tokio::time::timeout(Duration::from_secs(15), g.release()).await.expect("release returned");
    assert_eq!(proxy.swallowed(), 1, "the delete's reply was not lost");
    assert_eq!(released.expect("release"), ReleaseOutcome::Released);
    let b = client(&zk.connect_string(), Duration::from_secs(10)).await;
    b.lock(&key)
        .try_acquire()
        .await
        .expect("try")
        .expect("the lock is free")
        .release()
        .await
        .expect("release");
}

/// A connection reset (an RST, not a clean close) fails the requests in flight with the
/// connection's own error, not `ConnectionLoss`: a release whose delete went down with it is
/// still sent again after the reconnect, and a waiter whose list went down with it queues on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_lost_with_a_reset_connection_are_sent_again() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = support::proxy::ZkProxy::start(zk.connect_string()).await;
    let a = client(&proxy.addr, Duration::from_secs(10)).await;
    let b = client(&zk.connect_string(), Duration::from_secs(10)).await;
    let key = format!("reset/{}", uuid::Uuid::new_v4().simple());
    // A release.
    let g = a.lock(&key).acquire().await.expect("a holds");
    proxy.reset_next(support::proxy::DELETE);
    let released =
        tokio::time::timeout(Duration::from_secs(15), g.release()).await.expect("release returned");
    assert_eq!(
        released.expect("a release reset with its connection is sent again"),
        ReleaseOutcome::Released
    );
    let got = b.lock(&key).wait(Duration::from_secs(3)).acquire().await;
    let held = got.expect("a's node outlived its release");
    // A waiter whose wake-up list is reset with its connection.
    let waiter = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { a.lock(&key).wait(Duration::from_secs(15)).acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.reset_next(support::proxy::LIST);
    held.release().await.expect("release");
    let got = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the waiter returned")
        .expect("join");
    got.expect("a waiter whose list was reset with its connection gave up").release().await.expect("release");
}

/// A waiting acquire whose connection is down when its deadline comes returns then (its
/// node's delete goes on in the background), not once the client has given the session up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_cut_off_from_the_server_ends_at_its_deadline() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = support::proxy::ZkProxy::start(zk.connect_string()).await;
    let a = client(&proxy.addr, Duration::from_secs(10)).await;
    let b = client(&zk.connect_string(), Duration::from_secs(10)).await;
    let key = format!("cut-wait/{}", uuid::Uuid::new_v4().simple());
    let held = b.lock(&key).acquire().await.expect("b holds");
    let start = Instant::now();
    let waiter = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { a.lock(&key).wait(Duration::from_secs(1)).acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    let got = tokio::time::timeout(Duration::from_secs(20), waiter).await.expect("returned").expect("join");
    let took = start.elapsed();
    assert!(got.is_err(), "the lock is held");
    assert!(took < Duration::from_millis(2500), "a 1 s wait returned after {took:?}");
    proxy.heal();
    held.release().await.expect("release");
}

/// A waiter whose wake-up read is lost with its connection queues again on the same node
/// (found by its uuid); the node is not also deleted behind it by the failed round's undo,
/// which would leave the retry holding a deleted node while the next client takes the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_queues_again_keeps_its_node() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = support::proxy::ZkProxy::start(zk.connect_string()).await;
    let a = client(&proxy.addr, Duration::from_secs(10)).await;
    let b = client(&zk.connect_string(), Duration::from_secs(10)).await;
    let c = client(&zk.connect_string(), Duration::from_secs(10)).await;
    let key = format!("requeue/{}", uuid::Uuid::new_v4().simple());
    let held = b.lock(&key).acquire().await.expect("b holds");
    let waiter = {
        let (a, key) = (a.clone(), key.clone());
        tokio::spawn(async move { a.lock(&key).wait(Duration::from_secs(15)).acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // a's wake-up read is lost with its connection; any delete of a's after it is lost too,
    // three times over.
    proxy.swallow_next(support::proxy::LIST);
    for _ in 0..3 {
        proxy.reset_next(support::proxy::DELETE);
    }
    held.release().await.expect("release");
    let ga = tokio::time::timeout(Duration::from_secs(20), waiter).await.expect("returned").expect("join");
    let ga = ga.expect("a got the lock");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stolen = c.lock(&key).try_acquire().await.expect("try");
    assert!(
        stolen.is_none(),
        "c took the lock a holds (is_held: {}): a's node was deleted behind it",
        ga.is_held()
    );
    ga.release().await.expect("release");
}
