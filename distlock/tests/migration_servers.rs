//! The migration lock between two server backends: the whole conformance suite from Redis to
//! DynamoDB (moto's server), and a lock held on both with auto-renewal for several TTLs; and
//! `migrate_tokens` from Redis (one node and a cluster) to memory and DynamoDB.
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
        DynamoBackend::with_client(dynamo_client(&dynamo.url), DynamoOptions::new("migration_locks"))
            .create_table()
            .await
            .expect("create the lock table");
        Arc::new(Self { redis, dynamo })
    }

    async fn migration(&self, primary: Primary) -> distlock::Result<MigrationBackend> {
        let old = RedisBackend::connect(self.redis.url.parse()?).await?;
        let new = DynamoBackend::with_client(
            dynamo_client(&self.dynamo.url),
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
        dynamo_client(&servers.dynamo.url),
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

/// `migrate_tokens` from Redis to the memory backend and to DynamoDB: every primitive's
/// counter (lock, semaphore, read-write lock, election) is carried over, so the first grant on
/// the new backend is fenced above every Redis grant; back from memory to Redis it never lowers
/// a Redis counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_tokens_carries_every_primitives_counter_from_redis() {
    use distlock::lock_local::MemoryBackend;
    use distlock::migration::migrate_tokens;
    use distlock::LockBackend;

    let servers = Servers::start().await;
    let redis = RedisBackend::connect(servers.redis.url.parse().expect("url")).await.expect("redis");
    let old = LockClient::new(redis.clone());
    let p = format!("carry-{}/", lock_core_token());
    let mut last = std::collections::HashMap::new();
    let [lock, sem, rw, elect] = grant_each_once(&old, &p, &mut last).await;

    let mem = MemoryBackend::new();
    let dry = migrate_tokens(&redis, &mem, &p, true).await.expect("dry run");
    assert_eq!(dry.len(), 4, "one counter per primitive: {dry:?}");
    assert!(dry.iter().all(|m| m.new.is_none()));
    let moves = migrate_tokens(&redis, &mem, &p, false).await.expect("migrate");
    assert_eq!(moves.len(), 4, "{moves:?}");
    first_grants_are_above(&LockClient::new(mem.clone()), [&lock, &sem, &rw, &elect], &last).await;

    // Redis to DynamoDB, the pair the migration suite runs: the same carry-over, and safe to
    // run twice.
    let dynamo =
        DynamoBackend::with_client(dynamo_client(&servers.dynamo.url), DynamoOptions::new("migration_locks"));
    for _ in 0..2 {
        let moves = migrate_tokens(&redis, &dynamo, &p, false).await.expect("migrate to DynamoDB");
        assert_eq!(moves.len(), 4, "{moves:?}");
    }
    first_grants_are_above(&LockClient::new(dynamo.clone()), [&lock, &sem, &rw, &elect], &last).await;

    // Back from memory to Redis: Redis's counters are far above (its tokens follow its clock
    // in microseconds), and a raise never lowers them.
    let before = redis.fencing_counters(&p, None, 100).await.expect("counters").counters;
    migrate_tokens(&mem, &redis, &p, false).await.expect("migrate back");
    let after = redis.fencing_counters(&p, None, 100).await.expect("counters").counters;
    for (key, mode, token) in before {
        let now = after.iter().find(|(k, m, _)| *k == key && *m == mode).map(|c| c.2).expect("still there");
        assert!(now >= token, "{key} {mode:?}: counter went from {token} down to {now}");
    }
}

/// `migrate-tokens` from a Redis Cluster: the counters of every primitive, on names spread
/// over the three primaries, are read from each primary in turn and carried over, so the
/// first grants on the new backend are fenced above the cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_tokens_carries_every_counter_from_a_redis_cluster() {
    use conformance_tests::fixtures::redis::RedisCluster;
    use distlock::lock_local::MemoryBackend;
    use distlock::migration::migrate_tokens;

    let cluster = RedisCluster::start(3).await.expect("a Redis Cluster");
    let redis = RedisBackend::connect(cluster.url().parse().expect("url")).await.expect("the cluster");
    let old = LockClient::new(redis.clone());
    let p = format!("cluster-carry-{}/", lock_core_token());
    let mut last = std::collections::HashMap::new();
    let mut groups = Vec::new();
    // Eight groups of the four primitives: 32 names, in slots all over the cluster.
    for i in 0..8 {
        groups.push(grant_each_once(&old, &format!("{p}{i}/"), &mut last).await);
    }
    let mem = MemoryBackend::new();
    let moves = migrate_tokens(&redis, &mem, &p, false).await.expect("migrate from the cluster");
    assert_eq!(moves.len(), 32, "one counter per primitive and name: {moves:?}");
    let new = LockClient::new(mem.clone());
    for [lock, sem, rw, elect] in &groups {
        first_grants_are_above(&new, [lock, sem, rw, elect], &last).await;
    }
}

/// One grant of each primitive on `old` under `base` (`<base>lock`, a 3-permit `<base>sem`,
/// a write lock `<base>rw`, an election `<base>elect`), each released, with its token kept in
/// `last`: the names, in that order.
async fn grant_each_once(
    old: &LockClient,
    base: &str,
    last: &mut std::collections::HashMap<(String, distlock::Mode), distlock::FencingToken>,
) -> [String; 4] {
    use distlock::Mode;
    let (lock, sem, rw, elect) =
        (format!("{base}lock"), format!("{base}sem"), format!("{base}rw"), format!("{base}elect"));
    let g = old.lock(&lock).acquire().await.expect("lock");
    last.insert((lock.clone(), Mode::Exclusive), g.fencing_token());
    g.release().await.expect("release");
    let g = old.semaphore(&sem, 3).acquire().await.expect("permit");
    last.insert((sem.clone(), Mode::Permit { limit: 3 }), g.fencing_token());
    g.release().await.expect("release");
    let g = old.write_lock(&rw).acquire().await.expect("write lock");
    last.insert((rw.clone(), Mode::Write), g.fencing_token());
    g.release().await.expect("release");
    let g = old.election(&elect).campaign("a").await.expect("leader");
    last.insert((elect.clone(), Mode::Leader), g.fencing_token());
    g.release().await.expect("resign");
    [lock, sem, rw, elect]
}

/// The first grant of each of `names` (a lock, a 3-permit semaphore, a read-write lock, an
/// election, in that order) on `new` is fenced above the last token `last` records for it.
async fn first_grants_are_above(
    new: &LockClient,
    [lock, sem, rw, elect]: [&String; 4],
    last: &std::collections::HashMap<(String, distlock::Mode), distlock::FencingToken>,
) {
    let checks = [
        (new.lock(lock).try_acquire().await, lock),
        (new.semaphore(sem, 3).try_acquire().await, sem),
        (new.write_lock(rw).try_acquire().await, rw),
        (new.election(elect).wait(Duration::from_secs(1)).campaign("b").await.map(Some), elect),
    ];
    for (got, name) in checks {
        let g = got.expect("grant on the new backend").expect("free");
        let old_token = last.iter().find(|((n, _), _)| n == name).map(|(_, t)| *t).expect("old token");
        assert!(
            g.fencing_token() > old_token,
            "{name}: new token {} is not above {old_token}",
            g.fencing_token()
        );
        g.release().await.expect("release");
    }
}

/// A fresh random name part.
fn lock_core_token() -> String {
    distlock::core::OwnerToken::random().to_string()[..12].to_owned()
}
