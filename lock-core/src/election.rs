//! Leader election: one leader at a time per election, whose term is its fencing token.
//!
//! An election is a primitive of its own on a name ([`Mode::Leader`]): the lock `svc/scheduler`
//! and the election `svc/scheduler` never block one another. Each backend lays it out its own
//! way (on etcd, as etcd's Go `concurrency.Election`; on ZooKeeper, as Curator's `LeaderLatch`),
//! and every layout keeps the promises of the lock for the leader's grant.

use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};

use crate::capabilities::WakeMode;
use crate::client::LockClient;
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::lease::FencingToken;
use crate::metadata::Metadata;
use crate::mode::Mode;
use crate::outcome::{ExtendOutcome, LockInfo};

/// The current leader of an election.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// What the leader advertises (its campaign or last proclaimed value).
    pub value: Option<String>,
    /// Its term: the fencing token of its leadership, higher for every later leader.
    pub term: Option<FencingToken>,
    /// Everything the backend knows of the leader's grant (metadata, remaining TTL).
    pub info: LockInfo,
}

impl Leader {
    fn from_info(info: LockInfo) -> Self {
        Self { value: info.metadata.as_ref().and_then(|m| m.value.clone()), term: info.fencing_token, info }
    }
}

/// Whether two observed states are the same leader saying the same thing (or both vacant): the
/// remaining TTL a poll reads changes on every read and is not a change of state.
fn same_state(a: &Option<Leader>, b: &Option<Leader>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.term == b.term
                && a.value == b.value
                && a.info.owner == b.info.owner
                && a.info.metadata == b.info.metadata
        }
        _ => false,
    }
}

/// An election on one name; made by [`LockClient::election`].
///
/// ```
/// # async fn demo(locks: lock_core::LockClient) -> lock_core::Result<()> {
/// let election = locks.election("svc/scheduler");
/// let leadership = election.campaign("scheduler-a:8080").await?; // waits until elected
/// let term = leadership.fencing_token(); // pass it with every write a leader makes
/// election.proclaim(&leadership, "scheduler-a:9090").await?;
/// leadership.release().await?; // resign
/// # let _ = term; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Election {
    client: LockClient,
    name: String,
    ttl: Option<Duration>,
    wait: Option<Duration>,
}

impl Election {
    pub(crate) fn new(client: LockClient, name: &str) -> Self {
        Self { client, name: name.to_owned(), ttl: None, wait: None }
    }

    /// The leadership's TTL (default: the client's default TTL); on a session backend the
    /// session's timeout decides, as for a lock.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Campaign for at most `wait` (default: until elected).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Campaigns with `value` and waits until elected; the guard is the leadership.
    ///
    /// # Behavior
    /// Candidates are elected one at a time, each with a term (the guard's fencing token)
    /// greater than every earlier leader's. The leadership renews itself while the guard lives
    /// and has the lock guard's whole surface: [`Guard::lost`] fires when leadership is lost
    /// (before another leader can be elected, where the backend can promise it), `run` works
    /// under it, and releasing or dropping the guard resigns.
    ///
    /// # Errors
    /// [`Error::InvalidMetadata`] for a value over [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN) bytes;
    /// [`Error::InvalidKey`] for a bad name, [`Error::InvalidTtl`] for a TTL the backend cannot
    /// keep; [`Error::AlreadyHeld`] when this task leads (or campaigns in) this election
    /// already; [`Error::Unsupported`] where the backend has no elections;
    /// [`Error::WaitTimedOut`] when a wait was set and ran out; backend errors.
    pub async fn campaign(&self, value: impl Into<String>) -> Result<Guard> {
        let mut b = self.client.builder_mode(&self.name, Mode::Leader).value(value).auto_renew();
        b = match self.wait {
            Some(w) => b.wait(w),
            None => b.wait_forever(),
        };
        if let Some(ttl) = self.ttl {
            b = b.ttl(ttl);
        }
        b.acquire().await
    }

