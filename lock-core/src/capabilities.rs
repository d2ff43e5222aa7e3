//! What a backend can do, as data: the client validates input against it and the
//! conformance suite picks its checks from it.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::mode::Mode;

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
///
/// Build it with [`Capabilities::new`] and the `with_*` methods (the fields are public to
/// read):
///
/// ```
/// use std::time::Duration;
/// use lock_core::{Capabilities, WakeMode};
///
/// let caps = Capabilities::new()
///     .with_fair_queueing(true)
///     .with_wake(WakeMode::Notify)
///     .with_ttl_granularity(Duration::from_secs(1))
///     .with_min_ttl(Duration::from_secs(2));
/// assert!(caps.fair_queueing);
/// ```
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
    /// How long past its lease a crashed holder may still block others (server expiry lag,
    /// session timeout rounding, a leader election). Promise 3 is "at most
    /// [`crash_bound`](Self::crash_bound)".
    pub expiry_margin: Duration,
    /// With session leases, the session's timeout: the lease every lock of the client shares,
    /// which takes the place of the lock's TTL (`None` when leases are per lock, or the
    /// backend cannot say).
    pub session_timeout: Option<Duration>,
    /// How many lease lengths a crashed holder may block others in the worst case: 1 where the
    /// server counts a lease down once; 2 where a leader change restarts every lease's count
    /// (etcd without lease checkpointing, ZooKeeper's session tracker) or a takeover waits a
    /// whole lease after first seeing a stale holder (DynamoDB).
    pub expiry_ttls: u32,
    /// Semaphores ([`Mode::Permit`]) are supported, with at most this
    /// many permits per semaphore (0: not supported).
    pub max_permits: u32,
    /// Read-write locks ([`Mode::Read`], [`Mode::Write`])
    /// are supported.
    pub read_write: bool,
    /// A waiting writer blocks new readers, so a stream of readers cannot starve it.
    pub writer_preference: bool,
    /// Several keys can be taken all-or-nothing in one atomic request
    /// ([`LockBackend::try_acquire_all`](crate::LockBackend::try_acquire_all)); without it,
    /// multi-key locks are taken one key at a time in a canonical order.
    pub atomic_multi_key: bool,
    /// Elections ([`Mode::Leader`]) are supported.
    pub elections: bool,
    /// [`LockBackend::list`](crate::LockBackend::list) lists held grants under a prefix.
    pub listing: bool,
    /// [`LockBackend::list`](crate::LockBackend::list) honours its `limit`: pages of at most
    /// about that many entries. False where a page holds every grant under the prefix (etcd,
    /// which must read each queue whole to tell its holders);
    /// [`LockClient::list`](crate::LockClient::list) collects every page either way.
    pub listing_pages: bool,
    /// Grants store the holder's [`Metadata`](crate::Metadata) and `inspect` returns it.
    pub holder_metadata: bool,
    /// Each key has a fencing counter of its own that
    /// [`LockBackend::fencing_counters`](crate::LockBackend::fencing_counters) reads and
    /// [`LockBackend::raise_fencing_counter`](crate::LockBackend::raise_fencing_counter)
    /// raises (token carry-over between backends); false where tokens come from one counter
    /// for the whole store (etcd's revision, ZooKeeper's zxid) or the counters cannot be read.
    pub fencing_counters: bool,
    /// [`LockBackend::extend_many`](crate::LockBackend::extend_many) renews many grants in a
    /// few requests: guards then renew in batches (see [`crate::batch`]).
    pub batch_extend: bool,
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
            session_timeout: None,
            expiry_ttls: 1,
            max_permits: 0,
            read_write: false,
            writer_preference: false,
            atomic_multi_key: false,
            elections: false,
            listing: false,
            listing_pages: true,
            holder_metadata: false,
            fencing_counters: false,
            batch_extend: false,
        }
    }
}

