//! Semaphores and read-write locks on one Redis node, each beside its floor: the same scripts
//! distlock sends, sent raw with the same client on the same connection, interleaved in
//! blocks so all see the same machine.
//!
//! - **Semaphore latency**: uncontended acquire + release of one permit, for N = 1, 8 and 64,
//!   with N/2 other permits held (so the set is not empty); target: within 1.2x of the floor.
//! - **Read lock throughput**: 64 readers on one name, each taking and releasing the read lock
//!   in a loop over one multiplexed connection; rounds per second beside the same scripts raw.
//!
//! ```text
//! cargo bench -p lock-redis --bench primitives            # 20,000 rounds per N, 3 s throughput
//! cargo bench -p lock-redis --bench primitives -- --quick # 2,000 rounds, 1 s (CI)
//! ```
//! Uses `DISTLOCK_TEST_REDIS_URL` when set, otherwise starts a redis-server fixture.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance_tests::fixtures::redis::RedisTarget;
use lock_core::{LockClient, OwnerToken, ReleaseOutcome};
use lock_redis::scripts::{rwlock, semaphore};
use lock_redis::Connection;
use lock_redis::RedisBackend;

const TTL: Duration = Duration::from_secs(30);
const READERS: usize = 64;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One raw semaphore round on `name` with `n` permits: the acquire and release scripts.
async fn raw_permit(con: &mut Connection, name: &str, n: u32) {
    let owner = OwnerToken::random().to_string();
    let keys = [
        format!("{{{name}}}:sem"),
        format!("{{{name}}}:sem:info"),
        format!("{{{name}}}:sem:fence"),
        format!("{{{name}}}:sem:q"),
    ];
    let (granted, _): (i64, String) = semaphore::ACQUIRE
        .key(&keys[0])
        .key(&keys[1])
        .key(&keys[2])
        .key(&keys[3])
        .arg(&owner)
        .arg(30_000)
        .arg(n)
        .invoke_async(con)
        .await
        .expect("acquire script");
    let released: i64 = semaphore::RELEASE
        .key(&keys[0])
        .key(&keys[1])
        .key(&keys[2])
        .key(&keys[3])
        .arg(&owner)
        .arg(format!("{{{name}}}:sem:released"))
        .arg("p")
        .arg("0")
        .arg(format!("{owner} bench:wake"))
        .invoke_async(con)
        .await
        .expect("release script");
    assert!(granted == 1 && released == 1);
}

async fn our_permit(locks: &LockClient, name: &str, n: u32) {
    let g = locks.semaphore(name, n).ttl(TTL).acquire().await.expect("permit");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
}

/// Semaphore latency for `n` permits: (ours, floor) p50 and p99.
async fn semaphore_latency(locks: &LockClient, con: &mut Connection, n: u32, rounds: usize) {
    let (ours_name, raw_name) = (format!("bench/sem-{n}"), format!("bench/sem-raw-{n}"));
    // N/2 other permits held on each, so the set is not empty.
    let mut held = Vec::new();
    for _ in 0..n / 2 {
        held.push(locks.semaphore(&ours_name, n).ttl(TTL * 10).acquire().await.expect("held"));
        held.push(locks.semaphore(&raw_name, n).ttl(TTL * 10).acquire().await.expect("held"));
    }
    for _ in 0..200 {
        our_permit(locks, &ours_name, n).await;
        raw_permit(con, &raw_name, n).await;
    }
    let (mut ours, mut floor) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds / 500 {
        for _ in 0..500 {
            let t = Instant::now();
            our_permit(locks, &ours_name, n).await;
            ours.push(t.elapsed());
        }
        for _ in 0..500 {
            let t = Instant::now();
            raw_permit(con, &raw_name, n).await;
            floor.push(t.elapsed());
        }
    }
    ours.sort();
    floor.sort();
    let ratio = pct(&ours, 0.5).as_secs_f64() / pct(&floor, 0.5).as_secs_f64();
    println!(
        "| N = {n} ({} held) | {:.1} | {:.1} | {:.1} | {:.1} | {ratio:.3} {} |",
        n / 2,
        us(pct(&ours, 0.5)),
        us(pct(&ours, 0.99)),
        us(pct(&floor, 0.5)),
        us(pct(&floor, 0.99)),
        if ratio <= 1.2 { "(met)" } else { "(NOT MET)" }
    );
    for g in held {
        g.release().await.expect("release");
    }
}

/// One raw reader round on `name`: the read acquire and the release scripts.
async fn raw_read(con: &mut Connection, keys: &[String; 5], channel: &str) {
    let owner = OwnerToken::random().to_string();
    let mut acquire = rwlock::ACQUIRE_READ.prepare_invoke();
    let mut release = rwlock::RELEASE.prepare_invoke();
    for k in keys {
        acquire.key(k);
        release.key(k);
    }
    let (granted, _): (i64, String) =
        acquire.arg(&owner).arg(30_000).arg(0).invoke_async(con).await.expect("read script");
    let released: i64 =
        release.arg(&owner).arg(channel).arg("r").arg("0").invoke_async(con).await.expect("release script");
    assert!(granted == 1 && released == 1);
}

/// Rounds per second of `READERS` tasks running `round` for `span`.
async fn throughput<F, Fut>(span: Duration, round: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..READERS)
        .map(|_| {
            let (stop, done, round) = (stop.clone(), done.clone(), round.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    round().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(span).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("reader task");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn read_throughput(locks: &LockClient, con: &Connection, span: Duration) {
    let keys =
        ["writer", "readers", "tokens", "intents", "fence"].map(|k| format!("{{bench/rw-raw}}:rw:{k}"));
    let (keys, channel) = (Arc::new(keys), Arc::new("{bench/rw-raw}:rw:released".to_owned()));
    let mut ours = Vec::new();
    let mut floor = Vec::new();
    for _ in 0..3 {
        let l = locks.clone();
        ours.push(
            throughput(span, move || {
                let l = l.clone();
                async move {
                    let g = l.read_lock("bench/rw").ttl(TTL).acquire().await.expect("reader");
                    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
                }
            })
            .await,
        );
        let (c, k, ch) = (con.clone(), keys.clone(), channel.clone());
        floor.push(
            throughput(span, move || {
                let (mut c, k, ch) = (c.clone(), k.clone(), ch.clone());
                async move { raw_read(&mut c, &k, &ch).await }
            })
            .await,
        );
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (o, f) = (best(&ours), best(&floor));
    println!("read lock, {READERS} readers on one name, best of 3 runs of {span:?}");
    println!("| path | rounds/s (acquire + release) |");
    println!("|---|---|");
    println!("| distlock read_lock | {o:.0} |");
    println!("| floor: the same scripts sent raw | {f:.0} |");
    println!("ours/floor throughput = {:.3}", o / f);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, span) =
        if quick { (2_000, Duration::from_secs(1)) } else { (20_000, Duration::from_secs(3)) };
    let target = RedisTarget::get().await.expect("redis server");
    let backend = RedisBackend::connect(target.url.parse().expect("redis URL")).await.expect("connect");
    let mut con = backend.raw_connection();
    let locks = LockClient::new(backend);
    println!("redis single node, semaphore acquire+release of one permit, uncontended, {rounds} rounds each");
    println!("| permits | distlock p50 (µs) | p99 | floor p50 (µs) | p99 | ours/floor p50 (target <= 1.2) |");
    println!("|---|---|---|---|---|---|");
    for n in [1, 8, 64] {
        semaphore_latency(&locks, &mut con, n, rounds).await;
    }
    println!();
    read_throughput(&locks, &con, span).await;
}
