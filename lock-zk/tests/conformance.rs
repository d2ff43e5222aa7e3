//! The whole conformance suite against real ZooKeeper: one standalone server, and an
//! ensemble of three on loopback.

use std::sync::Arc;
use std::time::Duration;

use conformance_tests::fixtures::zk::{ZkEnsemble, ZkTarget};
use conformance_tests::{conformance_suite, Suite};
use lock_core::LockClient;
use lock_zk::{ZkBackend, ZkOptions};

fn suite(name: &str, connect: String, keep: Arc<dyn std::any::Any + Send + Sync>) -> Suite {
    Suite::new(name, move || {
        let (connect, _keep) = (connect.clone(), keep.clone());
        async move {
            // Detached sessions: dropping a client leaves its session to expire, as a crash does.
            let o = ZkOptions::new(connect).session_timeout(Duration::from_secs(2)).close_on_drop(false);
            Ok(LockClient::new(ZkBackend::connect(o).await?))
        }
    })
    // A crash: the lock is kept, the client goes away without closing its session.
    .crash_with(|client, guard| async move {
        let _ = guard.detach();
        drop(client);
    })
}

conformance_suite!(zookeeper_single_server, {
    let t = ZkTarget::get().await.expect("ZooKeeper for the suite");
    let connect = t.connect.clone();
    suite("zookeeper", connect, Arc::new(t))
});

conformance_suite!(zookeeper_three_server_ensemble, {
    let e = ZkEnsemble::start(3).await.expect("a three-server ensemble");
    let connect = e.connect_string();
    suite("zookeeper-ensemble", connect, Arc::new(e))
});
