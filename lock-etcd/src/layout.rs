//! The key layout shared with `etcdctl lock` and Go's `concurrency.Mutex`, and the reads of a
//! queue that keep to it.
//!
//! The queue of lock `<name>` is the keys `<prefix><name>/<lease id in lowercase hex>`. That
//! prefix also holds the keys of every lock whose name extends `<name>` (`<name>/nightly`
//! has `<name>/nightly/<lease>`), and of every lock of the namespace `<name>`. A contender of
//! `<name>` is therefore only a **direct child** of the prefix whose last segment is a lease id
//! as Go's `%x` writes it (1 to 16 lowercase hex digits, no leading zero), attached to a
//! lease. A nested lock's keys are at least two levels down, so even a lock named like a
//! lease id (`<name>/694d8a0b8c2a1f03`, keys `<name>/694d8a0b8c2a1f03/<lease>`) is told
//! apart. etcd ranges by prefix only, so the filter is applied by the client: a read takes a
//! page of keys in create order and skips the others, reading the next page when a page
//! held no contender.
//!
//! Keys put by one transaction share a create revision (a multi-key lock puts one key per
//! name, and names may nest: `t` and `t/0001`), so a page can end among them. A page that does
//! is completed with a read of every key at its last revision before the next page starts
//! after it; otherwise a contender cut off there would be skipped.

use crate::backend::EtcdBackend;
use crate::metadata::{holds, value_metadata, value_owner};
use crate::rpc::pb::RangeRequest;
use crate::rpc::KeyValue;
use lock_core::{FencingToken, LockInfo, LockKey, OwnerToken, Result};

/// How many keys one read of a queue takes.
pub(crate) const PAGE: i64 = 32;

/// Whether `kv` is a contender of the lock whose queue prefix is `pfx`.
pub(crate) fn is_contender(pfx: &str, kv: &KeyValue) -> bool {
    kv.lease != 0 && kv.key.strip_prefix(pfx.as_bytes()).is_some_and(is_lease_hex)
}

/// Whether `s` is a lease id as Go's `%x` (and our `{:x}`) writes it.
fn is_lease_hex(s: &[u8]) -> bool {
    (1..=16).contains(&s.len()) && s[0] != b'0' && s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where the page after one ending at create revision `last` starts (`None`: no more), once
/// the keys at `last` were read whole.
fn next_page(last: i64, more: bool, descending: bool) -> Option<i64> {
    match (more, descending) {
        (false, _) => None,
        (true, false) => Some(last + 1),
        // 0 would mean "no bound": stop below revision 1.
        (true, true) => (last > 1).then_some(last - 1),
    }
}

impl EtcdBackend {
    /// The oldest contender under `pfx` created at revision `from` or later and at `upto` or
    /// before (0: no bound), with its value.
    pub(crate) async fn oldest_contender(&self, pfx: &str, from: i64, upto: i64) -> Result<Option<KeyValue>> {
        let mut from = from;
        loop {
            let read = || {
                RangeRequest::prefix(pfx)
                    .oldest_first()
                    .with_min_create_revision(from)
                    .with_max_create_revision(upto)
                    .with_limit(PAGE)
            };
            let r = self.call("get", || self.client().range(read())).await?;
            // Every key older than the page's last revision is on the page, and a lock has at
            // most one contender per revision: the first one found is the oldest.
            if let Some(kv) = r.kvs.iter().find(|kv| is_contender(pfx, kv)) {
                return Ok(Some(kv.clone()));
            }
            let Some(last) = r.kvs.last().map(|kv| kv.create_revision).filter(|_| r.more) else {
                return Ok(None);
            };
            if let Some(kv) =
                self.keys_at(pfx, last, None).await?.into_iter().find(|kv| is_contender(pfx, kv))
            {
                return Ok(Some(kv));
            }
            match next_page(last, r.more, false) {
                Some(next) => from = next,
                None => return Ok(None),
            }
        }
    }

    /// Every key under `pfx` created at revision `rev` (the page a read ended among them), as
    /// of revision `at` when given (served without a quorum round, as the read it completes).
    async fn keys_at(&self, pfx: &str, rev: i64, at: Option<i64>) -> Result<Vec<KeyValue>> {
        let read = || {
            let req = RangeRequest::prefix(pfx).with_min_create_revision(rev).with_max_create_revision(rev);
            match at {
                Some(at) => req.serializable_at(at),
                None => req,
            }
        };
        Ok(self.call("get", || self.client().range(read())).await?.kvs)
    }

    /// The queue as a waiter sees it: the contender created just before `my_rev` under `pfx`
    /// (if any), and whether the newest contender up to `my_rev` is `my_key` holding `owner`
    /// (the waiter's own entry is still there).
    ///
    /// With `at`, the reads are of that revision and served by the member without a quorum
    /// round (serializable): the state just after the event that woke the waiter, which every
    /// member that reported the event has applied.
    pub(crate) async fn queue_view(
        &self,
        pfx: &str,
        my_key: &str,
        owner: OwnerToken,
        my_rev: i64,
        at: Option<i64>,
    ) -> Result<(Option<Vec<u8>>, bool)> {
        let mut upto = my_rev;
        // Decided by the newest contender up to `my_rev`: ours, or not.
        let mut mine = None;
        loop {
            let read = || {
                let req =
                    RangeRequest::prefix(pfx).newest_first().with_max_create_revision(upto).with_limit(PAGE);
                match at {
                    Some(rev) => req.serializable_at(rev),
                    None => req,
                }
            };
            let r = self.call("get", || self.client().range(read())).await?;
            let mut kvs = r.kvs;
            let last = kvs.last().map(|kv| kv.create_revision);
            if let Some(last) = last.filter(|_| r.more) {
                // The page may end among keys of one revision: those at `last` are read whole.
                kvs.retain(|kv| kv.create_revision != last);
                kvs.extend(self.keys_at(pfx, last, at).await?);
            }
            for kv in kvs.iter().filter(|kv| is_contender(pfx, kv)) {
                if mine.is_some() {
                    return Ok((Some(kv.key.clone()), true));
                }
                let ours =
                    kv.key == my_key.as_bytes() && kv.create_revision == my_rev && holds(&kv.value, owner);
                if !ours {
                    return Ok((Some(kv.key.clone()), false));
                }
                mine = Some(true);
            }
            match last.and_then(|last| next_page(last, r.more, true)) {
                Some(next) => upto = next,
                None => return Ok((None, mine.unwrap_or(false))),
            }
        }
    }

    /// Finds the contender under `pfx` whose value is `owner`'s (for a lease rebuilt by an
    /// operator): the key and its lease.
    pub(crate) async fn find_key(&self, pfx: &str, owner: OwnerToken) -> Result<Option<(String, i64)>> {
        let r = self.call("get", || self.client().range(RangeRequest::prefix(pfx))).await?;
        Ok(r.kvs
            .iter()
            .filter(|kv| is_contender(pfx, kv))
            .find(|kv| holds(&kv.value, owner))
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.lease)))
    }
}

