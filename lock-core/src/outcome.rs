//! What one request to a backend carries and what it reports back.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::key::LockKey;
use crate::lease::{FencingToken, Lease, OwnerToken};
use crate::metadata::Metadata;
use crate::mode::Mode;

/// One request for a lock, built by the [`LockClient`](crate::LockClient) after validation.
#[derive(Debug, Clone)]
pub struct AcquireRequest {
    /// The key, validated and namespaced.
    pub key: LockKey,
    /// The TTL, validated against the backend's [`Capabilities`](crate::Capabilities).
    pub ttl: Duration,
    /// The owner token for the grant, chosen before anything is sent so that a reply lost
    /// in flight can still be recognised (and cleaned up) by its token.
    pub owner: OwnerToken,
    /// What is asked for: the lock, a permit, a read or a write lock. The client only sends a
    /// mode the backend's capabilities claim.
    pub mode: Mode,
    /// What the grant says about its holder; backends store it beside the grant (see
    /// [`Metadata`]).
    pub metadata: Arc<Metadata>,
}

impl AcquireRequest {
    /// A request for the lock ([`Mode::Exclusive`]) with a fresh random owner token.
    pub fn new(key: LockKey, ttl: Duration) -> Self {
        Self {
            key,
            ttl,
            owner: OwnerToken::random(),
            mode: Mode::Exclusive,
            metadata: Arc::new(Metadata::current()),
        }
    }

    /// The same request for another mode.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
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

/// What [`LockBackend::inspect`](crate::LockBackend::inspect) sees of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The holder's fencing token, when the holder wrote one (a foreign client may not).
    pub fencing_token: Option<FencingToken>,
    /// The holder's owner token, when readable.
    pub owner: Option<OwnerToken>,
    /// Time left on the holder's grant, when the backend knows it.
    pub remaining_ttl: Option<Duration>,
    /// What the holder holds (a permit of `limit`, a read or a write lock, or the lock).
    pub mode: Mode,
    /// What the holder's grant says about it, when it wrote metadata (a foreign client may not).
    pub metadata: Option<Metadata>,
}

impl LockInfo {
    /// Builds the record of a holder of the lock ([`Mode::Exclusive`]).
    pub fn new(
        fencing_token: Option<FencingToken>,
        owner: Option<OwnerToken>,
        remaining_ttl: Option<Duration>,
    ) -> Self {
        Self { fencing_token, owner, remaining_ttl, mode: Mode::Exclusive, metadata: None }
    }

    /// The same record with the holder's metadata.
    pub fn with_metadata(mut self, metadata: Option<Metadata>) -> Self {
        self.metadata = metadata;
        self
    }

    /// The same record for a holder in another mode.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
}

/// One page of [`LockBackend::list`](crate::LockBackend::list).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ListPage {
    /// The held grants on this page: the full key and what [`LockBackend::inspect`](crate::LockBackend::inspect) (or
    /// `holders`) would say of each holder, with its mode.
    pub entries: Vec<(String, LockInfo)>,
    /// Where the next page starts; `None` on the last page.
    pub cursor: Option<String>,
}

impl ListPage {
    /// A page with these entries and this cursor.
    pub fn new(entries: Vec<(String, LockInfo)>, cursor: Option<String>) -> Self {
        Self { entries, cursor }
    }
}

/// One page of [`LockBackend::fencing_counters`](crate::LockBackend::fencing_counters).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CounterPage {
    /// Each key's full name, the primitive its counter belongs to, and the last token issued.
    pub counters: Vec<(String, Mode, FencingToken)>,
    /// Where the next page starts; `None` on the last page.
    pub cursor: Option<String>,
}

impl CounterPage {
    /// A page with these counters and this cursor.
    pub fn new(counters: Vec<(String, Mode, FencingToken)>, cursor: Option<String>) -> Self {
        Self { counters, cursor }
    }
}
