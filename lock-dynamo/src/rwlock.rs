//! Read-write locks: one item per name (partition key `<key>\u{1f}rwlock`) with the fencing
//! counter (`fence`), one entry per reader (`r:<owner>` = {`r`, `l`, `e`, `m`} beside
//! `rf:<owner>`, counted in `holders`), the writer's entry (`writer` = {`o`: owner, `r`, `l`,
//! `e`, `m`} beside `writer_fence`), and a waiting writer's intent (`intent` = {`o`, `r`, `l`,
//! `e`}). Every entry is taken over on its own RVN, as a lock is.
//!
//! - A reader is granted while there is no live writer and no live intent.
//! - A writer is granted while there is no live writer, no live reader, and no live intent
//!   but its own; the grant removes the intent.
//! - **Writer preference**: a writer that waits, once refused, leaves an intent (refreshed by
//!   its attempts at least every quarter of the intent's lease, each time with a new RVN), so a
//!   stream of readers cannot starve it. The intent is withdrawn when the writer gives up, is
//!   dropped or fails; a writer that crashes leaves an intent that contenders take over like a
//!   crashed holder's grant. One intent at a time: another waiting writer waits behind it.
//! - Every grant, reader or writer, increments the one fencing counter.

use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_dynamodb::types::ReturnValue;
use lock_core::{AcquireRequest, Attempt, Instant, LockInfo, LockKey, Mode, OwnerToken, Result};

use crate::entries::{soonest, Parts, AGAIN};
use crate::error::protocol;
use crate::item::{self, new_rvn, Item, Kind, Slots, FENCE, INTENT, WRITER};
use crate::place::{entry_value, Place};
use crate::request::{n, s, signed, Update, Written};
use crate::takeover::MAX_STALE;
use crate::DynamoBackend;

/// The attribute prefix of a reader entry.
const READER: &str = "r:";

/// A waiting writer's intent, as its attempts left it.
#[derive(Debug, Default)]
pub(crate) struct IntentState {
    /// The RVN of our last intent write, and when it was applied.
    written: Option<(String, Instant)>,
    /// An intent write was cut off unanswered: it may still land, even after the writer got
    /// the lock and released it.
    pub(crate) late: bool,
}

/// Splits stale entries into (readers, writer RVN, intent RVN).
fn split_stale(stale: Vec<(String, String)>) -> (Vec<(String, String)>, Option<String>, Option<String>) {
    let (mut readers, mut writer, mut intent) = (Vec::new(), None, None);
    for (name, rvn) in stale {
        match name.as_str() {
            WRITER => writer = Some(rvn),
            INTENT => intent = Some(rvn),
            _ => readers.push((name, rvn)),
        }
    }
    (readers, writer, intent)
}

impl DynamoBackend {
    /// How long a waiting writer's intent lasts unless refreshed: the writer's TTL, at least
    /// four polls, at most twice a poll and a request timeout.
    pub(crate) fn intent_lease(&self, ttl: Duration) -> Duration {
        let o = &self.inner.opts;
        ttl.max(o.poll_interval.saturating_mul(4))
            .min(o.poll_interval.saturating_add(o.request_timeout).saturating_mul(2))
    }

