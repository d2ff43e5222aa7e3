//! `connect(url)` for every scheme, and the migration lock under the conformance suite.

use std::sync::Arc;
use std::time::Duration;

use conformance_tests::{conformance_suite, Suite};
use distlock::migration::{MigrationBackend, Primary};
use distlock::{LockClient, ReleaseOutcome};

#[tokio::test]
async fn mem_urls_share_a_named_store_and_apply_common_options() {
    let a = distlock::connect("mem://shared?namespace=app&ttl=5s").await.expect("connect");
    let b = distlock::connect("mem://shared?namespace=app").await.expect("connect");
    let other = distlock::connect("mem://elsewhere?namespace=app").await.expect("connect");
    let g = a.lock("k").acquire().await.expect("acquire");
    assert_eq!(g.lease().ttl(), Duration::from_secs(5), "ttl= sets the default TTL");
    assert_eq!(g.key(), "app/k", "namespace= prefixes keys");
    assert!(b.lock("k").try_acquire().await.expect("try").is_none(), "mem://shared is one store");
    assert!(other.lock("k").try_acquire().await.expect("try").is_some(), "mem://elsewhere is another");
    assert_eq!(g.release().await.expect("release"), ReleaseOutcome::Released);
}

#[tokio::test]
async fn file_urls_open_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}?sync=false&poll=5ms", dir.path().display());
    let a = distlock::connect(&url).await.expect("connect");
    let b = distlock::connect(&url).await.expect("connect");
    let g = a.lock("k").acquire().await.expect("acquire");
    assert!(b.lock("k").try_acquire().await.expect("try").is_none());
    let _ = g.release().await.expect("release");
    let e = distlock::connect("file://somehost/x").await.expect_err("host in a file URL");
    assert!(e.to_string().contains("file:///absolute/path"), "{e}");
}

