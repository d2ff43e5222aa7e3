//! lock-zk's primitives on a real server, beyond the conformance suite: the nodes they make
//! (Curator's layouts), listing page by page, atomic multi-key tries, the stored number of
//! permits, an election whose leader is a foreign node, and an observer whose session ends.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use conformance_tests::fixtures::zk::ZkEnsemble;
use futures::StreamExt;
use lock_core::{AcquireRequest, Error, LockClient, LockKey, Mode};
use zookeeper_client::CreateMode;

const SESSION: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_primitive_lives_in_curators_layout_with_its_metadata() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let c = support::client(&connect, SESSION).await;
    let raw = support::raw(&connect).await;
    let name = support::key("layout");
    let base = format!("/distlock/{name}");

    let lock = c.lock(&name).value("v-lock").acquire().await.expect("lock");
    let permit = c.semaphore(&name, 3).value("v-permit").acquire().await.expect("permit");
    let reader = c.read_lock(&name).value("v-read").acquire().await.expect("reader");
    let leader = c.election(&name).campaign("v-leader").await.expect("leader");

    let one = |dir: String| {
        let raw = raw.clone();
        async move {
            let kids = support::children(&raw, &dir).await;
            assert_eq!(kids.len(), 1, "{dir}: {kids:?}");
            let (data, stat) = raw.get_data(&format!("{dir}/{}", kids[0])).await.expect("data");
            assert_ne!(stat.ephemeral_owner, 0, "{dir}/{} is not ephemeral", kids[0]);
            (kids[0].clone(), String::from_utf8(data).expect("utf-8"), stat.czxid as u64)
        }
    };
    for (dir, recipe, value, token) in [
        (base.clone(), "-lock-", "v-lock", lock.fencing_token()),
        (format!("{base}#semaphore/leases"), "-lease-", "v-permit", permit.fencing_token()),
        (format!("{base}#rwlock"), "-__READ__", "v-read", reader.fencing_token()),
        (format!("{base}#election"), "-latch-", "v-leader", leader.fencing_token()),
    ] {
        let (node, data, czxid) = one(dir.clone()).await;
        assert!(node.starts_with("_c_") && node.contains(recipe), "{dir}/{node}");
        assert!(data.starts_with('{') && data.contains(&format!("\"value\":\"{value}\"")), "{dir}: {data}");
        assert_eq!(czxid, token.get(), "{dir}: the token is the node's czxid");
    }
    // The semaphore's mutex was left; the number of permits is the semaphore node's data.
    assert!(support::children(&raw, &format!("{base}#semaphore/locks")).await.is_empty());
    let (data, _) = raw.get_data(&format!("{base}#semaphore")).await.expect("semaphore node");
    assert_eq!(String::from_utf8_lossy(&data), "{\"permits\":3}");

    for g in [lock, permit, reader, leader] {
        g.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_every_holder_once_in_order() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let c = support::client(&connect, SESSION).await;
    let base = support::key("listing");
    let mut held = Vec::new();
    for n in ["a", "b/c", "b/0000000001", "d e", "e", "f/g/h"] {
        held.push(c.lock(&format!("{base}/{n}")).value(n).acquire().await.expect("lock"));
    }
    for _ in 0..2 {
        held.push(c.semaphore(&format!("{base}/b"), 5).acquire().await.expect("permit"));
    }
    for _ in 0..2 {
        held.push(c.read_lock(&format!("{base}/e")).acquire().await.expect("reader"));
    }
    held.push(c.election(&format!("{base}/f")).campaign("leader-f").await.expect("leader"));
    let outside = c.lock(&format!("{base}x/a")).acquire().await.expect("outside the prefix");
    let want: BTreeSet<(String, u64)> =
        held.iter().map(|g| (g.key().to_owned(), g.fencing_token().get())).collect();

    let backend = c.backend();
    let mut pages = 0;
    let mut cursor = None;
    let mut listed = Vec::new();
    loop {
        let page = backend.list(&format!("{base}/"), cursor, 2).await.expect("list");
        pages += 1;
        listed.extend(page.entries);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let got: BTreeSet<(String, u64)> =
        listed.iter().map(|(k, i)| (k.clone(), i.fencing_token.expect("token").get())).collect();
    assert_eq!(got, want, "pages: {listed:#?}");
    assert_eq!(listed.len(), want.len(), "a holder was listed twice: {listed:#?}");
    assert!(pages >= 4, "{pages} pages of at most about 2 entries");
    let mode_of =
        |k: &str| listed.iter().filter(|(key, _)| key.ends_with(k)).map(|(_, i)| i.mode).collect::<Vec<_>>();
    assert!(mode_of("/b").iter().all(|m| matches!(m, Mode::Permit { limit: 5 })), "{:?}", mode_of("/b"));
    assert_eq!(mode_of("/e").iter().filter(|m| **m == Mode::Read).count(), 2);
    assert!(mode_of("/f").contains(&Mode::Leader));
    let value_of_d_e = listed.iter().find(|(k, _)| k.ends_with("/d e")).and_then(|(_, i)| i.metadata.clone());
    assert_eq!(value_of_d_e.and_then(|m| m.value).as_deref(), Some("d e"));

    // A prefix that ends within a segment: `<base>/b` is `b`, `b/…` and `b#semaphore`.
    let b: Vec<_> = c.list(&format!("{base}/b")).await.expect("list b");
    assert_eq!(b.len(), 4, "{b:#?}");
    // Outside the prefix: not listed; the whole namespace lists it.
    assert!(!listed.iter().any(|(k, _)| k.starts_with(&format!("{base}x"))));
    assert!(c.list("").await.expect("list all").iter().any(|(k, _)| *k == format!("{base}x/a")));
    drop(outside);
    for g in held {
        g.release().await.expect("release");
    }
    assert!(c.list(&format!("{base}/")).await.expect("list").is_empty(), "released grants are listed");
}

fn requests(names: &[&str]) -> Vec<AcquireRequest> {
    let owner = lock_core::OwnerToken::random();
    names
        .iter()
        .map(|n| {
            let mut r = AcquireRequest::new(LockKey::new(n).expect("key"), Duration::from_secs(30));
            r.owner = owner;
            r
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_multi_key_try_takes_all_or_leaves_nothing() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let c = support::client(&connect, SESSION).await;
    let raw = support::raw(&connect).await;
    let base = support::key("multi");
    let names: Vec<String> = ["x", "y", "z"].iter().map(|n| format!("{base}/{n}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let backend = c.backend().clone();

    // One name held: nothing is taken, and no node of the try is left in any queue.
    let held = c.lock(&names[2]).acquire().await.expect("hold z");
    assert!(backend.try_acquire_all(&requests(&refs)).await.expect("try all").is_none());
    for (i, n) in names.iter().enumerate() {
        let left = support::children(&raw, &format!("/distlock/{n}")).await;
        assert_eq!(left.len(), usize::from(i == 2), "{n}: {left:?}");
    }
    held.release().await.expect("release");

    // All free: all are taken at once, each with its own rising token.
    let leases = backend.try_acquire_all(&requests(&refs)).await.expect("try all").expect("all free");
    assert_eq!(leases.len(), 3);
    assert!(c.lock(&names[1]).try_acquire().await.expect("try").is_none(), "y is not held");
    for l in &leases {
        assert_eq!(backend.release(l).await.expect("release"), lock_core::ReleaseOutcome::Released);
    }
}

/// `holders` of a semaphore counts by the number of permits its holders stored, not the
/// caller's: asked with 3 for a semaphore of 2, a waiter was listed as a holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_holders_follow_the_stored_number_of_permits() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let (a, b, c) = (
        support::client(&connect, SESSION).await,
        support::client(&connect, SESSION).await,
        support::client(&connect, SESSION).await,
    );
    let name = support::key("stored");
    let one = a.semaphore(&name, 2).acquire().await.expect("a permit");
    let two = b.semaphore(&name, 2).acquire().await.expect("a permit");
    let waiter = {
        let (c, name) = (c.clone(), name.clone());
        tokio::spawn(async move { c.semaphore(&name, 2).wait(Duration::from_secs(20)).acquire().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let key = LockKey::new(&name).expect("key");
    for asked in [1, 2, 3] {
        let held = a.backend().holders(&key, Mode::Permit { limit: asked }).await.expect("holders");
        assert_eq!(held.len(), 2, "asked with {asked} permits: {held:?}");
    }
    one.release().await.expect("release");
    let three = waiter.await.expect("join").expect("the waiter's permit");
    two.release().await.expect("release");
    three.release().await.expect("release");
}

/// A hold cap counts from the grant, not from the start of the wait, and a session's lease is
/// renewed up to it: a permit waited for 3 s with a 6 s cap is held about 6 s. Before, the
/// cap counted the wait (the lease's `acquired_at` is the queue node's creation) and began a
/// whole API TTL (30 s) early, so the permit was released as soon as it was granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_cap_counts_from_the_grant() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let (a, b) = (support::client(&connect, SESSION).await, support::client(&connect, SESSION).await);
    let name = support::key("capped");
    let first = a.semaphore(&name, 1).acquire().await.expect("the permit");
    let waiter = {
        let (b, name) = (b.clone(), name.clone());
        tokio::spawn(async move {
            b.semaphore(&name, 1)
                .wait(Duration::from_secs(20))
                .auto_renew()
                .max_hold(Duration::from_secs(6))
                .acquire()
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    first.release().await.expect("release");
    let g = waiter.await.expect("join").expect("the waiter's permit");
    let granted = tokio::time::Instant::now();
    let reason =
        tokio::time::timeout(Duration::from_secs(15), g.lost()).await.expect("the cap ended the hold");
    let held = granted.elapsed();
    assert_eq!(reason, lock_core::LossReason::MaxHoldReached);
    assert!(held >= Duration::from_millis(5_500), "held {held:?} of a 6 s cap after a 3 s wait");
    assert!(held <= Duration::from_secs(8), "held {held:?} past a 6 s cap");
    // Released at the cap: another client gets the permit.
    let next =
        a.semaphore(&name, 1).wait(Duration::from_secs(5)).acquire().await.expect("the permit after the cap");
    next.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_of_permits_is_checked_while_held_and_free_once_empty() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let (a, b) = (support::client(&connect, SESSION).await, support::client(&connect, SESSION).await);
    let name = support::key("permits");
    let g = a.semaphore(&name, 2).acquire().await.expect("a permit of 2");
    match b.semaphore(&name, 3).wait(Duration::from_secs(2)).acquire().await {
        Err(Error::PermitsMismatch { asked: 3, held: 2, .. }) => {}
        other => panic!("asking for 3 permits of a 2-permit semaphore gave {other:?}"),
    }
    g.release().await.expect("release");
    // Nobody holds it any more: another number is the semaphore's from now on.
    let g = b.semaphore(&name, 3).acquire().await.expect("a permit of 3 once empty");
    assert!(matches!(
        a.semaphore(&name, 2).acquire().await,
        Err(Error::PermitsMismatch { asked: 2, held: 3, .. })
    ));
    g.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_candidates_data_is_its_value() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let connect = zk.connect_string();
    let c = support::client(&connect, SESSION).await;
    let raw = support::raw(&connect).await;
    let name = support::key("foreign-leader");
    let dir = format!("/distlock/{name}#election");
    raw.mkdir(&dir, &CreateMode::Container.with_acls(zookeeper_client::Acls::anyone_all()))
        .await
        .expect("dir");
    let mode = CreateMode::EphemeralSequential.with_acls(zookeeper_client::Acls::anyone_all());
    raw.create(&format!("{dir}/_c_0f0e0d0c-0b0a-0908-0706-050403020100-latch-"), b"participant-7", &mode)
        .await
        .expect("a LeaderLatch-like node");
    let l = c.election(&name).leader().await.expect("leader").expect("a leader");
    assert_eq!(l.value.as_deref(), Some("participant-7"));
    let waiting = c.election(&name).wait(Duration::from_millis(300)).campaign("ours").await;
    assert!(matches!(waiting, Err(Error::WaitTimedOut { .. })), "{waiting:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_ends_with_an_error_when_its_session_ends() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = support::proxy::ZkProxy::start(zk.connect_string()).await;
    let watcher: LockClient = support::client(&proxy.addr, Duration::from_secs(2)).await;
    let name = support::key("observer-loss");
    let mut seen = watcher.election(&name).observe().await.expect("observe");
    assert!(matches!(seen.next().await, Some(Ok(None))), "a fresh election is vacant");
    proxy.cut();
    let end = tokio::time::timeout(Duration::from_secs(10), seen.next()).await.expect("the observer noticed");
    assert!(matches!(end, Some(Err(_))), "the stream ended with {end:?}, not an error");
    let after = tokio::time::timeout(Duration::from_secs(2), seen.next()).await.expect("the stream ended");
    assert!(after.is_none(), "the stream went on after its error: {after:?}");
    proxy.heal();
}

/// An observer whose read went down with its connection (while the session lives on) reads
/// again once the client has reconnected: the stream goes on and reports the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_whose_read_lost_its_connection_goes_on() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = support::proxy::ZkProxy::start(zk.connect_string()).await;
    let watcher: LockClient = support::client(&proxy.addr, Duration::from_secs(10)).await;
    let candidate: LockClient = support::client(&zk.connect_string(), Duration::from_secs(10)).await;
    let name = support::key("observe-reset");
    let lead = candidate.election(&name).campaign("v1").await.expect("campaign");
    let mut seen = watcher.election(&name).observe().await.expect("observe");
    let first = tokio::time::timeout(Duration::from_secs(5), seen.next()).await.expect("a first item");
    let first = first.expect("open").expect("state").and_then(|l| l.value);
    assert_eq!(first.as_deref(), Some("v1"));
    // The read after the resignation goes down with its connection.
    proxy.reset_next(support::proxy::GET_DATA);
    lead.release().await.expect("resign");
    let next = tokio::time::timeout(Duration::from_secs(15), seen.next())
        .await
        .expect("an item after the resignation");
    assert!(matches!(next, Some(Ok(None))), "the observer reported {next:?}, not the vacancy");
    // And it still follows: a new leader is reported.
    let again = candidate.election(&name).campaign("v2").await.expect("campaign again");
    let item = tokio::time::timeout(Duration::from_secs(5), seen.next()).await.expect("the new leader");
    let v = item.expect("open").expect("state").and_then(|l| l.value);
    assert_eq!(v.as_deref(), Some("v2"));
    again.release().await.expect("resign");
}

/// An observer whose first read found no election node, while a candidate made it right
/// after, still sees the leader's later proclaims (the election node's data is watched once it
/// exists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_that_started_before_the_election_existed_sees_proclaims() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let proxy = support::proxy::ZkProxy::start(zk.connect_string()).await;
    let watcher: LockClient = support::client(&proxy.addr, Duration::from_secs(10)).await;
    let candidate: LockClient = support::client(&zk.connect_string(), Duration::from_secs(10)).await;
    let name = support::key("observe-before");
    // The observer's read of the (absent) election node answers late: the candidate makes the
    // election in between.
    proxy.delay_next(support::proxy::GET_DATA, Duration::from_millis(800));
    let mut seen = watcher.election(&name).observe().await.expect("observe");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lead = candidate.election(&name).campaign("v1").await.expect("campaign");
    let mut latest = None;
    while latest.as_deref() != Some("v1") {
        let item = tokio::time::timeout(Duration::from_secs(5), seen.next()).await.expect("an item");
        latest = item.expect("open").expect("state").and_then(|l| l.value);
    }
    candidate.election(&name).proclaim(&lead, "v2").await.expect("proclaim");
    let item =
        tokio::time::timeout(Duration::from_secs(3), seen.next()).await.expect("the proclaim was never seen");
    let v = item.expect("open").expect("state").and_then(|l| l.value);
    assert_eq!(v.as_deref(), Some("v2"));
    lead.release().await.expect("release");
}
