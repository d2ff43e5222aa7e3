//! A Redis Cluster of three primaries (a replica each) beside one node, in one run: lock +
//! release throughput over 10,000 keys with 64 tasks, the same client code on both.
//!
//! ```text
//! cargo bench -p lock-redis --bench cluster              # 5 s per side, best of 3
//! cargo bench -p lock-redis --bench cluster -- --quick   # 1 s per side, once
//! ```
//!
//! Target (issue 18): the cluster at least 2× one node. On a 2-core machine the client's 64
//! tasks and every server share two cores, so the cluster's extra servers add little CPU to
//! spend: the figure says what this machine allows, not what three hosts would.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance_tests::fixtures::redis::{RedisCluster, RedisServer};
use lock_core::LockClient;
use lock_redis::RedisBackend;

const KEYS: u64 = 10_000;
const TASKS: u64 = 64;
const TTL: Duration = Duration::from_secs(10);

/// Lock + release rounds per second over `KEYS` keys with `TASKS` tasks for `span`.
async fn throughput(locks: &LockClient, span: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (locks, done, stop) = (locks.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // A task-local xorshift: keys spread over the key space, no shared RNG.
            let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ (t + 1);
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let name = format!("bench/cluster/{}", x % KEYS);
                if let Some(g) = locks.lock(&name).ttl(TTL).try_acquire().await.expect("try_acquire") {
                    g.release().await.expect("release");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(span).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    for t in tasks {
        t.await.expect("task");
    }
    n as f64 / elapsed.as_secs_f64()
}

async fn best_of(runs: usize, locks: &LockClient, span: Duration) -> f64 {
    let mut best = 0.0_f64;
    for _ in 0..runs {
        best = best.max(throughput(locks, span).await);
    }
    best
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (runs, span) = if quick { (1, Duration::from_secs(1)) } else { (3, Duration::from_secs(5)) };
    let single = RedisServer::start().await.expect("redis-server");
    let cluster = RedisCluster::start(3).await.expect("a Redis Cluster");
    let one =
        LockClient::new(RedisBackend::connect(single.url().parse().expect("url")).await.expect("connect"));
    let three =
        LockClient::new(RedisBackend::connect(cluster.url().parse().expect("url")).await.expect("connect"));
    // Warm up both (scripts loaded, slot map read, connections made).
    throughput(&one, Duration::from_millis(300)).await;
    throughput(&three, Duration::from_millis(300)).await;
    let o = best_of(runs, &one, span).await;
    let c = best_of(runs, &three, span).await;
    let ratio = c / o;
    println!("lock + release over {KEYS} keys, {TASKS} tasks, best of {runs} runs of {span:?}");
    println!("| target | rounds/s |");
    println!("|---|---|");
    println!("| one node | {o:.0} |");
    println!("| cluster, 3 primaries + 3 replicas | {c:.0} |");
    let verdict = if ratio >= 2.0 { "met" } else { "missed" };
    println!("cluster/one node = {ratio:.2} (target >= 2.0: {verdict})");
}
