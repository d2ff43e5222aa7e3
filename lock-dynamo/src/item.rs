//! The lock item: its attributes, and what contenders remember of the items they saw held.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;
use lock_core::{Instant, OwnerToken, Result};

use crate::error::protocol;

/// The holder's owner token (hex); absent when the lock is free.
pub(crate) const OWNER: &str = "owner";
/// The record version number: a fresh random value on every write.
pub(crate) const RVN: &str = "rvn";
/// The fencing counter; kept by release, incremented by every grant.
pub(crate) const FENCE: &str = "fence";
/// The holder's lease duration in milliseconds.
pub(crate) const LEASE_MS: &str = "lease_ms";
/// When the holder's lease ends by the holder's wall clock (ms since the Unix epoch); only
/// [`Takeover::Clock`](crate::Takeover::Clock) contenders read it.
pub(crate) const EXPIRES_MS: &str = "expires_at_ms";

/// A lock item as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) owner: Option<OwnerToken>,
    pub(crate) rvn: String,
    pub(crate) fence: u64,
    pub(crate) lease: Duration,
    pub(crate) expires_at_ms: Option<u64>,
}

impl Record {
    pub(crate) fn parse(item: &HashMap<String, AttributeValue>) -> Result<Self> {
        let owner = match item.get(OWNER) {
            None => None,
            Some(AttributeValue::S(s)) => Some(
                OwnerToken::parse_hex(s)
                    .ok_or_else(|| protocol(format!("owner attribute {s:?} is not a token")))?,
            ),
            Some(other) => return Err(protocol(format!("owner attribute has the wrong type: {other:?}"))),
        };
        let rvn = match item.get(RVN) {
            Some(AttributeValue::S(s)) => s.clone(),
            None => String::new(),
            Some(other) => return Err(protocol(format!("rvn attribute has the wrong type: {other:?}"))),
        };
        Ok(Self {
            owner,
            rvn,
            fence: number(item, FENCE)?.unwrap_or(0),
            lease: Duration::from_millis(number(item, LEASE_MS)?.unwrap_or(0)),
            expires_at_ms: number(item, EXPIRES_MS)?,
        })
    }
}

/// A number attribute, if present.
pub(crate) fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Result<Option<u64>> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(n)) => {
            n.parse().map(Some).map_err(|_| protocol(format!("{name} attribute {n:?} is not a u64")))
        }
        Some(other) => Err(protocol(format!("{name} attribute has the wrong type: {other:?}"))),
    }
}

/// A fresh record version number.
pub(crate) fn new_rvn() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Milliseconds since the Unix epoch by this host's wall clock.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
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

    fn rec(rvn: &str, lease_ms: u64) -> Record {
        Record {
            owner: Some(OwnerToken::from_u128(1)),
            rvn: rvn.into(),
            fence: 1,
            lease: Duration::from_millis(lease_ms),
            expires_at_ms: None,
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

    #[test]
    fn records_parse_and_reject_wrong_types() {
        let mut item = HashMap::new();
        item.insert(FENCE.to_owned(), AttributeValue::N("7".into()));
        item.insert(RVN.to_owned(), AttributeValue::S("r".into()));
        let r = Record::parse(&item).expect("parses");
        assert_eq!((r.owner, r.fence, r.rvn.as_str()), (None, 7, "r"));
        item.insert(OWNER.to_owned(), AttributeValue::N("1".into()));
        assert!(Record::parse(&item).is_err());
    }
}
