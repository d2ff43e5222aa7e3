//! What the benchmark compares, per backend: distlock, the raw floor (the minimal commands a
//! lock needs, sent with the same client crate), and the peer crate a user would otherwise
//! pick. Each is a [`Contender`]; every task gets its own (its own connection or session),
//! as separate processes would.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use lock_core::LockClient;

/// One way of taking and releasing a lock.
#[async_trait]
pub trait Contender: Send + Sync {
    /// Takes `key` (it is free), then releases it.
    async fn cycle(&self, key: &str) -> Result<()>;
    /// Takes `key`, waiting while it is held; `None` if this contender cannot wait.
    async fn lock_wait(&self, key: &str) -> Result<Option<Box<dyn Held>>>;
}

/// A lock taken by [`Contender::lock_wait`].
#[async_trait]
pub trait Held: Send {
    /// Releases it.
    async fn unlock(self: Box<Self>) -> Result<()>;
}

/// Makes contenders of one kind.
#[async_trait]
pub trait Factory: Send + Sync {
    /// `distlock`, `floor` or `peer`.
    fn kind(&self) -> &'static str;
    /// What it is, for the report.
    fn describe(&self) -> String;
    /// A new contender with its own connection or session.
    async fn make(&self) -> Result<Arc<dyn Contender>>;
}

const TTL: Duration = Duration::from_secs(30);

// --- distlock ------------------------------------------------------------------------------

/// distlock on any backend.
pub struct Ours {
    pub locks: LockClient,
}

struct OursHeld(lock_core::Guard);

#[async_trait]
impl Held for OursHeld {
    async fn unlock(self: Box<Self>) -> Result<()> {
        self.0.release().await?;
        Ok(())
    }
}

#[async_trait]
impl Contender for Ours {
    async fn cycle(&self, key: &str) -> Result<()> {
        let g = self.locks.lock(key).ttl(TTL).acquire().await?;
        g.release().await?;
        Ok(())
    }
    async fn lock_wait(&self, key: &str) -> Result<Option<Box<dyn Held>>> {
        let g = self.locks.lock(key).ttl(TTL).wait(Duration::from_secs(120)).acquire().await?;
        Ok(Some(Box::new(OursHeld(g))))
    }
}

/// Makes distlock contenders with `connect`.
pub struct OursFactory<F>(pub F, pub String);

#[async_trait]
impl<F, Fut> Factory for OursFactory<F>
where
    F: Fn() -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<LockClient>> + Send,
{
    fn kind(&self) -> &'static str {
        "distlock"
    }
    fn describe(&self) -> String {
        self.1.clone()
    }
    async fn make(&self) -> Result<Arc<dyn Contender>> {
        Ok(Arc::new(Ours { locks: (self.0)().await? }))
    }
}

// --- Redis ---------------------------------------------------------------------------------

const REDIS_DEL: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// Redis floor: `SET key token NX PX ttl`, then an EVALSHA compare-and-delete.
pub struct RedisFloor {
    pub url: String,
}

struct RedisFloorC {
    con: redis::aio::ConnectionManager,
    del: redis::Script,
}

#[async_trait]
impl Contender for RedisFloorC {
    async fn cycle(&self, key: &str) -> Result<()> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut con = self.con.clone();
        let ok: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(30_000)
            .query_async(&mut con)
            .await?;
        if ok.is_none() {
            return Err(anyhow!("floor: {key} was held"));
        }
        let _: i64 = self.del.key(key).arg(&token).invoke_async(&mut con).await?;
        Ok(())
    }
    async fn lock_wait(&self, _key: &str) -> Result<Option<Box<dyn Held>>> {
        Ok(None)
    }
}

#[async_trait]
impl Factory for RedisFloor {
    fn kind(&self) -> &'static str {
        "floor"
    }
    fn describe(&self) -> String {
        "SET NX PX + EVALSHA compare-and-delete (redis crate)".into()
    }
    async fn make(&self) -> Result<Arc<dyn Contender>> {
        let client = redis::Client::open(self.url.as_str())?;
        let con = redis::aio::ConnectionManager::new(client).await?;
        Ok(Arc::new(RedisFloorC { con, del: redis::Script::new(REDIS_DEL) }))
    }
}

