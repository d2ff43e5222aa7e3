//! A non-waiting acquire that fails after the server carried it out (its reply was lost, or
//! it timed out on a paused server) leaves no grant behind: another client can take the lock
//! at once, not after the TTL.

#[path = "support/proxy.rs"]
mod proxy;

use std::time::Duration;

use conformance_tests::fixtures::redis::RedisServer;
use lock_core::{BackendErrorKind, Error, Instant, LockClient, LockKey};
use lock_redis::{RedisBackend, RedisOptions, RedlockBackend, RedlockOptions};
use proxy::Proxy;

const TTL: Duration = Duration::from_secs(30);

async fn direct(server: &RedisServer) -> LockClient {
    LockClient::new(RedisBackend::connect(server.url().parse().expect("url")).await.expect("connect"))
}

/// Loads the scripts (so the faulty request is the acquire itself, not a NOSCRIPT reload).
async fn warm_up(locks: &LockClient) {
    let _ = locks.lock("warm-up").acquire().await.expect("acquire").release().await.expect("release");
}

/// Whether the acquire script ran on the server at `port` for `name` (its counter exists).
async fn counter_exists(port: u16, name: &str) -> bool {
    let key = format!("{{{}}}:fence", LockKey::new(name).expect("key").full());
    let mut con = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    redis::cmd("EXISTS").arg(key).query_async::<i64>(&mut con).await.expect("EXISTS") == 1
}

/// A server, a proxy in front of it, and a warmed-up client through the proxy (500 ms
/// request timeout).
async fn through_a_proxy() -> (RedisServer, Proxy, LockClient) {
    let server = RedisServer::start().await.expect("redis-server");
    let proxy = Proxy::start(server.port()).await;
    let opts = RedisOptions::new(proxy.address()).request_timeout(Duration::from_millis(500));
    let locks = LockClient::new(RedisBackend::connect(opts).await.expect("connect through the proxy"));
    warm_up(&locks).await;
    (server, proxy, locks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_acquire_whose_reply_is_lost_leaves_no_grant() {
    let (server, proxy, locks) = through_a_proxy().await;
    proxy.cut_next_reply();
    let err = locks.lock("lost").ttl(TTL).try_acquire().await.expect_err("the reply was lost");
    assert!(err.is_retryable(), "{err:?}");
    assert!(counter_exists(server.port(), "lost").await, "the acquire should have run on the server");
    let other = direct(&server).await;
    let g = other.lock("lost").try_acquire().await.expect("try");
    assert!(g.is_some(), "the grant whose reply was lost still blocks others (until its TTL of {TTL:?})");
}

/// A `try_acquire` whose reply was lost, dropped by its caller (a timeout around it) while
/// its undo waits for the reconnect, leaves no grant: the undo goes on in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_acquire_dropped_while_it_undoes_a_lost_grant_leaves_no_grant() {
    let (server, proxy, locks) = through_a_proxy().await;
    proxy.cut_next_reply();
    proxy.stall_connections(true);
    let tried =
        tokio::time::timeout(Duration::from_millis(300), locks.lock("dropped").ttl(TTL).try_acquire()).await;
    assert!(tried.is_err(), "the try returned before it was dropped: {tried:?}");
    assert!(counter_exists(server.port(), "dropped").await, "the acquire should have run on the server");
    proxy.stall_connections(false);
    let other = direct(&server).await;
    let g = other.lock("dropped").wait(Duration::from_secs(3)).acquire().await;
    let g = g.expect("the grant of a dropped try_acquire whose reply was lost still blocks others");
    g.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_acquire_that_timed_out_on_a_paused_server_leaves_no_grant() {
    let mut server = RedisServer::start().await.expect("redis-server");
    let opts =
        RedisOptions::new(format!("127.0.0.1:{}", server.port())).request_timeout(Duration::from_millis(300));
    let locks = LockClient::new(RedisBackend::connect(opts).await.expect("connect"));
    warm_up(&locks).await;
    server.process().pause().expect("pause");
    let err = locks.lock("paused").ttl(TTL).try_acquire().await.expect_err("the server is paused");
    assert!(matches!(err, Error::Backend { kind: BackendErrorKind::RequestTimedOut, .. }), "{err:?}");
    // The server carries out what it had received once it runs again.
    server.process().resume().expect("resume");
    let other = direct(&server).await;
    let g = other
        .lock("paused")
        .wait(Duration::from_secs(3))
        .acquire()
        .await
        .expect("the timed-out grant was left behind: others wait for its TTL");
    assert!(counter_exists(server.port(), "paused").await);
    let _ = g.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redlock_try_acquire_whose_replies_are_lost_leaves_no_grant() {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(RedisServer::start().await.expect("redis-server"));
    }
    // Masters 0 and 1 behind proxies that lose the acquire's reply.
    let proxies = [Proxy::start(servers[0].port()).await, Proxy::start(servers[1].port()).await];
    let nodes = [proxies[0].address(), proxies[1].address(), format!("127.0.0.1:{}", servers[2].port())]
        .map(RedisOptions::new);
    let locks = LockClient::new(RedlockBackend::connect(RedlockOptions::new(nodes)).await.expect("redlock"));
    warm_up(&locks).await;
    for p in &proxies {
        p.cut_next_reply();
    }
    let err = locks.lock("lost").ttl(TTL).try_acquire().await.expect_err("two of three replies were lost");
    assert!(err.is_retryable(), "{err:?}");
    for s in &servers[..2] {
        assert!(counter_exists(s.port(), "lost").await, "the acquire should have run on the master");
    }
    let urls = servers.iter().map(|s| RedisOptions::new(format!("127.0.0.1:{}", s.port())));
    let other = LockClient::new(RedlockBackend::connect(RedlockOptions::new(urls)).await.expect("redlock"));
    let g = other.lock("lost").try_acquire().await.expect("try");
    assert!(
        g.is_some(),
        "the grants whose replies were lost still block others (until their TTL of {TTL:?})"
    );
}

/// A Redlock round that finds the lock held by a quorum, on a master that granted it (its
/// reply lost) and then could not be reached for the round's undo, leaves no grant there:
/// the undo is asked again in the background once the master is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redlock_round_held_elsewhere_whose_undo_failed_leaves_no_grant() {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(RedisServer::start().await.expect("redis-server"));
    }
    // The lock is held on masters 1 and 2 (a quorum), free on master 0.
    let mut holders = Vec::new();
    for s in &servers[1..] {
        holders.push(direct(s).await.lock("held").ttl(TTL).acquire().await.expect("hold"));
    }
    let proxy = Proxy::start(servers[0].port()).await;
    let nodes = [
        proxy.address(),
        format!("127.0.0.1:{}", servers[1].port()),
        format!("127.0.0.1:{}", servers[2].port()),
    ]
    .map(RedisOptions::new);
    let locks = LockClient::new(RedlockBackend::connect(RedlockOptions::new(nodes)).await.expect("redlock"));
    warm_up(&locks).await;
    // Master 0 grants; its reply is lost and it can no longer be reached for the undo.
    proxy.refuse_connections(true);
    proxy.cut_next_reply();
    let got = locks.lock("held").ttl(TTL).try_acquire().await.expect("a quorum holds it: not an error");
    assert!(got.is_none(), "held by a quorum");
    assert!(counter_exists(servers[0].port(), "held").await, "the acquire should have run on master 0");
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.refuse_connections(false);
    let on_zero = direct(&servers[0]).await;
    let start = Instant::now();
    while on_zero.inspect("held").await.expect("inspect").is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "the round's grant on master 0 is left for its TTL of {TTL:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(holders);
}

