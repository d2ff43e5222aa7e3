//! The fencing counters, read and raised for a migration's token carry-over
//! ([`LockBackend::fencing_counters`](lock_core::LockBackend::fencing_counters),
//! [`LockBackend::raise_fencing_counter`](lock_core::LockBackend::raise_fencing_counter)).
//! Every primitive's item keeps its counter in its `fence` attribute, which every grant
//! increments and no release removes: reading them is a scan like `list`'s, raising one is
//! one conditional `UpdateItem` that never lowers it.

use aws_sdk_dynamodb::types::AttributeValue;
use lock_core::{CounterPage, FencingToken, LockKey, Mode, Result};

use crate::error;
use crate::item::{self, Kind, FENCE, LIMIT};
use crate::DynamoBackend;

/// The highest value a fencing counter can be raised to: `i64::MAX - 2`, as on Redis, so that
/// tokens carried between the two stay comparable and there is room for the grants after.
pub(crate) const MAX_RAISE: u64 = i64::MAX as u64 - 2;

impl DynamoBackend {
    /// One page of the counters of every primitive under `prefix` that has one: (full key,
    /// mode, counter). A read-write lock's is reported as [`Mode::Write`], a semaphore's with
    /// the number of permits its item stores.
    pub(crate) async fn counters_page(
        &self,
        prefix: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<CounterPage> {
        let scan = self
            .scan_under(prefix, cursor, limit, "attribute_exists(#f)")?
            .expression_attribute_names("#f", FENCE);
        let o = &self.inner.opts;
        let out = scan.send().await.map_err(|e| error::sdk("Scan", &o.table, e))?;
        let mut counters = Vec::new();
        for it in out.items() {
            let Some(AttributeValue::S(id)) = it.get(&o.partition_key) else { continue };
            let Some((key, kind)) = Kind::parse(id) else { continue };
            let fence = item::number(it, FENCE)?.unwrap_or(0);
            if fence == 0 {
                continue;
            }
            let mode = match kind {
                Kind::Lock => Mode::Exclusive,
                Kind::Leader => Mode::Leader,
                Kind::Semaphore => Mode::Permit {
                    limit: item::number(it, LIMIT)?.unwrap_or(1).clamp(1, u64::from(u32::MAX)) as u32,
                },
                Kind::ReadWrite => Mode::Write,
            };
            counters.push((key.to_owned(), mode, FencingToken::new(fence)));
        }
        let cursor = out.last_evaluated_key().map(|k| self.cursor_of(k)).transpose()?;
        Ok(CounterPage::new(counters, cursor))
    }

    /// Raises the counter of `key`'s primitive of `mode` to at least `at_least` (at most
    /// [`MAX_RAISE`], else `Unsupported` before anything is sent) (one
    /// `UpdateItem` conditioned on the counter being lower or absent; the item is made if
    /// there is none, as a free lock's); returns the counter after, never lowered.
    pub(crate) async fn raise_counter(
        &self,
        key: &LockKey,
        mode: Mode,
        at_least: FencingToken,
    ) -> Result<FencingToken> {
        let kind = Kind::of(mode).ok_or_else(|| crate::place::unsupported(mode))?;
        if at_least.get() > MAX_RAISE {
            // Each grant adds one to the counter: raised to the top of u64, a grant would
            // store a number no token can hold, and every later look at the item would fail.
            return Err(lock_core::Error::Unsupported {
                backend: crate::error::NAME,
                capability: format!(
                    "fencing counters raised above {MAX_RAISE} (as Redis's, tokens stay within a signed 64-bit integer; asked for {})",
                    at_least.get()
                ),
            });
        }
        let id = kind.id(key);
        let o = &self.inner.opts;
        let target = AttributeValue::N(at_least.get().to_string());
        let raised = self
            .inner
            .client
            .update_item()
            .table_name(&o.table)
            .set_key(Some(self.item_key(&id)))
            .update_expression("SET #f = :t")
            .condition_expression("attribute_not_exists(#f) OR #f < :t")
            .expression_attribute_names("#f", FENCE)
            .expression_attribute_values(":t", target)
            .send()
            .await;
        match raised {
            Ok(_) => Ok(at_least),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => {
                // Already at or above: report what it is.
                let got = self
                    .inner
                    .client
                    .get_item()
                    .table_name(&o.table)
                    .set_key(Some(self.item_key(&id)))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| error::sdk("GetItem", &o.table, e))?;
                let now = got.item().map(|it| item::number(it, FENCE)).transpose()?.flatten().unwrap_or(0);
                Ok(FencingToken::new(now.max(at_least.get())))
            }
            Err(e) => Err(error::sdk("UpdateItem", &o.table, e)),
        }
    }
}
