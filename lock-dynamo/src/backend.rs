//! [`DynamoBackend`]: the client, the table, and the [`LockBackend`] impl.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use lock_core::{
    async_trait, AcquireRequest, Attempt, BackendErrorKind, Capabilities, Error, ExtendOutcome, FencingToken,
    Instant, Lease, LockBackend, LockInfo, LockKey, ReleaseOutcome, Result, WakeMode,
};

use crate::error::{self, NAME};
use crate::item::{new_rvn, wall_ms, Record};
use crate::request::{ms, n, Update, Written};
use crate::takeover::Observations;
use crate::DynamoOptions;

/// Locks in a DynamoDB table. Cheap to clone; clones share the client and what this client
/// has seen of held locks.
///
/// # Behavior
/// See the [crate documentation](crate): one item per lock, one conditional write per
/// uncontended acquire, takeover after an RVN stayed unchanged for a whole lease on this
/// client's monotonic clock (or, opt-in, by wall-clock expiry with a skew bound).
#[derive(Clone)]
pub struct DynamoBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) opts: DynamoOptions,
    pub(crate) seen: Observations,
}

impl std::fmt::Debug for DynamoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoBackend").field("opts", &self.inner.opts).finish_non_exhaustive()
    }
}

/// What a lease of this backend remembers: the RVN of its last write.
#[derive(Debug)]
struct Held {
    rvn: Mutex<String>,
}

impl Held {
    fn new(rvn: String) -> Arc<Self> {
        Arc::new(Self { rvn: Mutex::new(rvn) })
    }
    fn rvn(&self) -> String {
        self.rvn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set(&self, rvn: String) {
        *self.rvn.lock().unwrap_or_else(|p| p.into_inner()) = rvn;
    }
}

impl DynamoBackend {
    /// Validates the options, then connects with aws-config's default credential and region
    /// chain, and `opts`' region and endpoint overrides. The SDK retries throttling, 5xx,
    /// connection errors and timeouts (three attempts, backoff from 20 ms); each attempt is
    /// limited to the request timeout, and an acquire attempt as a whole too. With [`DynamoOptions::create_table`], the table is then created if it
    /// does not exist ([`create_table`](Self::create_table)); otherwise nothing is sent.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when no region is configured anywhere or the options are
    /// unusable ([`DynamoOptions::validate`]). Without `create_table`, a missing table shows
    /// up at the first lock operation; with it, the errors of
    /// [`create_table`](Self::create_table).
    pub async fn connect(opts: DynamoOptions) -> Result<Self> {
        opts.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard().with_max_attempts(3).with_initial_backoff(Duration::from_millis(20)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(opts.request_timeout)
                    .connect_timeout(opts.request_timeout)
                    .build(),
            );
        if let Some(region) = &opts.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &opts.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let conf = loader.load().await;
        if conf.region().is_none() {
            return Err(Error::InvalidConfig(
                "no AWS region: set one in the options (dynamodb://table?region=...), AWS_REGION, or the profile"
                    .into(),
            ));
        }
        let create = opts.create_table;
        let backend = Self::with_client(Client::new(&conf), opts);
        if create {
            backend.create_table().await?;
        }
        Ok(backend)
    }

