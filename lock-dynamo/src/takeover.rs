//! Takeover from a holder that stopped heartbeating: what this client has seen of held
//! items and entries (record versions counted on its own monotonic clock), and, with
//! [`Takeover::Clock`], the holder's wall-clock expiry plus the skew bound.
//!
//! A lock (or leader) item has one RVN; a semaphore or read-write lock item has one per
//! entry (each permit, reader, the writer, a waiting writer's intent), and each entry is taken
//! over on its own: once this client has seen the same RVN for a whole lease of that entry,
//! its next write removes the entry, on the condition that the RVN is still the one it saw.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lock_core::Instant;

use crate::item::{wall_ms, Entry, Record, Slots};
use crate::place::Place;
use crate::request::{ms, n, s, Update};
use crate::{DynamoBackend, Takeover};

/// The most stale entries one write removes (DynamoDB limits an expression to 4 KB).
pub(crate) const MAX_STALE: usize = 40;

impl DynamoBackend {
    /// Notes that the lock item `id` is held as `rec`; how long until this client may take it
    /// over.
    pub(crate) fn saw_held(&self, id: &str, rec: &Record) -> Duration {
        let by_rvn = self.inner.seen.saw(id, &rec.rvn, rec.lease);
        by_rvn.min(self.by_clock(rec.lease, rec.expires_at_ms))
    }

    /// How long until a lease of `lease` that ends at `expires_at_ms` (the holder's wall
    /// clock) may be taken over by the clock rule: never sooner than `lease` without it.
    /// Zero only once the wall clock is strictly past expiry + skew, as the acquire's
    /// condition (`expiry < now - skew`) requires: otherwise `inspect` could call a lock free
    /// in the very millisecond an acquire is still refused (seen on dynalite in CI).
    fn by_clock(&self, lease: Duration, expires_at_ms: Option<u64>) -> Duration {
        match (self.inner.opts.takeover, expires_at_ms) {
            (Takeover::Clock { max_skew }, Some(exp)) => {
                let cutoff = exp.saturating_add(ms(max_skew));
                lease.min(Duration::from_millis(cutoff.saturating_add(1).saturating_sub(wall_ms())))
            }
            _ => lease,
        }
    }

    /// How long a lock item `id` held as `rec` stays held by what this client has seen,
    /// without noting anything (a listing reads many items it will never contend for).
    pub(crate) fn peek_held(&self, id: &str, rec: &Record) -> Duration {
        let by_rvn = self.inner.seen.peek(id, &rec.rvn).unwrap_or(rec.lease);
        by_rvn.min(self.by_clock(rec.lease, rec.expires_at_ms))
    }

    /// Notes every entry of the item `id`; returns each entry's time until this client may
    /// take it over (zero: now).
    pub(crate) fn saw_entries(&self, id: &str, slots: &Slots) -> HashMap<String, Duration> {
        let entries: Vec<(&str, &Entry, Duration)> =
            slots.all().map(|(name, e)| (name, e, self.by_clock(e.lease, e.expires_at_ms))).collect();
        self.inner.seen.saw_entries(id, &entries)
    }

    /// How long entry `name` of item `id` stays held by what this client has seen, without
    /// noting anything.
    pub(crate) fn peek_entry(&self, id: &str, name: &str, e: &Entry) -> Duration {
        let by_rvn = self.inner.seen.peek_entry(id, name, &e.rvn).unwrap_or(e.lease);
        by_rvn.min(self.by_clock(e.lease, e.expires_at_ms))
    }

    /// The entries of `place`'s item this client may take over now: (attribute name, RVN).
    /// Never `place`'s own counted entry (a permit's or a reader's, named by its owner): that
    /// is an earlier try's grant of ours, which the attempt's refusal finds and confirms, and
    /// which the attempt's own write could not both remove and set.
    pub(crate) fn stale_entries(&self, place: &Place) -> Vec<(String, String)> {
        place.others(self.inner.seen.stale_entries(&place.id))
    }

    /// Adds the takeover part of a lock acquire's condition to `u`: the RVN this client has
    /// seen unchanged for a whole lease, and with [`Takeover::Clock`] a wall-clock expiry
    /// older than the skew bound.
    pub(crate) fn takeover_condition(&self, id: &str, mut u: Update) -> Update {
        if let Some(stale) = self.inner.seen.stale_rvn(id) {
            u.condition.push_str(" OR #v = :stale");
            u = u.value(":stale", s(stale));
        }
        if let Takeover::Clock { max_skew } = self.inner.opts.takeover {
            u.condition.push_str(" OR #e < :cutoff");
            u = u.value(":cutoff", n(wall_ms().saturating_sub(ms(max_skew))));
        }
        u
    }

    /// Forgets what was seen of the lock item `id` (we hold it).
    pub(crate) fn forget(&self, id: &str) {
        self.inner.seen.forget(id);
    }

