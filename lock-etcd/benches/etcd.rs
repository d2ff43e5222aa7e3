//! etcd: distlock beside etcd's lock service (`v3lockpb.Lock`/`Unlock`, what etcd-client's
//! `lock()`/`unlock()` and `etcdctl lock` call; the peer), on the same server, in one run:
//! - uncontended acquire+release latency, p50 and p99;
//! - hand-off latency: a holder releases after a waiter has waited 10 ms, 50 ms or 300 ms;
//!   hand-off is the time from the release call to the waiter holding the lock (so it
//!   includes the release's own round trip, for both).
//!
//! ```text
//! cargo bench -p lock-etcd --bench etcd            # full
//! cargo bench -p lock-etcd --bench etcd -- --quick # a few seconds (CI)
//! ```
//! Uses `DISTLOCK_TEST_ETCD_URL` when set, otherwise starts an etcd fixture.

use std::time::Duration;

use conformance_tests::fixtures::etcd::etcd_target;
use lock_core::{Instant, LockClient};
use lock_etcd::rpc::Client;
use lock_etcd::{EtcdBackend, EtcdOptions};

fn p(sorted: &mut [Duration], q: f64) -> f64 {
    sorted.sort();
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// A client of etcd's lock service with a 60 s lease kept alive every 10 s.
async fn peer_client(eps: &[String]) -> (Client, i64) {
    let c = Client::connect(&EtcdOptions::new(eps)).await.expect("peer connect");
    let lease = c.lease_grant(60).await.expect("peer lease").id;
    let (mut keeper, _) = c.lease_keep_alive(lease).await.expect("keep-alive");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if keeper.renew().await.is_err() {
                return;
            }
        }
    });
    (c, lease)
}

/// A contender of the hand-off measure: distlock (a holder and a waiter on two clients, as
/// two processes) or the lock service (two clients, each with its lease).
enum Side<'a> {
    Ours(&'a LockClient, &'a LockClient),
    Peer((&'a Client, i64), (&'a Client, i64)),
}

/// One hand-off: the holder takes the lock, a waiter queues, the holder releases after
/// `wait`: the time from the release call to the waiter holding the lock.
async fn handoff(side: &Side<'_>, wait: Duration) -> Duration {
    let (released, got) = match side {
        Side::Ours(holder, waiter) => {
            let g = holder.lock("bench/handoff").acquire().await.expect("hold");
            let w = (*waiter).clone();
            let waiter = tokio::spawn(async move {
                let g =
                    w.lock("bench/handoff").wait(Duration::from_secs(30)).acquire().await.expect("waiter");
                let at = Instant::now();
                let _ = g.release().await;
                at
            });
            tokio::time::sleep(wait).await;
            let released = Instant::now();
            let _ = g.release().await.expect("release");
            (released, waiter.await.expect("join"))
        }
        Side::Peer((holder, lease), (waiter, waiter_lease)) => {
            let k = holder.lock("bench/peer-handoff", *lease).await.expect("lock");
            let (pw, pw_lease) = ((*waiter).clone(), *waiter_lease);
            let waiter = tokio::spawn(async move {
                let k = pw.lock("bench/peer-handoff", pw_lease).await.expect("peer waiter");
                let at = Instant::now();
                let _ = pw.unlock(k).await;
                at
            });
            tokio::time::sleep(wait).await;
            let released = Instant::now();
            holder.unlock(k).await.expect("unlock");
            (released, waiter.await.expect("join"))
        }
    };
    got.saturating_duration_since(released)
}

/// Uncontended acquire+release, `rounds` of each, interleaved by hundreds: (ours, peer).
async fn uncontended(
    ours: &LockClient,
    peer: &Client,
    lease: i64,
    rounds: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut o, mut f) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds / 100 {
        for _ in 0..100 {
            let t = Instant::now();
            let g = ours.lock("bench/ours").wait(Duration::from_secs(5)).acquire().await.expect("acquire");
            let _ = g.release().await.expect("release");
            o.push(t.elapsed());
        }
        for _ in 0..100 {
            let t = Instant::now();
            let k = peer.lock("bench/peer", lease).await.expect("lock");
            peer.unlock(k).await.expect("unlock");
            f.push(t.elapsed());
        }
    }
    (o, f)
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (eps, _cluster) = etcd_target(1).await.expect("etcd");
    let rounds = if quick { 200 } else { 2000 };
    let handoffs = if quick { 5 } else { 30 };

    let ours = LockClient::new(EtcdBackend::connect(EtcdOptions::new(&eps)).await.expect("connect"));
    let ours_waiter = LockClient::new(EtcdBackend::connect(EtcdOptions::new(&eps)).await.expect("connect"));
    let (peer, peer_lease) = peer_client(&eps).await;
    let (peer_waiter, peer_waiter_lease) = peer_client(&eps).await;

    // Warm up both.
    for _ in 0..20 {
        let g = ours.lock("bench/ours").wait(Duration::from_secs(5)).acquire().await.expect("acquire");
        let _ = g.release().await.expect("release");
        let k = peer.lock("bench/peer", peer_lease).await.expect("lock");
        peer.unlock(k).await.expect("unlock");
    }

    let (mut o, mut f) = uncontended(&ours, &peer, peer_lease, rounds).await;
    let (o50, o99, f50, f99) = (p(&mut o, 0.5), p(&mut o, 0.99), p(&mut f, 0.5), p(&mut f, 0.99));
    println!("etcd (single member), uncontended acquire+release, {rounds} rounds each");
    println!("| path | p50 (ms) | p99 (ms) |");
    println!("|---|---|---|");
    println!("| distlock (session lease: txn + compare-and-delete) | {o50:.3} | {o99:.3} |");
    println!("| etcd lock service Lock/Unlock (what etcd-client's lock() calls) | {f50:.3} | {f99:.3} |");
    let ratio = o50 / f50;
    println!(
        "ours/peer p50 = {ratio:.3} (target <= 1.10): {}",
        if ratio <= 1.10 { "MET" } else { "NOT MET" }
    );

    println!();
    println!("hand-off: release called -> waiter holds, {handoffs} rounds per wait");
    println!("| waited | distlock p50 (ms) | peer p50 (ms) | target: distlock p50 <= 3 ms |");
    println!("|---|---|---|---|");
    let ours_side = Side::Ours(&ours, &ours_waiter);
    let peer_side = Side::Peer((&peer, peer_lease), (&peer_waiter, peer_waiter_lease));
    for wait_ms in [10u64, 50, 300] {
        let wait = Duration::from_millis(wait_ms);
        let (mut ours_h, mut peer_h) = (Vec::new(), Vec::new());
        for _ in 0..handoffs {
            ours_h.push(handoff(&ours_side, wait).await);
            peer_h.push(handoff(&peer_side, wait).await);
        }
        let (a, b) = (p(&mut ours_h, 0.5), p(&mut peer_h, 0.5));
        println!("| {wait_ms} ms | {a:.2} | {b:.2} | {} |", if a <= 3.0 { "MET" } else { "NOT MET" });
    }
}
