//! [`DynamoBackend`]: the client, the table, and the [`LockBackend`] impl.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::Client;
use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, Error, ExtendOutcome, Instant, Lease, ListPage,
    LockBackend, LockInfo, LockKey, Metadata, Mode, ReleaseOutcome, Result, WakeMode,
};

use crate::error::NAME;
use crate::item::Kind;
use crate::place::Place;
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
    /// The endpoint answered that it has no `TransactWriteItems` (dynalite).
    pub(crate) no_transactions: AtomicBool,
}

impl std::fmt::Debug for DynamoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoBackend").field("opts", &self.inner.opts).finish_non_exhaustive()
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
        Self {
            inner: Arc::new(Inner {
                client,
                opts,
                seen: Observations::default(),
                no_transactions: AtomicBool::new(false),
            }),
        }
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The options.
    pub fn options(&self) -> &DynamoOptions {
        &self.inner.opts
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
            // A contender takes over once it has seen the holder's RVN unchanged for a whole
            // lease on its own clock. One that was already waiting does so one lease after the
            // holder's last write; one that arrives later counts a whole lease from its own
            // first look: a crashed holder blocks others for up to two leases, plus a poll.
            .with_expiry_ttls(2)
            .with_expiry_margin(poll.saturating_add(Duration::from_millis(50)))
            .with_max_permits(crate::MAX_PERMITS)
            .with_read_write(true)
            .with_writer_preference(true)
            .with_atomic_multi_key(true)
            .with_elections(true)
            .with_listing(true)
            .with_holder_metadata(true)
            .with_fencing_counters(true)
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.try_once(req).await
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        self.wait_until(req, deadline).await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        self.extend_grant(lease, ttl).await
    }

    /// Removes the grant if it is ours, and says `Released` only if it had not run out: by
    /// our own clock for a lease of this process (past `valid_until`, a contender may count it
    /// gone), by the grant's wall-clock expiry for a lease rebuilt from its parts. A grant
    /// that ran out is removed all the same (nobody then waits a lease for it).
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let place = Place::of(lease.key(), lease.mode(), lease.owner())?;
        let ran_out = if lease.backend_data::<crate::item::Held>().is_some() {
            let ran_out = Instant::now() >= lease.valid_until();
            let released = self.release_grant(&place, lease.owner()).await?;
            !released || ran_out
        } else {
            match self.release_grant_seen(&place, lease.owner(), true).await? {
                (false, _) => true,
                (true, Some(old)) => place.expires_at_ms(&old)?.is_some_and(|e| e <= crate::item::wall_ms()),
                (true, None) => false,
            }
        };
        Ok(if ran_out { ReleaseOutcome::NotHeld } else { ReleaseOutcome::Released })
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.inspect_item(&Kind::Lock.id(key), Mode::Exclusive).await
    }

    async fn holders(&self, key: &LockKey, mode: Mode) -> Result<Vec<LockInfo>> {
        match mode {
            Mode::Exclusive | Mode::Leader => {
                let id = Kind::of(mode).map(|k| k.id(key)).unwrap_or_default();
                Ok(self.inspect_item(&id, mode).await?.into_iter().collect())
            }
            Mode::Permit { limit } => self.permit_holders(key, limit).await,
            Mode::Read | Mode::Write => self.rw_holders(key).await,
            other => Err(crate::place::unsupported(other)),
        }
    }

    async fn try_acquire_all(&self, reqs: &[AcquireRequest]) -> Result<Option<Vec<Lease>>> {
        self.try_all(reqs).await
    }

    async fn list(&self, prefix: &str, cursor: Option<String>, limit: usize) -> Result<ListPage> {
        self.list_page(prefix, cursor, limit).await
    }

    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<ExtendOutcome> {
        self.update_grant_metadata(lease, &metadata.encode()).await
    }

    /// A scan for the `fence` attribute of every item under `prefix` (see `counters.rs`).
    async fn fencing_counters(
        &self,
        prefix: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<lock_core::CounterPage> {
        self.counters_page(prefix, cursor, limit).await
    }

    /// One `UpdateItem` that sets the counter if it is lower (or absent), never lowering it.
    async fn raise_fencing_counter(
        &self,
        key: &LockKey,
        mode: Mode,
        at_least: lock_core::FencingToken,
    ) -> Result<lock_core::FencingToken> {
        self.raise_counter(key, mode, at_least).await
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