    /// Changes the value the leader advertises, keeping leadership.
    ///
    /// # Behavior
    /// Conditioned on `leadership` still leading: it never overwrites a successor's value. When
    /// the backend finds leadership gone, the guard's loss fires (`LossReason::NotHeld`) at
    /// once. The holder metadata is written anew (its time is the proclaim's).
    ///
    /// # Errors
    /// [`Error::NotHeld`] when `leadership` is no longer the leader (lost, resigned, or not of
    /// this election); [`Error::InvalidMetadata`]; backend errors.
    pub async fn proclaim(&self, leadership: &Guard, value: impl Into<String>) -> Result<()> {
        let lease = leadership.lease();
        if lease.mode() != Mode::Leader
            || *lease.key() != self.client.key(&self.name)?
            || !leadership.is_held()
        {
            return Err(Error::NotHeld { key: leadership.key().to_owned() });
        }
        let metadata = Metadata::current().with_value(value)?;
        match self.client.backend().update_metadata(&lease, &metadata).await? {
            ExtendOutcome::Extended { .. } => Ok(()),
            ExtendOutcome::NotHeld => {
                // Leadership is gone: its guard says so now, not at its next renewal.
                leadership.fire_lost(crate::LossReason::NotHeld);
                Err(Error::NotHeld { key: leadership.key().to_owned() })
            }
        }
    }

    /// The current leader, or `None` when the election is vacant.
    ///
    /// # Errors
    /// [`Error::Unsupported`] where the backend has no elections; backend errors.
    pub async fn leader(&self) -> Result<Option<Leader>> {
        let holders = self.client.holders(&self.name, Mode::Leader).await?;
        Ok(holders.into_iter().min_by_key(|i| i.fencing_token).map(Leader::from_info))
    }

    /// A stream of leader changes: the leader after each change (`None`: vacant).
    ///
    /// # Behavior
    /// Starts with the current state. By notification where the backend has it (etcd and
    /// ZooKeeper watches, Redis pub/sub), by bounded polling otherwise. Never reports a leader
    /// with a lower term after a higher one, never repeats a state twice in a row, and ends with
    /// an error (never silently) when the backend cannot be read or its watch is lost.
    ///
    /// # Errors
    /// [`Error::InvalidKey`]; [`Error::Unsupported`] where the backend has no elections. Where
    /// the backend reads the leader before it returns the stream (etcd), that read's error;
    /// elsewhere a failed first read is the stream's first (and last) item.
    pub async fn observe(&self) -> Result<BoxStream<'static, Result<Option<Leader>>>> {
        let key = self.client.key(&self.name)?;
        self.client.capabilities().validate_mode(self.client.backend_name(), Mode::Leader)?;
        let raw = match self.client.backend().observe(&key, Mode::Leader).await? {
            Some(native) => native,
            None => self.polled(),
        };
        let mut last: Option<Option<Leader>> = None;
        let mut highest: Option<FencingToken> = None;
        let stream = raw.map(|item| item.map(|info| info.map(Leader::from_info))).filter_map(move |item| {
            let keep = match &item {
                Err(_) => true,
                Ok(state) => {
                    let stale =
                        matches!((state, highest), (Some(l), Some(h)) if l.term.is_some_and(|t| t < h));
                    let repeat = last.as_ref().is_some_and(|l| same_state(l, state));
                    if !stale && !repeat {
                        if let Some(t) = state.as_ref().and_then(|l| l.term) {
                            highest = Some(highest.map_or(t, |h| h.max(t)));
                        }
                        last = Some(state.clone());
                    }
                    !stale && !repeat
                }
            };
            std::future::ready(keep.then_some(item))
        });
        // The stream ends after its first error.
        let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        Ok(stream
            .take_while(move |item| {
                let go = !ended.load(std::sync::atomic::Ordering::Acquire);
                if item.is_err() {
                    ended.store(true, std::sync::atomic::Ordering::Release);
                }
                std::future::ready(go)
            })
            .boxed())
    }

    /// Polls the leader where the backend cannot notify: every polling interval (at most 250 ms).
    fn polled(&self) -> BoxStream<'static, Result<Option<LockInfo>>> {
        let interval = match self.client.capabilities().wake {
            WakeMode::Poll { max_interval } => max_interval.min(Duration::from_millis(250)),
            _ => Duration::from_millis(250),
        }
        .max(Duration::from_millis(1));
        let (client, name) = (self.client.clone(), self.name.clone());
        futures::stream::unfold(true, move |first| {
            let (client, name) = (client.clone(), name.clone());
            async move {
                if !first {
                    tokio::time::sleep(interval).await;
                }
                let state = client
                    .holders(&name, Mode::Leader)
                    .await
                    .map(|h| h.into_iter().min_by_key(|i| i.fencing_token));
                Some((state, false))
            }
        })
        .boxed()
    }
}
