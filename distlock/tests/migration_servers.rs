//! The migration lock between two server backends: the whole conformance suite from Redis to
//! DynamoDB (moto's server), and a lock held on both with auto-renewal for several TTLs.
//! The memory-to-file migration runs in `connect.rs`; this one catches what only a server
//! backend checks (DynamoDB refuses to extend a grant whose own `valid_until` has passed).
#![cfg(all(feature = "redis", feature = "dynamo"))]

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use conformance_tests::fixtures::dynamo::DynamoTarget;
use conformance_tests::fixtures::redis::RedisTarget;
use conformance_tests::{conformance_suite, Suite};
use distlock::lock_dynamo::{DynamoBackend, DynamoOptions};
use distlock::lock_redis::RedisBackend;
use distlock::migration::{MigrationBackend, Primary};
use distlock::LockClient;

/// An SDK client for the emulator, with throwaway credentials (never the default chain's).
fn dynamo_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "distlock-tests"))
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

struct Servers {
    redis: RedisTarget,
    dynamo: DynamoTarget,
}

impl Servers {
    async fn start() -> Arc<Self> {
        let redis = RedisTarget::get().await.expect("redis-server");
        let dynamo = DynamoTarget::get().await.expect("DynamoDB emulator");
        DynamoBackend::with_client(dynamo_client(&dynamo.endpoint), DynamoOptions::new("migration_locks"))
            .create_table()
            .await
            .expect("create the lock table");
        Arc::new(Self { redis, dynamo })
    }

    async fn migration(&self, primary: Primary) -> distlock::Result<MigrationBackend> {
        let old = RedisBackend::connect(self.redis.url.parse()?).await?;
        let new = DynamoBackend::with_client(
            dynamo_client(&self.dynamo.endpoint),
            DynamoOptions::new("migration_locks"),
        );
        Ok(MigrationBackend::new(Arc::new(old), Arc::new(new), primary))
    }
}

conformance_suite!(migration_redis_to_dynamodb, {
    let servers = Servers::start().await;
    Suite::new("migration(redis->dynamodb)", move || {
        let servers = servers.clone();
        async move { Ok(LockClient::new(servers.migration(Primary::New).await?)) }
    })
    // The emulator applies requests one at a time: fewer checks at once keep its queue from
    // eating the short TTLs' renewal margins on a loaded 2-core machine.
    .concurrency(3)
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_lock_renewed_for_several_ttls_stays_held_on_both() {
    let servers = Servers::start().await;
    let both = LockClient::new(servers.migration(Primary::Old).await.expect("migration backend"));
    let on_redis =
        LockClient::new(RedisBackend::connect(servers.redis.url.parse().expect("url")).await.expect("redis"));
    let on_dynamo = LockClient::new(DynamoBackend::with_client(
        dynamo_client(&servers.dynamo.endpoint),
        DynamoOptions::new("migration_locks"),
    ));
    let ttl = Duration::from_secs(2);
    let g = both.lock("renewed").ttl(ttl).auto_renew().acquire().await.expect("acquire on both");
    // Four TTLs: about twelve renewals, each of which must extend both grants.
    if let Ok(reason) = tokio::time::timeout(ttl * 4, g.lost()).await {
        panic!("the migration lock was lost while renewed: {reason}");
    }
    assert!(g.is_held(), "the migration lock stopped being held while renewed");
    assert!(on_redis.lock("renewed").try_acquire().await.expect("try").is_none(), "Redis side free");
    assert!(on_dynamo.lock("renewed").try_acquire().await.expect("try").is_none(), "DynamoDB side free");
    assert_eq!(g.release().await.expect("release"), distlock::ReleaseOutcome::Released);
    let r =
        on_redis.lock("renewed").try_acquire().await.expect("try").expect("Redis side free after release");
    let d = on_dynamo
        .lock("renewed")
        .try_acquire()
        .await
        .expect("try")
        .expect("DynamoDB side free after release");
    let _ = r.release().await;
    let _ = d.release().await;
}
