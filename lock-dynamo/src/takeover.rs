//! Takeover from a holder that stopped heartbeating: what this client has seen of held
//! items (record versions counted on its own monotonic clock), and, with
//! [`Takeover::Clock`], the holder's wall-clock expiry plus the skew bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use lock_core::{Instant, LockKey};

use crate::item::{wall_ms, Record};
use crate::request::{ms, n};
use crate::{DynamoBackend, Takeover};

impl DynamoBackend {
    /// Notes that `key` is held as `rec`; how long until this client may take it over.
    pub(crate) fn saw_held(&self, key: &LockKey, rec: &Record) -> Duration {
        let by_rvn = self.inner.seen.saw_held(key.full(), rec);
        match (self.inner.opts.takeover, rec.expires_at_ms) {
            (Takeover::Clock { max_skew }, Some(exp)) => {
                let cutoff = exp.saturating_add(max_skew.as_millis() as u64);
                by_rvn.min(Duration::from_millis(cutoff.saturating_sub(wall_ms())))
            }
            _ => by_rvn,
        }
    }

    /// The takeover part of an acquire's condition, added to `condition` and `values`: the
    /// RVN this client has seen unchanged for a whole lease, and with [`Takeover::Clock`] a
    /// wall-clock expiry older than the skew bound.
    pub(crate) fn takeover_condition(
        &self,
        key: &LockKey,
        condition: &mut String,
        values: &mut Vec<(&str, AttributeValue)>,
    ) {
        if let Some(stale) = self.inner.seen.stale_rvn(key.full()) {
            condition.push_str(" OR #v = :stale");
            values.push((":stale", AttributeValue::S(stale)));
        }
        if let Takeover::Clock { max_skew } = self.inner.opts.takeover {
            condition.push_str(" OR #e < :cutoff");
            values.push((":cutoff", n(wall_ms().saturating_sub(ms(max_skew)))));
        }
    }
}

/// One held item as a contender saw it: the RVN, since when (monotonic), for how long.
#[derive(Debug)]
struct Seen {
    rvn: String,
    since: Instant,
    lease: Duration,
}

/// What this client has seen of held items, to take over without trusting clocks.
#[derive(Debug, Default)]
pub(crate) struct Observations {
    seen: Mutex<HashMap<String, Seen>>,
}

/// Entries kept before old ones are pruned.
const PRUNE_AT: usize = 4096;

impl Observations {
    /// Records that `id` was seen held as `rec`; returns how long until the holder may be
    /// taken over (zero once the same RVN has been seen for a whole lease).
    pub(crate) fn saw_held(&self, id: &str, rec: &Record) -> Duration {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= PRUNE_AT && !seen.contains_key(id) {
            seen.retain(|_, s| s.since + s.lease * 2 > now);
        }
        let entry = seen.entry(id.to_owned()).or_insert_with(|| Seen {
            rvn: rec.rvn.clone(),
            since: now,
            lease: rec.lease,
        });
        if entry.rvn != rec.rvn {
            *entry = Seen { rvn: rec.rvn.clone(), since: now, lease: rec.lease };
        }
        (entry.since + entry.lease).saturating_duration_since(now)
    }

    /// The RVN of `id` that has stayed unchanged for a whole lease, if any: the one an
    /// acquire may overwrite.
    pub(crate) fn stale_rvn(&self, id: &str) -> Option<String> {
        let now = Instant::now();
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(id).filter(|s| now >= s.since + s.lease).map(|s| s.rvn.clone())
    }

    /// Forgets `id` (we hold it, or it was free).
    pub(crate) fn forget(&self, id: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::OwnerToken;

    fn rec(rvn: &str, lease_ms: u64) -> Record {
        Record {
            owner: Some(OwnerToken::from_u128(1)),
            rvn: rvn.into(),
            fence: 1,
            lease: Duration::from_millis(lease_ms),
            expires_at_ms: None,
            release_rvn: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_rvn_goes_stale_only_after_a_whole_unchanged_lease() {
        let o = Observations::default();
        assert_eq!(o.saw_held("k", &rec("a", 1000)), Duration::from_millis(1000));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(o.saw_held("k", &rec("a", 1000)), Duration::from_millis(400));
        assert_eq!(o.stale_rvn("k"), None);
        // A heartbeat changed the RVN: the count starts again.
        assert_eq!(o.saw_held("k", &rec("b", 1000)), Duration::from_millis(1000));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(o.stale_rvn("k"), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(o.stale_rvn("k").as_deref(), Some("b"));
        o.forget("k");
        assert_eq!(o.stale_rvn("k"), None);
    }
}
