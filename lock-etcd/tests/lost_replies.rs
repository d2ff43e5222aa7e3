//! A non-waiting acquire whose write was carried out by etcd but whose reply was lost (the
//! connection partitioned right after the request went out) returns an error, and leaves no
//! grant behind: its undo, by owner token, goes on until it can reach etcd, so another client
//! takes the lock once the partition heals, without waiting for the attempt's lease (60 s) or
//! its client's session (kept alive by the client).

mod support;

use std::time::Duration;

use conformance_tests::fixtures::etcd::EtcdCluster;
use lock_core::{Instant, LockClient, ReleaseOutcome};
use lock_etcd::{EtcdBackend, EtcdOptions, LeaseMode};
use support::proxy::Proxy;
use support::{keys_under, MODES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_acquire_whose_reply_was_lost_leaves_no_grant() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let raw = support::raw(&eps).await;
    for mode in MODES {
        let name = format!("lost-reply-{mode:?}");
        let proxy = Proxy::start(&eps[0]).await;
        let opts = EtcdOptions::new([&proxy.endpoint])
            .lease_mode(mode)
            .request_timeout(Duration::from_secs(1))
            .session_ttl(Duration::from_secs(10));
        let a = LockClient::new(EtcdBackend::connect(opts).await.expect("connect through the proxy"));
        // The session is open before the attempt (session mode): the attempt sends its txn only.
        let warm = a.lock("warm-up").acquire().await.expect("warm up");
        warm.release().await.expect("release");

        proxy.partition_after_request_with(format!("{name}/").as_bytes());
        let res = a.lock(&name).ttl(Duration::from_secs(60)).try_acquire().await;
        assert!(res.is_err(), "{mode:?}: the attempt whose reply was lost did not fail: {res:?}");
        let keys = keys_under(&raw, &format!("{name}/")).await;
        assert_eq!(keys.len(), 1, "{mode:?}: the attempt's write was not carried out: {keys:?}");
        // The partition outlasts the attempt's first undo and its rechecks.
        tokio::time::sleep(Duration::from_secs(5)).await;
        proxy.heal();

        let b = support::client(&eps, mode).await;
        let g = b.lock(&name).ttl(Duration::from_secs(60)).wait(Duration::from_secs(8)).acquire().await;
        let g = g.unwrap_or_else(|e| {
            panic!("{mode:?}: the lost attempt's grant still blocks the lock after the partition healed: {e}")
        });
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    }
}

/// A per-lock TTL change moves the key to a new lease; when that move is carried out but its
/// reply is lost, the holder must not go on renewing the old lease and trusting it: the key
/// now dies with the new one. Either the move is recognised, or the grant is reported lost;
/// never two holders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_lock_ttl_change_whose_reply_was_lost_never_leaves_two_holders() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let raw = support::raw(&eps).await;
    let proxy = Proxy::start(&eps[0]).await;
    let opts = EtcdOptions::new([&proxy.endpoint])
        .lease_mode(LeaseMode::PerLock)
        .request_timeout(Duration::from_secs(1));
    let a = LockClient::new(EtcdBackend::connect(opts).await.expect("connect through the proxy"));
    let name = "ttl-move";
    let g = a.lock(name).ttl(Duration::from_secs(30)).acquire().await.expect("acquire");
    let keys = keys_under(&raw, &format!("{name}/")).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    // Only the move's put carries the key followed by a lease field (tag 0x18).
    let mut marker = keys[0].0.clone().into_bytes();
    marker.push(0x18);
    proxy.partition_after_request_with(&marker);
    let shortened = g.extend(Duration::from_secs(3)).await;
    assert!(shortened.is_err(), "the move's reply was lost: {shortened:?}");
    proxy.heal();
    let moved = keys_under(&raw, &format!("{name}/")).await;
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_ne!(moved[0].2, keys[0].2, "the move was not carried out: the test proves nothing");
    // The guard's next renewal, at the TTL it still believes in.
    let _ = g.extend(Duration::from_secs(30)).await;
    // The key dies with the 3 s lease; another client takes the lock.
    let b = support::client(&eps, LeaseMode::PerLock).await;
    let got = b.lock(name).ttl(Duration::from_secs(30)).wait(Duration::from_secs(10)).acquire().await;
    let gb = got.expect("the key on the new lease expires");
    assert!(
        !g.is_held() || g.valid_until() <= Instant::now(),
        "two holders: the first guard still trusts its grant for {:?}",
        g.valid_until() - Instant::now()
    );
    gb.release().await.expect("release");
}