/// Redis peer: rslock (Redlock over one node here), with its default retries.
pub struct RslockPeer {
    pub url: String,
}

struct RslockC(rslock::LockManager);

struct RslockHeld(rslock::LockManager, rslock::Lock);

#[async_trait]
impl Held for RslockHeld {
    async fn unlock(self: Box<Self>) -> Result<()> {
        self.0.unlock(&self.1).await;
        Ok(())
    }
}

#[async_trait]
impl Contender for RslockC {
    async fn cycle(&self, key: &str) -> Result<()> {
        let l = self.0.lock(key.as_bytes(), TTL).await.map_err(|e| anyhow!("rslock: {e:?}"))?;
        self.0.unlock(&l).await;
        Ok(())
    }
    async fn lock_wait(&self, key: &str) -> Result<Option<Box<dyn Held>>> {
        // rslock waits by retrying `lock` (3 tries, random sleeps up to 200 ms) in a loop.
        let l = self.0.acquire_no_guard(key.as_bytes(), TTL).await.map_err(|e| anyhow!("rslock: {e:?}"))?;
        Ok(Some(Box::new(RslockHeld(self.0.clone(), l))))
    }
}

#[async_trait]
impl Factory for RslockPeer {
    fn kind(&self) -> &'static str {
        "peer"
    }
    fn describe(&self) -> String {
        "rslock 0.7 (LockManager::lock / acquire / unlock)".into()
    }
    async fn make(&self) -> Result<Arc<dyn Contender>> {
        Ok(Arc::new(RslockC(rslock::LockManager::new(vec![self.url.clone()]))))
    }
}

// --- etcd ----------------------------------------------------------------------------------
// Sent with lock-etcd's own gRPC client (`lock_etcd::rpc`, the one its backend uses), as the
// other floors use their backend's client crate.

use lock_etcd::rpc::pb::{Compare, DeleteRangeRequest, RequestOp, TxnRequest};

async fn etcd_rpc_client(endpoints: &[String]) -> Result<lock_etcd::rpc::Client> {
    Ok(lock_etcd::rpc::Client::connect(&lock_etcd::EtcdOptions::new(endpoints)).await?)
}

/// etcd floor: a transaction that puts the key if it does not exist, then a delete.
pub struct EtcdFloor {
    pub endpoints: Vec<String>,
}

struct EtcdFloorC(lock_etcd::rpc::Client);

#[async_trait]
impl Contender for EtcdFloorC {
    async fn cycle(&self, key: &str) -> Result<()> {
        let txn = TxnRequest::when([Compare::create_revision_is(key, 0)])
            .and_then([RequestOp::put(key, "floor", 0)]);
        if !self.0.txn(txn).await?.succeeded {
            return Err(anyhow!("floor: {key} was held"));
        }
        self.0.delete_range(DeleteRangeRequest::key(key)).await?;
        Ok(())
    }
    async fn lock_wait(&self, _key: &str) -> Result<Option<Box<dyn Held>>> {
        Ok(None)
    }
}

#[async_trait]
impl Factory for EtcdFloor {
    fn kind(&self) -> &'static str {
        "floor"
    }
    fn describe(&self) -> String {
        "txn (create_revision == 0 → put) + delete (lock-etcd's gRPC client)".into()
    }
    async fn make(&self) -> Result<Arc<dyn Contender>> {
        Ok(Arc::new(EtcdFloorC(etcd_rpc_client(&self.endpoints).await?)))
    }
}

/// etcd peer: etcd's lock service (`v3lockpb.Lock`/`Unlock`, what etcd-client's
/// `lock()`/`unlock()` and `etcdctl lock` call), on a kept-alive lease.
pub struct EtcdPeer {
    pub endpoints: Vec<String>,
}

