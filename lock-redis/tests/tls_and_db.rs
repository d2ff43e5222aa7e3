//! `rediss://` against a real TLS redis-server with a private CA, and the database index.

use conformance_tests::fixtures::redis::{RedisConfig, RedisServer};
use conformance_tests::fixtures::tls::TestCa;
use lock_core::{LockClient, ReleaseOutcome};
use lock_redis::{RedisBackend, RedisOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::generate(dir.path()).expect("test CA (apt-get install openssl)");
    let server = RedisServer::start_with(RedisConfig { tls: Some(ca.clone()), ..RedisConfig::default() })
        .await
        .expect("TLS redis");
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");

    let opts = RedisOptions::from_url(&url).expect("url").tls_root_cert(ca.ca_pem().expect("pem"));
    let locks = LockClient::new(RedisBackend::connect_with(opts).await.expect("TLS connect with the CA"));
    let g = locks.lock("tls").acquire().await.expect("acquire over TLS");
    assert!(locks.lock("tls").try_acquire().await.expect("try").is_none());
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);

    // The server's certificate is not trusted by the system's roots: refused, not ignored.
    assert!(RedisBackend::connect(&url).await.is_err(), "an untrusted certificate was accepted");
    let file_opts =
        RedisOptions::from_url(&url).expect("url").tls_root_cert_file(&ca.ca_cert).expect("CA file");
    RedisBackend::connect_with(file_opts).await.expect("CA from a file");
    assert!(RedisOptions::from_url(&url).expect("url").tls_root_cert_file("/no/such/ca.pem").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_index_is_used() {
    let server = RedisServer::start().await.expect("redis-server");
    let backend = RedisBackend::connect(&format!("{}/3", server.url())).await.expect("db 3");
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