/// A semaphore attempt whose reply was lost and whose retry finds its own key makes the same
/// check of the number of permits as the first try: a holder asking for another number gets
/// `PermitsMismatch`, never a permit beyond the semaphore's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_semaphore_attempt_still_checks_the_number_of_permits() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let a = support::client(&eps, LeaseMode::Session).await;
    let held = a.semaphore("sem-retry", 1).acquire().await.expect("a holds the 1-permit semaphore");
    let proxy = Proxy::start(&eps[0]).await;
    let opts = EtcdOptions::new([&proxy.endpoint]).request_timeout(Duration::from_secs(3));
    let b = LockClient::new(EtcdBackend::connect(opts).await.expect("connect through the proxy"));
    let warm = b.lock("warm-up").acquire().await.expect("warm up");
    warm.release().await.expect("release");
    // B's put reaches etcd, its reply is lost, the connection is reset: the client retries.
    proxy.partition_after_request_with(b"sem-retry#semaphore/");
    let tried =
        tokio::spawn(async move { b.semaphore("sem-retry", 3).try_acquire().await.map(|g| g.is_some()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.heal();
    let got = tried.await.expect("join");
    assert!(matches!(got, Err(lock_core::Error::PermitsMismatch { asked: 3, held: 1, .. })), "{got:?}");
    held.release().await.expect("release");
}

/// Closing a backend tells its session's guards before the revoke is sent: etcd deletes the
/// locks as it revokes, so with the revoke's reply lost, another client held a lock for a
/// request timeout while this one's guard still said held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_backend_tells_its_guards_before_it_revokes() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let proxy = Proxy::start(&eps[0]).await;
    let opts = EtcdOptions::new([&proxy.endpoint])
        .lease_mode(LeaseMode::Session)
        .request_timeout(Duration::from_secs(3))
        .session_ttl(Duration::from_secs(10));
    let backend = EtcdBackend::connect(opts).await.expect("connect through the proxy");
    let a = LockClient::new(backend.clone());
    let g = a.lock("closing").acquire().await.expect("a holds");
    let b = support::client(&eps, LeaseMode::Session).await;
    proxy.set(support::proxy::Mode::DropReplies);
    let closing = tokio::spawn(async move { backend.close().await });
    let got = b
        .lock("closing")
        .wait(Duration::from_secs(2))
        .acquire()
        .await
        .expect("b takes the lock once etcd revoked");
    assert!(!g.is_held(), "a's guard says held while b holds the lock");
    got.release().await.expect("release");
    proxy.heal();
    closing.await.expect("join");
}

/// A proxy to the member at `endpoint`, and a session-mode client with two ways to that one
/// member: requests alternate, and pass over the proxy once a request through it went
/// unanswered. Its session is open (a first lock taken and released).
async fn two_ways(endpoint: &str) -> (Proxy, LockClient) {
    let proxy = Proxy::start(endpoint).await;
    let opts = EtcdOptions::new([proxy.endpoint.clone(), endpoint.to_owned()])
        .lease_mode(LeaseMode::Session)
        .request_timeout(Duration::from_secs(1))
        .session_ttl(Duration::from_secs(30));
    let a = LockClient::new(EtcdBackend::connect(opts).await.expect("connect"));
    let warm = a.lock("warm-up").acquire().await.expect("warm up");
    warm.release().await.expect("release");
    (proxy, a)
}

/// A session-mode attempt whose put a member holds back past every look of its undo (stopped
/// with the request, then resumed) must not leave its grant behind when the put is applied at
/// last: the undo wrote the attempt's marker, whose absence the put compares. Before, the put
/// landed after the undo had stopped looking, and the lock, permit or read grant stayed taken
/// for the session's life. For each primitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_held_back_past_its_undo_is_refused() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let raw = support::raw(&eps).await;
    let (proxy, a) = two_ways(&eps[0]).await;
    const HOLD: Duration = Duration::from_secs(5);
    for kind in ["lock", "permit", "read"] {
        let mut held = None;
        for round in 0..20 {
            let name = format!("held-{kind}-{round}");
            proxy.hold_request_with(name.as_bytes(), HOLD);
            let start = Instant::now();
            let b = match kind {
                "lock" => a.lock(&name),
                "permit" => a.semaphore(&name, 2),
                _ => a.read_lock(&name),
            };
            match b.ttl(Duration::from_secs(60)).try_acquire().await {
                // The request went the other way: try another name.
                Ok(Some(g)) => {
                    proxy.no_hold();
                    g.release().await.expect("release");
                }
                res => {
                    assert!(res.is_err(), "{kind}: a held attempt answered {res:?}");
                    held = Some((name, start));
                    break;
                }
            }
            // One more request, so that the next attempt's goes the other way (requests take
            // the endpoints in turn; an attempt and its release are two).
            a.inspect("parity").await.expect("inspect");
        }
        let (name, start) = held.unwrap_or_else(|| panic!("{kind}: no attempt went through the proxy"));
        // The held put reaches etcd at HOLD; look well after it.
        tokio::time::sleep((HOLD + Duration::from_secs(2)).saturating_sub(start.elapsed())).await;
        let (markers, keys): (Vec<_>, Vec<_>) =
            keys_under(&raw, &name).await.into_iter().partition(|(k, _, _)| k.contains("#undo/"));
        assert!(keys.is_empty(), "{kind}: the held-back put left its grant behind: {keys:?}");
        assert_eq!(markers.len(), 1, "{kind}: the undo left no marker: {markers:?}");
    }
}

