//! A waiting acquire returns within its deadline plus at most one request timeout, even when
//! the pub/sub connection that carries wake-ups is unresponsive: the first attempt does not
//! wait for a subscription, and the wait for one is bounded.

#[path = "support/proxy.rs"]
mod proxy;

use std::time::Duration;

use conformance_tests::fixtures::redis::RedisServer;
use lock_core::{Error, Instant, LockClient};
use lock_redis::{RedisBackend, RedisOptions, RedlockBackend, RedlockOptions};
use proxy::Proxy;

const REQUEST_TIMEOUT: Duration = Duration::from_millis(100);
const WAIT: Duration = Duration::from_millis(200);
/// Scheduling slack on a loaded machine.
const SLACK: Duration = Duration::from_millis(100);

async fn direct(server: &RedisServer) -> LockClient {
    LockClient::new(RedisBackend::connect(server.url().parse().expect("url")).await.expect("connect"))
}

/// A client whose connections go through `proxy`, with a short request timeout.
async fn through(proxy: &Proxy) -> LockClient {
    let opts = RedisOptions::new(proxy.address()).request_timeout(REQUEST_TIMEOUT);
    LockClient::new(RedisBackend::connect(opts).await.expect("connect through the proxy"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_acquire_keeps_its_deadline_when_pubsub_never_answers() {
    let server = RedisServer::start().await.expect("redis-server");
    let proxy = Proxy::start(server.port()).await;
    proxy.hang_subscribers();
    let locks = through(&proxy).await;

    // A free lock: the first attempt takes it, with no subscription at all.
    let start = Instant::now();
    let g = locks.lock("free").wait(WAIT).acquire().await.expect("a free lock is granted");
    let took = start.elapsed();
    assert!(
        took < WAIT + REQUEST_TIMEOUT + SLACK,
        "a waiting acquire of a free lock took {took:?} (wait {WAIT:?}, request timeout {REQUEST_TIMEOUT:?}): \
         it waited for a pub/sub subscription before its first try"
    );
    let _ = g.release().await.expect("release");

    // A held lock: the subscription never confirms; the wait still ends at its deadline.
    let holder = direct(&server).await;
    let held = holder.lock("held").ttl(Duration::from_secs(30)).acquire().await.expect("hold");
    let start = Instant::now();
    let err = locks.lock("held").wait(WAIT).acquire().await.expect_err("the lock stays held");
    let took = start.elapsed();
    assert!(matches!(err, Error::WaitTimedOut { .. }), "{err:?}");
    assert!(
        took < WAIT + REQUEST_TIMEOUT + SLACK,
        "a {WAIT:?} wait returned after {took:?} (request timeout {REQUEST_TIMEOUT:?}): \
         the wait for a subscription ran past the deadline"
    );
    let _ = held.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redlock_waiting_acquire_keeps_its_deadline_when_pubsub_never_answers() {
    let mut servers = Vec::new();
    let mut proxies = Vec::new();
    for _ in 0..3 {
        let s = RedisServer::start().await.expect("redis-server");
        let p = Proxy::start(s.port()).await;
        p.hang_subscribers();
        servers.push(s);
        proxies.push(p);
    }
    let nodes = proxies.iter().map(|p| RedisOptions::new(p.address()));
    let opts = RedlockOptions::new(nodes).request_timeout(REQUEST_TIMEOUT);
    let locks = LockClient::new(RedlockBackend::connect(opts.clone()).await.expect("redlock"));
    let start = Instant::now();
    let g = locks.lock("free").wait(WAIT).acquire().await.expect("a free lock is granted");
    let took = start.elapsed();
    assert!(took < WAIT + REQUEST_TIMEOUT + SLACK, "a waiting Redlock acquire of a free lock took {took:?}");
    // Held by the first grant: the next waiter (another client, as another process; this task
    // waiting for its own lock would be refused at once) times out at its deadline.
    let other = LockClient::new(RedlockBackend::connect(opts).await.expect("redlock"));
    let start = Instant::now();
    let err = other.lock("free").wait(WAIT).acquire().await.expect_err("held");
    let took = start.elapsed();
    assert!(matches!(err, Error::WaitTimedOut { .. }), "{err:?}");
    assert!(took < WAIT + REQUEST_TIMEOUT + SLACK, "a {WAIT:?} Redlock wait returned after {took:?}");
    let _ = g.release().await.expect("release");
}

/// While the subscription for wake-ups is not confirmed, a waiter still tries again at the
/// holder's expiry and at least every poll interval: it does not sit out the whole request
/// timeout (2 s by default) waiting for the subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_subscription_hangs_still_takes_an_expired_lock_promptly() {
    let server = RedisServer::start().await.expect("redis-server");
    let proxy = Proxy::start(server.port()).await;
    proxy.hang_subscribers();
    // The default request timeout, said out loud.
    let opts = RedisOptions::new(proxy.address()).request_timeout(Duration::from_secs(2));
    let locks = LockClient::new(RedisBackend::connect(opts).await.expect("connect through the proxy"));
    let holder = direct(&server).await;
    const HOLD: Duration = Duration::from_millis(300);
    let held = holder.lock("expiring").ttl(HOLD).acquire().await.expect("hold");
    let start = Instant::now();
    let g = locks
        .lock("expiring")
        .wait(Duration::from_secs(5))
        .acquire()
        .await
        .expect("granted after the expiry");
    let took = start.elapsed();
    // The holder's expiry, one poll interval (250 ms) and a loaded machine's slack; waiting for
    // the subscription first would take the 2 s request timeout.
    assert!(took < Duration::from_millis(1500), "took {took:?} to take a lock that expired after {HOLD:?}");
    drop(held);
    let _ = g.release().await.expect("release");
}

/// A Redlock waiting acquire with a master that answers nothing (SIGSTOP) returns by its
/// deadline plus one request timeout: a round waits for that master's reply once, not again for
/// its undo's (each round took two request timeouts, and a round that began just before the
/// deadline ended two past it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redlock_wait_with_a_paused_master_keeps_its_deadline() {
    const TIMEOUT: Duration = Duration::from_millis(400);
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(RedisServer::start().await.expect("redis-server"));
    }
    let nodes = || servers.iter().map(|s| RedisOptions::new(format!("127.0.0.1:{}", s.port())));
    let holder =
        LockClient::new(RedlockBackend::connect(RedlockOptions::new(nodes())).await.expect("redlock"));
    let opts = RedlockOptions::new(nodes()).request_timeout(TIMEOUT);
    let waiter = LockClient::new(RedlockBackend::connect(opts).await.expect("redlock"));
    let held = holder.lock("paused").ttl(Duration::from_secs(30)).acquire().await.expect("hold");
    servers[2].process().pause().expect("SIGSTOP");
    let start = Instant::now();
    let err = waiter.lock("paused").wait(WAIT).acquire().await.expect_err("the lock stays held");
    let took = start.elapsed();
    servers[2].process().resume().expect("SIGCONT");
    assert!(matches!(err, Error::WaitTimedOut { .. }), "{err:?}");
    assert!(
        took < WAIT + TIMEOUT + SLACK,
        "a {WAIT:?} wait returned after {took:?} (request timeout {TIMEOUT:?}): its round waited for the paused master twice"
    );
    let _ = held.release().await.expect("release");
}
