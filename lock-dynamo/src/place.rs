//! Where one grant lives, and the writes that act on one grant whatever its primitive: the
//! heartbeat (extend), the release, the metadata update (an election's proclaim), and the
//! confirmation of a grant found on the item although no reply said so.
//!
//! A lock or a leader is the whole item (`owner`, `rvn`, `lease_ms`, …); a permit or a reader
//! is a map attribute named for its owner (`p:<owner>`, `r:<owner>`) beside a fence attribute
//! (`pf:<owner>`, `rf:<owner>`) and counted in `holders`; the writer is the map attribute
//! `writer` (its owner inside) beside `writer_fence`.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use lock_core::{
    AcquireRequest, Attempt, Error, ExtendOutcome, FencingToken, Instant, Lease, LockKey, Mode, OwnerToken,
    Result,
};

use crate::error::NAME;
use aws_sdk_dynamodb::types::ReturnValue;

use crate::item::{
    self, counted_prefix, fence_attr, new_rvn, wall_ms, Entry, Held, Item, Kind, Record, Slots,
};
use crate::request::{ms, n, s, Update, Written};
use crate::DynamoBackend;

/// Where one grant lives: its item, and in it the entry (none for a lock or leader item).
#[derive(Debug, Clone)]
pub(crate) struct Place {
    pub(crate) id: String,
    /// The entry's attribute name, for a permit, a reader or the writer.
    pub(crate) entry: Option<String>,
    /// The entry is counted in `holders` (a permit or a reader).
    pub(crate) counted: bool,
}

impl Place {
    /// The place of `owner`'s grant of `key` in `mode`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a mode this crate does not know.
    pub(crate) fn of(key: &LockKey, mode: Mode, owner: OwnerToken) -> Result<Self> {
        let kind = Kind::of(mode).ok_or_else(|| unsupported(mode))?;
        let id = kind.id(key);
        Ok(match (counted_prefix(mode), mode) {
            (Some(prefix), _) => Self { id, entry: Some(format!("{prefix}{owner}")), counted: true },
            (None, Mode::Write) => Self { id, entry: Some(item::WRITER.to_owned()), counted: false },
            (None, _) => Self { id, entry: None, counted: false },
        })
    }

    /// An update on this place: `#me` and `#mf` name the entry and its fence attribute.
    pub(crate) fn update(&self, op: &'static str, expression: &str, condition: &str) -> Update {
        let u = Update::new(op, expression, condition);
        match &self.entry {
            Some(e) => u.name("#me", e).name("#mf", &fence_attr(e)),
            None => u,
        }
    }

    /// The path of an entry field (`#kr`…) or the lock item's attribute (`#v`…).
    pub(crate) fn path(&self, lock_attr: &str, entry_field: &str) -> String {
        match self.entry {
            Some(_) => format!("#me.{entry_field}"),
            None => lock_attr.to_owned(),
        }
    }

    /// The condition that the grant is `:o`'s.
    pub(crate) fn owner_condition(&self) -> &'static str {
        match (&self.entry, self.counted) {
            (None, _) => "#o = :o",
            (Some(_), true) => "attribute_exists(#me)",
            (Some(_), false) => "#me.#ko = :o",
        }
    }

    /// The grant at this place in `item`: owner, RVN and fencing token.
    pub(crate) fn holder(&self, item: &Item) -> Result<Option<(OwnerToken, String, u64)>> {
        Ok(match &self.entry {
            None => {
                let r = Record::parse(item)?;
                r.owner.map(|o| (o, r.rvn, r.fence))
            }
            Some(name) => entry_in(item, name)?.map(|e| (e.owner, e.rvn, e.fence)),
        })
    }

    /// When the grant at this place in `item` (the lock item, or attributes of it) expires by
    /// its holder's wall clock (ms since the epoch), if it says.
    pub(crate) fn expires_at_ms(&self, item: &Item) -> Result<Option<u64>> {
        Ok(match &self.entry {
            None => Record::parse(item)?.expires_at_ms,
            Some(name) => entry_in(item, name)?.and_then(|e| e.expires_at_ms),
        })
    }

    /// `entries` (attribute name, RVN) without this place's own counted entry (a permit's or
    /// a reader's, named by its owner).
    pub(crate) fn others(&self, mut entries: Vec<(String, String)>) -> Vec<(String, String)> {
        if let (Some(mine), true) = (&self.entry, self.counted) {
            entries.retain(|(name, _)| name != mine);
        }
        entries
    }

    /// Whether `item` holds `owner`'s grant here with the RVN `rvn`.
    pub(crate) fn carries(&self, item: &Item, owner: OwnerToken, rvn: &str) -> Result<bool> {
        Ok(matches!(self.holder(item)?, Some((o, v, _)) if o == owner && v == rvn))
    }
}