/// A waiting acquire that gives up while the server stopped answering returns within its
/// deadline plus one request timeout, as documented: taking its place out of the queue of
/// waiters does not add a second request timeout (it goes on in the background).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_acquire_that_gives_up_on_a_paused_server_keeps_its_bound() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    const WAIT: Duration = Duration::from_millis(300);
    let mut server = RedisServer::start().await.expect("redis-server");
    let opts = RedisOptions::new(format!("127.0.0.1:{}", server.port())).request_timeout(TIMEOUT);
    let locks = LockClient::new(RedisBackend::connect(opts).await.expect("connect"));
    warm_up(&locks).await;
    let holder = direct(&server).await;
    let held = holder.lock("paused-wait").ttl(Duration::from_secs(30)).acquire().await.expect("hold");
    let start = Instant::now();
    let waiting =
        tokio::spawn(async move { locks.lock("paused-wait").wait(WAIT).acquire().await.map(|_| ()) });
    // The first attempt is refused and registers the waiter; then the server stops answering.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.process().pause().expect("pause");
    let res = waiting.await.expect("join");
    let took = start.elapsed();
    server.process().resume().expect("resume");
    assert!(res.is_err(), "the lock is held");
    assert!(
        took < WAIT + TIMEOUT + Duration::from_millis(400),
        "a {WAIT:?} wait with a {TIMEOUT:?} request timeout returned after {took:?}"
    );
    drop(held);
}