    /// One attempt at a read or write lock (`writer`: the waiting writer's intent state).
    pub(crate) async fn grant_rw(
        &self,
        req: &AcquireRequest,
        until: Instant,
        writer: Option<&Mutex<IntentState>>,
    ) -> Result<Attempt> {
        let place = Place::of(&req.key, req.mode, req.owner)?;
        let (readers, stale_writer, stale_intent) = split_stale(self.stale_entries(&place));
        let sent = Instant::now();
        let rvn = new_rvn();
        let meta = req.metadata.encode();
        let is_writer = req.mode == Mode::Write;
        let owner = is_writer.then_some(req.owner);
        let mut p = Parts::new(
            place
                .update("acquire", "", "")
                .value(":entry", entry_value(owner, &rvn, req.ttl, Some(&meta)))
                .value(":o", s(req.owner.to_string()))
                .value(":zero", n(0))
                .value(":one", n(1))
                .returning(ReturnValue::UpdatedNew),
        );
        let k = p.remove_stale(&readers) as u64;
        p.set.extend(
            ["#me = :entry", "#mf = if_not_exists(#f, :zero) + :one", "#f = if_not_exists(#f, :zero) + :one"]
                .map(String::from),
        );
        // The writer's entry: `#me` for a writer (its own place), `#w` for a reader.
        let w = if is_writer { "#me" } else { "#w" };
        let mut writer_free = format!("attribute_not_exists({w})");
        if let Some(sw) = stale_writer {
            writer_free.push_str(&format!(" OR {w}.#kr = :sw"));
            p.update = take(&mut p.update).value(":sw", s(sw));
            if !is_writer {
                p.remove.extend(["#w".to_owned(), "#wf".to_owned()]);
            }
        }
        p.conditions.push(writer_free);
        let mut intent_free = String::from("attribute_not_exists(#i)");
        if let Some(i) = stale_intent {
            intent_free.push_str(" OR #i.#kr = :si");
            p.update = take(&mut p.update).value(":si", s(i));
        }
        if is_writer {
            // No live reader once the stale ones go; no live intent but ours (removed).
            intent_free.push_str(" OR #i.#ko = :o");
            p.conditions.push("attribute_not_exists(#n) OR #n = :nstale".into());
            p.update = take(&mut p.update).value(":nstale", n(k)).value(":k", n(k));
            if k > 0 {
                p.set.push("#n = #n - :k".into());
            }
            p.remove.push("#i".into());
        } else {
            p.conditions.push("attribute_not_exists(#me)".into());
            p.set.push("#n = if_not_exists(#n, :zero) + :delta".into());
            p.update = take(&mut p.update).value(":delta", signed(1 - k as i64));
            if intent_free.contains(":si") {
                p.remove.push("#i".into());
            }
        }
        p.conditions.push(intent_free);
        match self.write(&place.id, p.build(), Some(until)).await? {
            Written::Applied(attrs) => {
                let fence =
                    item::number(&attrs, FENCE)?.ok_or_else(|| protocol("acquire returned no fence"))?;
                Ok(Attempt::Acquired(self.lease(req, &place, fence, rvn, sent)))
            }
            Written::Refused(None) => {
                // No item to judge: it is gone, and what was seen of its entries with it.
                self.forget_entries(&place.id);
                Ok(Attempt::Held { expires_in: Some(AGAIN) })
            }
            Written::Refused(Some(item)) => self.judge_rw(req, &place, &item, until, writer).await,
        }
    }

    /// What a refused read or write attempt found: our own grant (an earlier try's,
    /// confirmed), what stands in the way and for how long (a waiting writer then leaves or
    /// refreshes its intent), or nothing live (try again).
    async fn judge_rw(
        &self,
        req: &AcquireRequest,
        place: &Place,
        item: &Item,
        until: Instant,
        writer: Option<&Mutex<IntentState>>,
    ) -> Result<Attempt> {
        let slots = Slots::parse(item, READER)?;
        let name = place.entry.as_deref().unwrap_or(WRITER);
        if let Some(mine) = slots.get(name).filter(|e| e.owner == req.owner) {
            let (rvn, fence) = (mine.rvn.clone(), mine.fence);
            return self.confirm(req, place, &rvn, fence, until).await;
        }
        let left = self.saw_entries(&place.id, &slots);
        let live = |n: &str| left.get(n).is_some_and(|d| !d.is_zero());
        let is_writer = req.mode == Mode::Write;
        let blocking: Vec<&Duration> = slots
            .all()
            .filter(|(n, e)| match *n {
                INTENT => live(n) && !(is_writer && e.owner == req.owner),
                WRITER => live(n),
                _ => is_writer && live(n),
            })
            .filter_map(|(n, _)| left.get(n))
            .collect();
        if blocking.is_empty() {
            if is_writer && slots.counted.len() > MAX_STALE {
                // A writer's grant must remove every reader, and one write removes at most
                // MAX_STALE: past that many crashed readers it would be refused for ever.
                // Stale readers go in writes of their own first.
                self.remove_stale_readers(place, until).await?;
            }
            return Ok(Attempt::Held { expires_in: Some(AGAIN) });
        }
        if let Some(state) = writer {
            self.leave_intent(req, place, &slots, live(INTENT), state, until).await;
        }
        Ok(Attempt::Held { expires_in: soonest(blocking) })
    }