#[tokio::test]
async fn bad_urls_are_typed_errors_that_point_at_the_part_and_hide_passwords() {
    let mut cases = vec![
        ("localhost:6379", "scheme://"),
        ("ftp://h", "unknown scheme 'ftp'"),
        ("redis://u:hunter2@h:0", "port '0'"),
        ("mem://?bogus=1", "unknown option 'bogus'"),
        ("mem://?ttl=forever", "option ttl"),
        ("mem://?ttl=0s", "TTL"),
        ("file:///tmp/x?sync=maybe", "not true or false"),
        // The client's options are checked before connecting: not an I/O error of the path.
        ("file:///proc/distlock-nope?ttl=abc", "option ttl"),
        ("file:///proc/distlock-nope?ttl=0s", "TTL"),
        ("file:///proc/distlock-nope?namespace=a%01b", "namespace"),
        ("file:///proc/distlock-nope?ttl=8d", "longer than any backend takes"),
        // Without `://`, or with it only in an option: the password is still hidden.
        ("redis:/u:hunter2@h:6379", "scheme://"),
        ("redis:u:hunter2@h?endpoint=http://x", "not a scheme"),
    ];
    if cfg!(feature = "redis") {
        cases.push(("redis://u:hunter2@h1,h2", "takes one host"));
        cases.push(("redlock://u:hunter2@h1,h2", "at least 3 hosts"));
        cases.push(("redis://u:hunter2@h?bogus=1", "unknown option 'bogus'"));
        // Nothing listens on port 1: a connection error if the TTL were checked after it.
        cases.push(("redis://u:hunter2@127.0.0.1:1?ttl=0s", "TTL"));
        cases.push(("redis://u:hunter2@h?wait_replicas=x", "not a number of replicas"));
        cases.push(("redis+cluster://u:hunter2@h1,h2/3", "takes no path"));
        cases.push(("rediss+cluster://u:hunter2@h1?ca_file=/nonexistent/ca.pem", "CA file"));
        cases.push(("redis+sentinel://u:hunter2@s1,s2", "needs the master's name"));
        cases.push(("redis+sentinel://u:hunter2@s1/m?tls=true", "needs rediss+sentinel://"));
    }
    if cfg!(feature = "etcd") {
        cases.push(("etcd://u:hunter2@h:2379?cert_file=/c.pem", "go together"));
        cases.push(("etcd://u:hunter2@h:2379?ca_file=/nonexistent/ca.pem", "CA file"));
        cases.push(("etcd://u:hunter2@[::1", "bracketed IPv6"));
    }
    if cfg!(feature = "zk") {
        cases.push(("zk://u:hunter2@?session_timeout=5s", "at least one host"));
        cases.push(("zk://u:hunter2@h:2181?prefix=relative", "absolute path"));
        cases.push(("zk://u:hunter2@h:2181?bogus=1", "unknown option 'bogus'"));
        cases.push(("zk://u:hunter2@h:2181?cert_file=/c.pem", "go together"));
    }
    if cfg!(feature = "dynamo") {
        cases.push(("dynamodb://?region=eu-west-1", "table name"));
        cases.push(("dynamodb://u:hunter2@locks?region=eu-west-1", "no credentials in the URL"));
        cases.push(("dynamodb://locks?takeover=sometimes", "option takeover"));
        cases.push(("dynamodb://locks?max_skew=1s", "only with takeover=clock"));
        cases.push(("dynamodb://locks?sort_key=ns", "NAME:VALUE"));
        cases.push(("dynamodb://x?region=eu-west-1", "table name must be 3 to 255"));
    }
    for (url, expect) in cases {
        let e = distlock::connect(url).await.expect_err(url);
        let msg = e.to_string();
        assert!(msg.contains(expect), "{url}: {msg}");
        assert!(
            !msg.contains("hunter2") && !format!("{e:?}").contains("hunter2"),
            "{url}: password echoed: {msg}"
        );
        assert!(!e.is_retryable(), "{url}");
    }
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_and_redlock_urls_connect() {
    use conformance_tests::fixtures::redis::RedisServer;
    let s: Vec<RedisServer> = futures_lite_join(3).await;
    let one = distlock::connect(&format!("{}?prefix=svc:&timeout=1s", s[0].url())).await.expect("redis://");
    let g = one.lock("k").acquire().await.expect("acquire");
    assert_eq!(one.backend_name(), "redis");
    let _ = g.release().await.expect("release");
    let hosts: Vec<String> = s.iter().map(|x| format!("127.0.0.1:{}", x.port())).collect();
    let rl =
        distlock::connect(&format!("redlock://{}?timeout=300ms", hosts.join(","))).await.expect("redlock://");
    assert_eq!(rl.backend_name(), "redlock");
    let g = rl.lock("k").acquire().await.expect("acquire");
    let _ = g.release().await.expect("release");
    let port = conformance_tests::fixtures::free_port().expect("port");
    let e = distlock::connect(&format!("redis://:pw-xyz@127.0.0.1:{port}?connect_timeout=1s"))
        .await
        .expect_err("nobody listens");
    assert!(e.is_retryable() && !e.to_string().contains("pw-xyz"), "{e}");
}

#[cfg(feature = "redis")]
async fn futures_lite_join(n: usize) -> Vec<conformance_tests::fixtures::redis::RedisServer> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(conformance_tests::fixtures::redis::RedisServer::start().await.expect("redis-server"));
    }
    v
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_urls_connect() {
    use conformance_tests::fixtures::etcd::EtcdCluster;
    let etcd = EtcdCluster::single().await.expect("etcd");
    let hosts: Vec<String> =
        etcd.endpoints().iter().map(|e| e.trim_start_matches("http://").to_owned()).collect();
    for mode in ["session", "per-lock"] {
        let url = format!("etcd://{}?lease={mode}&session_ttl=5s&prefix=app/", hosts.join(","));
        let locks = distlock::connect(&url).await.expect("etcd://");
        assert_eq!(locks.backend_name(), "etcd");
        let g = locks.lock("k").ttl(Duration::from_secs(5)).acquire().await.expect("acquire");
        let _ = g.release().await.expect("release");
    }
    let e = distlock::connect(&format!("etcd://{}?lease=sometimes", hosts[0])).await.expect_err("bad lease");
    assert!(e.to_string().contains("option lease"), "{e}");
}