struct EtcdPeerC(lock_etcd::rpc::Client, i64, #[allow(dead_code)] AbortOnDrop);

/// Stops the peer's keep-alive task with its contender: kept running, every pass left its
/// tasks' streams and leases alive under the passes after it.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct EtcdPeerHeld(lock_etcd::rpc::Client, Vec<u8>);

#[async_trait]
impl Held for EtcdPeerHeld {
    async fn unlock(self: Box<Self>) -> Result<()> {
        let EtcdPeerHeld(client, key) = *self;
        client.unlock(key).await?;
        Ok(())
    }
}

#[async_trait]
impl Contender for EtcdPeerC {
    async fn cycle(&self, key: &str) -> Result<()> {
        let k = self.0.lock(key, self.1).await?;
        self.0.unlock(k).await?;
        Ok(())
    }
    async fn lock_wait(&self, key: &str) -> Result<Option<Box<dyn Held>>> {
        let k = self.0.lock(key, self.1).await?;
        Ok(Some(Box::new(EtcdPeerHeld(self.0.clone(), k))))
    }
}

#[async_trait]
impl Factory for EtcdPeer {
    fn kind(&self) -> &'static str {
        "peer"
    }
    fn describe(&self) -> String {
        "etcd's lock service Lock / Unlock (as etcd-client's lock() / unlock())".into()
    }
    async fn make(&self) -> Result<Arc<dyn Contender>> {
        let c = etcd_rpc_client(&self.endpoints).await?;
        let lease = c.lease_grant(60).await?.id;
        let (mut keeper, _) = c.lease_keep_alive(lease).await?;
        let keeping = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if keeper.renew().await.is_err() {
                    return;
                }
            }
        });
        Ok(Arc::new(EtcdPeerC(c, lease, AbortOnDrop(keeping.abort_handle()))))
    }
}

// --- ZooKeeper -----------------------------------------------------------------------------

fn zk_dir(key: &str) -> String {
    format!("/bench/{}", key.replace('/', "_"))
}

/// The floor's ephemeral sequential child `n-` of `dir` (made when missing).
pub(crate) async fn zk_floor_create(
    zk: &zookeeper_client::Client,
    dir: &str,
) -> Result<(zookeeper_client::Stat, zookeeper_client::CreateSequence)> {
    zk_create_sequential(zk, dir, "n-", b"", zookeeper_client::CreateMode::Persistent).await
}

/// An ephemeral sequential child `<dir>/<stem><sequence>` holding `data`; `dir` (and its
/// parents) is made with `dir_mode` when missing.
pub(crate) async fn zk_create_sequential(
    zk: &zookeeper_client::Client,
    dir: &str,
    stem: &str,
    data: &[u8],
    dir_mode: zookeeper_client::CreateMode,
) -> Result<(zookeeper_client::Stat, zookeeper_client::CreateSequence)> {
    use zookeeper_client::{Acls, CreateMode};
    let opts = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let path = format!("{dir}/{stem}");
    Ok(match zk.create(&path, data, &opts).await {
        Err(zookeeper_client::Error::NoNode) => {
            let _ = zk.mkdir(dir, &dir_mode.with_acls(Acls::anyone_all())).await;
            zk.create(&path, data, &opts).await?
        }
        other => other?,
    })
}

/// ZooKeeper floor: create an ephemeral sequential child, list the children, delete it.
pub struct ZkFloor {
    pub connect: String,
}

struct ZkFloorC(zookeeper_client::Client);

#[async_trait]
impl Contender for ZkFloorC {
    async fn cycle(&self, key: &str) -> Result<()> {
        let dir = zk_dir(key);
        let created = zk_floor_create(&self.0, &dir).await?;
        let children = self.0.list_children(&dir).await?;
        if children.len() != 1 {
            return Err(anyhow!("floor: {key} was held"));
        }
        self.0.delete(&format!("{dir}/n-{}", created.1), None).await?;
        Ok(())
    }
    async fn lock_wait(&self, _key: &str) -> Result<Option<Box<dyn Held>>> {
        Ok(None)
    }
}

#[async_trait]
impl Factory for ZkFloor {
    fn kind(&self) -> &'static str {
        "floor"
    }
    fn describe(&self) -> String {
        "create EPHEMERAL_SEQUENTIAL + getChildren + delete (zookeeper-client)".into()
    }
    async fn make(&self) -> Result<Arc<dyn Contender>> {
        Ok(Arc::new(ZkFloorC(zookeeper_client::Client::connect(&self.connect).await?)))
    }
}

/// ZooKeeper peer: zookeeper-client's own `lock` (Curator's layout), released by deleting
/// its node.
pub struct ZkPeer {
    pub connect: String,
}