    /// Removes up to [`MAX_STALE`] readers this client saw unchanged for a whole lease, in a
    /// write of their own (each on the condition that it still carries the RVN seen).
    async fn remove_stale_readers(&self, place: &Place, until: Instant) -> Result<()> {
        let (readers, _, _) = split_stale(self.stale_entries(place));
        self.remove_stale_entries(place, &readers, until).await
    }

    /// Leaves or refreshes a waiting writer's intent: when the slot is free, ours, or stale,
    /// and ours was not written in the last quarter of its lease. Failures are only logged
    /// (the intent is a preference; the wait goes on).
    async fn leave_intent(
        &self,
        req: &AcquireRequest,
        place: &Place,
        slots: &Slots,
        intent_live: bool,
        state: &Mutex<IntentState>,
        until: Instant,
    ) {
        let lease = self.intent_lease(req.ttl);
        let last = state.lock().unwrap_or_else(|p| p.into_inner()).written.clone();
        let mut slot = String::from("attribute_not_exists(#i) OR #i.#ko = :o");
        let mut stale_rvn = None;
        match &slots.intent {
            // Ours, written lately: nothing to do yet.
            Some(i) if i.owner == req.owner => {
                let fresh = last.as_ref().is_some_and(|(rvn, at)| *rvn == i.rvn && at.elapsed() < lease / 4);
                if fresh {
                    return;
                }
            }
            // Another writer's, live: it goes first.
            Some(_) if intent_live => return,
            Some(stale) => {
                slot.push_str(" OR #i.#kr = :si");
                stale_rvn = Some(stale.rvn.clone());
            }
            None => {}
        }
        // Never behind our own grant (a late intent would block readers after we release).
        let condition = format!("({slot}) AND (attribute_not_exists(#w) OR #w.#ko <> :o)");
        let rvn = new_rvn();
        let mut u = Update::new("leave intent", "SET #i = :intent", condition)
            .value(":intent", entry_value(Some(req.owner), &rvn, lease, None))
            .value(":o", s(req.owner.to_string()))
            .without_item();
        if let Some(si) = stale_rvn {
            u = u.value(":si", s(si));
        }
        match self.write(&place.id, u, Some(until)).await {
            Ok(Written::Applied(_)) => {
                state.lock().unwrap_or_else(|p| p.into_inner()).written = Some((rvn, Instant::now()));
            }
            Ok(Written::Refused(_)) => {}
            Err(e) => {
                if e.is_retryable() {
                    state.lock().unwrap_or_else(|p| p.into_inner()).late = true;
                }
                tracing::debug!(backend = crate::error::NAME, key = %req.key, error = %e, "could not leave a writer's intent")
            }
        }
    }

    /// Withdraws `owner`'s intent on the read-write lock `key`, if it has one; done by
    /// `until` when given.
    pub(crate) async fn withdraw_intent(
        &self,
        key: &LockKey,
        owner: OwnerToken,
        until: Option<Instant>,
    ) -> Result<()> {
        let u = Update::new("withdraw intent", "REMOVE #i", "#i.#ko = :o")
            .value(":o", s(owner.to_string()))
            .without_item();
        self.write(&Kind::ReadWrite.id(key), u, until).await.map(|_| ())
    }

    /// The live readers and writer of the read-write lock `key`.
    pub(crate) async fn rw_holders(&self, key: &LockKey) -> Result<Vec<LockInfo>> {
        let id = Kind::ReadWrite.id(key);
        let Some(item) = self.read_item(&id, None).await? else { return Ok(Vec::new()) };
        let slots = Slots::parse(&item, READER)?;
        let left = self.saw_entries(&id, &slots);
        Ok(self.holders_of(&id, &slots, &left, rw_mode))
    }

    /// The live readers and writer of a read-write lock item read by a listing.
    pub(crate) fn listed_rw(&self, id: &str, item: &Item) -> Result<Vec<LockInfo>> {
        let slots = Slots::parse(item, READER)?;
        Ok(self.holders_of(id, &slots, &Default::default(), rw_mode))
    }
}

/// The mode of a read-write lock entry (`None`: the intent, which holds nothing).
fn rw_mode(name: &str) -> Option<Mode> {
    match name {
        WRITER => Some(Mode::Write),
        INTENT => None,
        _ => Some(Mode::Read),
    }
}

/// Takes the update out of its place (to add to it by value).
fn take(u: &mut Update) -> Update {
    std::mem::replace(u, Update::new("", "", ""))
}
