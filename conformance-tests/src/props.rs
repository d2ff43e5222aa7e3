//! Property-test helpers shared by every backend's `tests/options_props.rs`: strategies for
//! durations and for durations as URLs spell them, the "accepted or `InvalidConfig`" rule, and a
//! process-wide panic counter (a background task's panic counts too).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use lock_core::Error;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Any duration, the edges (zero, one nanosecond, `Duration::MAX`) included.
pub fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::from_nanos(1)),
        any::<u64>().prop_map(Duration::from_nanos),
        any::<u64>().prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_secs),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

/// A duration as a URL spells it, valid or not.
pub fn url_duration() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u64>(), prop::sample::select(vec!["", "ms", "s", "m", "h", "d", "us", "x"]))
            .prop_map(|(n, u)| format!("{n}{u}")),
        Just("0".to_owned()),
        Just("1e300s".to_owned()),
        "\\PC{0,12}",
    ]
}

/// Passes when `r` is `Ok` or [`Error::InvalidConfig`]; any other error fails the case.
///
/// # Errors
/// The failed case, naming `what` and the error.
pub fn accepted_or_invalid(r: lock_core::Result<()>, what: &str) -> Result<(), TestCaseError> {
    match r {
        Ok(()) | Err(Error::InvalidConfig(_)) => Ok(()),
        Err(e) => Err(TestCaseError::fail(format!("{what}: {e:?}"))),
    }
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Starts counting panics anywhere in the process (once; the default hook still prints them)
/// and returns how many there have been so far.
pub fn count_panics() -> usize {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
    panics()
}

/// How many panics [`count_panics`] has counted.
pub fn panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}