/// The entry `name` of `item`'s slots (a permit `p:…`, a reader `r:…`, the writer, the intent).
fn entry_in(item: &Item, name: &str) -> Result<Option<Entry>> {
    let prefix = name.split_once(':').map(|(p, _)| format!("{p}:")).unwrap_or_else(|| "r:".into());
    Ok(Slots::parse(item, &prefix)?.get(name).cloned())
}

/// `Unsupported` for a mode this crate does not know.
pub(crate) fn unsupported(mode: Mode) -> Error {
    Error::Unsupported { backend: NAME, capability: format!("{mode:?} grants") }
}

/// The map value of a new entry: its RVN, lease, wall-clock expiry, metadata, and its owner
/// when the attribute name does not give it.
pub(crate) fn entry_value(
    owner: Option<OwnerToken>,
    rvn: &str,
    ttl: Duration,
    meta: Option<&str>,
) -> AttributeValue {
    let mut m = std::collections::HashMap::new();
    if let Some(o) = owner {
        m.insert(item::E_OWNER.to_owned(), s(o.to_string()));
    }
    m.insert(item::E_RVN.to_owned(), s(rvn));
    m.insert(item::E_LEASE.to_owned(), n(ms(ttl)));
    m.insert(item::E_EXPIRES.to_owned(), n(wall_ms().saturating_add(ms(ttl))));
    if let Some(meta) = meta {
        m.insert(item::E_META.to_owned(), s(meta));
    }
    AttributeValue::M(m)
}

impl DynamoBackend {
    /// The lease of a grant of `req` at `place` with fencing token `fence` and RVN `rvn`.
    pub(crate) fn lease(
        &self,
        req: &AcquireRequest,
        place: &Place,
        fence: u64,
        rvn: String,
        sent: Instant,
    ) -> Lease {
        if place.entry.is_none() {
            self.forget(&place.id);
        }
        Lease::new(req.key.clone(), req.owner, FencingToken::new(fence), req.ttl, sent)
            .with_mode(req.mode)
            .with_backend_data(Held::new(rvn))
    }

    /// One heartbeat of `owner`'s grant at `place`: a new RVN and lease, on the condition that
    /// the grant is ours (and still carries `known`, when given; and, with `unexpired`, that
    /// its holder's wall-clock expiry has not passed on ours). Returns the new RVN.
    async fn heartbeat(
        &self,
        place: &Place,
        owner: OwnerToken,
        ttl: Duration,
        known: Option<&str>,
        until: Option<Instant>,
        unexpired: bool,
    ) -> Result<(Written, String)> {
        let rvn = new_rvn();
        let (pv, pl, pe) = (place.path("#v", "#kr"), place.path("#l", "#kl"), place.path("#e", "#ke"));
        let mut condition = place.owner_condition().to_owned();
        if known.is_some() {
            condition.push_str(&format!(" AND {pv} = :known"));
        }
        let now = wall_ms();
        if unexpired {
            condition.push_str(&format!(" AND {pe} > :now"));
        }
        let mut u = place
            .update("extend", &format!("SET {pv} = :v, {pl} = :l, {pe} = :e"), &condition)
            .value(":o", s(owner.to_string()))
            .value(":v", s(rvn.clone()))
            .value(":l", n(ms(ttl)))
            .value(":e", n(now.saturating_add(ms(ttl))));
        if let Some(k) = known {
            u = u.value(":known", s(k));
        }
        if unexpired {
            u = u.value(":now", n(now));
        }
        let written = match self.write(&place.id, u, until).await? {
            // Refused, but the grant carries this very heartbeat's RVN: the SDK sent it again
            // after the reply to its first send (which was applied) was lost.
            Written::Refused(Some(item)) if place.carries(&item, owner, &rvn)? => Written::Applied(item),
            written => written,
        };
        Ok((written, rvn))
    }

