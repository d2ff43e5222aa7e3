//! Builders for the requests lock-etcd sends, as methods on the protobuf types, so call
//! sites read like the etcd operation they are:
//!
//! ```ignore
//! TxnRequest::when([Compare::create_revision_is(key, 0)])
//!     .and_then([RequestOp::put(key, owner, lease), RequestOp::range(RangeRequest::prefix(pfx).oldest_first().with_limit(1))])
//!     .or_else([RequestOp::range(RangeRequest::key(key))])
//! ```

use super::pb::{
    compare, range_request, request_op, response_op, watch_create_request, Compare, DeleteRangeRequest,
    PutRequest, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest,
};
use super::KeyValue;

/// The end of the range of every key that starts with `prefix` (etcd's `GetPrefixRangeEnd`):
/// the prefix with its last byte below `0xff` raised by one; `\0` (no end) for a prefix of
/// `0xff`s only.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl RangeRequest {
    /// Reads `key` alone.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into(), ..Self::default() }
    }

    /// Reads every key under `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        Self { range_end: prefix_end(&key), key, ..Self::default() }
    }

    fn sorted_by_create(mut self, order: range_request::SortOrder) -> Self {
        self.set_sort_target(range_request::SortTarget::Create);
        self.set_sort_order(order);
        self
    }

    /// Oldest key (lowest create revision) first.
    pub fn oldest_first(self) -> Self {
        self.sorted_by_create(range_request::SortOrder::Ascend)
    }

    /// Newest key (highest create revision) first.
    pub fn newest_first(self) -> Self {
        self.sorted_by_create(range_request::SortOrder::Descend)
    }

    /// At most `n` keys.
    pub fn with_limit(mut self, n: i64) -> Self {
        self.limit = n;
        self
    }

    /// Only keys created at revision `rev` or before (0: no bound).
    pub fn with_max_create_revision(mut self, rev: i64) -> Self {
        self.max_create_revision = rev;
        self
    }

    /// Only keys created at revision `rev` or after (0: no bound).
    pub fn with_min_create_revision(mut self, rev: i64) -> Self {
        self.min_create_revision = rev;
        self
    }

    /// The store as of revision `rev`, served by the member without a quorum round (a
    /// serializable read).
    pub fn serializable_at(mut self, rev: i64) -> Self {
        self.revision = rev;
        self.serializable = true;
        self
    }

    /// Keys and their metadata, without values.
    pub fn without_values(mut self) -> Self {
        self.keys_only = true;
        self
    }

    /// Only the number of keys (the reply's `count`), no keys.
    pub fn count_only(mut self) -> Self {
        self.count_only = true;
        self
    }
}

impl DeleteRangeRequest {
    /// Deletes `key` alone.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into(), ..Self::default() }
    }

    /// Deletes every key under `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        Self { range_end: prefix_end(&key), key, ..Self::default() }
    }

    /// The reply carries the keys deleted, as they were.
    pub fn with_prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
}

impl PutRequest {
    /// Writes `value` at `key`, attached to lease `lease` (0: none).
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> Self {
        Self { key: key.into(), value: value.into(), lease, ..Self::default() }
    }
}

impl Compare {
    fn equal(key: impl Into<Vec<u8>>, target: compare::CompareTarget, union: compare::TargetUnion) -> Self {
        Self::of(key, target, union, compare::CompareResult::Equal)
    }

    fn of(
        key: impl Into<Vec<u8>>,
        target: compare::CompareTarget,
        union: compare::TargetUnion,
        result: compare::CompareResult,
    ) -> Self {
        let mut c = Self { key: key.into(), target_union: Some(union), ..Self::default() };
        c.set_target(target);
        c.set_result(result);
        c
    }

    /// `key`'s value is greater than `value`, byte by byte (false when the key does not exist).
    pub fn value_above(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        let v = compare::TargetUnion::Value(value.into());
        Self::of(key, compare::CompareTarget::Value, v, compare::CompareResult::Greater)
    }

    /// `key`'s value is less than `value`, byte by byte (false when the key does not exist).
    pub fn value_below(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        let v = compare::TargetUnion::Value(value.into());
        Self::of(key, compare::CompareTarget::Value, v, compare::CompareResult::Less)
    }

    /// `key` was created at revision `rev` (0: the key does not exist).
    pub fn create_revision_is(key: impl Into<Vec<u8>>, rev: i64) -> Self {
        Self::equal(key, compare::CompareTarget::Create, compare::TargetUnion::CreateRevision(rev))
    }
}

