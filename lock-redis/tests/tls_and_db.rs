//! `rediss://` against a real TLS redis-server with a private CA (and one that requires a
//! client certificate), `redlock://…?tls=true` against three of them, `rediss+cluster://`
//! against a TLS Redis Cluster, and the database index.

use conformance_tests::fixtures::redis::{RedisCluster, RedisConfig, RedisServer};
use conformance_tests::fixtures::tls::TestCa;
use lock_core::{LockClient, ReleaseOutcome, TlsOptions};
use lock_redis::{RedisBackend, RedisOptions, RedlockBackend, RedlockOptions};

async fn lock_and_release(backend: RedisBackend) {
    let locks = LockClient::new(backend);
    let g = locks.lock("tls").acquire().await.expect("acquire over TLS");
    assert!(locks.lock("tls").try_acquire().await.expect("try").is_none());
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::generate(dir.path()).expect("test CA (apt-get install openssl)");
    let server = RedisServer::start_with(RedisConfig { tls: Some(ca.clone()), ..RedisConfig::default() })
        .await
        .expect("TLS redis");
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");

    let opts = url.parse::<RedisOptions>().expect("url").tls(TlsOptions::new().ca(ca.ca_pem().expect("pem")));
    lock_and_release(RedisBackend::connect(opts).await.expect("TLS connect with the CA")).await;

    // The server's certificate is not trusted by the system's roots: refused, not ignored.
    let system_roots = url.parse().expect("url");
    assert!(RedisBackend::connect(system_roots).await.is_err(), "an untrusted certificate was accepted");
    let with_file = format!("{url}?ca_file={}", ca.ca_cert.display());
    RedisBackend::connect(with_file.parse().expect("url")).await.expect("CA from a file");
    assert!(format!("{url}?ca_file=/no/such/ca.pem").parse::<RedisOptions>().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::generate(dir.path()).expect("test CA (apt-get install openssl)");
    let server = RedisServer::start_with(RedisConfig {
        tls: Some(ca.clone()),
        // Overrides the fixture's `--tls-auth-clients no`: a client must present a certificate.
        extra_args: vec!["--tls-auth-clients".into(), "yes".into()],
        ..RedisConfig::default()
    })
    .await
    .expect("TLS redis requiring client certificates");
    let url = server.url();

    let ca_only = TlsOptions::new().ca_file(&ca.ca_cert).expect("CA");
    let without = url.parse::<RedisOptions>().expect("url").tls(ca_only.clone());
    assert!(RedisBackend::connect(without).await.is_err(), "connected without a client certificate");

    let tls = ca_only.identity_files(&ca.client_cert, &ca.client_key).expect("client certificate");
    let opts = url.parse::<RedisOptions>().expect("url").tls(tls);
    assert!(!format!("{opts:?}").contains("PRIVATE KEY"), "the client key in Debug: {opts:?}");
    lock_and_release(RedisBackend::connect(opts).await.expect("TLS connect with a client certificate")).await;

    let with_files = format!(
        "{url}?ca_file={}&cert_file={}&key_file={}",
        ca.ca_cert.display(),
        ca.client_cert.display(),
        ca.client_key.display()
    );
    let backend = RedisBackend::connect(with_files.parse().expect("url")).await.expect("certificate files");
    lock_and_release(backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_over_tls_with_client_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::generate(dir.path()).expect("test CA (apt-get install openssl)");
    let mut masters = Vec::new();
    for _ in 0..3 {
        let config = RedisConfig {
            tls: Some(ca.clone()),
            extra_args: vec!["--tls-auth-clients".into(), "yes".into()],
            ..RedisConfig::default()
        };
        masters.push(RedisServer::start_with(config).await.expect("TLS redis"));
    }
    let hosts: Vec<String> = masters.iter().map(|m| format!("127.0.0.1:{}", m.port())).collect();
    let files = format!(
        "ca_file={}&cert_file={}&key_file={}",
        ca.ca_cert.display(),
        ca.client_cert.display(),
        ca.client_key.display()
    );
    let url = format!("redlock://{}?tls=true&{files}", hosts.join(","));
    let opts: RedlockOptions = url.parse().expect("url");
    assert!(!format!("{opts:?}").contains("PRIVATE KEY"), "the client key in Debug: {opts:?}");
    let locks = LockClient::new(RedlockBackend::connect(opts).await.expect("Redlock over TLS"));
    let g = locks.lock("tls").acquire().await.expect("acquire on a quorum over TLS");
    assert!(locks.lock("tls").try_acquire().await.expect("try").is_none());
    // Every master holds the grant: each was reached over TLS.
    for m in &masters {
        let con = RedisBackend::connect(
            m.url().parse::<RedisOptions>().expect("url").tls(
                TlsOptions::new()
                    .ca_file(&ca.ca_cert)
                    .expect("CA")
                    .identity_files(&ca.client_cert, &ca.client_key)
                    .expect("id"),
            ),
        );
        let direct = LockClient::new(con.await.expect("one master over TLS"));
        assert!(direct.lock("tls").try_acquire().await.expect("try").is_none(), "a master without the grant");
    }
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);

    // Without the client certificate, or without tls=true (plain TCP to TLS ports): refused.
    for bad in [
        format!("redlock://{}?ca_file={}", hosts.join(","), ca.ca_cert.display()),
        format!("redlock://{}?connect_timeout=2s", hosts.join(",")),
    ] {
        assert!(RedlockBackend::connect(bad.parse().expect("url")).await.is_err(), "{bad} connected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::generate(dir.path()).expect("test CA (apt-get install openssl)");
    let cluster = RedisCluster::start_with(3, Some(ca.clone()), RedisCluster::STEADY)
        .await
        .expect("a Redis Cluster over TLS");
    let url = cluster.url();
    assert!(url.starts_with("rediss+cluster://"), "{url}");
    let with_ca = format!("{url}?ca_file={}", ca.ca_cert.display());
    let one =
        LockClient::new(RedisBackend::connect(with_ca.parse().expect("url")).await.expect("TLS cluster"));
    let two =
        LockClient::new(RedisBackend::connect(with_ca.parse().expect("url")).await.expect("TLS cluster"));
    // Names in different slots, so more than one primary is reached over TLS.
    let names = ["tls/a", "tls/b", "tls/c", "tls/d", "tls/e", "tls/f"];
    let mut held = Vec::new();
    for name in names {
        let g = one.lock(name).acquire().await.expect("acquire on a TLS cluster");
        assert!(two.lock(name).try_acquire().await.expect("try").is_none(), "{name}: a second holder");
        held.push(g);
    }
    // Listed from every primary, each `SCAN` on a TLS connection of its own.
    let mut listed: Vec<String> =
        two.list("tls/").await.expect("list a TLS cluster").into_iter().map(|(k, _)| k).collect();
    listed.sort();
    assert_eq!(listed, names);
    for g in held {
        assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
    }
    // The system's roots do not trust the private CA: refused, not ignored.
    assert!(
        RedisBackend::connect(url.parse().expect("url")).await.is_err(),
        "an untrusted cluster was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_index_is_used() {
    let server = RedisServer::start().await.expect("redis-server");
    let backend =
        RedisBackend::connect(format!("{}/3", server.url()).parse().expect("url")).await.expect("db 3");
    let locks = LockClient::new(backend.clone());
    let g = locks.lock("dbk").acquire().await.expect("acquire");
    let key = backend.redis_key(&lock_core::LockKey::new("dbk").expect("key"));
    let mut con = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw");
    let in_db0: i64 = redis::cmd("EXISTS").arg(&key).query_async(&mut con).await.expect("exists");
    let _: () = redis::cmd("SELECT").arg(3).query_async(&mut con).await.expect("select");
    let in_db3: i64 = redis::cmd("EXISTS").arg(&key).query_async(&mut con).await.expect("exists");
    assert_eq!((in_db0, in_db3), (0, 1), "the lock must live in database 3");
    let _ = g.release().await.expect("release");
}
