//! A history checker: records when each grant was used and proves no two uses overlapped
//! and that fencing tokens rose with time.

use std::sync::Mutex;
use std::time::Instant;

/// One use of the lock: from the moment `acquire` returned to the moment `release` was called.
#[derive(Debug, Clone, Copy)]
pub struct Interval {
    /// The fencing token of the grant.
    pub fence: u64,
    /// When the holder started acting under the lock.
    pub start: Instant,
    /// When it stopped.
    pub end: Instant,
    /// Which contender (for messages).
    pub who: usize,
}

/// Collects intervals from many tasks; [`History::check`] verifies them.
#[derive(Debug, Default)]
pub struct History {
    intervals: Mutex<Vec<Interval>>,
    inside: Mutex<Option<usize>>,
    overlaps: Mutex<Vec<String>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks contender `who` as inside the critical section; records an overlap if another
    /// contender is inside (the shared register).
    pub fn enter(&self, who: usize) {
        let mut inside = self.inside.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = *inside {
            self.overlaps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("contender {who} entered while contender {other} was inside"));
        }
        *inside = Some(who);
    }

    /// Marks contender `who` as outside, and records its interval.
    pub fn exit(&self, who: usize, fence: u64, start: Instant) {
        let end = Instant::now();
        {
            let mut inside = self.inside.lock().unwrap_or_else(|p| p.into_inner());
            if *inside == Some(who) {
                *inside = None;
            }
        }
        self.intervals.lock().unwrap_or_else(|p| p.into_inner()).push(Interval { fence, start, end, who });
    }

    /// Number of recorded intervals.
    pub fn len(&self) -> usize {
        self.intervals.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the history: no overlap seen by the register, no two intervals overlapping in
    /// time, fencing tokens strictly increasing in time order, and no token used twice.
    ///
    /// # Errors
    /// A description of the first violations found.
    pub fn check(&self) -> Result<(), String> {
        let overlaps = self.overlaps.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !overlaps.is_empty() {
            return Err(format!(
                "mutual exclusion violated {} times: {}",
                overlaps.len(),
                overlaps.join("; ")
            ));
        }
        let mut iv = self.intervals.lock().unwrap_or_else(|p| p.into_inner()).clone();
        iv.sort_by_key(|i| i.start);
        for w in iv.windows(2) {
            let (a, b) = (w[0], w[1]);
            if b.start < a.end {
                return Err(format!(
                    "grants overlap in time: contender {} (token {}) and contender {} (token {})",
                    a.who, a.fence, b.who, b.fence
                ));
            }
            if b.fence <= a.fence {
                return Err(format!(
                    "fencing tokens did not increase: token {} (contender {}) was followed by token {} (contender {})",
                    a.fence, a.who, b.fence, b.who
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn detects_overlap_and_token_regression() {
        let h = History::new();
        let t = Instant::now();
        h.enter(1);
        h.enter(2);
        assert!(h.check().is_err());

        let h = History::new();
        h.enter(1);
        h.exit(1, 5, t);
        std::thread::sleep(Duration::from_millis(2));
        let t2 = Instant::now();
        h.enter(2);
        h.exit(2, 4, t2);
        assert!(h.check().unwrap_err().contains("did not increase"));

        let h = History::new();
        h.enter(1);
        h.exit(1, 5, t);
        let t2 = Instant::now();
        h.enter(2);
        h.exit(2, 6, t2);
        assert!(h.check().is_ok());
    }
}