impl RequestOp {
    /// A read inside a transaction.
    pub fn range(req: RangeRequest) -> Self {
        Self { request: Some(request_op::Request::RequestRange(req)) }
    }

    /// A write inside a transaction.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> Self {
        Self { request: Some(request_op::Request::RequestPut(PutRequest::new(key, value, lease))) }
    }

    /// A write of `value` at `key` that keeps the key's lease.
    pub fn put_keeping_lease(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        let put = PutRequest { ignore_lease: true, ..PutRequest::new(key, value, 0) };
        Self { request: Some(request_op::Request::RequestPut(put)) }
    }

    /// Moves `key` to lease `lease`, keeping its value.
    pub fn move_to_lease(key: impl Into<Vec<u8>>, lease: i64) -> Self {
        let put = PutRequest { ignore_value: true, ..PutRequest::new(key, Vec::new(), lease) };
        Self { request: Some(request_op::Request::RequestPut(put)) }
    }

    /// A delete of `key` inside a transaction.
    pub fn delete(key: impl Into<Vec<u8>>) -> Self {
        Self { request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest::key(key))) }
    }
}

impl TxnRequest {
    /// A transaction that runs its `and_then` branch when every comparison holds, its
    /// `or_else` branch otherwise.
    pub fn when(compare: impl IntoIterator<Item = Compare>) -> Self {
        Self { compare: compare.into_iter().collect(), ..Self::default() }
    }

    /// What runs when the comparisons hold.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = RequestOp>) -> Self {
        self.success = ops.into_iter().collect();
        self
    }

    /// What runs when a comparison fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = RequestOp>) -> Self {
        self.failure = ops.into_iter().collect();
        self
    }
}

impl TxnResponse {
    /// The reply of the `i`-th operation of the branch that ran, if it was a read.
    pub fn range(&self, i: usize) -> Option<&RangeResponse> {
        match self.responses.get(i)?.response.as_ref()? {
            response_op::Response::ResponseRange(r) => Some(r),
            _ => None,
        }
    }

    /// The first key read by the `i`-th operation of the branch that ran.
    pub fn first_kv(&self, i: usize) -> Option<&KeyValue> {
        self.range(i)?.kvs.first()
    }

    /// The store's revision after the transaction (the create revision of a key it put).
    pub fn revision(&self) -> i64 {
        self.header.map_or(0, |h| h.revision)
    }
}

impl WatchCreateRequest {
    /// Watches deletions of `key` (puts filtered out) from revision `start` (0: from now).
    pub fn deletions_of(key: impl Into<Vec<u8>>, start: i64) -> Self {
        let mut req = Self { key: key.into(), start_revision: start, ..Self::default() };
        req.filters = vec![watch_create_request::FilterType::Noput as i32];
        req
    }

    /// Watches deletions of every key under `prefix` from revision `start` (0: from now).
    pub fn deletions_under(prefix: impl Into<Vec<u8>>, start: i64) -> Self {
        let key = prefix.into();
        Self { range_end: prefix_end(&key), ..Self::deletions_of(key, start) }
    }

    /// Watches every change (puts and deletions) under `prefix` from revision `start`.
    pub fn changes_under(prefix: impl Into<Vec<u8>>, start: i64) -> Self {
        let key = prefix.into();
        Self { range_end: prefix_end(&key), key, start_revision: start, ..Self::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_follow_etcd() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn builders_fill_the_fields_etcd_reads() {
        let r = RangeRequest::prefix("p/").newest_first().with_limit(2).with_max_create_revision(7);
        assert_eq!((r.key.as_slice(), r.range_end.as_slice(), r.limit), (&b"p/"[..], &b"p0"[..], 2));
        assert_eq!(r.sort_target(), range_request::SortTarget::Create);
        assert_eq!(r.sort_order(), range_request::SortOrder::Descend);
        let c = Compare::create_revision_is("k", 0);
        assert_eq!(c.target(), compare::CompareTarget::Create);
        assert_eq!(c.target_union, Some(compare::TargetUnion::CreateRevision(0)));
        let t = TxnRequest::when([c]).and_then([RequestOp::delete("k")]);
        assert_eq!((t.compare.len(), t.success.len(), t.failure.len()), (1, 1, 0));
        let w = WatchCreateRequest::deletions_of("k", 5);
        assert_eq!(w.filters, vec![watch_create_request::FilterType::Noput as i32]);
    }
}
