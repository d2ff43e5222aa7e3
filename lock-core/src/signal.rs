//! The loss signal: a one-shot, cloneable notice that a lock (or a backend session) is gone.

use std::fmt;
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

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
    /// The cap on total hold time was reached: renewal stopped and the lock was released (or,
    /// if the release did not answer in time, its lease ran out).
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

/// One allocation per signal: a guard holds many of them, so it stays small.
#[derive(Default)]
struct Inner {
    reason: OnceLock<LossReason>,
    notify: Notify,
}

impl LossSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal with `reason`; returns whether this call was the one that fired it.
    pub fn fire(&self, reason: LossReason) -> bool {
        let first = self.inner.reason.set(reason).is_ok();
        if first {
            self.inner.notify.notify_waiters();
        }
        first
    }

    /// Whether it fired.
    pub fn is_fired(&self) -> bool {
        self.inner.reason.get().is_some()
    }

    /// The reason, once fired.
    pub fn reason(&self) -> Option<LossReason> {
        self.inner.reason.get().copied()
    }

    /// Resolves when the signal fires, with its reason.
    pub async fn fired(&self) -> LossReason {
        loop {
            // Registered before the check, so a fire between the two is not missed.
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(reason) = self.reason() {
                return reason;
            }
            notified.await;
        }
    }
}

impl fmt::Debug for LossSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossSignal").field("fired", &self.reason()).finish()
    }
}

/// One signal that fires when any of `signals` fires, with its reason (the others may fire
/// later, unseen). A small task watches them; it ends when the combined signal fires, so firing
/// it yourself (on release) ends the watch. `None` for no signals. Always a signal of its own,
/// also for one: firing it never fires the signals it watches (a backend may give every lease
/// of a session the session's one signal). Needs a tokio runtime.
pub fn any_of(signals: Vec<LossSignal>) -> Option<LossSignal> {
    match signals.len() {
        0 => None,
        _ => {
            let combined = LossSignal::new();
            let fire = combined.clone();
            tokio::spawn(async move {
                let any = futures::future::select_all(signals.iter().map(|s| Box::pin(s.fired())));
                tokio::select! {
                    (reason, _, _) = any => { fire.fire(reason); }
                    _ = fire.fired() => {}
                }
            });
            Some(combined)
        }
    }
}