    /// Extends `lease` to `ttl` from now, adopting the RVN of a heartbeat whose reply was lost.
    pub(crate) async fn extend_grant(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let place = Place::of(lease.key(), lease.mode(), lease.owner())?;
        let held = lease.backend_data::<Held>();
        if held.is_some() && Instant::now() >= lease.valid_until() {
            // Our lease ran out on our own clock, so a contender may already count it gone:
            // never revive it. Give it up instead, so nobody waits for it.
            let _ = self.release_grant(&place, lease.owner()).await;
            return Ok(ExtendOutcome::NotHeld);
        }
        let mut known = held.map(|h| h.rvn());
        // A lease rebuilt from its parts (another process) knows neither the grant's RVN nor
        // when it ran out: the grant's own wall-clock expiry says, so that an extend never
        // revives a grant that ran out (with the holder's and our clocks apart, an extend may
        // be refused early, or allowed on a grant that ran out by less than the difference;
        // a takeover still compares the RVN it saw, so it never overlaps the revived one).
        let rebuilt = held.is_none();
        for _ in 0..2 {
            let sent = Instant::now();
            match self.heartbeat(&place, lease.owner(), ttl, known.as_deref(), None, rebuilt).await? {
                (Written::Applied(_), rvn) => {
                    if let Some(h) = held {
                        h.set(rvn);
                    }
                    return Ok(ExtendOutcome::Extended {
                        valid_until: lock_core::lease::valid_until(sent, ttl),
                    });
                }
                (Written::Refused(Some(item)), _) => match place.holder(&item)? {
                    // Still ours, but our last heartbeat's reply was lost: adopt its RVN.
                    Some((o, rvn, _))
                        if !rebuilt && o == lease.owner() && known.as_deref() != Some(rvn.as_str()) =>
                    {
                        known = Some(rvn);
                    }
                    _ => return Ok(ExtendOutcome::NotHeld),
                },
                (Written::Refused(None), _) => return Ok(ExtendOutcome::NotHeld),
            }
        }
        Ok(ExtendOutcome::NotHeld)
    }

    /// A grant of `req` found at `place` with RVN `known` and token `fence` although no reply
    /// said so: an earlier try of the same request was applied and its reply lost. That try
    /// may have been sent long ago (contenders count the lease from when they first saw its
    /// RVN), so the grant is confirmed with a heartbeat first, and the lease is measured from
    /// that heartbeat.
    pub(crate) async fn confirm(
        &self,
        req: &AcquireRequest,
        place: &Place,
        known: &str,
        fence: u64,
        until: Instant,
    ) -> Result<Attempt> {
        let sent = Instant::now();
        Ok(match self.heartbeat(place, req.owner, req.ttl, Some(known), Some(until), false).await? {
            (Written::Applied(_), rvn) => Attempt::Acquired(self.lease(req, place, fence, rvn, sent)),
            // Taken over (or changed) meanwhile: look again.
            (Written::Refused(_), _) => Attempt::Held { expires_in: Some(Duration::ZERO) },
        })
    }

