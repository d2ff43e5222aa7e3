//! `ZkBackend::connect` as the facade's `connect(url)` uses it: a `zk://` URL parsed by
//! `ZkOptions`, with a chroot (created if missing), a prefix and digest credentials.

use std::time::Duration;

use conformance_tests::fixtures::zk::ZkEnsemble;
use lock_core::url::BackendOptions;
use lock_core::LockClient;
use lock_zk::ZkOptions;

async fn client(url: &str) -> LockClient {
    let o: ZkOptions = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
    LockClient::from_arc(o.connect_dyn().await.unwrap_or_else(|e| panic!("{url}: {e}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_with_a_chroot_prefix_and_credentials_connect() {
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let hosts = zk.connect_string();
    let url = format!("zk://app:s3cret@{hosts}/apps/one?session_timeout=4s&prefix=/locks&connect_timeout=5s");
    let a = client(&url).await;
    assert_eq!(a.backend_name(), "zookeeper");
    let g = a.lock("k").acquire().await.expect("acquire");
    // The same chroot and prefix from a second client: excluded.
    let b = client(&url.replacen("zk://", "zookeeper://", 1)).await;
    assert!(b.lock("k").try_acquire().await.expect("try").is_none(), "the same lock");
    // Another chroot, or another prefix: independent.
    for other in [format!("zk://app:s3cret@{hosts}/apps/two"), format!("zk://app:s3cret@{hosts}/apps/one")] {
        let c = client(&other).await;
        let g2 = c.lock("k").wait(Duration::from_secs(2)).acquire().await.expect("independent");
        g2.release().await.expect("release");
    }
    g.release().await.expect("release");
}
