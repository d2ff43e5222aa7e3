//! The requests on a lock item: the conditional `UpdateItem` every write is (acquire,
//! heartbeat, release), the strongly consistent read, and the writes that clean up after a
//! lost reply or a cancelled acquire.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use lock_core::{AcquireRequest, Attempt, LockKey, OwnerToken, Result};

use crate::error::{self, NAME};
use crate::item::{new_rvn, wall_ms, Record, EXPIRES_MS, FENCE, LEASE_MS, OWNER, RVN};
use crate::DynamoBackend;

/// What a conditional write found.
pub(crate) enum Written {
    /// Applied.
    Applied(HashMap<String, AttributeValue>),
    /// The condition failed; the item as it was (`None` if the server did not return it).
    Refused(Option<HashMap<String, AttributeValue>>),
}

/// A number attribute value.
pub(crate) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// A duration in whole milliseconds.
pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl DynamoBackend {
    /// The item's key attributes.
    fn item_key(&self, key: &LockKey) -> HashMap<String, AttributeValue> {
        let o = &self.inner.opts;
        let mut k = HashMap::with_capacity(2);
        k.insert(o.partition_key.clone(), AttributeValue::S(key.full().to_owned()));
        if let Some(sk) = &o.sort_key {
            k.insert(sk.name.clone(), AttributeValue::S(sk.value.clone()));
        }
        k
    }

    /// One conditional `UpdateItem` on `key`'s item. A failed condition returns the item
    /// (`ReturnValuesOnConditionCheckFailure`), so a held lock costs no extra read.
    pub(crate) async fn write(
        &self,
        op: &str,
        key: &LockKey,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
        returns: ReturnValue,
    ) -> Result<Written> {
        let mut req = self
            .inner
            .client
            .update_item()
            .table_name(&self.inner.opts.table)
            .set_key(Some(self.item_key(key)))
            .update_expression(update)
            .condition_expression(condition)
            .return_values(returns)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (alias, name) in [("#o", OWNER), ("#v", RVN), ("#f", FENCE), ("#l", LEASE_MS), ("#e", EXPIRES_MS)]
        {
            if update.contains(alias) || condition.contains(alias) {
                req = req.expression_attribute_names(alias, name);
            }
        }
        for (name, value) in values {
            req = req.expression_attribute_values(name, value);
        }
        match req.send().await {
            Ok(out) => Ok(Written::Applied(out.attributes.unwrap_or_default())),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    Ok(Written::Refused(c.item.clone()))
                }
                _ => Err(error::sdk(op, &self.inner.opts.table, e)),
            },
        }
    }

    /// The item as it is now (a strongly consistent read), if it exists.
    pub(crate) async fn read(&self, key: &LockKey) -> Result<Option<Record>> {
        let out = self
            .inner
            .client
            .get_item()
            .table_name(&self.inner.opts.table)
            .set_key(Some(self.item_key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::sdk("GetItem", &self.inner.opts.table, e))?;
        out.item().map(Record::parse).transpose()
    }

    /// A grant of `req` found on the item although no reply said so: an earlier try of the
    /// same request was applied and its reply lost. That try may have been sent long ago
    /// (contenders count the lease from when they first saw its RVN), so the grant is
    /// confirmed with a heartbeat first, and the lease is measured from that heartbeat.
    pub(crate) async fn recover(&self, req: &AcquireRequest, item: Record) -> Result<Attempt> {
        let sent = lock_core::Instant::now();
        let rvn = new_rvn();
        let written = self
            .write(
                "acquire (confirm)",
                &req.key,
                "SET #v = :v, #l = :l, #e = :e",
                "#o = :o AND #v = :known",
                vec![
                    (":o", AttributeValue::S(req.owner.to_string())),
                    (":known", AttributeValue::S(item.rvn)),
                    (":v", AttributeValue::S(rvn.clone())),
                    (":l", n(ms(req.ttl))),
                    (":e", n(wall_ms().saturating_add(ms(req.ttl)))),
                ],
                ReturnValue::None,
            )
            .await?;
        Ok(match written {
            Written::Applied(_) => Attempt::Acquired(self.lease(req, item.fence, rvn, sent)),
            // Taken over (or changed) meanwhile: look again.
            Written::Refused(_) => Attempt::Held { expires_in: Some(Duration::ZERO) },
        })
    }

    /// Removes `owner`'s grant of `key`: `true` if it held it.
    pub(crate) async fn release_owner(&self, key: &LockKey, owner: OwnerToken) -> Result<bool> {
        let written = self
            .write(
                "release",
                key,
                "REMOVE #o, #l, #e SET #v = :v",
                "#o = :o",
                vec![(":o", AttributeValue::S(owner.to_string())), (":v", AttributeValue::S(new_rvn()))],
                ReturnValue::None,
            )
            .await?;
        Ok(matches!(written, Written::Applied(_)))
    }

    /// The undo of an acquire whose caller went away mid-flight. The request may still reach
    /// DynamoDB after this starts (it travels on its own connection), so the release is
    /// tried again, a few times, until it finds the grant or a request timeout has passed.
    pub(crate) async fn undo_acquire(self, key: LockKey, owner: OwnerToken) {
        let pauses = std::iter::once(Duration::ZERO)
            .chain(lock_core::cancel::LATE_GRANT_RECHECKS)
            .chain([self.inner.opts.request_timeout]);
        let released = lock_core::cancel::undo_after(pauses, || async {
            matches!(self.release_owner(&key, owner).await, Ok(true))
        })
        .await;
        if released {
            tracing::debug!(backend = NAME, key = %key, "released the grant of a cancelled acquire");
        }
    }
}
