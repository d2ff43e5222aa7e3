//! Options of a [`DynamoBackend`](crate::DynamoBackend).

use std::time::Duration;

/// How a contender decides that a holder who stopped heartbeating is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Takeover {
    /// The default, and the rule of amazon-dynamodb-lock-client: no clock is trusted. Every
    /// write to a lock item (acquire, heartbeat, release) gives it a new random record version
    /// number (RVN). A contender that finds the lock held remembers the RVN and the holder's
    /// lease duration, and takes over only once it has seen that same RVN for a whole lease
    /// duration on its **own monotonic clock**. A live holder heartbeats (extends) well
    /// within its lease, which changes the RVN and restarts every contender's count.
    ///
    /// The price: a contender that arrives after the holder died still waits one lease
    /// duration from its first look, so a crashed holder blocks a new contender for up to
    /// twice its TTL after it last heartbeated.
    RecordVersion,
    /// Opt-in, faster: the item also records when the holder's lease ends by the holder's wall
    /// clock, and a contender may take over once its own wall clock is past that time plus
    /// `max_skew`. Sound only if no two clients' wall clocks ever differ by more than
    /// `max_skew` (NTP-synced hosts in one region are typically within tens of ms; a VM that
    /// was paused, or a clock stepped by hand, breaks it). The RVN rule keeps working too,
    /// whichever comes first.
    Clock {
        /// The largest difference between two clients' wall clocks that is tolerated.
        max_skew: Duration,
    },
}

/// The sort key of the lock table, when one table holds many lock namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// The sort key attribute's name (a string attribute).
    pub name: String,
    /// The value this backend writes in it; backends with different values share nothing.
    pub value: String,
}

/// Where and how a [`DynamoBackend`](crate::DynamoBackend) keeps its locks.
///
/// Credentials never appear here: they come from aws-config's default chain (environment,
/// profile files, SSO, web identity, container and instance metadata), or from the client
/// you pass to [`DynamoBackend::with_client`](crate::DynamoBackend::with_client).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DynamoOptions {
    /// The table's name.
    pub table: String,
    /// The partition key attribute's name (a string attribute; default `lock_key`). It holds
    /// the lock's full key (namespace included).
    pub partition_key: String,
    /// An optional sort key, so that one table holds many lock namespaces.
    pub sort_key: Option<SortKey>,
    /// The region; `None` takes it from aws-config's chain (`AWS_REGION`, profile, ...).
    pub region: Option<String>,
    /// An endpoint override, for DynamoDB Local and emulators (`http://127.0.0.1:8000`).
    pub endpoint: Option<String>,
    /// How contenders take over from a holder that stopped heartbeating.
    pub takeover: Takeover,
    /// The longest sleep between two attempts of a waiting acquire (default 100 ms). Each
    /// attempt is one conditional write, billed as one write request unit (also when it
    /// fails); waiters never sleep past the moment they may take over.
    pub poll_interval: Duration,
    /// The time limit of one request attempt (default 5 s). The SDK retries throttling, 5xx
    /// and connection errors up to three attempts in all before an error is returned.
    pub request_timeout: Duration,
}

impl DynamoOptions {
    /// Options for locks in `table`, with the defaults above.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            partition_key: "lock_key".into(),
            sort_key: None,
            region: None,
            endpoint: None,
            takeover: Takeover::RecordVersion,
            poll_interval: Duration::from_millis(100),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Sets the partition key attribute's name.
    pub fn partition_key(mut self, name: impl Into<String>) -> Self {
        self.partition_key = name.into();
        self
    }

    /// Keeps this backend's locks under `value` in the sort key attribute `name`.
    pub fn sort_key(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.sort_key = Some(SortKey { name: name.into(), value: value.into() });
        self
    }

    /// Sets the region.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sets an endpoint override (DynamoDB Local, an emulator, a VPC endpoint).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Sets the takeover rule.
    pub fn takeover(mut self, takeover: Takeover) -> Self {
        self.takeover = takeover;
        self
    }

    /// Sets the longest sleep between two attempts of a waiting acquire.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the time limit of one request attempt.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

impl std::fmt::Debug for DynamoOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoOptions")
            .field("table", &self.table)
            .field("partition_key", &self.partition_key)
            .field("sort_key", &self.sort_key)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint.as_deref().map(lock_core::redact_url))
            .field("takeover", &self.takeover)
            .field("poll_interval", &self.poll_interval)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}
