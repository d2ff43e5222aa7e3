//! The contract every backend implements.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::backoff;
use crate::error::Result;
use crate::key::LockKey;
use crate::lease::{FencingToken, Lease, OwnerToken};

/// How a backend learns that a lock it waits for became free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WakeMode {
    /// The server notifies waiters (pub/sub, watches): a waiter wakes as soon as the lock is free.
    Notify,
    /// The backend polls with jittered exponential backoff, never sleeping longer than
    /// `max_interval` between attempts (nor past the holder's remaining TTL when known).
    Poll {
        /// The longest sleep between two attempts.
        max_interval: Duration,
    },
}

/// What a backend can do, as data. The conformance suite reads it to choose its checks and
/// prints what it skipped and why.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Capabilities {
    /// Waiters are granted the lock in arrival order.
    pub fair_queueing: bool,
    /// How waiters learn that the lock is free.
    pub wake: WakeMode,
    /// The smallest TTL step the server keeps (TTLs are rounded up to it).
    pub ttl_granularity: Duration,
    /// The shortest TTL accepted.
    pub min_ttl: Duration,
    /// The longest TTL accepted.
    pub max_ttl: Duration,
    /// Leases belong to a client session (etcd lease, ZooKeeper session) rather than to each
    /// lock; the session's timeout bounds how long a crashed holder blocks others.
    pub session_leases: bool,
    /// Each lock honours its own TTL (false when the session timeout decides for all locks).
    pub per_lock_ttl: bool,
    /// The longest full key (namespace included), in bytes, the backend stores.
    pub max_key_len: usize,
    /// How long past its TTL a crashed holder may still block others (server expiry lag,
    /// session timeout rounding). Promise 3 is "at most TTL + this margin".
    pub expiry_margin: Duration,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            fair_queueing: false,
            wake: WakeMode::Poll { max_interval: Duration::from_millis(100) },
            ttl_granularity: Duration::from_millis(1),
            min_ttl: Duration::from_millis(10),
            max_ttl: Duration::from_secs(7 * 24 * 3600),
            session_leases: false,
            per_lock_ttl: true,
            max_key_len: crate::key::MAX_KEY_LEN * 2 + 1,
            expiry_margin: Duration::from_millis(100),
        }
    }
}

/// One request for a lock, built by the [`LockClient`](crate::LockClient) after validation.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    /// The key, validated and namespaced.
    pub key: LockKey,
    /// The TTL, validated against the backend's [`Capabilities`].
    pub ttl: Duration,
    /// The owner token for the grant, chosen before anything is sent so that a reply lost
    /// in flight can still be recognised (and cleaned up) by its token.
    pub owner: OwnerToken,
}

impl AcquireRequest {
    /// A request with a fresh random owner token.
    pub fn new(key: LockKey, ttl: Duration) -> Self {
        Self { key, ttl, owner: OwnerToken::random() }
    }
}

/// The result of one acquire attempt.
#[derive(Debug)]
pub enum Attempt {
    /// The lock was granted.
    Acquired(Lease),
    /// Someone else holds it.
    Held {
        /// How long the current holder's grant has left, when the backend knows; pollers
        /// never sleep past it.
        expires_in: Option<Duration>,
    },
}

/// The result of an extend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtendOutcome {
    /// The grant now lasts the new TTL, counted from before the request was sent.
    Extended {
        /// The new instant past which the lease must not be trusted.
        valid_until: Instant,
    },
    /// The grant is gone: it expired or another owner holds the key.
    NotHeld,
}

/// The result of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Our grant was deleted.
    Released,
    /// Our grant was already gone (expired, or another owner holds the key); nothing was
    /// deleted.
    NotHeld,
}

/// What [`LockBackend::inspect`] sees of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The holder's fencing token, when the holder wrote one (a foreign client may not).
    pub fencing_token: Option<FencingToken>,
    /// The holder's owner token, when readable.
    pub owner: Option<OwnerToken>,
    /// Time left on the holder's grant, when the backend knows it.
    pub remaining_ttl: Option<Duration>,
}

