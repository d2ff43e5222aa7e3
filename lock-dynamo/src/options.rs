//! Options of a [`DynamoBackend`](crate::DynamoBackend): the builder, its validation, and the
//! `dynamodb://` URL form.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lock_core::url::{BackendOptions, ConnectUrl};
use lock_core::{Error, LockBackend, Result};

use crate::DynamoBackend;

/// The schemes [`DynamoOptions`] parses.
pub const SCHEMES: &[&str] = &["dynamodb"];

/// The URL options [`DynamoOptions`] reads (besides lock-core's client options).
const URL_OPTIONS: &[&str] = &[
    "region",
    "endpoint",
    "partition_key",
    "sort_key",
    "takeover",
    "max_skew",
    "poll",
    "timeout",
    "create_table",
];

/// The skew bound of `takeover=clock` when the URL gives no `max_skew`.
const DEFAULT_MAX_SKEW: Duration = Duration::from_millis(100);

/// The longest request timeout accepted: a day (the SDK cannot compute with much longer
/// ones, and no request needs one).
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(86_400);

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
    /// duration from its first look. A crashed holder so blocks a contender that arrives during
    /// its last lease for up to twice its TTL after it last heartbeated, and one that arrives
    /// later for one TTL from its arrival.
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
pub(crate) struct SortKey {
    /// The sort key attribute's name (a string attribute).
    pub(crate) name: String,
    /// The value this backend writes in it; backends with different values share nothing.
    pub(crate) value: String,
}

/// Where and how a [`DynamoBackend`](crate::DynamoBackend) keeps its locks.
///
/// Credentials never appear here: they come from aws-config's default chain (environment,
/// profile files, SSO, web identity, container and instance metadata), or from the client
/// you pass to [`DynamoBackend::with_client`](crate::DynamoBackend::with_client).
///
/// Built with [`DynamoOptions::new`] and the builder methods, or parsed from a URL:
///
/// ```
/// use std::time::Duration;
/// use lock_dynamo::{DynamoOptions, Takeover};
///
/// let built = DynamoOptions::new("locks")
///     .region("eu-west-1")
///     .takeover(Takeover::Clock { max_skew: Duration::from_millis(50) })
///     .create_table(true);
/// let parsed: DynamoOptions =
///     "dynamodb://locks?region=eu-west-1&takeover=clock&max_skew=50ms&create_table=true".parse()?;
/// assert_eq!(built, parsed);
/// # Ok::<(), lock_core::Error>(())
/// ```
///
/// # URL form
/// `dynamodb://TABLE[?option=value&…]`, with no credentials and no path. Options: `region=`,
/// `endpoint=` (DynamoDB Local, an emulator), `partition_key=lock_key`, `sort_key=NAME:VALUE`,
/// `takeover=rvn|clock`, `max_skew=100ms` (only with `takeover=clock`), `poll=100ms`,
/// `timeout=5s`, `create_table=true|false`.
#[derive(Clone, PartialEq, Eq)]
pub struct DynamoOptions {
    pub(crate) table: String,
    pub(crate) partition_key: String,
    pub(crate) sort_key: Option<SortKey>,
    pub(crate) region: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) takeover: Takeover,
    pub(crate) poll_interval: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) create_table: bool,
}

