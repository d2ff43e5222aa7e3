//! Semaphores and read-write locks on one etcd member, each beside its floor: the same requests
//! distlock sends (one transaction that queues the key and decides, one that deletes it),
//! sent raw with the same client on the same session lease, interleaved in blocks so both see
//! the same machine.
//!
//! - **Semaphore latency**: uncontended acquire + release of one permit, for N = 1, 8 and 64,
//!   with N/2 other permits held; target: within 1.2x of the floor.
//! - **Read lock throughput**: 64 readers on one name, each taking and releasing the read lock
//!   in a loop; rounds per second beside the same requests raw.
//!
//! ```text
//! cargo bench -p lock-etcd --bench primitives            # 5,000 rounds per N, 3 s throughput
//! cargo bench -p lock-etcd --bench primitives -- --quick # 500 rounds, 1 s
//! ```
//! Uses `DISTLOCK_TEST_ETCD_URL` when set, otherwise starts an etcd fixture.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance_tests::fixtures::etcd::etcd_target;
use lock_core::{LockClient, Metadata, OwnerToken, ReleaseOutcome};
use lock_etcd::rpc::pb::{Compare, RangeRequest, RequestOp, TxnRequest};
use lock_etcd::rpc::Client;
use lock_etcd::{EtcdBackend, EtcdOptions};

const TTL: Duration = Duration::from_secs(30);
const READERS: usize = 64;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The floor of one grant under `pfx`: the transaction that puts the key and decides (with
/// `decide`, the count distlock reads), then the revision-compared delete.
async fn raw_round(
    c: &Client,
    key: String,
    value: &str,
    lease: i64,
    oldest: RangeRequest,
    decide: RangeRequest,
) {
    let put = TxnRequest::when([Compare::create_revision_is(key.as_str(), 0)]).and_then([
        RequestOp::put(key.as_str(), value, lease),
        RequestOp::range(oldest),
        RequestOp::range(decide),
    ]);
    let r = c.txn(put).await.expect("queue txn");
    assert!(r.succeeded);
    let del = TxnRequest::when([Compare::create_revision_is(key.as_str(), r.revision())])
        .and_then([RequestOp::delete(key.as_str())]);
    assert!(c.txn(del).await.expect("delete txn").succeeded);
}

async fn raw_permit(c: &Client, pfx: &str, lease: i64, n: u32, value: &str) {
    let key = format!("{pfx}{}", OwnerToken::random());
    let oldest = RangeRequest::prefix(pfx).oldest_first().with_limit(1);
    raw_round(c, key, &format!("{n}\n{value}"), lease, oldest, RangeRequest::prefix(pfx).count_only()).await;
}

async fn our_permit(locks: &LockClient, name: &str, n: u32) {
    let g = locks.semaphore(name, n).ttl(TTL).acquire().await.expect("permit");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
}

async fn semaphore_latency(locks: &LockClient, c: &Client, lease: i64, n: u32, rounds: usize) {
    let (ours_name, raw_name) = (format!("bench/sem-{n}"), format!("bench/sem-raw-{n}"));
    let raw_pfx = format!("{raw_name}#semaphore/");
    let value = Metadata::current().encode();
    let mut held = Vec::new();
    for _ in 0..n / 2 {
        held.push(locks.semaphore(&ours_name, n).ttl(TTL * 10).acquire().await.expect("held"));
        held.push(locks.semaphore(&raw_name, n).ttl(TTL * 10).acquire().await.expect("held"));
    }
    for _ in 0..50 {
        our_permit(locks, &ours_name, n).await;
        raw_permit(c, &raw_pfx, lease, n, &value).await;
    }
    let (mut ours, mut floor) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds / 100 {
        for _ in 0..100 {
            let t = Instant::now();
            our_permit(locks, &ours_name, n).await;
            ours.push(t.elapsed());
        }
        for _ in 0..100 {
            let t = Instant::now();
            raw_permit(c, &raw_pfx, lease, n, &value).await;
            floor.push(t.elapsed());
        }
    }
    ours.sort();
    floor.sort();
    let ratio = pct(&ours, 0.5).as_secs_f64() / pct(&floor, 0.5).as_secs_f64();
    println!(
        "| N = {n} ({} held) | {:.0} | {:.0} | {:.0} | {:.0} | {ratio:.3} {} |",
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

async fn read_throughput(locks: &LockClient, c: &Client, lease: i64, span: Duration) {
    let pfx = Arc::new("bench/rw-raw#rwlock/".to_owned());
    let value = Arc::new(Metadata::current().encode());
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
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
        let (c, pfx, value) = (c.clone(), pfx.clone(), value.clone());
        floor.push(
            throughput(span, move || {
                let (c, pfx, value) = (c.clone(), pfx.clone(), value.clone());
                async move {
                    let key = format!("{pfx}r-{}", OwnerToken::random());
                    let oldest = RangeRequest::prefix(pfx.as_str()).oldest_first().with_limit(1);
                    let writers = RangeRequest::prefix(format!("{pfx}w-")).count_only();
                    raw_round(&c, key, &value, lease, oldest, writers).await;
                }
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
    println!("| floor: the same requests sent raw | {f:.0} |");
    println!("ours/floor throughput = {:.3}", o / f);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, span) = if quick { (500, Duration::from_secs(1)) } else { (5_000, Duration::from_secs(3)) };
    let (endpoints, _cluster) = etcd_target(1).await.expect("etcd");
    let backend = EtcdBackend::connect(EtcdOptions::new(&endpoints)).await.expect("connect");
    let raw = backend.raw_client();
    let lease = raw.lease_grant(3600).await.expect("a lease for the floor (an hour: the run is shorter)").id;
    let locks = LockClient::new(backend);
    println!("etcd, one member, semaphore acquire+release of one permit, uncontended, {rounds} rounds each");
    println!("| permits | distlock p50 (µs) | p99 | floor p50 (µs) | p99 | ours/floor p50 (target <= 1.2) |");
    println!("|---|---|---|---|---|---|");
    for n in [1, 8, 64] {
        semaphore_latency(&locks, &raw, lease, n, rounds).await;
    }
    println!();
    read_throughput(&locks, &raw, lease, span).await;
}
