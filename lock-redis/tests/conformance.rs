//! The whole conformance suite against real redis-server processes: one node, a Redis Cluster
//! of three primaries with a replica each, and Redlock over 3 and 5 independent masters.

use conformance_tests::fixtures::redis::{redlock_targets, RedisCluster, RedisTarget};
use conformance_tests::{conformance_suite, Suite};
use lock_core::LockClient;
use lock_redis::{RedisBackend, RedisOptions, RedlockBackend, RedlockOptions};

conformance_suite!(redis_single_node, {
    let target = std::sync::Arc::new(RedisTarget::get().await.expect("redis server for the suite"));
    Suite::new("redis", move || {
        let target = target.clone();
        async move { Ok(LockClient::new(RedisBackend::connect(target.url.parse()?).await?)) }
    })
});

conformance_suite!(redis_cluster, {
    let cluster = std::sync::Arc::new(RedisCluster::start(3).await.expect("a Redis Cluster for the suite"));
    let url = cluster.url();
    Suite::new("redis-cluster", move || {
        let (url, _keep_alive) = (url.clone(), cluster.clone());
        async move { Ok(LockClient::new(RedisBackend::connect(url.parse()?).await?)) }
    })
});

async fn redlock_suite(n: usize) -> Suite {
    let (urls, servers) = redlock_targets(n).await.expect("redis masters for the suite");
    let servers = std::sync::Arc::new(servers);
    Suite::new(&format!("redlock-{n}"), move || {
        let urls = urls.clone();
        let _keep_alive = servers.clone();
        async move {
            let nodes =
                urls.iter().map(|u| u.parse::<RedisOptions>()).collect::<lock_core::Result<Vec<_>>>()?;
            Ok(LockClient::new(RedlockBackend::connect(RedlockOptions::new(nodes)).await?))
        }
    })
}

conformance_suite!(redlock_3_masters, redlock_suite(3).await);
conformance_suite!(redlock_5_masters, redlock_suite(5).await);