    /// Removes `owner`'s grant at `place`: `true` if it held it. The release also writes its
    /// new RVN as `release_rvn`, which no grant touches: when its request is sent again because
    /// the reply was lost (the SDK retries), the refusal carries that RVN, and the release
    /// recognises itself (unless another release of the same item came in between). A second
    /// release (a new call, a new RVN) reports that it found nothing.
    pub(crate) async fn release_grant(&self, place: &Place, owner: OwnerToken) -> Result<bool> {
        Ok(self.release_grant_seen(place, owner, false).await?.0)
    }

    /// [`release_grant`](Self::release_grant), and with `old`, the grant's attributes as they
    /// were before it (when the release was applied and its reply came).
    pub(crate) async fn release_grant_seen(
        &self,
        place: &Place,
        owner: OwnerToken,
        old: bool,
    ) -> Result<(bool, Option<Item>)> {
        let rvn = new_rvn();
        let expression = match (&place.entry, place.counted) {
            (None, _) => "REMOVE #o, #l, #e, #m SET #v = :v, #r = :v",
            (Some(_), true) => "REMOVE #me, #mf SET #r = :v, #n = #n - :one",
            (Some(_), false) => "REMOVE #me, #mf SET #r = :v",
        };
        let mut u = place
            .update("release", expression, place.owner_condition())
            .value(":o", s(owner.to_string()))
            .value(":v", s(rvn.clone()))
            .value(":one", n(1));
        if old {
            u = u.returning(ReturnValue::UpdatedOld);
        }
        Ok(match self.write(&place.id, u, None).await? {
            Written::Applied(item) => (true, old.then_some(item)),
            Written::Refused(Some(item)) => {
                (item::string(&item, item::RELEASE_RVN)?.as_deref() == Some(rvn.as_str()), None)
            }
            Written::Refused(None) => (false, None),
        })
    }

    /// Replaces the metadata of `lease`'s grant (an election's proclaim), if it is still ours;
    /// the grant's expiry and RVN stay as they are.
    pub(crate) async fn update_grant_metadata(&self, lease: &Lease, meta: &str) -> Result<ExtendOutcome> {
        let place = Place::of(lease.key(), lease.mode(), lease.owner())?;
        if lease.backend_data::<Held>().is_some() && Instant::now() >= lease.valid_until() {
            return Ok(ExtendOutcome::NotHeld);
        }
        let pm = place.path("#m", "#km");
        let u = place
            .update("update metadata", &format!("SET {pm} = :m"), place.owner_condition())
            .value(":o", s(lease.owner().to_string()))
            .value(":m", s(meta))
            .without_item();
        Ok(match self.write(&place.id, u, None).await? {
            Written::Applied(_) => ExtendOutcome::Extended { valid_until: lease.valid_until() },
            Written::Refused(_) => ExtendOutcome::NotHeld,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_counted_entries_are_never_others() {
        let me = OwnerToken::from_u128(7);
        let key = LockKey::new("k").expect("key");
        let entries = |names: &[&str]| names.iter().map(|n| ((*n).to_owned(), "rvn".to_owned())).collect();
        let permit = Place::of(&key, Mode::Permit { limit: 3 }, me).expect("place");
        let mine = permit.entry.clone().expect("entry");
        let theirs = format!("p:{}", OwnerToken::from_u128(8));
        assert_eq!(permit.others(entries(&[&mine, &theirs])), entries(&[&theirs]));
        let reader = Place::of(&key, Mode::Read, me).expect("place");
        let mine = reader.entry.clone().expect("entry");
        assert_eq!(reader.others(entries(&[&mine])), entries(&[]));
        // The writer's entry is shared by every writer: a stale one is taken over by anyone.
        let writer = Place::of(&key, Mode::Write, me).expect("place");
        assert_eq!(writer.others(entries(&[item::WRITER])), entries(&[item::WRITER]));
    }
}
