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
use lock_redis::Connection;
use lock_redis::RedisBackend;

const FLOOR_RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

const TTL: Duration = Duration::from_secs(30);

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The three paths' round times.
#[derive(Default)]
struct Samples {
    /// distlock's acquire + release.
    ours: Vec<Duration>,
    /// The same two scripts, sent raw.
    same: Vec<Duration>,
    /// SET NX PX + compare-and-delete, without fencing.
    floor: Vec<Duration>,
}

/// One minimal, unfenced lock round: `SET NX PX`, then the compare-and-delete script.
async fn unfenced_round(con: &mut Connection, release: &redis::Script, token: &str) -> (bool, i64) {
    let set: Option<String> = redis::cmd("SET")
        .arg("bench/floor")
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .query_async(con)
        .await
        .expect("set");
    let del: i64 = release.key("bench/floor").arg(token).invoke_async(con).await.expect("del");
    (set.is_some(), del)
}

/// Warms up both paths (script cache, connection, allocator).
async fn warm_up(locks: &LockClient, con: &mut Connection, release: &redis::Script) {
    for i in 0..200 {
        let g = locks.lock("bench/ours").ttl(TTL).acquire().await.expect("acquire");
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
        unfenced_round(con, release, &format!("{i:032x}")).await;
    }
}

/// One block of `block` rounds of each path, `done` rounds having run before.
async fn measure_block(
    locks: &LockClient,
    con: &mut Connection,
    release: &redis::Script,
    (done, block): (usize, usize),
    samples: &mut Samples,
) {
    for _ in 0..block {
        let t = Instant::now();
        let g = locks.lock("bench/ours").ttl(TTL).acquire().await.expect("acquire");
        let r = g.release().await.expect("release");
        samples.ours.push(t.elapsed());
        assert_eq!(r, ReleaseOutcome::Released);
    }
    for i in 0..block {
        // The same two scripts distlock sends, sent raw: distlock's own overhead.
        let owner = format!("{:032x}", done + i);
        let t = Instant::now();
        let (granted, _fence): (i64, String) = lock_redis::scripts::ACQUIRE
            .key("{bench/same}")
            .key("{bench/same}:fence")
            .key("{bench/same}:q")
            .arg(&owner)
            .arg(30_000)
            .invoke_async(con)
            .await
            .expect("acquire script");
        let released: i64 = lock_redis::scripts::RELEASE
            .key("{bench/same}")
            .key("{bench/same}:fence")
            .key("{bench/same}:q")
            .arg(&owner)
            .arg("{bench/same}:released")
            .arg("l")
            .arg("0")
            .arg(format!("{owner} bench:wake"))
            .invoke_async(con)
            .await
            .expect("release script");
        samples.same.push(t.elapsed());
        assert!(granted == 1 && released == 1);
    }
    for i in 0..block {
        let t = Instant::now();
        let (set, del) = unfenced_round(con, release, &format!("{:032x}", done + i)).await;
        samples.floor.push(t.elapsed());
        assert!(set && del == 1);
    }
}

/// Prints the table and the ratios.
fn report(rounds: usize, mut s: Samples) {
    s.same.sort();
    s.ours.sort();
    s.floor.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (o50, f50, same50) = (pct(&s.ours, 0.5), pct(&s.floor, 0.5), pct(&s.same, 0.5));
    println!("redis single node, uncontended acquire+release, {rounds} rounds each");
    println!("| path | p50 (µs) | p99 (µs) |");
    println!("|---|---|---|");
    println!(
        "| distlock (acquire script + release script) | {:.1} | {:.1} |",
        us(o50),
        us(pct(&s.ours, 0.99))
    );
    println!(
        "| floor: the same commands sent raw (EVALSHA acquire + EVALSHA release) | {:.1} | {:.1} |",
        us(same50),
        us(pct(&s.same, 0.99))
    );
    println!(
        "| minimal lock without fencing (SET NX PX + EVALSHA delete) | {:.1} | {:.1} |",
        us(f50),
        us(pct(&s.floor, 0.99))
    );
    let own = o50.as_secs_f64() / same50.as_secs_f64();
    println!("ours/floor p50 = {own:.3} (target <= 1.10): {}", if own <= 1.10 { "MET" } else { "NOT MET" });
    let ratio = o50.as_secs_f64() / f50.as_secs_f64();
    println!("ours/minimal-unfenced p50 = {ratio:.3} (the fencing counter's and wake-up's server cost)");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 2_000 } else { 20_000 };
    let block = 500;
    let target = RedisTarget::get().await.expect("redis server");
    let backend = RedisBackend::connect(target.url.parse().expect("redis URL")).await.expect("connect");
    let mut con = backend.raw_connection();
    let locks = LockClient::new(backend);
    let release = redis::Script::new(FLOOR_RELEASE);

    let mut samples = Samples::default();
    warm_up(&locks, &mut con, &release).await;
    let mut done = 0;
    while done < rounds {
        measure_block(&locks, &mut con, &release, (done, block), &mut samples).await;
        done += block;
    }
    report(rounds, samples);
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut con).await.expect("info");
    for line in stats.lines().filter(|l| l.contains("evalsha") || l.contains("cmdstat_set:")) {
        println!("server: {line}");
    }
}