struct ZkPeerC(zookeeper_client::Client);

struct ZkPeerHeld(zookeeper_client::OwnedLockClient);

#[async_trait]
impl Held for ZkPeerHeld {
    async fn unlock(self: Box<Self>) -> Result<()> {
        let path = self.0.lock_path().to_owned();
        self.0.client().delete(&path, None).await?;
        Ok(())
    }
}

impl ZkPeerC {
    async fn take(&self, key: &str) -> Result<zookeeper_client::OwnedLockClient> {
        use zookeeper_client::{Acls, CreateMode, LockOptions, LockPrefix};
        let dir = format!("/peer/{}", key.replace('/', "_"));
        let prefix = LockPrefix::new_curator(&dir, "lock-")?;
        let opts = LockOptions::new(Acls::anyone_all())
            .with_ancestor_options(CreateMode::Persistent.with_acls(Acls::anyone_all()))?;
        Ok(self.0.lock(prefix, b"", opts).await?.into_owned())
    }
}

#[async_trait]
impl Contender for ZkPeerC {
    async fn cycle(&self, key: &str) -> Result<()> {
        Box::new(ZkPeerHeld(self.take(key).await?)).unlock().await
    }
    async fn lock_wait(&self, key: &str) -> Result<Option<Box<dyn Held>>> {
        Ok(Some(Box::new(ZkPeerHeld(self.take(key).await?))))
    }
}

#[async_trait]
impl Factory for ZkPeer {
    fn kind(&self) -> &'static str {
        "peer"
    }
    fn describe(&self) -> String {
        "zookeeper-client 0.11 Client::lock (Curator layout)".into()
    }
    async fn make(&self) -> Result<Arc<dyn Contender>> {
        Ok(Arc::new(ZkPeerC(zookeeper_client::Client::connect(&self.connect).await?)))
    }
}

// --- DynamoDB ------------------------------------------------------------------------------

/// The floor's conditional `PutItem` of `key` for `token`: `false` when the item exists.
pub(crate) async fn dynamo_floor_put(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
    token: &str,
) -> Result<bool> {
    use aws_sdk_dynamodb::types::AttributeValue as V;
    let put = client
        .put_item()
        .table_name(table)
        .item("lock_key", V::S(key.to_owned()))
        .item("owner", V::S(token.to_owned()))
        .condition_expression("attribute_not_exists(lock_key)")
        .send()
        .await;
    match put {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => {
            Ok(false)
        }
        Err(e) => Err(e).context("floor put"),
    }
}

/// The floor's `DeleteItem` of `key`, on the condition that `token` still owns it.
pub(crate) async fn dynamo_floor_delete(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
    token: &str,
) -> Result<()> {
    use aws_sdk_dynamodb::types::AttributeValue as V;
    client
        .delete_item()
        .table_name(table)
        .key("lock_key", V::S(key.to_owned()))
        .condition_expression("#o = :o")
        .expression_attribute_names("#o", "owner")
        .expression_attribute_values(":o", V::S(token.to_owned()))
        .send()
        .await
        .context("floor delete")?;
    Ok(())
}

/// DynamoDB floor: a conditional put (no owner yet), then a conditional delete.
pub struct DynamoFloor {
    pub client: aws_sdk_dynamodb::Client,
    pub table: String,
}

struct DynamoFloorC(aws_sdk_dynamodb::Client, String);

#[async_trait]
impl Contender for DynamoFloorC {
    async fn cycle(&self, key: &str) -> Result<()> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let k = format!("floor/{key}");
        anyhow::ensure!(dynamo_floor_put(&self.0, &self.1, &k, &token).await?, "floor: {key} was held");
        dynamo_floor_delete(&self.0, &self.1, &k, &token).await
    }
    async fn lock_wait(&self, _key: &str) -> Result<Option<Box<dyn Held>>> {
        Ok(None)
    }
}

#[async_trait]
impl Factory for DynamoFloor {
    fn kind(&self) -> &'static str {
        "floor"
    }
    fn describe(&self) -> String {
        "conditional PutItem + conditional DeleteItem (aws-sdk-dynamodb)".into()
    }
    async fn make(&self) -> Result<Arc<dyn Contender>> {
        Ok(Arc::new(DynamoFloorC(self.client.clone(), self.table.clone())))
    }
}

