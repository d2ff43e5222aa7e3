//! Uncontended acquire+release latency of the single-node Redis lock beside two baselines, on
//! the same connection of the same client crate, against the same redis-server, interleaved
//! in blocks so all see the same machine:
//! - **the floor** (what the target is measured against): the same commands distlock sends
//!   (its acquire and release scripts, by EVALSHA), sent raw with the same client; the
//!   difference is the library's own cost (guard, validation, metrics hooks);
//! - a minimal lock without fencing (`SET key value NX PX ttl`, then an EVALSHA
//!   compare-and-delete): what the fencing counter and the wake-up costs on the server.
//!
//! ```text
//! cargo bench -p lock-redis --bench latency            # 20,000 rounds each
//! cargo bench -p lock-redis --bench latency -- --quick # 2,000 rounds each (CI)
//! ```
//! Uses `DISTLOCK_TEST_REDIS_URL` when set, otherwise starts a redis-server fixture.

use std::time::{Duration, Instant};

use conformance_tests::fixtures::redis::RedisTarget;
use lock_core::{LockClient, ReleaseOutcome};
use lock_redis::RedisBackend;

const FLOOR_RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 2_000 } else { 20_000 };
    let block = 500;
    let target = RedisTarget::get().await.expect("redis server");
    let backend = RedisBackend::connect(&target.url).await.expect("connect");
    let mut con = backend.raw_connection();
    let locks = LockClient::new(backend);
    let release = redis::Script::new(FLOOR_RELEASE);
    let ttl = Duration::from_secs(30);

    let mut same = Vec::with_capacity(rounds);
    let mut ours = Vec::with_capacity(rounds);
    let mut floor = Vec::with_capacity(rounds);
    // Warm up both paths (script cache, connection, allocator).
    for i in 0..200 {
        let g = locks.lock("bench/ours").ttl(ttl).acquire().await.expect("acquire");
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
        let token = format!("{i:032x}");
        let _: Option<String> = redis::cmd("SET")
            .arg("bench/floor")
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(30_000)
            .query_async(&mut con)
            .await
            .expect("set");
        let _: i64 = release.key("bench/floor").arg(&token).invoke_async(&mut con).await.expect("del");
    }
    let mut done = 0;
    while done < rounds {
        for _ in 0..block {
            let t = Instant::now();
            let g = locks.lock("bench/ours").ttl(ttl).acquire().await.expect("acquire");
            let r = g.release().await.expect("release");
            ours.push(t.elapsed());
            assert_eq!(r, ReleaseOutcome::Released);
        }
        for i in 0..block {
            // The same two scripts distlock sends, sent raw: distlock's own overhead.
            let owner = format!("{:032x}", done + i);
            let t = Instant::now();
            let (granted, _fence): (i64, String) = lock_redis::scripts::ACQUIRE
                .key("{bench/same}")
                .key("{bench/same}:fence")
                .arg(&owner)
                .arg(30_000)
                .invoke_async(&mut con)
                .await
                .expect("acquire script");
            let released: i64 = lock_redis::scripts::RELEASE
                .key("{bench/same}")
                .arg(&owner)
                .arg("{bench/same}:released")
                .invoke_async(&mut con)
                .await
                .expect("release script");
            same.push(t.elapsed());
            assert!(granted == 1 && released == 1);
        }
        for i in 0..block {
            let token = format!("{:032x}", done + i);
            let t = Instant::now();
            let set: Option<String> = redis::cmd("SET")
                .arg("bench/floor")
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut con)
                .await
                .expect("set");
            let del: i64 = release.key("bench/floor").arg(&token).invoke_async(&mut con).await.expect("del");
            floor.push(t.elapsed());
            assert!(set.is_some() && del == 1);
        }
        done += block;
    }
    same.sort();
    ours.sort();
    floor.sort();
    let (o50, o99, f50, f99) = (pct(&ours, 0.5), pct(&ours, 0.99), pct(&floor, 0.5), pct(&floor, 0.99));
    let ratio = o50.as_secs_f64() / f50.as_secs_f64();
    println!("redis single node, uncontended acquire+release, {rounds} rounds each");
    println!("| path | p50 (µs) | p99 (µs) |");
    println!("|---|---|---|");
    println!(
        "| distlock (acquire script + release script) | {:.1} | {:.1} |",
        o50.as_secs_f64() * 1e6,
        o99.as_secs_f64() * 1e6
    );
    println!(
        "| floor: the same commands sent raw (EVALSHA acquire + EVALSHA release) | {:.1} | {:.1} |",
        pct(&same, 0.5).as_secs_f64() * 1e6,
        pct(&same, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "| minimal lock without fencing (SET NX PX + EVALSHA delete) | {:.1} | {:.1} |",
        f50.as_secs_f64() * 1e6,
        f99.as_secs_f64() * 1e6
    );
    let own = o50.as_secs_f64() / pct(&same, 0.5).as_secs_f64();
    println!("ours/floor p50 = {own:.3} (target <= 1.10): {}", if own <= 1.10 { "MET" } else { "NOT MET" });
    println!("ours/minimal-unfenced p50 = {ratio:.3} (the fencing counter's and wake-up's server cost)");
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut con).await.expect("info");
    for line in stats.lines().filter(|l| l.contains("evalsha") || l.contains("cmdstat_set:")) {
        println!("server: {line}");
    }
}
