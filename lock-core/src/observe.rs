//! Metrics and tracing, in one place.
//!
//! distlock records through the [`metrics`](https://docs.rs/metrics) facade and logs through
//! [`tracing`](https://docs.rs/tracing). With no recorder or subscriber installed both cost a
//! branch on a global; install any `metrics` exporter (for example
//! `metrics-exporter-prometheus`) to collect them. Every series carries a `backend` label.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `distlock_acquire_total` | counter | `backend`, `outcome` = `acquired` / `timed_out` / `failed` | acquire calls and how they ended |
//! | `distlock_acquire_seconds` | histogram | `backend`, `outcome` | time from the call to its outcome |
//! | `distlock_hold_seconds` | histogram | `backend` | time from grant to release |
//! | `distlock_release_total` | counter | `backend`, `outcome` = `released` / `expired` / `failed` | releases; `expired` means the grant was already gone |
//! | `distlock_renewals_total` | counter | `backend`, `outcome` = `ok` / `not_held` / `error` | renewal attempts |
//! | `distlock_lost_total` | counter | `backend`, `reason` | locks lost while held |
//!
//! Keys are never used as labels (unbounded cardinality); they appear in `tracing` spans and
//! events.
//!
//! ## Spans
//!
//! | span | fields | covers |
//! |---|---|---|
//! | `distlock.acquire` | `backend`, `key`, `mode`, `wait_ms`, then `outcome` (`acquired` / `timed_out` / `failed`) and `fencing_token` | one acquire, waiting included |
//! | `distlock.guard` | `backend`, `key`, `mode`, `fencing_token` | a held lock, from the grant to its release |
//! | `distlock.renewal` | (inherits the guard's) | the renewal task, child of the guard's span |
//! | `distlock.extend` | `ttl_ms`, `outcome` (`ok` / `not_held` / `error`) | one extend, child of the guard's span |
//! | `distlock.release` | `outcome` (`released` / `expired` / `failed`) | the release, child of the guard's span |
//!
//! A loss is a `warn` event (`lock lost`, with its `reason`) inside the guard's span. No span
//! or event carries a secret: keys, tokens and outcomes only.

use std::time::Duration;

use crate::outcome::ReleaseOutcome;
use crate::signal::LossReason;

/// `distlock_acquire_total`
pub const ACQUIRE_TOTAL: &str = "distlock_acquire_total";
/// `distlock_acquire_seconds`
pub const ACQUIRE_SECONDS: &str = "distlock_acquire_seconds";
/// `distlock_hold_seconds`
pub const HOLD_SECONDS: &str = "distlock_hold_seconds";
/// `distlock_release_total`
pub const RELEASE_TOTAL: &str = "distlock_release_total";
/// `distlock_renewals_total`
pub const RENEWALS_TOTAL: &str = "distlock_renewals_total";
/// `distlock_lost_total`
pub const LOST_TOTAL: &str = "distlock_lost_total";

/// Registers every series of `backend` at zero: every counter under each of its label values,
/// and both histograms. A recorder that renders registered series (Prometheus's does) then
/// shows them before the first event, so `rate` and `increase` count the first acquire, loss
/// or release of a short-lived process, which a series first seen at 1 would hide.
pub fn register(backend: &'static str) {
    for outcome in ["acquired", "timed_out", "failed"] {
        metrics::counter!(ACQUIRE_TOTAL, "backend" => backend, "outcome" => outcome).increment(0);
        let _ = metrics::histogram!(ACQUIRE_SECONDS, "backend" => backend, "outcome" => outcome);
    }
    for outcome in ["released", "expired", "failed"] {
        metrics::counter!(RELEASE_TOTAL, "backend" => backend, "outcome" => outcome).increment(0);
    }
    for outcome in ["ok", "not_held", "error"] {
        metrics::counter!(RENEWALS_TOTAL, "backend" => backend, "outcome" => outcome).increment(0);
    }
    for reason in ["expired", "not_held", "renewal_failed", "session_lost", "max_hold"] {
        metrics::counter!(LOST_TOTAL, "backend" => backend, "reason" => reason).increment(0);
    }
    let _ = metrics::histogram!(HOLD_SECONDS, "backend" => backend);
}

/// The `outcome` label of an acquire's result.
pub(crate) fn acquire_outcome<T>(res: &crate::Result<T>) -> &'static str {
    match res {
        Ok(_) => "acquired",
        Err(crate::Error::WaitTimedOut { .. }) => "timed_out",
        Err(_) => "failed",
    }
}

pub(crate) fn acquire(backend: &'static str, outcome: &'static str, elapsed: Duration) {
    metrics::counter!(ACQUIRE_TOTAL, "backend" => backend, "outcome" => outcome).increment(1);
    metrics::histogram!(ACQUIRE_SECONDS, "backend" => backend, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

/// The `outcome` of a release (metric label and span field).
pub(crate) fn release_outcome(outcome: Option<ReleaseOutcome>) -> &'static str {
    match outcome {
        Some(ReleaseOutcome::Released) => "released",
        Some(ReleaseOutcome::NotHeld) => "expired",
        None => "failed",
    }
}

/// The `outcome` of an extend (span field).
pub(crate) fn extend_outcome(res: &crate::Result<crate::ExtendOutcome>) -> &'static str {
    match res {
        Ok(crate::ExtendOutcome::Extended { .. }) => "ok",
        Ok(crate::ExtendOutcome::NotHeld) => "not_held",
        Err(_) => "error",
    }
}

pub(crate) fn release(backend: &'static str, outcome: Option<ReleaseOutcome>, held: Duration) {
    let outcome = release_outcome(outcome);
    metrics::counter!(RELEASE_TOTAL, "backend" => backend, "outcome" => outcome).increment(1);
    metrics::histogram!(HOLD_SECONDS, "backend" => backend).record(held.as_secs_f64());
}

pub(crate) fn renewal(backend: &'static str, outcome: &'static str) {
    metrics::counter!(RENEWALS_TOTAL, "backend" => backend, "outcome" => outcome).increment(1);
}

pub(crate) fn lost(backend: &'static str, reason: LossReason) {
    let reason = match reason {
        LossReason::Expired => "expired",
        LossReason::NotHeld => "not_held",
        LossReason::RenewalFailed => "renewal_failed",
        LossReason::SessionLost => "session_lost",
        LossReason::MaxHoldReached => "max_hold",
    };
    metrics::counter!(LOST_TOTAL, "backend" => backend, "reason" => reason).increment(1);
}
