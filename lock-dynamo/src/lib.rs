//! # lock-dynamo: distlock on DynamoDB
//!
//! One item per lock in a table you name, changed only by conditional writes; takeover from
//! a holder that stopped heartbeating without trusting anyone's clock, as
//! amazon-dynamodb-lock-client does.
//!
//! ```no_run
//! # async fn demo() -> lock_core::Result<()> {
//! use lock_dynamo::{DynamoBackend, DynamoOptions};
//! let backend = DynamoBackend::connect(DynamoOptions::new("locks").region("eu-west-1")).await?;
//! backend.create_table().await?; // once; on-demand billing
//! let locks = lock_core::LockClient::new(backend);
//! let guard = locks.lock("reports/daily").auto_renew().acquire().await?;
//! // ... write with guard.fencing_token() ...
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! ## The item
//! | attribute | meaning |
//! |---|---|
//! | partition key (default `lock_key`) | the lock's full key |
//! | sort key (optional) | [`DynamoOptions::sort_key`]'s value: many namespaces, one table |
//! | `owner` | the holder's owner token; absent when free |
//! | `rvn` | record version number, new on every write |
//! | `fence` | the fencing counter |
//! | `lease_ms` | the holder's lease duration |
//! | `expires_at_ms` | the lease's end by the holder's wall clock (read by [`Takeover::Clock`] only) |
//!
//! - **Acquire** is one `UpdateItem`: set owner, a new RVN, the lease and `fence + 1`, on the
//!   condition that the item has no owner (never used, or released), or still carries the
//!   RVN this client has seen unchanged for a whole lease (the holder is gone). A failed
//!   condition returns the item (`ReturnValuesOnConditionCheckFailure`), so a held lock costs
//!   no extra read. It is "held", never an error.
//! - **Extend** (the heartbeat) sets a new RVN and lease on the condition that owner and RVN
//!   are still ours. **Release** removes the owner and sets a new RVN on the condition that the
//!   owner is ours. Both report "not held" when the condition fails.
//! - **Fencing tokens**: every grant increments `fence` in the same conditional write that
//!   grants, and release keeps the item, so the counter only grows.
//! - **Do not let DynamoDB's TTL delete lock items.** This crate writes no TTL attribute; if
//!   the table has TTL enabled on another attribute, keep it off these items. A deleted item
//!   restarts its counter at 1, and fencing tokens would go backwards.
//! - **Waiting** polls with lock-core's jittered backoff, at most
//!   [`DynamoOptions::poll_interval`] apart, and never past the moment a takeover becomes
//!   possible. DynamoDB cannot notify; the capabilities say `WakeMode::Poll`.
//! - **Lost replies**: the SDK retries throttling, 5xx and broken connections. An acquire or
//!   heartbeat that was applied although its reply was lost then meets a failed condition
//!   whose item carries our own owner token; it is recognised as ours.
//!
//! ## Takeover
//! See [`Takeover`]. By default a contender counts a lease on its own monotonic clock from
//! the moment it first sees an RVN, so clocks never matter; a holder whose own lease ran out
//! (by its clock, `valid_until`) never extends again: its late heartbeat releases instead,
//! since a contender may already count it gone.

mod error;
mod item;
mod options;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use lock_core::{
    async_trait, AcquireRequest, Attempt, BackendErrorKind, Capabilities, Error, ExtendOutcome, FencingToken,
    Instant, Lease, LockBackend, LockInfo, LockKey, OwnerToken, ReleaseOutcome, Result, UndoOnDrop, WakeMode,
};

use crate::error::{protocol, NAME};
use crate::item::{new_rvn, wall_ms, Observations, Record, EXPIRES_MS, FENCE, LEASE_MS, OWNER, RVN};
pub use crate::options::{DynamoOptions, SortKey, Takeover};

/// Locks in a DynamoDB table. Cheap to clone; clones share the client and what this client
/// has seen of held locks.
///
/// # Behavior
/// See the [crate documentation](crate): one item per lock, one conditional write per
/// uncontended acquire, takeover after an RVN stayed unchanged for a whole lease on this
/// client's monotonic clock (or, opt-in, by wall-clock expiry with a skew bound).
#[derive(Clone)]
pub struct DynamoBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    opts: DynamoOptions,
    seen: Observations,
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