    /// Forgets the entries seen of item `id`: it is gone (deleted from outside), so the stale
    /// entries an attempt would take over, each a condition that fails on a missing item, are
    /// not there to take.
    pub(crate) fn forget_entries(&self, id: &str) {
        locked(&self.inner.seen.items).by_id.remove(id);
    }
}

/// One RVN as a contender saw it: since when (monotonic), when it may be taken over, and when
/// it was last looked at.
#[derive(Debug, Clone)]
struct Seen {
    rvn: String,
    since: Instant,
    stale_at: Instant,
    last: Instant,
}

impl Seen {
    fn new(rvn: &str, now: Instant, after: Duration) -> Self {
        Self {
            rvn: rvn.to_owned(),
            since: now,
            stale_at: lock_core::lease::add_saturating(now, after),
            last: now,
        }
    }
    /// Not looked at for a whole takeover time: forgetting it costs at most one more wait of
    /// that time, should it be looked at again. (What is still looked at, a dead holder an
    /// observer polls, is kept: forgetting it would report the dead holder again for a lease.)
    fn idle(&self, now: Instant) -> bool {
        lock_core::lease::add_saturating(self.last, self.stale_at - self.since) <= now
    }
}

/// The entries of one item as last seen.
#[derive(Debug, Default)]
struct ItemSeen {
    entries: HashMap<String, Seen>,
}

/// Items by id, pruned of idle ones when they grow past a bound that doubles while what is
/// left is still looked at (so a prune costs O(1) per insertion, amortized).
#[derive(Debug)]
struct Tracked<V> {
    by_id: HashMap<String, V>,
    prune_at: usize,
}

impl<V> Default for Tracked<V> {
    fn default() -> Self {
        Self { by_id: HashMap::new(), prune_at: PRUNE_AT }
    }
}

impl<V> Tracked<V> {
    /// Before `id` is inserted: drops the items `idle` calls idle once there are too many.
    fn make_room(&mut self, id: &str, idle: impl Fn(&V) -> bool) {
        if self.by_id.len() >= self.prune_at && !self.by_id.contains_key(id) {
            self.by_id.retain(|_, v| !idle(v));
            self.prune_at = (self.by_id.len() * 2).max(PRUNE_AT);
        }
    }
}

/// What this client has seen of held items, to take over without trusting clocks.
#[derive(Debug, Default)]
pub(crate) struct Observations {
    locks: Mutex<Tracked<Seen>>,
    items: Mutex<Tracked<ItemSeen>>,
}