/// A release whose plain delete is held back past the request timeout (a member stopped with
/// it, then resumed) goes on by create revision and frees the name on etcd, but this process
/// keeps the name until that delete can no longer land: a new grant of the session puts the
/// same key, which the late delete removed under its holder while another client took the
/// name (two holders, the first told only at its next renewal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_plain_delete_never_removes_a_later_grant() {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let eps = etcd.endpoints();
    let (proxy, a) = two_ways(&eps[0]).await;
    const HOLD: Duration = Duration::from_secs(5);
    let mut held = None;
    for round in 0..20 {
        let name = format!("late-delete-{round}");
        let g = a.lock(&name).ttl(Duration::from_secs(60)).acquire().await.expect("acquire");
        proxy.hold_request_with(name.as_bytes(), HOLD);
        let start = Instant::now();
        let _ = g.release().await;
        if start.elapsed() >= Duration::from_millis(800) {
            held = Some((name, start));
            break;
        }
        // The delete went the other way: try another name, the next request the other way.
        proxy.no_hold();
        a.inspect("parity").await.expect("inspect");
    }
    let (name, start) = held.expect("no release went through the proxy");
    // This process asks for the name again while the held delete is still out.
    let again = a.lock(&name).ttl(Duration::from_secs(60)).wait(Duration::from_secs(2)).acquire().await;
    // The held delete reaches etcd at HOLD; look well after it.
    tokio::time::sleep((HOLD + Duration::from_secs(2)).saturating_sub(start.elapsed())).await;
    let b = support::client(&eps, LeaseMode::Session).await;
    let other = b.lock(&name).try_acquire().await.expect("try");
    if let Ok(g) = &again {
        assert!(
            !(g.is_held() && other.is_some()),
            "two holders: the late delete removed the new grant's key while its guard says held"
        );
    }
    // The name stays taken in this process while that delete could land, not on etcd.
    assert!(again.is_err(), "the name was taken again here while the plain delete was out");
    assert!(other.is_some(), "the name stayed taken on etcd");
}