/// What a conditional write found.
enum Written {
    /// Applied.
    Applied(HashMap<String, AttributeValue>),
    /// The condition failed; the item as it was (`None` if the server did not return it).
    Refused(Option<HashMap<String, AttributeValue>>),
}

impl DynamoBackend {
    /// Connects with aws-config's default credential and region chain, and `opts`' region and
    /// endpoint overrides. The SDK retries throttling, 5xx and connection errors (three
    /// attempts, backoff from 20 ms); each attempt is limited to `opts.request_timeout`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when no region is configured anywhere or the options are
    /// unusable. Nothing is sent: a missing table shows up at the first lock operation, or
    /// use [`create_table`](Self::create_table).
    pub async fn connect(opts: DynamoOptions) -> Result<Self> {
        validate(&opts)?;
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
        Ok(Self::with_client(Client::new(&conf), opts))
    }

    /// Uses a client you configured yourself (credentials, retries, interceptors). Only
    /// `opts`' table, keys, takeover and polling apply; region and endpoint are the client's.
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
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self
                .inner
                .client
                .describe_table()
                .table_name(&o.table)
                .send()
                .await
                .map_err(|e| error::sdk("DescribeTable", &o.table, e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::backend_msg(
                    NAME,
                    BackendErrorKind::RequestTimedOut,
                    format!("table {} did not become active in 120 s", o.table),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The item's key attributes.
    fn item_key(&self, key: &LockKey) -> HashMap<String, AttributeValue> {
        let o = &self.inner.opts;
        let mut k = HashMap::with_capacity(2);
        k.insert(o.partition_key.clone(), AttributeValue::S(key.full().to_owned()));
        if let Some(sk) = &o.sort_key {
            k.insert(sk.name.clone(), AttributeValue::S(sk.value.clone()));
        }
        k
    }

    /// One conditional `UpdateItem` on `key`'s item.
    async fn write(
        &self,
        op: &str,
        key: &LockKey,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
        returns: ReturnValue,
    ) -> Result<Written> {
        let mut req = self
            .inner
            .client
            .update_item()
            .table_name(&self.inner.opts.table)
            .set_key(Some(self.item_key(key)))
            .update_expression(update)
            .condition_expression(condition)
            .return_values(returns)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (alias, name) in [("#o", OWNER), ("#v", RVN), ("#f", FENCE), ("#l", LEASE_MS), ("#e", EXPIRES_MS)]
        {
            if update.contains(alias) || condition.contains(alias) {
                req = req.expression_attribute_names(alias, name);
            }
        }
        for (name, value) in values {
            req = req.expression_attribute_values(name, value);
        }
        match req.send().await {
            Ok(out) => Ok(Written::Applied(out.attributes.unwrap_or_default())),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    Ok(Written::Refused(c.item.clone()))
                }
                _ => Err(error::sdk(op, &self.inner.opts.table, e)),
            },
        }
    }

    /// The item as it is now (a strongly consistent read), if it exists.
    async fn read(&self, key: &LockKey) -> Result<Option<Record>> {
        let out = self
            .inner
            .client
            .get_item()
            .table_name(&self.inner.opts.table)
            .set_key(Some(self.item_key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::sdk("GetItem", &self.inner.opts.table, e))?;
        out.item().map(Record::parse).transpose()
    }

    /// Notes that `key` is held as `rec`; how long until this client may take it over.
    fn saw_held(&self, key: &LockKey, rec: &Record) -> Duration {
        let by_rvn = self.inner.seen.saw_held(key.full(), rec);
        match (self.inner.opts.takeover, rec.expires_at_ms) {
            (Takeover::Clock { max_skew }, Some(exp)) => {
                let cutoff = exp.saturating_add(max_skew.as_millis() as u64);
                by_rvn.min(Duration::from_millis(cutoff.saturating_sub(wall_ms())))
            }
            _ => by_rvn,
        }
    }

    /// The lease for a grant of `req` with fencing token `fence` and RVN `rvn`.
    fn lease(&self, req: &AcquireRequest, fence: u64, rvn: String, sent: Instant) -> Lease {
        self.inner.seen.forget(req.key.full());
        Lease::new(req.key.clone(), req.owner, FencingToken::new(fence), req.ttl, sent)
            .with_backend_data(Held::new(rvn))
    }

    /// A grant of `req` found on the item although no reply said so: an earlier try of the
    /// same request was applied and its reply lost. That try may have been sent long ago
    /// (contenders count the lease from when they first saw its RVN), so the grant is
    /// confirmed with a heartbeat first, and the lease is measured from that heartbeat.
    async fn recover(&self, req: &AcquireRequest, item: Record) -> Result<Attempt> {
        let sent = Instant::now();
        let rvn = new_rvn();
        let written = self
            .write(
                "acquire (confirm)",
                &req.key,
                "SET #v = :v, #l = :l, #e = :e",
                "#o = :o AND #v = :known",
                vec![
                    (":o", AttributeValue::S(req.owner.to_string())),
                    (":known", AttributeValue::S(item.rvn)),
                    (":v", AttributeValue::S(rvn.clone())),
                    (":l", n(ms(req.ttl))),
                    (":e", n(wall_ms().saturating_add(ms(req.ttl)))),
                ],
                ReturnValue::None,
            )
            .await?;
        Ok(match written {
            Written::Applied(_) => Attempt::Acquired(self.lease(req, item.fence, rvn, sent)),
            // Taken over (or changed) meanwhile: look again.
            Written::Refused(_) => Attempt::Held { expires_in: Some(Duration::ZERO) },
        })
    }

    /// Removes `owner`'s grant of `key`: `true` if it held it.
    async fn release_owner(&self, key: &LockKey, owner: OwnerToken) -> Result<bool> {
        let written = self
            .write(
                "release",
                key,
                "REMOVE #o, #l, #e SET #v = :v",
                "#o = :o",
                vec![(":o", AttributeValue::S(owner.to_string())), (":v", AttributeValue::S(new_rvn()))],
                ReturnValue::None,
            )
            .await?;
        Ok(matches!(written, Written::Applied(_)))
    }

    /// The undo of an acquire whose caller went away mid-flight. The request may still reach
    /// DynamoDB after this starts (it travels on its own connection), so the release is
    /// tried again, a few times, until it finds the grant or a request timeout has passed.
    async fn undo_acquire(self, key: LockKey, owner: OwnerToken) {
        let pauses = std::iter::once(Duration::ZERO)
            .chain(lock_core::cancel::LATE_GRANT_RECHECKS)
            .chain([self.inner.opts.request_timeout]);
        let released = lock_core::cancel::undo_after(pauses, || async {
            matches!(self.release_owner(&key, owner).await, Ok(true))
        })
        .await;
        if released {
            tracing::debug!(backend = NAME, key = %key, "released the grant of a cancelled acquire");
        }
    }
}

fn validate(opts: &DynamoOptions) -> Result<()> {
    let bad = |what: &str| Err(Error::InvalidConfig(format!("DynamoDB options: {what}")));
    if opts.table.len() < 3 || opts.table.len() > 255 {
        return bad("the table name must be 3 to 255 characters");
    }
    if !opts.table.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
        return bad("the table name may hold only letters, digits, '_', '-' and '.'");
    }
    if opts.partition_key.is_empty() {
        return bad("the partition key name is empty");
    }
    if opts.sort_key.as_ref().is_some_and(|s| s.name.is_empty() || s.value.is_empty()) {
        return bad("the sort key name and value must not be empty");
    }
    if opts.poll_interval.is_zero() || opts.request_timeout.is_zero() {
        return bad("poll_interval and request_timeout must be positive");
    }
    Ok(())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

#[async_trait]
impl LockBackend for DynamoBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.wake = WakeMode::Poll { max_interval: self.inner.opts.poll_interval };
        c.ttl_granularity = Duration::from_millis(1);
        c.min_ttl = Duration::from_millis(100);
        // A contender that was already waiting takes over one lease after the holder's last
        // write, plus at most one poll. One that arrives later counts a whole lease from its
        // own first look, so a crashed holder blocks it for up to twice the TTL: that cannot
        // be a constant margin, and the crate documentation says so (Takeover::RecordVersion).
        c.expiry_margin = self.inner.opts.poll_interval + Duration::from_millis(50);
        c
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let sent = Instant::now();
        let rvn = new_rvn();
        let mut condition = String::from("attribute_not_exists(#o)");
        let mut values = vec![
            (":o", AttributeValue::S(req.owner.to_string())),
            (":v", AttributeValue::S(rvn.clone())),
            (":l", n(ms(req.ttl))),
            (":e", n(wall_ms().saturating_add(ms(req.ttl)))),
            (":zero", n(0)),
            (":one", n(1)),
        ];
        if let Some(stale) = self.inner.seen.stale_rvn(req.key.full()) {
            condition.push_str(" OR #v = :stale");
            values.push((":stale", AttributeValue::S(stale)));
        }
        if let Takeover::Clock { max_skew } = self.inner.opts.takeover {
            condition.push_str(" OR #e < :cutoff");
            values.push((":cutoff", n(wall_ms().saturating_sub(ms(max_skew)))));
        }
        // Dropped mid-flight, the write may still be applied: release it in the background.
        let undo = UndoOnDrop::new(self.clone().undo_acquire(req.key.clone(), req.owner));
        let written = self
            .write(
                "acquire",
                &req.key,
                "SET #o = :o, #v = :v, #l = :l, #e = :e, #f = if_not_exists(#f, :zero) + :one",
                &condition,
                values,
                ReturnValue::UpdatedNew,
            )
            .await;
        undo.disarm();
        let item = match written? {
            Written::Applied(attrs) => {
                let fence =
                    item::number(&attrs, FENCE)?.ok_or_else(|| protocol("acquire returned no fence"))?;
                return Ok(Attempt::Acquired(self.lease(req, fence, rvn, sent)));
            }
            Written::Refused(Some(item)) => Record::parse(&item)?,
            // An emulator that does not return the item: read it.
            Written::Refused(None) => match self.read(&req.key).await? {
                Some(rec) => rec,
                None => return Ok(Attempt::Held { expires_in: Some(Duration::ZERO) }),
            },
        };
        match item.owner {
            // An earlier try of this same request was applied but its reply was lost (the
            // SDK or the waiting loop retried): the grant is ours.
            Some(owner) if owner == req.owner => self.recover(req, item).await,
            Some(_) => Ok(Attempt::Held { expires_in: Some(self.saw_held(&req.key, &item)) }),
            // Freed between the condition and now: try again at once.
            None => Ok(Attempt::Held { expires_in: Some(Duration::ZERO) }),
        }
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        // A try whose write was applied but whose reply was lost is recognised by the next
        // try. If there is none (this call is dropped, or ends with an error), the grant is
        // released in the background. A timeout needs nothing: its last try was refused
        // cleanly, by an item that was not ours.
        let undo = UndoOnDrop::new(self.clone().undo_acquire(req.key.clone(), req.owner));
        let got = lock_core::backend::poll_acquire(self, req, deadline).await;
        if matches!(got, Ok(_) | Err(Error::WaitTimedOut { .. })) {
            undo.disarm();
        }
        got
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
            let written = self
                .write(
                    "extend",
                    lease.key(),
                    "SET #v = :v, #l = :l, #e = :e",
                    condition,
                    values,
                    ReturnValue::None,
                )
                .await?;
            match written {
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
        let Some(rec) = self.read(key).await? else { return Ok(None) };
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

    #[test]
    fn options_are_validated_with_a_message() {
        let e = validate(&DynamoOptions::new("x")).expect_err("short table name");
        assert!(e.to_string().contains("table name"), "{e}");
        let e = validate(&DynamoOptions::new("locks").sort_key("ns", "")).expect_err("empty sort key value");
        assert!(e.to_string().contains("sort key"), "{e}");
        validate(&DynamoOptions::new("locks")).expect("valid");
    }

    #[test]
    fn debug_redacts_endpoint_credentials() {
        let o = DynamoOptions::new("locks").endpoint("http://user:hunter2@127.0.0.1:8000");
        let d = format!("{o:?}");
        assert!(!d.contains("hunter2"), "{d}");
    }
}
