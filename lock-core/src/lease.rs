//! Leases: one grant of a lock, with its owner token and fencing token.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::key::LockKey;
use crate::mode::Mode;
use crate::signal::LossSignal;

/// 128 random bits naming one grant. Only the holder of a grant knows its token, and every
/// release or extend compares it on the server, so a stale holder cannot touch a newer grant.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerToken(u128);

impl OwnerToken {
    /// A fresh token from the operating system's random source.
    pub fn random() -> Self {
        Self(rand::random::<u128>())
    }

    /// Rebuilds a token from its 128 bits (for example one read back from a store).
    pub const fn from_u128(v: u128) -> Self {
        Self(v)
    }

    /// The token's 128 bits.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// Parses the 32 lowercase or uppercase hex digits written by `Display`.
    pub fn parse_hex(s: &str) -> Option<Self> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(Self)
    }
}

impl fmt::Display for OwnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for OwnerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerToken({:032x})", self.0)
    }
}

/// A number that strictly increases with every grant of one key, across releases, expiries
/// and takeovers, and is never reused.
///
/// Hand it to the protected resource with every write; the resource remembers the highest token
/// it has seen and rejects lower ones, so a holder that lost its lock (paused, partitioned,
/// expired) cannot overwrite the work of the next holder.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token.
    pub const fn new(v: u64) -> Self {
        Self(v)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FencingToken({})", self.0)
    }
}

impl From<FencingToken> for u64 {
    fn from(t: FencingToken) -> u64 {
        t.0
    }
}

/// The safety margin subtracted from a TTL to allow for clock drift between client and server:
/// 1% of the TTL plus 2 ms (the figure the Redlock analysis uses).
pub fn drift_margin(ttl: Duration) -> Duration {
    (ttl / 100).saturating_add(Duration::from_millis(2))
}

/// The shortest TTL a backend whose grants live by their TTL accepts
/// ([`Capabilities::min_ttl`](crate::Capabilities::min_ttl)): a TTL within [`drift_margin`]'s
/// 2 ms would be lost as soon as it was granted (its `valid_until` at or before the request).
pub const SHORTEST_TTL: Duration = Duration::from_millis(3);

/// One grant of a lock.
///
/// # Behavior
/// - `valid_until` is measured from an instant taken *before* the request that won the grant
///   was sent, plus the TTL, minus [`drift_margin`]. Never act on the lock past it.
/// - A lease is plain data: cloning it does not clone the right to hold the lock, and holding
///   one does not renew anything. The [`Guard`](crate::Guard) does that.
#[derive(Clone)]
pub struct Lease {
    key: LockKey,
    owner: OwnerToken,
    fence: FencingToken,
    ttl: Duration,
    acquired_at: Instant,
    valid_until: Instant,
    session: Option<LossSignal>,
    backend_data: Option<Arc<dyn Any + Send + Sync>>,
    mode: Mode,
}

impl Lease {
    /// A lease granted by a request sent at `sent_at` with `ttl`; `valid_until` is
    /// `sent_at + ttl - drift_margin(ttl)`.
    pub fn new(
        key: LockKey,
        owner: OwnerToken,
        fence: FencingToken,
        ttl: Duration,
        sent_at: Instant,
    ) -> Self {
        let valid_until = valid_until(sent_at, ttl);
        Self {
            key,
            owner,
            fence,
            ttl,
            acquired_at: sent_at,
            valid_until,
            session: None,
            backend_data: None,
            mode: Mode::Exclusive,
        }
    }

    /// Replaces `valid_until` (for backends that compute it themselves, such as Redlock).
    pub fn with_valid_until(mut self, valid_until: Instant) -> Self {
        self.valid_until = valid_until;
        self
    }

    /// Attaches a backend loss signal (the session's, or one for this grant alone): when it
    /// fires, guards on this lease report the lock lost, with the signal's reason.
    pub fn with_session(mut self, session: LossSignal) -> Self {
        self.session = Some(session);
        self
    }

    /// Attaches backend-private data (for example the queue node a ZooKeeper lease owns).
    pub fn with_backend_data(mut self, data: Arc<dyn Any + Send + Sync>) -> Self {
        self.backend_data = Some(data);
        self
    }

    /// Marks the grant as one of `mode` (a permit, a read or a write lock); backends set it
    /// from the request, so that extend and release know what they hold.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// What the grant is of ([`Mode::Exclusive`] for the lock).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The lock's key.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The owner token of this grant.
    pub fn owner(&self) -> OwnerToken {
        self.owner
    }

    /// The fencing token of this grant.
    pub fn fencing_token(&self) -> FencingToken {
        self.fence
    }

    /// The TTL the lease was granted or last extended with.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the request that won the grant was sent.
    pub fn acquired_at(&self) -> Instant {
        self.acquired_at
    }

    /// The instant after which the lease must not be trusted.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// Time left before `valid_until` (zero once past it).
    pub fn remaining(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    /// The backend session's loss signal, if the lease is tied to a session.
    pub fn session(&self) -> Option<&LossSignal> {
        self.session.as_ref()
    }

    /// Backend-private data attached with [`Lease::with_backend_data`], if it is a `T`.
    pub fn backend_data<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.backend_data.as_deref().and_then(|d| d.downcast_ref::<T>())
    }

    /// Records an extension: the new TTL and the new `valid_until`.
    pub fn set_extended(&mut self, ttl: Duration, valid_until: Instant) {
        self.ttl = ttl;
        self.valid_until = valid_until;
    }

    /// Before an extend to `ttl` is sent: if it shortens the grant, the lease is trusted no
    /// longer than `ttl` from now from here on, until the extend's success says otherwise. An
    /// extend whose outcome stays unknown (an error after the request left, a lost reply, a
    /// call given up) may have been applied, and the server would then end the grant sooner
    /// than the lease said. Returns whether `valid_until` moved.
    pub(crate) fn limit_for_extend(&mut self, ttl: Duration) -> bool {
        if ttl >= self.ttl {
            return false;
        }
        let at = valid_until(Instant::now(), ttl);
        if at >= self.valid_until {
            return false;
        }
        self.valid_until = at;
        true
    }
}

/// `sent_at + ttl - drift_margin(ttl)`, saturating.
pub fn valid_until(sent_at: Instant, ttl: Duration) -> Instant {
    let margin = drift_margin(ttl);
    add_saturating(sent_at, ttl.saturating_sub(margin))
}

/// `base + d`, or a point about a century later when the sum does not fit in an `Instant`
/// (a `Duration::MAX` wait, cap or TTL means "as long as it takes", never a panic).
pub fn add_saturating(base: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    base.checked_add(d.min(CENTURY)).unwrap_or(base)
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("owner", &self.owner)
            .field("fencing_token", &self.fence)
            .field("mode", &self.mode)
            .field("ttl", &self.ttl)
            .field("remaining", &self.remaining())
            .field("session", &self.session.is_some())
            .finish()
    }
}
