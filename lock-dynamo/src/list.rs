//! Listing the grants held under a prefix: a `Scan` of the table, filtered on the server to
//! the items whose partition key begins with the prefix (and that carry this backend's sort
//! key value) and that hold something: a lock or leader item with an owner, a semaphore or
//! read-write lock item with entries or a writer.
//!
//! Why a scan: the partition key is the lock's full key, and a `Query` needs one exact
//! partition key, so no query can select a key prefix (the sort key, when configured, holds
//! the namespace value, the same for every item of a backend). A scan reads (and bills) every
//! item of the table, up to 1 MB per page, whatever the filter keeps; it is an operator's
//! tool, not for a hot path. A table that needs cheap listing would add a secondary index
//! whose partition key is a fixed value and whose sort key is the lock key; this crate does
//! not create one.
//!
//! The cursor is the scan's `LastEvaluatedKey` (partition key, and sort key when configured).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use lock_core::{Error, ListPage, LockInfo, Mode, Result};

use crate::error::{self, NAME};
use crate::item::{Item, Kind, Record, COUNT, OWNER, WRITER};
use crate::lock::info;
use crate::DynamoBackend;

impl DynamoBackend {
    /// One page of the grants under `prefix`.
    pub(crate) async fn list_page(
        &self,
        prefix: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<ListPage> {
        let held = "attribute_exists(#o) OR #n > :zero OR attribute_exists(#w)";
        let scan = self
            .scan_under(prefix, cursor, limit, held)?
            .expression_attribute_names("#o", OWNER)
            .expression_attribute_names("#n", COUNT)
            .expression_attribute_names("#w", WRITER)
            .expression_attribute_values(":zero", AttributeValue::N("0".into()));
        let o = &self.inner.opts;
        let out = scan.send().await.map_err(|e| error::sdk("Scan", &o.table, e))?;
        let mut entries = Vec::new();
        for item in out.items() {
            // An item under the prefix that is not one of ours (a shared table) or is damaged:
            // skipped, so that one such item does not hide every grant.
            match self.listed(item) {
                Ok(listed) => entries.extend(listed),
                Err(e) => {
                    tracing::warn!(backend = NAME, error = %e, "an item that is not a lock grant was skipped in a listing")
                }
            }
        }
        let cursor = out.last_evaluated_key().map(|k| self.cursor_of(k)).transpose()?;
        Ok(ListPage::new(entries, cursor))
    }

    /// A consistent scan of this backend's items whose partition key begins with `prefix`
    /// (and that carry its sort key value), from `cursor`, at most `limit` items read, kept by
    /// `filter` too (`#pk`, `:prefix`, `#sk` and `:sk` are bound; the caller binds the rest).
    pub(crate) fn scan_under(
        &self,
        prefix: &str,
        cursor: Option<String>,
        limit: usize,
        filter: &str,
    ) -> Result<aws_sdk_dynamodb::operation::scan::builders::ScanFluentBuilder> {
        let o = &self.inner.opts;
        let mut expression = format!("begins_with(#pk, :prefix) AND ({filter})");
        let mut scan = self
            .inner
            .client
            .scan()
            .table_name(&o.table)
            .consistent_read(true)
            .limit(limit.clamp(1, 10_000) as i32)
            .expression_attribute_names("#pk", &o.partition_key)
            .expression_attribute_values(":prefix", AttributeValue::S(prefix.to_owned()));
        if let Some(sk) = &o.sort_key {
            expression.push_str(" AND #sk = :sk");
            scan = scan
                .expression_attribute_names("#sk", &sk.name)
                .expression_attribute_values(":sk", AttributeValue::S(sk.value.clone()));
        }
        if let Some(c) = cursor {
            scan = scan.set_exclusive_start_key(Some(self.start_key(&c)?));
        }
        Ok(scan.filter_expression(expression))
    }

    /// The live grants of one listed item, each with its full key.
    fn listed(&self, item: &Item) -> Result<Vec<(String, LockInfo)>> {
        let Some(AttributeValue::S(id)) = item.get(&self.inner.opts.partition_key) else {
            return Ok(Vec::new());
        };
        let Some((key, kind)) = Kind::parse(id) else { return Ok(Vec::new()) };
        let infos = match kind {
            Kind::Lock | Kind::Leader => {
                let rec = Record::parse(item)?;
                let mode = if kind == Kind::Lock { Mode::Exclusive } else { Mode::Leader };
                match rec.owner {
                    Some(owner) => {
                        let left = self.peek_held(id, &rec);
                        if left.is_zero() {
                            Vec::new()
                        } else {
                            vec![info(&rec, owner, left, mode)]
                        }
                    }
                    None => Vec::new(),
                }
            }
            Kind::Semaphore => self.listed_permits(id, item)?,
            Kind::ReadWrite => self.listed_rw(id, item)?,
        };
        Ok(infos.into_iter().map(|i| (key.to_owned(), i)).collect())
    }

    /// A cursor from a scan's `LastEvaluatedKey`: `<length of the partition key>:<partition
    /// key><sort key>`.
    pub(crate) fn cursor_of(&self, k: &HashMap<String, AttributeValue>) -> Result<String> {
        let o = &self.inner.opts;
        let part = |name: &str| match k.get(name) {
            Some(AttributeValue::S(v)) => Ok(v.clone()),
            _ => Err(error::protocol(format!("the scan's last key has no string {name}"))),
        };
        let pk = part(&o.partition_key)?;
        let sk = match &o.sort_key {
            Some(sk) => part(&sk.name)?,
            None => String::new(),
        };
        Ok(format!("{}:{pk}{sk}", pk.len()))
    }

    /// The scan's start key from a cursor [`cursor_of`](Self::cursor_of) made.
    fn start_key(&self, cursor: &str) -> Result<HashMap<String, AttributeValue>> {
        let bad = || Error::InvalidConfig(format!("not a DynamoDB listing cursor: {cursor:?}"));
        let (len, rest) = cursor.split_once(':').ok_or_else(bad)?;
        let len: usize = len.parse().map_err(|_| bad())?;
        let (pk, sk) = (rest.get(..len).ok_or_else(bad)?, rest.get(len..).ok_or_else(bad)?);
        let o = &self.inner.opts;
        let mut key = HashMap::from([(o.partition_key.clone(), AttributeValue::S(pk.to_owned()))]);
        if let Some(s) = &o.sort_key {
            key.insert(s.name.clone(), AttributeValue::S(sk.to_owned()));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DynamoOptions;

    #[test]
    fn cursors_round_trip_with_and_without_a_sort_key() {
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .build();
        for opts in [DynamoOptions::new("t"), DynamoOptions::new("t").sort_key("ns", "a")] {
            let b =
                DynamoBackend::with_client(aws_sdk_dynamodb::Client::from_conf(conf.clone()), opts.clone());
            let mut key =
                HashMap::from([("lock_key".to_owned(), AttributeValue::S("a:b\u{1f}semaphore".into()))]);
            if let Some(sk) = &opts.sort_key {
                key.insert(sk.name.clone(), AttributeValue::S("x:y".into()));
            }
            let c = b.cursor_of(&key).expect("cursor");
            assert_eq!(b.start_key(&c).expect("start key"), key);
            assert!(b.start_key("zz").is_err());
        }
    }
}
