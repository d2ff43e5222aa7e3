//! One clock for every process of the run: `CLOCK_MONOTONIC`, which all processes of a boot
//! share, read in nanoseconds. Workers stamp their operations with it and the controller its
//! faults and the register's log, so one history orders them all.

use std::time::Duration;

/// Nanoseconds on `CLOCK_MONOTONIC` (the same clock in every process of this boot).
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// `d` in nanoseconds, saturating.
pub fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds as milliseconds, for reports.
pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// A [`tokio::time::Instant`] at the monotonic time `at_ns` (tokio's clock is
/// `CLOCK_MONOTONIC` too, so the two convert by their difference now).
pub fn instant_at(at_ns: u64) -> tokio::time::Instant {
    let now_ns = mono_ns();
    let now = tokio::time::Instant::now();
    if at_ns >= now_ns {
        now + Duration::from_nanos(at_ns - now_ns)
    } else {
        now.checked_sub(Duration::from_nanos(now_ns - at_ns)).unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_forward() {
        let a = mono_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(mono_ns() >= a + 2_000_000);
    }
}