impl DynamoOptions {
    /// Options for locks in `table`, with the defaults: partition key `lock_key`, no sort key,
    /// region and endpoint from aws-config's chain, [`Takeover::RecordVersion`], polling at
    /// most 100 ms apart, a 5 s request timeout, no table creation.
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
            create_table: false,
        }
    }

    /// Sets the partition key attribute's name (a string attribute; default `lock_key`). It
    /// holds the lock's full key (namespace included).
    pub fn partition_key(mut self, name: impl Into<String>) -> Self {
        self.partition_key = name.into();
        self
    }

    /// Keeps this backend's locks under `value` in the sort key attribute `name` (a string
    /// attribute), so that one table holds many lock namespaces; backends with different
    /// values share nothing.
    pub fn sort_key(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.sort_key = Some(SortKey { name: name.into(), value: value.into() });
        self
    }

    /// Sets the region (default: aws-config's chain, `AWS_REGION`, the profile, ...).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sets an endpoint override (DynamoDB Local, an emulator, a VPC endpoint): an `http://`
    /// or `https://` URL such as `http://127.0.0.1:8000`.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Sets how contenders take over from a holder that stopped heartbeating (default
    /// [`Takeover::RecordVersion`]).
    pub fn takeover(mut self, takeover: Takeover) -> Self {
        self.takeover = takeover;
        self
    }

    /// Sets the longest sleep between two attempts of a waiting acquire (default 100 ms).
    /// Each attempt is one conditional write, billed as one write request unit (also when it
    /// fails); waiters never sleep past the moment they may take over.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the time limit of one request (default 5 s; at most a day). An acquire attempt
    /// never runs longer, whatever the client's retries would allow: `try_acquire` returns
    /// within it, a waiting acquire within its deadline plus it (see the
    /// [crate documentation](crate#the-item)). With the client
    /// [`DynamoBackend::connect`](crate::DynamoBackend::connect) makes, it is also the limit of
    /// each SDK attempt, and the SDK retries throttling, 5xx, connection errors and timeouts
    /// up to three attempts in all (within an acquire attempt's limit, for acquires).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Whether [`DynamoBackend::connect`](crate::DynamoBackend::connect) creates the table
    /// (on-demand billing) if it does not exist, and waits until it is active (default
    /// false). See [`DynamoBackend::create_table`](crate::DynamoBackend::create_table).
    pub fn create_table(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }

    /// Checks the options without connecting: a table name of 3 to 255 letters, digits,
    /// `_`, `-` and `.`, non-empty key names and sort key value, key names that are not the
    /// items' own attributes (`owner`, `fence`, `p:…`, …) nor each other's, positive durations,
    /// a request timeout of at most a day, and an endpoint that is an `http://` or `https://`
    /// URL with a host and a valid port.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the option that is wrong.
    pub fn validate(&self) -> Result<()> {
        self.problem().map_or(Ok(()), |what| Err(Error::InvalidConfig(format!("DynamoDB options: {what}"))))
    }

    /// What is wrong with the options, if anything.
    fn problem(&self) -> Option<String> {
        let t = &self.table;
        let problem = if t.len() < 3 || t.len() > 255 {
            "the table name must be 3 to 255 characters"
        } else if !t.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
            "the table name may hold only letters, digits, '_', '-' and '.'"
        } else if self.partition_key.is_empty() {
            "the partition key name is empty"
        } else if self.sort_key.as_ref().is_some_and(|s| s.name.is_empty() || s.value.is_empty()) {
            "the sort key name and value must not be empty"
        } else if let Some(k) = std::iter::once(&self.partition_key)
            .chain(self.sort_key.as_ref().map(|s| &s.name))
            .find(|k| crate::item::reserved_attr(k))
        {
            return Some(format!(
                "the key name '{k}' is an attribute the lock items use themselves ({}, or one \
                 starting {}): name the table's keys otherwise",
                crate::item::ITEM_ATTRS.join(", "),
                crate::item::ENTRY_PREFIXES.join(", ")
            ));
        } else if self.sort_key.as_ref().is_some_and(|s| s.name == self.partition_key) {
            "the sort key must not have the partition key's name"
        } else if self.poll_interval.is_zero() || self.request_timeout.is_zero() {
            "poll_interval and request_timeout must be positive"
        } else if self.request_timeout > MAX_REQUEST_TIMEOUT {
            "request_timeout must be at most a day"
        } else {
            return self.endpoint.as_deref().and_then(endpoint_problem);
        };
        Some(problem.to_owned())
    }
}

/// What is wrong with an endpoint override, if anything: it must be an `http://` or
/// `https://` URL with a host and, if it names one, a port from 1 to 65535. (The SDK would
/// take anything and fail at the first request as if DynamoDB could not be reached.)
fn endpoint_problem(endpoint: &str) -> Option<String> {
    let shown = lock_core::redact_url(endpoint);
    let bad = |what: String| Some(format!("endpoint '{shown}': {what}"));
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return bad("not an http:// or https:// URL (like http://127.0.0.1:8000)".into());
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return bad(format!("the scheme '{scheme}' is not http or https"));
    }
    // Requests are signed with the SDK's credentials; a user or password in the endpoint
    // does nothing but show in the SDK's debug logs (and a password holding `/` or `?` would
    // be cut into a host or a port below, and shown).
    if rest.contains('@') {
        return Some("endpoint: a user or password in the endpoint URL is not taken (requests are signed with AWS credentials); remove it".into());
    }
    let hostport = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, "")) => (addr, None),
            Some((addr, after)) if after.starts_with(':') => (addr, Some(&after[1..])),
            _ => return bad(format!("host '{hostport}' is not a bracketed IPv6 address")),
        },
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    if host.is_empty() {
        return bad("no host".into());
    }
    if !host.chars().all(|c| c.is_ascii_alphanumeric() || "-._:%".contains(c)) {
        return bad(format!("'{host}' is not a host name or address"));
    }
    match port.map(str::parse::<u16>) {
        None | Some(Ok(1..)) => None,
        Some(_) => bad(format!("port '{}' is not a number from 1 to 65535", port.unwrap_or_default())),
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
            .field("create_table", &self.create_table)
            .finish()
    }
}

impl FromStr for DynamoOptions {
    type Err = Error;

