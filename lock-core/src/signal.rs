//! The loss signal: a one-shot, cloneable notice that a lock (or a backend session) is gone.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// Why a lock was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossReason {
    /// `valid_until` was reached without a successful renewal.
    Expired,
    /// A renewal found the lock no longer ours (it expired on the server or was taken).
    NotHeld,
    /// Renewal kept failing with errors until the lease could no longer be trusted.
    RenewalFailed,
    /// The backend session the lease was tied to ended (etcd lease, ZooKeeper session).
    SessionLost,
    /// The cap on total hold time was reached, so renewal stopped and the lease ran out.
    MaxHoldReached,
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossReason::Expired => "the lease reached valid_until without renewal",
            LossReason::NotHeld => "renewal found the lock expired or held by another owner",
            LossReason::RenewalFailed => "renewal kept failing until the lease ran out",
            LossReason::SessionLost => "the backend session holding the lease ended",
            LossReason::MaxHoldReached => "the maximum hold time was reached",
        })
    }
}

/// A one-shot signal that fires at most once, with a [`LossReason`].
///
/// # Behavior
/// Cloning shares the signal. The first [`fire`](LossSignal::fire) wins and sets the reason;
/// later calls change nothing. [`fired`](LossSignal::fired) resolves at once when it already
/// fired, so no notice is missed whatever the order of events.
#[derive(Clone, Default)]
pub struct LossSignal {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    token: CancellationToken,
    reason: OnceLock<LossReason>,
}

impl LossSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal with `reason`; returns whether this call was the one that fired it.
    pub fn fire(&self, reason: LossReason) -> bool {
        let first = self.inner.reason.set(reason).is_ok();
        self.inner.token.cancel();
        first
    }

    /// Whether it fired.
    pub fn is_fired(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// The reason, once fired.
    pub fn reason(&self) -> Option<LossReason> {
        self.inner.reason.get().copied()
    }

    /// Resolves when the signal fires, with its reason.
    pub async fn fired(&self) -> LossReason {
        self.inner.token.cancelled().await;
        self.reason().unwrap_or(LossReason::SessionLost)
    }
}

impl fmt::Debug for LossSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossSignal").field("fired", &self.reason()).finish()
    }
}