impl LockInfo {
    /// Builds the record.
    pub fn new(
        fencing_token: Option<FencingToken>,
        owner: Option<OwnerToken>,
        remaining_ttl: Option<Duration>,
    ) -> Self {
        Self { fencing_token, owner, remaining_ttl }
    }
}

/// A lock backend: one store's encoding of the promises in DESIGN.md.
///
/// The trait is object safe: hold it as `Arc<dyn LockBackend>`. Users rarely call it; they use
/// [`LockClient`](crate::LockClient), which validates input, keeps the guard, renews and
/// records metrics. Backend authors implement the four required methods, may override
/// [`acquire`](LockBackend::acquire) when the store can notify waiters, and check themselves
/// with the `conformance-tests` crate.
#[async_trait]
pub trait LockBackend: Send + Sync + fmt::Debug + 'static {
    /// A short name used in errors and as the `backend` metrics label, e.g. `"redis"`.
    ///
    /// # Behavior
    /// Constant for the backend's life, sends nothing, and never fails: it names the backend in
    /// every [`Error::Backend`](crate::Error::Backend) and metrics series it produces.
    fn name(&self) -> &'static str;

    /// What this backend can do.
    ///
    /// # Behavior
    /// Answered locally, without a request, and the same on every call for one backend value:
    /// the client validates TTLs and keys against it, picks how to wait from
    /// [`Capabilities::wake`], and the conformance suite skips (saying why) only the checks a
    /// capability rules out. A backend must never claim what it does not do: a claim is a
    /// promise the suite holds it to.
    fn capabilities(&self) -> Capabilities;

    /// One attempt to take the lock, without waiting.
    ///
    /// # Behavior
    /// - Grants only if no unexpired grant of the key exists on the server (promise 1), and
    ///   gives the new grant a fencing token greater than every earlier grant of the key
    ///   (promise 2).
    /// - `valid_until` of the lease is measured from before the request was sent.
    /// - If the future is dropped mid-flight, a grant that the server made anyway is released
    ///   in the background (see [`UndoOnDrop`](crate::UndoOnDrop)); at worst, outside a
    ///   runtime, it lasts its TTL (promise 6).
    ///
    /// # Errors
    /// Backend errors only; a held lock is [`Attempt::Held`], not an error.
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt>;

    /// Takes the lock, waiting until `deadline` if it is held.
    ///
    /// # Behavior
    /// - Returns as soon as the lock can be had: by notification where the backend has one,
    ///   otherwise by polling (the default implementation: jittered exponential backoff capped
    ///   by [`WakeMode::Poll`]'s interval and by the holder's remaining TTL).
    /// - Cancel safe: dropping the future leaves nothing behind beyond the TTL (no queue
    ///   entry, no partial grant).
    ///
    /// # Errors
    /// [`Error::Timeout`](crate::Error::Timeout) at the deadline; backend errors that are not
    /// retryable at once, retryable ones once the deadline has passed.
    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        backoff::poll_acquire(self, req, deadline).await
    }

    /// Extends our grant so that it lasts `ttl` from now.
    ///
    /// # Behavior
    /// Compares the owner token on the server (promise 4): a stale holder never extends a newer
    /// grant, and an expired grant is never revived. Reports the truth:
    /// [`ExtendOutcome::NotHeld`] when the grant is gone.
    ///
    /// # Errors
    /// Backend errors only.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome>;

    /// Releases our grant.
    ///
    /// # Behavior
    /// Compares the owner token on the server (promise 4): deletes only our own grant and says
    /// whether it did ([`ReleaseOutcome::Released`]) or found it already gone
    /// ([`ReleaseOutcome::NotHeld`]). The fencing counter survives the release. Waiters are
    /// woken where the backend can notify.
    ///
    /// # Errors
    /// Backend errors only.
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome>;

    /// Reads who holds the key, without changing anything.
    ///
    /// # Behavior
    /// `None` when no unexpired grant exists; otherwise the holder's fencing token and the
    /// remaining TTL when the backend knows them.
    ///
    /// # Errors
    /// Backend errors only.
    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>>;
}
