//! What the items of many entries share (a semaphore's permits, a read-write lock's readers,
//! writer and intent): building a grant's expression with the removal of the entries this
//! client may take over, and reading the holders back.

use std::collections::HashMap;
use std::time::Duration;

use lock_core::{FencingToken, LockInfo, Metadata, Mode};

use crate::item::{fence_attr, Entry, Slots, INTENT};
use crate::request::{s, Update};
use crate::DynamoBackend;

/// An update expression in parts: `SET` clauses, `REMOVE` paths and conditions (all of which
/// must hold), with the update that collects the names and values.
pub(crate) struct Parts {
    pub(crate) set: Vec<String>,
    pub(crate) remove: Vec<String>,
    pub(crate) conditions: Vec<String>,
    pub(crate) update: Update,
}

impl Parts {
    pub(crate) fn new(update: Update) -> Self {
        Self { set: Vec::new(), remove: Vec::new(), conditions: Vec::new(), update }
    }

    /// Removes the stale entries `stale` (attribute name, RVN) and their fence attributes, on
    /// the condition that each still carries the RVN this client saw unchanged for a whole
    /// lease. Returns how many there were.
    pub(crate) fn remove_stale(&mut self, stale: &[(String, String)]) -> usize {
        for (i, (name, rvn)) in stale.iter().enumerate() {
            let (a, af, v) = (format!("#x{i}"), format!("#xf{i}"), format!(":x{i}"));
            let u = std::mem::replace(&mut self.update, Update::new("", "", ""));
            self.update = u.name(&a, name).name(&af, &fence_attr(name)).value(&v, s(rvn));
            self.conditions.push(format!("{a}.#kr = {v}"));
            self.remove.push(a);
            if name != INTENT {
                self.remove.push(af);
            }
        }
        stale.len()
    }

    /// The finished update: `SET … REMOVE …` on the condition that every condition holds.
    pub(crate) fn build(self) -> Update {
        let mut expression = String::new();
        if !self.set.is_empty() {
            expression = format!("SET {}", self.set.join(", "));
        }
        if !self.remove.is_empty() {
            expression = format!("{expression} REMOVE {}", self.remove.join(", ")).trim().to_owned();
        }
        let condition = self.conditions.iter().map(|c| format!("({c})")).collect::<Vec<_>>().join(" AND ");
        let mut u = self.update;
        u.expression = expression;
        u.condition = condition;
        u
    }
}

/// The least of the non-zero durations, if any.
pub(crate) fn soonest<'a>(left: impl IntoIterator<Item = &'a Duration>) -> Option<Duration> {
    left.into_iter().filter(|d| !d.is_zero()).min().copied()
}

/// How long a refused attempt waits before looking again when nothing live stands in its way
/// (what stood there changed meanwhile, or is stale and goes with the next attempt).
pub(crate) const AGAIN: Duration = Duration::from_millis(5);

impl DynamoBackend {
    /// Removes `stale` (entries this client saw unchanged for a whole lease, at most
    /// [`MAX_STALE`](crate::takeover::MAX_STALE)) from the item at `place` in a write of their
    /// own, each on the condition that it still carries the RVN seen: a grant that must clear
    /// more entries than one write can remove would otherwise be refused for ever.
    pub(crate) async fn remove_stale_entries(
        &self,
        place: &crate::place::Place,
        stale: &[(String, String)],
        until: lock_core::Instant,
    ) -> lock_core::Result<()> {
        if stale.is_empty() {
            return Ok(());
        }
        let mut p = Parts::new(
            place.update("remove stale entries", "", "").value(":k", crate::request::n(stale.len() as u64)),
        );
        p.remove_stale(stale);
        p.set.push("#n = #n - :k".into());
        self.write(&place.id, p.build().without_item(), Some(until)).await?;
        Ok(())
    }

    /// The live holders of item `id` (entries this client would not take over), each with its
    /// mode (`mode_of`: `None` leaves an entry out, such as an intent).
    pub(crate) fn holders_of(
        &self,
        id: &str,
        slots: &Slots,
        left: &HashMap<String, Duration>,
        mode_of: impl Fn(&str) -> Option<Mode>,
    ) -> Vec<LockInfo> {
        slots
            .all()
            .filter_map(|(name, e)| {
                let mode = mode_of(name)?;
                let left = left.get(name).copied().unwrap_or_else(|| self.peek_entry(id, name, e));
                (!left.is_zero()).then(|| entry_info(e, left, mode))
            })
            .collect()
    }
}

/// What an entry says of its holder.
pub(crate) fn entry_info(e: &Entry, left: Duration, mode: Mode) -> LockInfo {
    LockInfo::new(Some(FencingToken::new(e.fence)), Some(e.owner), Some(left))
        .with_mode(mode)
        .with_metadata(e.meta.as_deref().and_then(Metadata::decode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_compose_set_remove_and_conditions() {
        let mut p = Parts::new(Update::new("t", "", ""));
        p.set.push("#me = :entry".into());
        p.conditions.push("attribute_not_exists(#me)".into());
        assert_eq!(p.remove_stale(&[("p:1".into(), "a".into())]), 1);
        let u = p.build();
        assert_eq!(u.expression, "SET #me = :entry REMOVE #x0, #xf0");
        assert_eq!(u.condition, "(attribute_not_exists(#me)) AND (#x0.#kr = :x0)");
        assert!(u.names.iter().any(|(a, n)| a == "#xf0" && n == "pf:1"));
    }
}
