//! Semaphores: one item per semaphore name (partition key `<key>\u{1f}semaphore`), holding
//! the number of permits its holders use (`limit`), the fencing counter (`fence`), how many
//! permits are held (`holders`), and one entry per permit: `p:<owner>` = {`r`: RVN, `l`:
//! lease ms, `e`: wall-clock expiry ms, `m`: metadata} beside `pf:<owner>` = its fencing
//! token.
//!
//! A grant is one conditional `UpdateItem`: add our permit if fewer than N are held once the
//! permits this client has seen unchanged for a whole lease are removed (in the same write,
//! each on the condition that its RVN is still the one seen), `fence = fence + 1`, and
//! `limit = N` if it was absent, equal, or no live permit remains (otherwise
//! [`Error::PermitsMismatch`]).

use aws_sdk_dynamodb::types::ReturnValue;
use lock_core::{AcquireRequest, Attempt, Error, Instant, LockInfo, LockKey, Mode, Result};

use crate::entries::{soonest, Parts, AGAIN};
use crate::error::protocol;
use crate::item::{self, new_rvn, Item, Kind, Slots, FENCE};
use crate::place::{entry_value, Place};
use crate::request::{n, signed, Update, Written};
use crate::takeover::MAX_STALE;
use crate::DynamoBackend;

/// The most permits a semaphore has on this backend. Each permit's entry is about 250 bytes
/// plus its metadata's user value; 1,000 of them fit DynamoDB's 400 KB item with values of up
/// to about 100 bytes.
pub const MAX_PERMITS: u32 = 1000;

/// The attribute prefix of a permit entry.
const PERMIT: &str = "p:";

impl DynamoBackend {
    /// One attempt at a permit of the `limit`-permit semaphore `req.key`.
    pub(crate) async fn grant_permit(
        &self,
        req: &AcquireRequest,
        limit: u32,
        until: Instant,
    ) -> Result<Attempt> {
        let place = Place::of(&req.key, req.mode, req.owner)?;
        let stale = self.stale_entries(&place);
        let sent = Instant::now();
        let rvn = new_rvn();
        let meta = req.metadata.encode();
        let mut p = Parts::new(
            place
                .update("acquire", "", "")
                .value(":entry", entry_value(None, &rvn, req.ttl, Some(&meta)))
                .value(":zero", n(0))
                .value(":one", n(1))
                .value(":lim", n(u64::from(limit)))
                .returning(ReturnValue::UpdatedNew),
        );
        let k = p.remove_stale(&stale) as u64;
        p.update = std::mem::replace(&mut p.update, Update::new("", "", ""))
            .value(":delta", signed(1 - k as i64))
            .value(":room", n(u64::from(limit) + k))
            .value(":nstale", n(k));
        p.set.extend(
            [
                "#me = :entry",
                "#mf = if_not_exists(#f, :zero) + :one",
                "#f = if_not_exists(#f, :zero) + :one",
                "#n = if_not_exists(#n, :zero) + :delta",
                "#lim = :lim",
            ]
            .map(String::from),
        );
        p.conditions.extend(
            [
                "attribute_not_exists(#me)",
                "attribute_not_exists(#n) OR #n < :room",
                "attribute_not_exists(#lim) OR #lim = :lim OR #n = :nstale",
            ]
            .map(String::from),
        );
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
            Written::Refused(Some(item)) => self.judge_permit(req, limit, &place, &item, until).await,
        }
    }

    /// What a refused permit attempt found: our own permit (an earlier try's, confirmed), a
    /// semaphore of another size, a full one (held until its first permit may be taken over),
    /// or room after all (try again).
    async fn judge_permit(
        &self,
        req: &AcquireRequest,
        limit: u32,
        place: &Place,
        item: &Item,
        until: Instant,
    ) -> Result<Attempt> {
        let slots = Slots::parse(item, PERMIT)?;
        if let Some(mine) = place.entry.as_deref().and_then(|e| slots.get(e)) {
            return self.confirm(req, place, &mine.rvn.clone(), mine.fence, until).await;
        }
        let left = self.saw_entries(&place.id, &slots);
        let live = left.values().filter(|d| !d.is_zero()).count();
        match slots.limit {
            Some(held) if held != limit && live > 0 => {
                return Err(Error::PermitsMismatch { key: req.key.full().to_owned(), asked: limit, held });
            }
            Some(held) if held != limit && slots.counted.len() > MAX_STALE => {
                // Every permit is stale, but more than the grant that sets the new size can
                // remove (it must remove them all): they go in writes of their own first.
                self.remove_stale_entries(place, &self.stale_entries(place), until).await?;
                return Ok(Attempt::Held { expires_in: Some(AGAIN) });
            }
            _ => {}
        }
        if live >= limit as usize {
            return Ok(Attempt::Held { expires_in: soonest(left.values()) });
        }
        Ok(Attempt::Held { expires_in: Some(AGAIN) })
    }

    /// The live permits of the semaphore `key`.
    pub(crate) async fn permit_holders(&self, key: &LockKey, asked: u32) -> Result<Vec<LockInfo>> {
        let id = Kind::Semaphore.id(key);
        let Some(item) = self.read_item(&id, None).await? else { return Ok(Vec::new()) };
        let slots = Slots::parse(&item, PERMIT)?;
        let left = self.saw_entries(&id, &slots);
        let limit = slots.limit.unwrap_or(asked);
        Ok(self.holders_of(&id, &slots, &left, |name| {
            name.starts_with(PERMIT).then_some(Mode::Permit { limit })
        }))
    }

    /// The live permits of a semaphore item read by a listing (nothing is noted).
    pub(crate) fn listed_permits(&self, id: &str, item: &Item) -> Result<Vec<LockInfo>> {
        let slots = Slots::parse(item, PERMIT)?;
        let limit = slots.limit.unwrap_or(0);
        Ok(self.holders_of(id, &slots, &Default::default(), |name| {
            name.starts_with(PERMIT).then_some(Mode::Permit { limit })
        }))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_full_semaphore_fits_one_item() {
        // An entry: name (34 B) + RVN (1 + 32) + lease and expiry (~16) + map overhead (~8) +
        // default metadata (~130) + fence attribute (35 + ~4): about 260 bytes; a user value of
        // 100 bytes more still fits 1,000 permits in 400 KB.
        assert!(super::MAX_PERMITS as usize * (260 + 100) < 400 * 1024);
    }
}
