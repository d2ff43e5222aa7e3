//! The whole conformance suite against real etcd: session leases and per-lock leases, on one
//! member and on a three-member cluster.

use std::sync::{Arc, Mutex};

use conformance_tests::fixtures::etcd::etcd_target;
use conformance_tests::{conformance_suite, Suite};
use lock_core::{LockBackend, LockClient};
use lock_etcd::{EtcdBackend, EtcdOptions, LeaseMode};

type Made = Arc<Mutex<Vec<(Arc<dyn LockBackend>, EtcdBackend)>>>;

async fn suite(members: usize, mode: LeaseMode) -> Suite {
    let (endpoints, cluster) = etcd_target(members).await.expect("etcd for the suite");
    let cluster = Arc::new(cluster);
    let made: Made = Arc::default();
    let made2 = made.clone();
    let name = format!(
        "etcd-{}-{}",
        if members == 1 { "single" } else { "cluster" },
        match mode {
            LeaseMode::Session => "session",
            LeaseMode::PerLock => "per-lock",
        }
    );
    let s = Suite::new(&name, move || {
        let (endpoints, made, _keep) = (endpoints.clone(), made.clone(), cluster.clone());
        async move {
            let opts =
                EtcdOptions::new(&endpoints).session_ttl(std::time::Duration::from_secs(3)).lease_mode(mode);
            let backend = EtcdBackend::connect(opts).await?;
            let shared: Arc<dyn LockBackend> = Arc::new(backend.clone());
            made.lock().expect("registry").push((shared.clone(), backend));
            Ok(LockClient::from_arc(shared))
        }
    });
    let made3 = made2.clone();
    match mode {
        // A crashed process stops its session's keep-alive without revoking it.
        LeaseMode::Session => s
            .crash_with(move |client, guard| {
                let made = made2.clone();
                async move {
                    let _ = guard.detach();
                    if let Some(b) = find(&made, &client) {
                        b.abandon_session().await;
                    }
                }
            })
            // A client paused past its session's TTL: its keep-alive stops (as a paused
            // process sends nothing) while the client lives on, and the hook returns once the
            // server has ended the session (its lease expired).
            .expire_with(move |client| {
                let made = made3.clone();
                async move {
                    let Some(b) = find(&made, &client) else { return };
                    let Some(lease) = b.session_lease().await else { return };
                    b.abandon_session().await;
                    let raw = b.raw_client();
                    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
                    while std::time::Instant::now() < until {
                        if matches!(raw.lease_time_to_live(lease).await, Ok(ttl) if ttl < 0) {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    panic!("the abandoned session's lease did not expire within 30 s");
                }
            }),
        LeaseMode::PerLock => s,
    }
}

/// The etcd backend behind `client`.
fn find(made: &Made, client: &LockClient) -> Option<EtcdBackend> {
    let made = made.lock().expect("registry");
    made.iter().find(|(b, _)| Arc::ptr_eq(b, client.backend())).map(|(_, e)| e.clone())
}

conformance_suite!(etcd_single_session_leases, suite(1, LeaseMode::Session).await);
conformance_suite!(etcd_single_per_lock_leases, suite(1, LeaseMode::PerLock).await);
conformance_suite!(etcd_cluster_session_leases, suite(3, LeaseMode::Session).await);
conformance_suite!(etcd_cluster_per_lock_leases, suite(3, LeaseMode::PerLock).await);
