//! The requests on a lock item: the conditional `UpdateItem` every write is (acquire,
//! heartbeat, release), the strongly consistent read, and the writes that clean up after a
//! lost reply or a cancelled acquire.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use lock_core::{AcquireRequest, Attempt, BackendErrorKind, Error, Instant, LockKey, OwnerToken, Result};

use crate::error::{self, NAME};
use crate::item::{new_rvn, wall_ms, Record, EXPIRES_MS, FENCE, LEASE_MS, OWNER, RELEASE_RVN, RVN};
use crate::DynamoBackend;

/// What a conditional write found.
pub(crate) enum Written {
    /// Applied.
    Applied(HashMap<String, AttributeValue>),
    /// The condition failed; the item as it was (`None` if the server did not return it).
    Refused(Option<HashMap<String, AttributeValue>>),
}

/// One conditional `UpdateItem`: what it is called in errors, its update and condition
/// expressions (attribute names as `#o`, `#v`, `#f`, `#l`, `#e`, `#r`), their values, and what
/// it returns when applied.
pub(crate) struct Update<'a> {
    pub(crate) op: &'a str,
    pub(crate) expression: &'a str,
    pub(crate) condition: &'a str,
    pub(crate) values: Vec<(&'a str, AttributeValue)>,
    pub(crate) returns: ReturnValue,
}

/// `send`, cut off at `until` if given: a request without an answer by then is a retryable
/// "request timed out" (it may still be applied: the callers undo what it may have granted).
async fn bounded<T>(
    op: &str,
    table: &str,
    until: Option<Instant>,
    send: impl Future<Output = T>,
) -> Result<T> {
    let Some(until) = until else { return Ok(send.await) };
    tokio::time::timeout_at(until, send).await.map_err(|_| {
        Error::backend_msg(
            NAME,
            BackendErrorKind::RequestTimedOut,
            format!("{op} on table {table}: no answer within the attempt's time"),
        )
    })
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

    /// One conditional `UpdateItem` on `key`'s item, bounded by `until` if given (otherwise
    /// by the client's own attempts and retries). A failed condition returns the item
    /// (`ReturnValuesOnConditionCheckFailure`), so a held lock costs no extra read.
    pub(crate) async fn write(
        &self,
        key: &LockKey,
        u: Update<'_>,
        until: Option<Instant>,
    ) -> Result<Written> {
        let mut req = self
            .inner
            .client
            .update_item()
            .table_name(&self.inner.opts.table)
            .set_key(Some(self.item_key(key)))
            .update_expression(u.expression)
            .condition_expression(u.condition)
            .return_values(u.returns)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (alias, name) in [
            ("#o", OWNER),
            ("#v", RVN),
            ("#f", FENCE),
            ("#l", LEASE_MS),
            ("#e", EXPIRES_MS),
            ("#r", RELEASE_RVN),
        ] {
            if u.expression.contains(alias) || u.condition.contains(alias) {
                req = req.expression_attribute_names(alias, name);
            }
        }
        for (name, value) in u.values {
            req = req.expression_attribute_values(name, value);
        }
        let table = &self.inner.opts.table;
        match bounded(u.op, table, until, req.send()).await? {
            Ok(out) => Ok(Written::Applied(out.attributes.unwrap_or_default())),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => {
                    Ok(Written::Refused(c.item.clone()))
                }
                _ => Err(error::sdk(u.op, table, e)),
            },
        }
    }

    /// The item as it is now (a strongly consistent read), if it exists; bounded by `until`
    /// if given.
    pub(crate) async fn read(&self, key: &LockKey, until: Option<Instant>) -> Result<Option<Record>> {
        let table = &self.inner.opts.table;
        let get = self
            .inner
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(self.item_key(key)))
            .consistent_read(true);
        let out = bounded("GetItem", table, until, get.send())
            .await?
            .map_err(|e| error::sdk("GetItem", table, e))?;
        out.item().map(Record::parse).transpose()
    }

    /// A grant of `req` found on the item although no reply said so: an earlier try of the
    /// same request was applied and its reply lost. That try may have been sent long ago
    /// (contenders count the lease from when they first saw its RVN), so the grant is
    /// confirmed with a heartbeat first, and the lease is measured from that heartbeat.
    pub(crate) async fn recover(
        &self,
        req: &AcquireRequest,
        item: Record,
        until: Instant,
    ) -> Result<Attempt> {
        let sent = Instant::now();
        let rvn = new_rvn();
        let confirm = Update {
            op: "acquire (confirm)",
            expression: "SET #v = :v, #l = :l, #e = :e",
            condition: "#o = :o AND #v = :known",
            values: vec![
                (":o", AttributeValue::S(req.owner.to_string())),
                (":known", AttributeValue::S(item.rvn)),
                (":v", AttributeValue::S(rvn.clone())),
                (":l", n(ms(req.ttl))),
                (":e", n(wall_ms().saturating_add(ms(req.ttl)))),
            ],
            returns: ReturnValue::None,
        };
        Ok(match self.write(&req.key, confirm, Some(until)).await? {
            Written::Applied(_) => Attempt::Acquired(self.lease(req, item.fence, rvn, sent)),
            // Taken over (or changed) meanwhile: look again.
            Written::Refused(_) => Attempt::Held { expires_in: Some(Duration::ZERO) },
        })
    }

    /// Removes `owner`'s grant of `key`: `true` if it held it. The release also writes its
    /// new RVN as `release_rvn`, which no other write touches: when its request is sent again
    /// because the reply was lost (the SDK retries), the refusal carries that RVN, and the
    /// release recognises itself, even if the lock was taken again meanwhile. A second
    /// release (a new call, a new RVN) reports that it found nothing.
    pub(crate) async fn release_owner(&self, key: &LockKey, owner: OwnerToken) -> Result<bool> {
        let rvn = new_rvn();
        let release = Update {
            op: "release",
            expression: "REMOVE #o, #l, #e SET #v = :v, #r = :v",
            condition: "#o = :o",
            values: vec![
                (":o", AttributeValue::S(owner.to_string())),
                (":v", AttributeValue::S(rvn.clone())),
            ],
            returns: ReturnValue::None,
        };
        Ok(match self.write(key, release, None).await? {
            Written::Applied(_) => true,
            Written::Refused(Some(item)) => {
                Record::parse(&item)?.release_rvn.as_deref() == Some(rvn.as_str())
            }
            Written::Refused(None) => false,
        })
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