    /// Uses a client you configured yourself (credentials, retries, interceptors). Only
    /// `opts`' table, keys, takeover, polling and request timeout (the time limit of every
    /// acquire attempt, whatever the client's own timeouts and retries, and the
    /// cancelled-acquire clean-up's horizon) apply; region and endpoint are the client's. Nothing is sent, and
    /// [`DynamoOptions::create_table`] does not apply: call [`create_table`](Self::create_table).
    pub fn with_client(client: Client, opts: DynamoOptions) -> Self {
        Self { inner: Arc::new(Inner { client, opts, seen: Observations::default() }) }
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The options.
    pub fn options(&self) -> &DynamoOptions {
        &self.inner.opts
    }

    /// Creates the lock table (on-demand billing) if it does not exist, and waits until it
    /// is active.
    ///
    /// # Errors
    /// Backend errors; a table that already exists is not one. A table that exists with
    /// other key attributes is not detected here; lock operations on it then fail.
    pub async fn create_table(&self) -> Result<()> {
        let o = &self.inner.opts;
        let def = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| Error::InvalidConfig(format!("table definition: {e}")))
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| Error::InvalidConfig(format!("table key: {e}")))
        };
        let mut req = self
            .inner
            .client
            .create_table()
            .table_name(&o.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(def(&o.partition_key)?)
            .key_schema(key(&o.partition_key, KeyType::Hash)?);
        if let Some(sk) = &o.sort_key {
            req = req.attribute_definitions(def(&sk.name)?).key_schema(key(&sk.name, KeyType::Range)?);
        }
        if let Err(e) = req.send().await {
            let exists = e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception());
            if !exists {
                return Err(error::sdk("CreateTable", &o.table, e));
            }
        }
        self.await_active_table().await
    }

    /// Waits (up to 120 s) until the table is active.
    async fn await_active_table(&self) -> Result<()> {
        let table = &self.inner.opts.table;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self
                .inner
                .client
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(|e| error::sdk("DescribeTable", table, e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::backend_msg(
                    NAME,
                    BackendErrorKind::RequestTimedOut,
                    format!("table {table} did not become active in 120 s"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The lease for a grant of `req` with fencing token `fence` and RVN `rvn`.
    pub(crate) fn lease(&self, req: &AcquireRequest, fence: u64, rvn: String, sent: Instant) -> Lease {
        self.inner.seen.forget(req.key.full());
        Lease::new(req.key.clone(), req.owner, FencingToken::new(fence), req.ttl, sent)
            .with_backend_data(Held::new(rvn))
    }
}

#[async_trait]
impl LockBackend for DynamoBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let poll = self.inner.opts.poll_interval;
        Capabilities::new()
            .with_wake(WakeMode::Poll { max_interval: poll })
            .with_ttl_granularity(Duration::from_millis(1))
            .with_min_ttl(Duration::from_millis(100))
            // A contender that was already waiting takes over one lease after the holder's
            // last write, plus at most one poll. One that arrives later counts a whole lease
            // from its own first look, so a crashed holder blocks it for up to twice the TTL:
            // that cannot be a constant margin, and the crate documentation says so
            // (Takeover::RecordVersion).
            .with_expiry_margin(poll.saturating_add(Duration::from_millis(50)))
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.try_once(req).await
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        self.wait_until(req, deadline).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let held = lease.backend_data::<Held>();
        if held.is_some() && Instant::now() >= lease.valid_until() {
            // Our lease ran out on our own clock, so a contender may already count it gone:
            // never revive it. Give it up instead, so nobody waits for it.
            let _ = self.release_owner(lease.key(), lease.owner()).await;
            return Ok(ExtendOutcome::NotHeld);
        }
        let mut known = held.map(|h| h.rvn());
        for _ in 0..2 {
            let sent = Instant::now();
            let rvn = new_rvn();
            let mut values = vec![
                (":o", AttributeValue::S(lease.owner().to_string())),
                (":v", AttributeValue::S(rvn.clone())),
                (":l", n(ms(ttl))),
                (":e", n(wall_ms().saturating_add(ms(ttl)))),
            ];
            let condition = match &known {
                Some(k) => {
                    values.push((":known", AttributeValue::S(k.clone())));
                    "#o = :o AND #v = :known"
                }
                None => "#o = :o",
            };
            let heartbeat = Update {
                op: "extend",
                expression: "SET #v = :v, #l = :l, #e = :e",
                condition,
                values,
                returns: ReturnValue::None,
            };
            match self.write(lease.key(), heartbeat, None).await? {
                Written::Applied(_) => {
                    if let Some(h) = held {
                        h.set(rvn);
                    }
                    return Ok(ExtendOutcome::Extended {
                        valid_until: lock_core::lease::valid_until(sent, ttl),
                    });
                }
                Written::Refused(Some(item)) => {
                    let rec = Record::parse(&item)?;
                    // Still ours, but our last heartbeat's reply was lost: adopt its RVN.
                    if rec.owner == Some(lease.owner()) && known.as_deref() != Some(rec.rvn.as_str()) {
                        known = Some(rec.rvn);
                        continue;
                    }
                    return Ok(ExtendOutcome::NotHeld);
                }
                Written::Refused(None) => return Ok(ExtendOutcome::NotHeld),
            }
        }
        Ok(ExtendOutcome::NotHeld)
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        Ok(if self.release_owner(lease.key(), lease.owner()).await? {
            ReleaseOutcome::Released
        } else {
            ReleaseOutcome::NotHeld
        })
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        let Some(rec) = self.read(key, None).await? else { return Ok(None) };
        let Some(owner) = rec.owner else { return Ok(None) };
        let left = self.saw_held(key, &rec);
        // Unchanged for a whole lease on our clock: the holder is gone; we would take it over.
        if left.is_zero() {
            return Ok(None);
        }
        Ok(Some(LockInfo::new(Some(FencingToken::new(rec.fence)), Some(owner), Some(left))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A malformed endpoint is a configuration error found before anything is sent, never
    /// "could not reach DynamoDB" (which is retryable).
    #[tokio::test]
    async fn a_malformed_endpoint_is_invalid_config_and_not_retryable() {
        for endpoint in [
            "http://127.0.0.1:99999",
            "not a url",
            "ftp://127.0.0.1:8000",
            "http://",
            "http://:8000",
            "https://u:hunter2@h:0",
        ] {
            let o = DynamoOptions::new("locks").region("us-east-1").endpoint(endpoint);
            let e = match DynamoBackend::connect(o).await {
                Err(e) => e,
                Ok(b) => {
                    let first = lock_core::LockClient::new(b).lock("k").try_acquire().await.map(|_| ());
                    panic!("{endpoint}: accepted; the first request gave {first:?}");
                }
            };
            assert!(matches!(e, Error::InvalidConfig(_)) && !e.is_retryable(), "{endpoint}: {e:?}");
            assert!(e.to_string().contains("endpoint"), "{endpoint}: {e}");
            assert!(!format!("{e} {e:?}").contains("hunter2"), "{endpoint}: {e:?}");
        }
    }
}