    /// Parses a `dynamodb://` URL (see [`DynamoOptions`]).
    fn from_str(url: &str) -> Result<Self> {
        lock_core::url::parse(url)
    }
}

/// The table named by the URL's one host.
fn table_of(u: &ConnectUrl) -> Result<&str> {
    match u.hosts.as_slice() {
        [t] if !t.is_empty() => Ok(t),
        [] => Err(u.error("dynamodb:// needs the table name as its host (dynamodb://locks?region=...)")),
        _ => Err(u.error("dynamodb:// takes one table name")),
    }
}

/// The takeover rule of `takeover=` and `max_skew=`.
fn takeover_of(u: &ConnectUrl) -> Result<Takeover> {
    let skew = u.duration("max_skew")?;
    match u.option("takeover") {
        None | Some("rvn") if skew.is_some() => Err(u.error("option max_skew: only with takeover=clock")),
        None | Some("rvn") => Ok(Takeover::RecordVersion),
        Some("clock") => Ok(Takeover::Clock { max_skew: skew.unwrap_or(DEFAULT_MAX_SKEW) }),
        Some(other) => Err(u.error(format!("option takeover: '{other}' is not rvn or clock"))),
    }
}

#[lock_core::async_trait]
impl BackendOptions for DynamoOptions {
    fn from_url(url: &ConnectUrl) -> Result<Self> {
        // Errors show the URL with the endpoint's password (if any) redacted too.
        let mut shown = url.clone();
        shown
            .options
            .iter_mut()
            .filter(|(k, _)| k == "endpoint")
            .for_each(|(_, v)| *v = lock_core::redact_url(v));
        let u = &shown;
        u.expect_scheme(SCHEMES)?;
        u.check_options(URL_OPTIONS)?;
        let table = table_of(u)?;
        u.no_credentials("; they come from AWS's default chain (environment, profile, role)")?;
        u.no_path("")?;
        let mut o = DynamoOptions::new(table).takeover(takeover_of(u)?);
        if let Some(r) = u.option("region") {
            o = o.region(r);
        }
        if let Some(e) = url.option("endpoint") {
            o = o.endpoint(e);
        }
        if let Some(pk) = u.option("partition_key") {
            o = o.partition_key(pk);
        }
        if let Some(sk) = u.option("sort_key") {
            let (name, value) = sk
                .split_once(':')
                .ok_or_else(|| u.error(format!("option sort_key: '{sk}' is not NAME:VALUE")))?;
            o = o.sort_key(name, value);
        }
        if let Some(p) = u.duration("poll")? {
            o = o.poll_interval(p);
        }
        if let Some(t) = u.duration("timeout")? {
            o = o.request_timeout(t);
        }
        if let Some(create) = u.flag("create_table")? {
            o = o.create_table(create);
        }
        match o.problem() {
            Some(what) => Err(u.error(what)),
            None => Ok(o),
        }
    }

    fn validate(&self) -> Result<()> {
        DynamoOptions::validate(self)
    }

