//! Renewal in batches on a real redis-server: a client's auto-renewed locks are renewed by one
//! script call per batch (`EXTEND_MANY`), not one call per lock, and a key found gone in a
//! batch loses that lock alone.

#[path = "support/stats.rs"]
mod stats;

use std::time::Duration;

use conformance_tests::fixtures::redis::RedisServer;
use lock_core::{Instant, LockBackend, LockClient};
use lock_redis::RedisBackend;
use stats::scripts_run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_held_locks_are_renewed_in_a_few_script_calls() {
    const LOCKS: usize = 300;
    let server = RedisServer::start().await.expect("redis-server");
    let backend = RedisBackend::connect(server.url().parse().expect("url")).await.expect("connect");
    assert!(backend.capabilities().batch_extend, "the Redis backend claims batch_extend");
    let locks = LockClient::new(backend.clone());
    let ttl = Duration::from_secs(1);
    let mut guards = Vec::new();
    for i in 0..LOCKS {
        guards
            .push(locks.lock(&format!("batch/{i}")).ttl(ttl).auto_renew().acquire().await.expect("acquire"));
    }
    let mut con = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let before = scripts_run(&mut con).await;
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let calls = scripts_run(&mut con).await - before;
    // Every lock is still held after three TTLs, so each was renewed at least three times.
    for g in &guards {
        assert!(g.is_held(), "a lock was lost under batched renewal");
    }
    let renewals_at_least = LOCKS as u64 * (window.as_secs() / ttl.as_secs());
    assert!(
        calls * 10 <= renewals_at_least,
        "{calls} script calls for at least {renewals_at_least} renewals: not batched"
    );
    println!("{LOCKS} locks, TTL 1 s, 3 s: {calls} script calls for at least {renewals_at_least} renewals");

    // A key deleted behind the client's back: its lock alone is lost at its next batch.
    let gone = guards.remove(17);
    let _: () = redis::cmd("DEL")
        .arg(backend.redis_key(gone.lease().key()))
        .query_async(&mut con)
        .await
        .expect("del");
    let deadline = Instant::now() + ttl * 3;
    tokio::select! {
        _ = gone.lost() => {}
        _ = tokio::time::sleep_until(deadline) => panic!("the lock whose key was deleted was not lost"),
    }
    for g in &guards {
        assert!(g.is_held(), "another lock was lost with the deleted one");
    }
    for g in guards {
        let _ = g.release().await.expect("release");
    }
}
