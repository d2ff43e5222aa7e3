//! Helpers shared by lock-etcd's fault tests: clients in either lease mode, the leader of a
//! cluster, waiting for a condition, and a TCP proxy that can lose replies.

#![allow(dead_code)]

pub mod proxy;

use std::future::Future;
use std::time::Duration;

use conformance_tests::fixtures::etcd::EtcdCluster;
use lock_core::{Instant, LockClient, ReleaseOutcome};
use lock_etcd::{rpc, EtcdBackend, EtcdOptions, LeaseMode};

/// Both lease modes, for tests that run in each.
pub const MODES: [LeaseMode; 2] = [LeaseMode::Session, LeaseMode::PerLock];

/// A backend on `endpoints` in `mode`, with a `session_ttl` session (in session mode).
pub async fn backend(endpoints: &[String], mode: LeaseMode, session_ttl: Duration) -> EtcdBackend {
    EtcdBackend::connect(EtcdOptions::new(endpoints).lease_mode(mode).session_ttl(session_ttl))
        .await
        .expect("connect")
}

/// A client (as a separate process would have) on `endpoints` in `mode`, 10 s sessions.
pub async fn client(endpoints: &[String], mode: LeaseMode) -> LockClient {
    LockClient::new(backend(endpoints, mode, Duration::from_secs(10)).await)
}

/// A raw client of the cluster, for what another process or an operator would do.
pub async fn raw(endpoints: &[String]) -> rpc::Client {
    rpc::Client::connect(&EtcdOptions::new(endpoints)).await.expect("raw client")
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The keys under `prefix` (oldest first), with their create revisions and leases; a read
/// that fails (an election, a member that does not answer) is repeated for up to 20 s.
pub async fn keys_under(raw: &rpc::Client, prefix: &str) -> Vec<(String, i64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        match raw.range(rpc::pb::RangeRequest::prefix(prefix).oldest_first()).await {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("range: {e}"),
        }
    };
    r.kvs
        .iter()
        .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.create_revision, kv.lease))
        .collect()
}

/// The index of the cluster's leader among its members.
pub async fn leader_index(etcd: &EtcdCluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for (i, ep) in etcd.endpoints().iter().enumerate() {
            let opts = EtcdOptions::new([ep]).connect_timeout(Duration::from_secs(1));
            let Ok(c) = rpc::Client::connect(&opts).await else { continue };
            if let Ok(st) = c.status().await {
                if st.header.map(|h| h.member_id) == Some(st.leader) {
                    return i;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader found");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Releases `g` through `c`, retrying while the cluster elects a leader or a member does not
/// answer. A retry after a first try that landed finds the key gone (`NotHeld`): released.
pub async fn release_retrying(c: &LockClient, g: lock_core::Guard) {
    let lease = g.detach();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.release_lease(&lease).await {
            Ok(ReleaseOutcome::Released | ReleaseOutcome::NotHeld) => return,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("release: {other:?}"),
        }
    }
}

/// The sum of etcd's `grpc_server_handled_total` for these methods, from its metrics endpoint.
pub async fn handled(endpoint: &str, methods: &[&str]) -> f64 {
    metric(endpoint, "grpc_server_handled_total{", |l| {
        methods.iter().any(|m| l.contains(&format!("grpc_method=\"{m}\"")))
    })
    .await
}

/// The sum of the series of etcd's metric lines starting with `series` that `pick` keeps,
/// read from `endpoint`'s `/metrics`.
pub async fn metric(endpoint: &str, series: &str, pick: impl Fn(&str) -> bool) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    body.lines()
        .filter(|l| l.starts_with(series) && pick(l))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// etcd's count of open watchers.
pub async fn watchers(endpoint: &str) -> f64 {
    metric(endpoint, "etcd_debugging_mvcc_watcher_total", |_| true).await
}

/// etcd's count of open watchers once it has held still for 300 ms (clients opening or
/// closing watches are done).
pub async fn settled_watchers(endpoint: &str) -> f64 {
    let mut last = watchers(endpoint).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = watchers(endpoint).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Waits (20 s at most) until at least `n` keys are under `prefix`.
pub async fn until_queued(raw: &rpc::Client, prefix: &str, n: usize) {
    eventually("the waiter queued", Duration::from_secs(20), || async {
        (keys_under(raw, prefix).await.len() >= n).then_some(())
    })
    .await;
}

/// Waits (20 s at most) until etcd counts at least `n` open watchers, then until that count
/// holds still.
pub async fn until_watching(endpoint: &str, n: f64) {
    eventually("every waiter watches", Duration::from_secs(20), || async {
        (watchers(endpoint).await >= n).then_some(())
    })
    .await;
    settled_watchers(endpoint).await;
}