    async fn connect_dyn(self) -> Result<Arc<dyn LockBackend>> {
        Ok(Arc::new(DynamoBackend::connect(self).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        let e = url.parse::<DynamoOptions>().expect_err(url);
        assert!(matches!(e, Error::InvalidConfig(_)) && !e.is_retryable(), "{url}: {e:?}");
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{url}: the password shows: {e:?}");
        e.to_string()
    }

    #[test]
    fn every_url_form_parses() {
        assert_eq!("dynamodb://locks".parse::<DynamoOptions>().expect("table"), DynamoOptions::new("locks"));
        assert_eq!(
            "dynamodb://locks/".parse::<DynamoOptions>().expect("root path"),
            DynamoOptions::new("locks")
        );
        let o: DynamoOptions = "dynamodb://my.locks?region=eu-west-1&endpoint=http://127.0.0.1:8000\
            &partition_key=k&sort_key=ns:team-a:x&takeover=clock&poll=50ms&timeout=2s&create_table=true\
            &namespace=app&ttl=5s"
            .parse()
            .expect("every option");
        let want = DynamoOptions::new("my.locks")
            .region("eu-west-1")
            .endpoint("http://127.0.0.1:8000")
            .partition_key("k")
            .sort_key("ns", "team-a:x")
            .takeover(Takeover::Clock { max_skew: DEFAULT_MAX_SKEW })
            .poll_interval(Duration::from_millis(50))
            .request_timeout(Duration::from_secs(2))
            .create_table(true);
        assert_eq!(o, want);
        let o: DynamoOptions = "dynamodb://locks?takeover=rvn&create_table=false".parse().expect("rvn");
        assert_eq!(o, DynamoOptions::new("locks"));
        let o: DynamoOptions = "dynamodb://locks?takeover=clock&max_skew=1s".parse().expect("clock");
        assert_eq!(o.takeover, Takeover::Clock { max_skew: Duration::from_secs(1) });
    }

    #[test]
    fn url_errors_point_at_the_part() {
        for (url, expect) in [
            ("dynamodb://?region=eu-west-1", "needs the table name as its host"),
            ("dynamodb://a1,b2", "takes one table name"),
            (
                "dynamodb://u:hunter2@locks?region=eu-west-1",
                "dynamodb:// takes no credentials in the URL; they come from AWS's default chain",
            ),
            ("dynamodb://locks/x", "dynamodb:// takes no path (got '/x')"),
            ("dynamodb://locks?takeover=sometimes", "option takeover: 'sometimes' is not rvn or clock"),
            ("dynamodb://locks?max_skew=1s", "option max_skew: only with takeover=clock"),
            ("dynamodb://locks?takeover=rvn&max_skew=1s", "only with takeover=clock"),
            ("dynamodb://locks?sort_key=ns", "option sort_key: 'ns' is not NAME:VALUE"),
            ("dynamodb://locks?sort_key=ns:", "sort key name and value must not be empty"),
            ("dynamodb://x?region=eu-west-1", "table name must be 3 to 255"),
            ("dynamodb://locks?poll=0s", "must be positive"),
            ("dynamodb://locks?timeout=later", "option timeout"),
            ("dynamodb://locks?create_table=maybe", "not true or false"),
            ("dynamodb://locks?bogus=1", "unknown option 'bogus'"),
            (
                "dynamodb://locks?endpoint=http://127.0.0.1:99999",
                "endpoint 'http://127.0.0.1:99999': port '99999'",
            ),
            ("dynamodb://locks?endpoint=localhost:8000", "endpoint 'localhost:8000'"),
            ("dynamodb://locks?endpoint=ftp://h:21", "http or https"),
            ("dynamodb://locks?endpoint=http://u:hunter2%40:8000", "a user or password in the endpoint"),
            // A password holding `/`: it was cut into a host and a port, and shown.
            ("dynamodb://locks?endpoint=http://u:hunter2/x%40h:8000", "a user or password in the endpoint"),
            ("dynamodb://locks?endpoint=http://u:hunter2%40h:8000&takeover=no", "option takeover"),
            ("redis://locks", "scheme 'redis' is not one of dynamodb://"),
        ] {
            let e = err(url);
            assert!(e.contains(expect), "{url}: {e}");
        }
    }

    #[test]
    fn options_are_validated_with_a_message() {
        let e = DynamoOptions::new("x").validate().expect_err("short table name");
        assert!(e.to_string().contains("table name"), "{e}");
        let e = DynamoOptions::new("locks").sort_key("ns", "").validate().expect_err("empty sort key value");
        assert!(e.to_string().contains("sort key"), "{e}");
        // Key names the items use themselves: every acquire (or every semaphore call) failed.
        for (pk, sk) in
            [("owner", None), ("fence", None), ("lock_key", Some("p:x")), ("lock_key", Some("lock_key"))]
        {
            let mut o = DynamoOptions::new("locks").partition_key(pk);
            if let Some(sk) = sk {
                o = o.sort_key(sk, "team-a");
            }
            let e = o.validate().expect_err("a key name the items use");
            assert!(e.to_string().contains("key"), "{pk} {sk:?}: {e}");
        }
        DynamoOptions::new("locks").partition_key("pk").sort_key("ns", "a").validate().expect("valid keys");
        let e = DynamoOptions::new("lo cks").validate().expect_err("a space");
        assert!(e.to_string().contains("only letters"), "{e}");
        let e = DynamoOptions::new("locks").request_timeout(Duration::MAX).validate().expect_err("forever");
        assert!(e.to_string().contains("request_timeout must be at most a day"), "{e}");
        DynamoOptions::new("locks").validate().expect("valid");
        for ok in [
            "http://127.0.0.1:8000",
            "https://dynamodb.eu-west-1.amazonaws.com",
            "HTTP://localhost:8000/",
            "http://[::1]:8000",
        ] {
            DynamoOptions::new("locks").endpoint(ok).validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        // The SDK takes no credentials from the endpoint, and logs it at debug level.
        let e = DynamoOptions::new("locks").endpoint("http://user:pw@10.0.0.1:8000/prefix").validate();
        assert!(e.is_err_and(|e| !e.to_string().contains("pw@")));
    }

    #[test]
    fn debug_redacts_endpoint_credentials() {
        let o = DynamoOptions::new("locks").endpoint("http://user:hunter2@127.0.0.1:8000");
        let d = format!("{o:?}");
        assert!(!d.contains("hunter2"), "{d}");
    }
}
