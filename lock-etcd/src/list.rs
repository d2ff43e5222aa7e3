//! Listing what is held under a prefix, in a number of requests that does not grow with the
//! number of locks: one range read of every key under `<prefix><list prefix>` with its value
//! (a thousand keys per request; a lock key's value holds its owner token and metadata, see
//! `metadata.rs`), and one `LeaseTimeToLive` per distinct lease among the holders (one per
//! session in session mode). Keys are grouped by queue: a lock's queue is the parent of a contender
//! key (`layout.rs`), a primitive's is its `#semaphore/`, `#rwlock/` or `#election/`
//! directory (`grants.rs`); each queue's holders are chosen locally by its own rule. The
//! result is one page (no cursor): a queue must be read whole to know who holds it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use lock_core::{BackendErrorKind, Error, FencingToken, LockInfo, Mode, Result};

use crate::backend::EtcdBackend;
use crate::error::NAME;
use crate::grants::{dir, grant_info, holding};
use crate::layout::is_contender;
use crate::metadata::{value_metadata, value_owner};
use crate::rpc::pb::RangeRequest;
use crate::rpc::request::prefix_end;
use crate::rpc::KeyValue;

/// Keys read per request.
const READ: i64 = 1000;

/// Lease lookups in flight at once.
const LEASE_LOOKUPS: usize = 32;

/// A holder's entry, once its lease's remaining time is known.
type Info<'a> = Box<dyn Fn(Option<Duration>) -> LockInfo + Send + 'a>;

/// The primitives other than the lock, by the directory of their queue.
const PRIMITIVES: [Mode; 3] = [Mode::Permit { limit: 1 }, Mode::Read, Mode::Leader];

impl EtcdBackend {
    /// One page with every grant held under `prefix` (a full-key prefix).
    pub(crate) async fn list_grants(
        &self,
        prefix: &str,
        _cursor: Option<String>,
        _limit: usize,
    ) -> Result<lock_core::ListPage> {
        let base = self.inner.opts.prefix.as_str();
        // Every key on a lease under the prefix, by queue: (name, 0 for the lock or the
        // primitive's index + 1) → its keys.
        let mut queues: BTreeMap<(String, u8), Vec<KeyValue>> = BTreeMap::new();
        for kv in self.read_all(&format!("{base}{prefix}")).await? {
            let Some(rest) = std::str::from_utf8(&kv.key).ok().and_then(|k| k.strip_prefix(base)) else {
                continue;
            };
            // No lock name starts with a control character: such a key is no grant (before
            // 2026-12-03, the lock's metadata was kept at `<prefix>\0meta/…`).
            if rest.starts_with('\0') {
                continue;
            }
            let primitive = PRIMITIVES.iter().enumerate().find_map(|(i, m)| {
                let (name, _) = rest.split_once(&format!("#{}/", dir(*m)))?;
                Some((name.to_owned(), i as u8 + 1))
            });
            let queue = match primitive {
                Some(q) => q,
                None => match rest.rsplit_once('/') {
                    Some((parent, _)) if is_contender(&format!("{base}{parent}/"), &kv) => {
                        (parent.to_owned(), 0)
                    }
                    _ => continue,
                },
            };
            // A queue whose name is not under the prefix was cut by it (`t/<hex>` reads part
            // of `t`'s queue): its holder cannot be told from the part, and its name is not
            // the listing's.
            if !queue.0.starts_with(prefix) {
                continue;
            }
            queues.entry(queue).or_default().push(kv);
        }

        // The holders of each queue, by its rule, with their lease to look up.
        let mut held: Vec<(String, &KeyValue, Info<'_>)> = Vec::new();
        for ((name, kind), kvs) in queues.iter_mut() {
            kvs.sort_by_key(|kv| kv.create_revision);
            if *kind == 0 {
                let Some(kv) = kvs.first() else { continue };
                let (meta, owner) = (value_metadata(&kv.value), value_owner(&kv.value));
                let token = FencingToken::new(kv.create_revision as u64);
                held.push((
                    name.clone(),
                    kv,
                    Box::new(move |left| LockInfo::new(Some(token), owner, left).with_metadata(meta.clone())),
                ));
            } else {
                let mode = PRIMITIVES[usize::from(*kind) - 1];
                let pfx = format!("{base}{name}#{}/", dir(mode));
                for (kv, kv_mode) in holding(&pfx, mode, kvs) {
                    let pfx = pfx.clone();
                    held.push((name.clone(), kv, Box::new(move |left| grant_info(&pfx, kv, kv_mode, left))));
                }
            }
        }
        let left = self.leases_left(held.iter().map(|(_, kv, _)| kv.lease).collect()).await;
        let entries = held
            .into_iter()
            .map(|(name, kv, info)| (name, info(left.get(&kv.lease).copied().flatten())))
            .collect();
        Ok(lock_core::ListPage::new(entries, None))
    }

    /// The time left on each of `leases` (looked up once each, [`LEASE_LOOKUPS`] at a time).
    pub(crate) async fn leases_left(&self, mut ids: Vec<i64>) -> HashMap<i64, Option<Duration>> {
        ids.sort_unstable();
        ids.dedup();
        futures::stream::iter(ids)
            .map(|id| async move { (id, self.lease_left(id).await) })
            .buffer_unordered(LEASE_LOOKUPS)
            .collect()
            .await
    }

    /// Every key on a lease under `start` (a key prefix; the whole key space when empty),
    /// with its value, a thousand per request. Later pages are read at the first page's
    /// revision, so that the listing is one state of the store (read at their own revisions,
    /// a lock released after the first page and one taken before a later page would both
    /// show as held). A compaction past that revision meanwhile starts the read over.
    async fn read_all(&self, start: &str) -> Result<Vec<KeyValue>> {
        let end = prefix_end(start.as_bytes());
        // etcd takes no empty key: the whole key space is the range from `\0` to `\0`.
        let first = if start.is_empty() { vec![0] } else { start.as_bytes().to_vec() };
        let mut from = first.clone();
        let (mut out, mut at, mut restarts) = (Vec::new(), 0, 0);
        loop {
            let read = || {
                RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    revision: at,
                    ..RangeRequest::default()
                }
                .with_limit(READ)
            };
            let r = self
                .call("get", || async {
                    match self.client().range(read()).await {
                        Err(s) if at != 0 && s.code() == tonic::Code::OutOfRange => Ok(None),
                        r => r.map(Some),
                    }
                })
                .await?;
            let Some(r) = r else {
                restarts += 1;
                if restarts > 3 {
                    return Err(Error::backend_msg(
                        NAME,
                        BackendErrorKind::Unavailable,
                        "the listing's revision was compacted away before its last page, three times over",
                    ));
                }
                (from, at) = (first.clone(), 0);
                out.clear();
                continue;
            };
            if at == 0 {
                at = r.header.as_ref().map_or(0, |h| h.revision);
            }
            let (more, last) = (r.more, r.kvs.last().map(|kv| kv.key.clone()));
            out.extend(r.kvs.into_iter().filter(|kv| kv.lease != 0));
            match last {
                Some(mut last) if more => {
                    last.push(0);
                    from = last;
                }
                _ => return Ok(out),
            }
        }
    }
}
