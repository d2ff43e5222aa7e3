//! `ZkBackend::connect` as the facade's `connect(url)` uses it: a `zk://` URL parsed by
//! `ZkOptions`, with a chroot (created if missing), a prefix and digest credentials, and TLS
//! to a real server's secure client port (a private CA, a client certificate).

use std::time::Duration;

use conformance_tests::fixtures::tls::TestCa;
use conformance_tests::fixtures::zk::{ZkEnsemble, ZkTls};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::generate(dir.path()).expect("test CA (apt-get install openssl)");
    let zk = ZkEnsemble::single_with_tls(ZkTls { ca: ca.clone(), client_auth: true })
        .await
        .expect("ZooKeeper with a secure client port");
    let secure = zk.servers[0].secure_address().expect("a secure port");
    let ca_file = format!("ca_file={}", ca.ca_cert.display());
    let identity = format!("cert_file={}&key_file={}", ca.client_cert.display(), ca.client_key.display());
    let url = format!("zk://{secure}?{ca_file}&{identity}&connect_timeout=10s");

    let opts: ZkOptions = url.parse().expect("url");
    assert!(!format!("{opts:?}").contains("PRIVATE KEY"), "the client key in Debug: {opts:?}");
    let a = client(&url).await;
    let g = a.lock("tls").acquire().await.expect("acquire over TLS");
    assert!(
        client(&url).await.lock("tls").try_acquire().await.expect("try").is_none(),
        "a second TLS client"
    );
    // The same server's plain port sees the same lock.
    let plain = client(&format!("zk://{}", zk.connect_string())).await;
    assert!(plain.lock("tls").try_acquire().await.expect("try").is_none(), "a plain client");
    g.release().await.expect("release over TLS");
    plain
        .lock("tls")
        .try_acquire()
        .await
        .expect("try")
        .expect("free after the release")
        .release()
        .await
        .expect("release");

    // Refused, each with an error within its connect timeout: no client certificate, a CA
    // that did not sign the server's certificate, plain TCP to the secure port.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = TestCa::generate(other_dir.path()).expect("another CA");
    let refused = [
        format!("zk://{secure}?{ca_file}&connect_timeout=2s"),
        format!("zk://{secure}?ca_file={}&{identity}&connect_timeout=2s", other.ca_cert.display()),
        format!("zk://{secure}?connect_timeout=2s"),
    ];
    let tries = refused.iter().map(|url| async move {
        let o: ZkOptions = url.parse().expect("url");
        (url, o.connect_dyn().await)
    });
    for (url, r) in futures::future::join_all(tries).await {
        let e = r.expect_err(url);
        assert!(!e.to_string().contains("PRIVATE KEY"), "{url}: {e}");
    }
    assert!(format!("zk://{secure}?cert_file=/no/such.pem&key_file=/no/such.key")
        .parse::<ZkOptions>()
        .is_err());
    assert!(format!("zk://{secure}?tls=false&{ca_file}").parse::<ZkOptions>().is_err());
}
