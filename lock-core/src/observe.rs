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

use std::cell::Cell;
use std::sync::Mutex;
use std::time::Duration;

use metrics::{Key, Label};

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
    for outcome in ACQUIRE_OUTCOMES {
        metrics::counter!(ACQUIRE_TOTAL, "backend" => backend, "outcome" => outcome).increment(0);
        let _ = metrics::histogram!(ACQUIRE_SECONDS, "backend" => backend, "outcome" => outcome);
    }
    for outcome in RELEASE_OUTCOMES {
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

/// The `outcome` labels of an acquire, as [`acquire_outcome`] names them.
const ACQUIRE_OUTCOMES: [&str; 3] = ["acquired", "timed_out", "failed"];
/// The `outcome` labels of a release, as [`release_outcome`] names them.
const RELEASE_OUTCOMES: [&str; 3] = ["released", "expired", "failed"];

/// What the `counter!` and `histogram!` macros would say of a series recorded here.
static META: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The keys of the series every acquire and release records, made once per backend, so a
/// lock+release builds no key (each is a label list and a hash): the installed recorder is
/// still asked for each event, so one installed late is used from then on.
struct Keys {
    backend: &'static str,
    acquire_total: [Key; 3],
    acquire_seconds: [Key; 3],
    release_total: [Key; 3],
    hold_seconds: Key,
}

impl Keys {
    fn new(backend: &'static str) -> Self {
        let key = |name: &'static str, outcome: Option<&'static str>| {
            let mut labels = vec![Label::new("backend", backend)];
            labels.extend(outcome.map(|o| Label::new("outcome", o)));
            Key::from_parts(name, labels)
        };
        Self {
            backend,
            acquire_total: ACQUIRE_OUTCOMES.map(|o| key(ACQUIRE_TOTAL, Some(o))),
            acquire_seconds: ACQUIRE_OUTCOMES.map(|o| key(ACQUIRE_SECONDS, Some(o))),
            release_total: RELEASE_OUTCOMES.map(|o| key(RELEASE_TOTAL, Some(o))),
            hold_seconds: key(HOLD_SECONDS, None),
        }
    }

    /// The keys of `backend` (a backend's name: a handful per process, each made once and
    /// kept for the process's life).
    fn of(backend: &'static str) -> &'static Keys {
        thread_local! {
            static LAST: Cell<Option<&'static Keys>> = const { Cell::new(None) };
        }
        static ALL: Mutex<Vec<&'static Keys>> = Mutex::new(Vec::new());
        if let Some(k) = LAST.with(Cell::get).filter(|k| k.backend == backend) {
            return k;
        }
        let mut all = ALL.lock().unwrap_or_else(|p| p.into_inner());
        let k = match all.iter().find(|k| k.backend == backend) {
            Some(k) => *k,
            None => {
                let k: &'static Keys = Box::leak(Box::new(Keys::new(backend)));
                all.push(k);
                k
            }
        };
        LAST.with(|c| c.set(Some(k)));
        k
    }
}

/// Where `outcome` is among `outcomes` (each caller names one of them).
fn index(outcomes: &[&str; 3], outcome: &str) -> usize {
    let i = outcomes.iter().position(|o| *o == outcome);
    debug_assert!(i.is_some(), "unknown outcome {outcome}");
    i.unwrap_or(2)
}

pub(crate) fn acquire(backend: &'static str, outcome: &'static str, elapsed: Duration) {
    let (k, i) = (Keys::of(backend), index(&ACQUIRE_OUTCOMES, outcome));
    metrics::with_recorder(|r| {
        r.register_counter(&k.acquire_total[i], &META).increment(1);
        r.register_histogram(&k.acquire_seconds[i], &META).record(elapsed.as_secs_f64());
    });
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
    let (k, i) = (Keys::of(backend), index(&RELEASE_OUTCOMES, release_outcome(outcome)));
    metrics::with_recorder(|r| {
        r.register_counter(&k.release_total[i], &META).increment(1);
        r.register_histogram(&k.hold_seconds, &META).record(held.as_secs_f64());
    });
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use metrics::{Counter, Gauge, Histogram, KeyName, Metadata, Recorder, SharedString, Unit};

    use super::*;

    /// Writes down each series asked for, as `name{label=value,...}`, and where it was recorded.
    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl Seen {
        fn note(&self, key: &Key, metadata: &Metadata<'_>) {
            let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            let line = format!("{}{{{}}} {}", key.name(), labels.join(","), metadata.target());
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    }

    impl Recorder for Seen {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
            self.note(key, metadata);
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
            self.note(key, metadata);
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
            self.note(key, metadata);
            Histogram::noop()
        }
    }

    #[test]
    fn acquire_and_release_record_the_series_the_macros_would() {
        let seen = Seen::default();
        metrics::with_local_recorder(&seen, || {
            acquire("etcd", "timed_out", Duration::from_millis(3));
            release("redis", Some(ReleaseOutcome::NotHeld), Duration::from_millis(5));
            acquire("redis", "acquired", Duration::from_millis(3));
            release("etcd", None, Duration::from_millis(5));
        });
        let got = seen.0.into_inner().unwrap_or_else(|p| p.into_inner());
        let m = "lock_core::observe";
        assert_eq!(
            got,
            [
                format!("distlock_acquire_total{{backend=etcd,outcome=timed_out}} {m}"),
                format!("distlock_acquire_seconds{{backend=etcd,outcome=timed_out}} {m}"),
                format!("distlock_release_total{{backend=redis,outcome=expired}} {m}"),
                format!("distlock_hold_seconds{{backend=redis}} {m}"),
                format!("distlock_acquire_total{{backend=redis,outcome=acquired}} {m}"),
                format!("distlock_acquire_seconds{{backend=redis,outcome=acquired}} {m}"),
                format!("distlock_release_total{{backend=etcd,outcome=failed}} {m}"),
                format!("distlock_hold_seconds{{backend=etcd}} {m}"),
            ]
        );
    }
}