#[cfg(feature = "zk")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zk_urls_connect() {
    use conformance_tests::fixtures::zk::ZkEnsemble;
    let zk = ZkEnsemble::single().await.expect("ZooKeeper");
    let url = format!("zk://{}/apps/one?session_timeout=4s&prefix=/locks", zk.connect_string());
    let a = distlock::connect(&url).await.expect("zk:// with a chroot");
    assert_eq!(a.backend_name(), "zookeeper");
    let g = a.lock("k").acquire().await.expect("acquire");
    // The same chroot and prefix from a second client: excluded. Another chroot: independent.
    let b = distlock::connect(&url).await.expect("zk://");
    assert!(b.lock("k").try_acquire().await.expect("try").is_none());
    let other = distlock::connect(&format!("zk://{}/apps/two", zk.connect_string())).await.expect("zk://");
    let g2 = other.lock("k").try_acquire().await.expect("try").expect("another chroot is independent");
    let _ = g2.release().await.expect("release");
    let _ = g.release().await.expect("release");
}

#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn a_scheme_whose_feature_is_off_names_the_feature() {
    let e = distlock::connect("redis://127.0.0.1:6379").await.expect_err("feature off");
    assert!(e.to_string().contains("--features redis"), "{e}");
    let e = distlock::connect("dynamodb://locks?region=eu-west-1").await.expect_err("feature off");
    assert!(e.to_string().contains("--features dynamo"), "{e}");
    let e = distlock::connect("zk://127.0.0.1:2181/app").await.expect_err("feature off");
    assert!(e.to_string().contains("--features zk"), "{e}");
}

conformance_suite!(migration_memory_to_file, {
    let old = lock_local_memory();
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    Suite::new("migration(memory->file)", move || {
        let old = old.clone();
        let dir = dir.clone();
        async move {
            let new = distlock::lock_local::FileBackend::connect(
                distlock::lock_local::FileOptions::new(dir.path()).sync(false),
            )?;
            Ok(LockClient::new(MigrationBackend::new(Arc::new(old), Arc::new(new), Primary::Old)))
        }
    })
});

fn lock_local_memory() -> distlock::lock_local::MemoryBackend {
    distlock::lock_local::MemoryBackend::new()
}

/// The migration client over two configured clients keeps their namespace, so it excludes an
/// unmigrated process of that namespace; clients of two namespaces are refused.
#[tokio::test]
async fn the_migration_client_keeps_the_namespace() {
    let old = distlock::connect("mem://migration-ns-old?namespace=app").await.expect("old");
    let new = distlock::connect("mem://migration-ns-new?namespace=app&ttl=10s").await.expect("new");
    let both = MigrationBackend::client(&old, &new, Primary::Old, false).expect("client");
    assert_eq!(both.namespace(), "app");
    let held = old.lock("job").acquire().await.expect("unmigrated holder");
    assert!(both.lock("job").try_acquire().await.expect("try").is_none(), "two holders of app/job");
    let _ = held.release().await.expect("release");
    let g = both.lock("job").acquire().await.expect("both");
    assert!(new.lock("job").try_acquire().await.expect("try").is_none());
    let _ = g.release().await.expect("release");
    let other = distlock::connect("mem://migration-ns-other").await.expect("other");
    let e = MigrationBackend::client(&old, &other, Primary::Old, false).expect_err("namespaces differ");
    assert!(matches!(e, distlock::Error::InvalidConfig(_)) && e.to_string().contains("'app'"), "{e}");
}

#[tokio::test]
async fn migrating_and_unmigrated_processes_exclude_each_other() {
    let old = distlock::lock_local::MemoryBackend::new();
    let new = distlock::lock_local::MemoryBackend::new();
    let on_old = LockClient::new(old.clone());
    let on_new = LockClient::new(new.clone());
    let both = LockClient::new(MigrationBackend::new(Arc::new(old), Arc::new(new), Primary::Old));
    // A migrating holder excludes both unmigrated sides.
    let g = both.lock("job").acquire().await.expect("both");
    assert!(on_old.lock("job").try_acquire().await.expect("try").is_none());
    assert!(on_new.lock("job").try_acquire().await.expect("try").is_none());
    let _ = g.release().await.expect("release");
    // A holder on the new backend alone blocks the migrating one, which leaves nothing on old.
    let n = on_new.lock("job").acquire().await.expect("new only");
    assert!(both.lock("job").try_acquire().await.expect("try").is_none());
    assert!(on_old.lock("job").try_acquire().await.expect("old must be free again").is_some());
    let _ = n.release().await.expect("release");
}