/// Items kept before idle ones are pruned.
const PRUNE_AT: usize = 4096;

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Observations {
    /// Records that lock item `id` was seen with `rvn` and lease `lease`; returns how long until
    /// the holder may be taken over (zero once the same RVN has been seen for a whole lease).
    pub(crate) fn saw(&self, id: &str, rvn: &str, lease: Duration) -> Duration {
        let now = Instant::now();
        let mut seen = locked(&self.locks);
        seen.make_room(id, |s| s.idle(now));
        let entry = seen.by_id.entry(id.to_owned()).or_insert_with(|| Seen::new(rvn, now, lease));
        if entry.rvn != rvn {
            *entry = Seen::new(rvn, now, lease);
        }
        entry.last = now;
        entry.stale_at.saturating_duration_since(now)
    }

    /// How long until lock item `id` with `rvn` may be taken over, if this RVN was seen.
    pub(crate) fn peek(&self, id: &str, rvn: &str) -> Option<Duration> {
        let now = Instant::now();
        locked(&self.locks)
            .by_id
            .get(id)
            .filter(|s| s.rvn == rvn)
            .map(|s| s.stale_at.saturating_duration_since(now))
    }

    /// The RVN of lock item `id` that has stayed unchanged for a whole lease, if any: the one
    /// an acquire may overwrite.
    pub(crate) fn stale_rvn(&self, id: &str) -> Option<String> {
        let now = Instant::now();
        locked(&self.locks).by_id.get(id).filter(|s| now >= s.stale_at).map(|s| s.rvn.clone())
    }

    /// Forgets lock item `id` (we hold it, or it was free).
    pub(crate) fn forget(&self, id: &str) {
        locked(&self.locks).by_id.remove(id);
    }

    /// Records the entries of item `id` as seen now, each with its takeover time; entries no
    /// longer there are forgotten. Returns each entry's time until takeover.
    fn saw_entries(&self, id: &str, entries: &[(&str, &Entry, Duration)]) -> HashMap<String, Duration> {
        let now = Instant::now();
        let mut items = locked(&self.items);
        items.make_room(id, |i| i.entries.values().all(|s| s.idle(now)));
        let item = items.by_id.entry(id.to_owned()).or_default();
        let mut next = HashMap::with_capacity(entries.len());
        let mut left = HashMap::with_capacity(entries.len());
        for (name, e, after) in entries {
            let mut seen = match item.entries.remove(*name) {
                Some(s) if s.rvn == e.rvn => s,
                _ => Seen::new(&e.rvn, now, *after),
            };
            seen.last = now;
            left.insert((*name).to_owned(), seen.stale_at.saturating_duration_since(now));
            next.insert((*name).to_owned(), seen);
        }
        item.entries = next;
        left
    }

    /// How long until entry `name` of item `id` with `rvn` may be taken over, if seen.
    fn peek_entry(&self, id: &str, name: &str, rvn: &str) -> Option<Duration> {
        let now = Instant::now();
        let items = locked(&self.items);
        let seen = items.by_id.get(id)?.entries.get(name).filter(|s| s.rvn == rvn)?;
        Some(seen.stale_at.saturating_duration_since(now))
    }

    /// The entries of item `id` seen unchanged for their whole takeover time (at most
    /// [`MAX_STALE`]).
    fn stale_entries(&self, id: &str) -> Vec<(String, String)> {
        let now = Instant::now();
        let items = locked(&self.items);
        let Some(item) = items.by_id.get(id) else { return Vec::new() };
        let mut stale: Vec<(String, String)> = item
            .entries
            .iter()
            .filter(|(_, s)| now >= s.stale_at)
            .map(|(n, s)| (n.clone(), s.rvn.clone()))
            .collect();
        stale.sort();
        stale.truncate(MAX_STALE);
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::OwnerToken;

    fn entry(rvn: &str, lease_ms: u64) -> Entry {
        Entry {
            owner: OwnerToken::from_u128(1),
            rvn: rvn.into(),
            lease: Duration::from_millis(lease_ms),
            expires_at_ms: None,
            fence: 1,
            meta: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_rvn_goes_stale_only_after_a_whole_unchanged_lease() {
        let o = Observations::default();
        let lease = Duration::from_millis(1000);
        assert_eq!(o.saw("k", "a", lease), Duration::from_millis(1000));
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(o.saw("k", "a", lease), Duration::from_millis(400));
        assert_eq!(o.stale_rvn("k"), None);
        // A heartbeat changed the RVN: the count starts again.
        assert_eq!(o.saw("k", "b", lease), Duration::from_millis(1000));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(o.stale_rvn("k"), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(o.stale_rvn("k").as_deref(), Some("b"));
        assert_eq!(o.peek("k", "b"), Some(Duration::ZERO));
        o.forget("k");
        assert_eq!(o.stale_rvn("k"), None);
    }

    /// A dead holder an observer keeps looking at stays takeable when the client's other
    /// sightings fill the table: the prune forgets only what nobody looked at for a lease.
    #[tokio::test(start_paused = true)]
    async fn a_prune_keeps_what_is_still_looked_at() {
        let o = Observations::default();
        let lease = Duration::from_millis(1000);
        let (a, d) = (entry("a", 1000), lease);
        o.saw("dead", "a", lease);
        o.saw_entries("sem", &[("p:1", &a, d)]);
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert_eq!(o.saw("dead", "a", lease), Duration::ZERO);
        assert_eq!(o.saw_entries("sem", &[("p:1", &a, d)])["p:1"], Duration::ZERO);
        for i in 0..2 * PRUNE_AT {
            o.saw(&format!("k{i}"), "x", lease);
            o.saw_entries(&format!("k{i}"), &[("p:1", &a, d)]);
        }
        assert_eq!(o.saw("dead", "a", lease), Duration::ZERO, "the dead holder was reported again");
        assert_eq!(o.stale_entries("sem"), vec![("p:1".to_owned(), "a".to_owned())]);
        // Once nobody looked at them for a lease, they go at the next prune.
        tokio::time::advance(Duration::from_millis(1000)).await;
        let before = locked(&o.locks).by_id.len();
        for i in 0..4 * PRUNE_AT {
            o.saw(&format!("n{i}"), "x", lease);
            o.saw_entries(&format!("n{i}"), &[("p:1", &a, d)]);
            if locked(&o.locks).by_id.len() < before {
                break;
            }
        }
        assert!(locked(&o.locks).by_id.len() < before, "no prune");
        assert_eq!(o.stale_rvn("dead"), None);
        assert!(o.stale_entries("sem").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn each_entry_goes_stale_on_its_own() {
        let o = Observations::default();
        let (a, b) = (entry("a", 1000), entry("b", 1000));
        let d = Duration::from_millis(1000);
        o.saw_entries("sem", &[("p:1", &a, d), ("p:2", &b, d)]);
        tokio::time::advance(Duration::from_millis(600)).await;
        // p:2 heartbeated (a new RVN); p:1 did not.
        let b2 = entry("b2", 1000);
        let left = o.saw_entries("sem", &[("p:1", &a, d), ("p:2", &b2, d)]);
        assert_eq!(left["p:1"], Duration::from_millis(400));
        assert_eq!(left["p:2"], Duration::from_millis(1000));
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(o.stale_entries("sem"), vec![("p:1".to_owned(), "a".to_owned())]);
        // p:1 was released: it is forgotten at the next look.
        o.saw_entries("sem", &[("p:2", &b2, d)]);
        assert!(o.stale_entries("sem").is_empty());
        assert_eq!(o.peek_entry("sem", "p:2", "b2"), Some(Duration::from_millis(600)));
    }
}