/// DynamoDB peer: dynamodb_lock 0.6 (rusoto), one `DynamoDbLockClient` per lock name, as its
/// API asks. Its acquire reads the item, then writes it conditionally; its release is a
/// conditional delete. While the lock is held it polls every `refresh_period`, set here to
/// our default poll interval (100 ms) instead of its 10 s default.
pub struct DynamoPeer {
    pub endpoint: String,
    pub table: String,
    /// Counts every HTTP request its clients send.
    pub requests: Arc<std::sync::atomic::AtomicU64>,
}

/// rusoto's HTTP client, counting the requests it sends.
struct CountingDispatch(rusoto_core::HttpClient, Arc<std::sync::atomic::AtomicU64>);

impl rusoto_core::DispatchSignedRequest for CountingDispatch {
    fn dispatch(
        &self,
        request: rusoto_core::signature::SignedRequest,
        timeout: Option<Duration>,
    ) -> rusoto_core::request::DispatchSignedRequestFuture {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.dispatch(request, timeout)
    }
}

struct DynamoPeerC {
    client: rusoto_dynamodb::DynamoDbClient,
    table: String,
}

struct DynamoPeerHeld(dynamodb_lock::DynamoDbLockClient, dynamodb_lock::LockItem);

#[async_trait]
impl Held for DynamoPeerHeld {
    async fn unlock(self: Box<Self>) -> Result<()> {
        if !self.0.release_lock(&self.1).await.context("dynamodb_lock release")? {
            return Err(anyhow!("dynamodb_lock: the lock was not held at release"));
        }
        Ok(())
    }
}

impl DynamoPeerC {
    fn lock_client(&self, key: &str, wait: Duration) -> dynamodb_lock::DynamoDbLockClient {
        let opts = dynamodb_lock::DynamoDbOptions {
            partition_key_value: format!("peer/{key}"),
            table_name: self.table.clone(),
            owner_name: uuid::Uuid::new_v4().to_string(),
            lease_duration: TTL.as_secs(),
            refresh_period: Duration::from_millis(100),
            additional_time_to_wait_for_lock: wait,
        };
        // `for_region` takes rusoto's process-wide shared client, replaced at once.
        dynamodb_lock::DynamoDbLockClient::for_region(dynamodb_lock::Region::UsEast1)
            .with_client(self.client.clone())
            .with_options(opts)
    }

    async fn take(&self, key: &str, wait: Duration) -> Result<DynamoPeerHeld> {
        let c = self.lock_client(key, wait);
        let item = c.acquire_lock(None).await.context("dynamodb_lock acquire")?;
        Ok(DynamoPeerHeld(c, item))
    }
}

#[async_trait]
impl Contender for DynamoPeerC {
    async fn cycle(&self, key: &str) -> Result<()> {
        Box::new(self.take(key, Duration::ZERO).await?).unlock().await
    }
    async fn lock_wait(&self, key: &str) -> Result<Option<Box<dyn Held>>> {
        Ok(Some(Box::new(self.take(key, Duration::from_secs(120)).await?)))
    }
}

#[async_trait]
impl Factory for DynamoPeer {
    fn kind(&self) -> &'static str {
        "peer"
    }
    fn describe(&self) -> String {
        "dynamodb_lock 0.6.1 (rusoto 0.47): GetItem + conditional PutItem, conditional DeleteItem; polls every 100 ms"
            .into()
    }
    async fn make(&self) -> Result<Arc<dyn Contender>> {
        let http = rusoto_core::HttpClient::new().context("rusoto HTTP client")?;
        let creds = rusoto_credential::StaticProvider::new_minimal("bench".into(), "bench".into());
        let region =
            rusoto_core::Region::Custom { name: "us-east-1".into(), endpoint: self.endpoint.clone() };
        let client = rusoto_dynamodb::DynamoDbClient::new_with(
            CountingDispatch(http, self.requests.clone()),
            creds,
            region,
        );
        Ok(Arc::new(DynamoPeerC { client, table: self.table.clone() }))
    }
}