macro_rules! with {
    ($(#[$doc:meta] $name:ident: $field:ident: $ty:ty;)*) => {
        $(
            #[$doc]
            #[must_use]
            pub fn $name(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
    };
}

impl Capabilities {
    /// The defaults: no fair queueing, polling at most 100 ms apart, TTLs from 10 ms to 7
    /// days at millisecond granularity, per-lock leases, a 100 ms expiry margin.
    pub fn new() -> Self {
        Self::default()
    }

    with! {
        /// Sets [`fair_queueing`](Self::fair_queueing).
        with_fair_queueing: fair_queueing: bool;
        /// Sets [`wake`](Self::wake).
        with_wake: wake: WakeMode;
        /// Sets [`ttl_granularity`](Self::ttl_granularity).
        with_ttl_granularity: ttl_granularity: Duration;
        /// Sets [`min_ttl`](Self::min_ttl).
        with_min_ttl: min_ttl: Duration;
        /// Sets [`max_ttl`](Self::max_ttl).
        with_max_ttl: max_ttl: Duration;
        /// Sets [`max_key_len`](Self::max_key_len).
        with_max_key_len: max_key_len: usize;
        /// Sets [`expiry_margin`](Self::expiry_margin).
        with_expiry_margin: expiry_margin: Duration;
        /// Sets [`expiry_ttls`](Self::expiry_ttls).
        with_expiry_ttls: expiry_ttls: u32;
        /// Sets [`max_permits`](Self::max_permits) (semaphores supported when not zero).
        with_max_permits: max_permits: u32;
        /// Sets [`read_write`](Self::read_write).
        with_read_write: read_write: bool;
        /// Sets [`writer_preference`](Self::writer_preference).
        with_writer_preference: writer_preference: bool;
        /// Sets [`atomic_multi_key`](Self::atomic_multi_key).
        with_atomic_multi_key: atomic_multi_key: bool;
        /// Sets [`elections`](Self::elections).
        with_elections: elections: bool;
        /// Sets [`listing`](Self::listing).
        with_listing: listing: bool;
        /// Sets [`listing_pages`](Self::listing_pages).
        with_listing_pages: listing_pages: bool;
        /// Sets [`fencing_counters`](Self::fencing_counters).
        with_fencing_counters: fencing_counters: bool;
        /// Sets [`holder_metadata`](Self::holder_metadata).
        with_holder_metadata: holder_metadata: bool;
        /// Sets [`batch_extend`](Self::batch_extend).
        with_batch_extend: batch_extend: bool;
    }

    /// Leases belong to a client session whose timeout decides for every lock: sets
    /// [`session_leases`](Self::session_leases) and clears [`per_lock_ttl`](Self::per_lock_ttl).
    #[must_use]
    pub fn with_session_leases(mut self) -> Self {
        self.session_leases = true;
        self.per_lock_ttl = false;
        self
    }

    /// Leases belong to a client session of this timeout: sets
    /// [`session_timeout`](Self::session_timeout) and what
    /// [`with_session_leases`](Self::with_session_leases) sets.
    #[must_use]
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = Some(timeout);
        self.with_session_leases()
    }

    /// The lease that bounds a lock taken with `ttl`: the session's timeout on a session
    /// backend that states it, the lock's TTL otherwise.
    pub fn lease_length(&self, ttl: Duration) -> Duration {
        match self.session_timeout {
            Some(s) if self.session_leases => s,
            _ => ttl,
        }
    }

    /// How long a crashed holder of a lock taken with `ttl` may block others at most
    /// (promise 3): [`lease_length`](Self::lease_length) × [`expiry_ttls`](Self::expiry_ttls)
    /// + [`expiry_margin`](Self::expiry_margin).
    pub fn crash_bound(&self, ttl: Duration) -> Duration {
        self.lease_length(ttl).saturating_mul(self.expiry_ttls.max(1)).saturating_add(self.expiry_margin)
    }

    /// Checks that the backend offers `mode`, with `limit` permits in range for a semaphore.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the primitive; [`Error::InvalidPermits`] for zero permits
    /// or more than the backend's (or [`MAX_PERMITS`](crate::MAX_PERMITS)) maximum.
    pub fn validate_mode(&self, backend: &'static str, mode: Mode) -> Result<()> {
        let supported = match mode {
            Mode::Exclusive => true,
            Mode::Permit { limit } => {
                let max = self.max_permits.min(crate::MAX_PERMITS);
                if self.max_permits > 0 && (limit == 0 || limit > max) {
                    return Err(Error::InvalidPermits {
                        permits: limit,
                        reason: if limit == 0 {
                            "a semaphore needs at least one permit".to_owned()
                        } else {
                            format!("the {backend} backend allows at most {max} permits")
                        },
                    });
                }
                self.max_permits > 0
            }
            Mode::Read | Mode::Write => self.read_write,
            Mode::Leader => self.elections,
        };
        if supported {
            Ok(())
        } else {
            Err(Error::Unsupported { backend, capability: format!("{}s", mode.primitive()) })
        }
    }

    /// Checks a TTL against these limits; `backend` names the backend in the message.
    ///
    /// # Errors
    /// [`Error::InvalidTtl`] for a zero TTL, or one outside `min_ttl..=max_ttl`.
    pub fn validate_ttl(&self, backend: &str, ttl: Duration) -> Result<()> {
        let reason = if ttl.is_zero() {
            "a TTL must be greater than zero".to_owned()
        } else if ttl < self.min_ttl {
            format!("the {backend} backend's minimum TTL is {:?}", self.min_ttl)
        } else if ttl > self.max_ttl {
            format!("the {backend} backend's maximum TTL is {:?}", self.max_ttl)
        } else {
            return Ok(());
        };
        Err(Error::InvalidTtl { ttl, reason })
    }
}