impl EtcdBackend {
    /// The holder of the lock `key`: the oldest contender.
    pub(crate) async fn inspect_lock(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        self.lock_holder(&self.etcd_prefix(key)).await
    }

    /// The holder of the lock whose queue prefix is `pfx`.
    pub(crate) async fn lock_holder(&self, pfx: &str) -> Result<Option<LockInfo>> {
        let Some(kv) = self.oldest_contender(pfx, 0, 0).await? else { return Ok(None) };
        let left = self.lease_left(kv.lease).await;
        Ok(Some(
            LockInfo::new(Some(FencingToken::new(kv.create_revision as u64)), value_owner(&kv.value), left)
                .with_metadata(value_metadata(&kv.value)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, lease: i64) -> KeyValue {
        KeyValue { key: key.as_bytes().to_vec(), lease, ..KeyValue::default() }
    }

    #[test]
    fn only_direct_children_named_by_a_lease_id_are_contenders() {
        let pfx = "jobs/";
        for key in ["jobs/694d8a0b8c2a1f03", "jobs/1", "jobs/7fffffffffffffff", "jobs/ffffffffffffffff"] {
            assert!(is_contender(pfx, &kv(key, 7)), "{key}");
        }
        for key in [
            "jobs/nightly/694d8a0b8c2a1f03",
            "jobs/694d8a0b8c2a1f03/694d8a0b8c2a1f03",
            "jobs/a/b/1",
            "jobs/0000000001",
            "jobs/0",
            "jobs/694D8A0B8C2A1F03",
            "jobs/1694d8a0b8c2a1f03",
            "jobs/",
            "jobs/-1",
            "jobsx/1",
        ] {
            assert!(!is_contender(pfx, &kv(key, 7)), "{key}");
        }
        assert!(!is_contender(pfx, &kv("jobs/1", 0)), "a key without a lease is no contender");
    }

    #[test]
    fn pages_go_on_only_while_there_is_more() {
        assert_eq!(next_page(9, true, false), Some(10));
        assert_eq!(next_page(9, true, true), Some(8));
        assert_eq!(next_page(9, false, true), None);
        assert_eq!(next_page(1, true, true), None);
    }
}
