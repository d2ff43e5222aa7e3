//! The lock item (and an election's leader item, laid out the same way): the conditional
//! write that grants it, and what `inspect` reads of it.

use std::time::Duration;

use aws_sdk_dynamodb::types::ReturnValue;
use lock_core::{AcquireRequest, Attempt, FencingToken, Instant, LockInfo, Metadata, Mode, Result};

use crate::error::protocol;
use crate::item::{self, new_rvn, wall_ms, Record, FENCE};
use crate::place::Place;
use crate::request::{ms, n, s, Update, Written};
use crate::DynamoBackend;

impl DynamoBackend {
    /// The write that grants the lock item `place.id` to `req` with RVN `rvn`: free (never
    /// used, or released), or held by an RVN this client has seen unchanged for a whole lease
    /// (or, with the clock rule, expired). Returns the new fence.
    pub(crate) fn lock_grant(&self, req: &AcquireRequest, place: &Place, rvn: &str) -> Update {
        let u = Update::new(
            "acquire",
            "SET #o = :o, #v = :v, #l = :l, #e = :e, #m = :m, #f = if_not_exists(#f, :zero) + :one",
            "attribute_not_exists(#o)",
        )
        .value(":o", s(req.owner.to_string()))
        .value(":v", s(rvn))
        .value(":l", n(ms(req.ttl)))
        .value(":e", n(wall_ms().saturating_add(ms(req.ttl))))
        .value(":m", s(req.metadata.encode()))
        .value(":zero", n(0))
        .value(":one", n(1))
        .returning(ReturnValue::UpdatedNew);
        self.takeover_condition(&place.id, u)
    }

    /// One attempt at a lock or a leader item. A refusal says how long the lock stays held; one
    /// that carries our own owner token is an earlier try's grant whose reply was lost.
    pub(crate) async fn grant_lock(&self, req: &AcquireRequest, until: Instant) -> Result<Attempt> {
        let place = Place::of(&req.key, req.mode, req.owner)?;
        let sent = Instant::now();
        let rvn = new_rvn();
        let rec = match self.write(&place.id, self.lock_grant(req, &place, &rvn), Some(until)).await? {
            Written::Applied(attrs) => {
                let fence =
                    item::number(&attrs, FENCE)?.ok_or_else(|| protocol("acquire returned no fence"))?;
                return Ok(Attempt::Acquired(self.lease(req, &place, fence, rvn, sent)));
            }
            Written::Refused(Some(item)) => Record::parse(&item)?,
            Written::Refused(None) => return Ok(Attempt::Held { expires_in: Some(Duration::ZERO) }),
        };
        match rec.owner {
            // An earlier try of this same request was applied but its reply was lost (the
            // SDK or the waiting loop retried): the grant is ours.
            Some(owner) if owner == req.owner => self.confirm(req, &place, &rec.rvn, rec.fence, until).await,
            Some(_) => Ok(Attempt::Held { expires_in: Some(self.saw_held(&place.id, &rec)) }),
            // Freed between the condition and now: try again at once.
            None => Ok(Attempt::Held { expires_in: Some(Duration::ZERO) }),
        }
    }

    /// The holder of the lock (or leader) item `id`, as `mode`: `None` when free, or when this
    /// client has seen it unchanged for a whole lease (it would take it over).
    pub(crate) async fn inspect_item(&self, id: &str, mode: Mode) -> Result<Option<LockInfo>> {
        let Some(item) = self.read_item(id, None).await? else { return Ok(None) };
        let rec = Record::parse(&item)?;
        let Some(owner) = rec.owner else { return Ok(None) };
        let left = self.saw_held(id, &rec);
        if left.is_zero() {
            return Ok(None);
        }
        Ok(Some(info(&rec, owner, left, mode)))
    }
}

/// What a lock (or leader) item says of its holder.
pub(crate) fn info(rec: &Record, owner: lock_core::OwnerToken, left: Duration, mode: Mode) -> LockInfo {
    LockInfo::new(Some(FencingToken::new(rec.fence)), Some(owner), Some(left))
        .with_mode(mode)
        .with_metadata(rec.meta.as_deref().and_then(Metadata::decode))
}
