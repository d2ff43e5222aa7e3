//! Listing what is held under a prefix: range reads of every key under
//! `<prefix><list prefix>` (keys only, a thousand at a time), grouped by queue: a lock's queue
//! is the parent of a contender key (`layout.rs`), a primitive's is its `#semaphore/`,
//! `#rwlock/` or `#election/` directory (`grants.rs`). Each queue's holders are then read by
//! its own rule, with their metadata, fencing token and remaining TTL. The result is one page
//! (no cursor): a queue must be read whole to know who holds it.

use std::collections::BTreeSet;

use lock_core::{ListPage, Mode, Result};

use crate::backend::EtcdBackend;
use crate::grants::dir;
use crate::layout::is_contender;
use crate::rpc::pb::RangeRequest;
use crate::rpc::request::prefix_end;

/// Keys read per request.
const READ: i64 = 1000;

/// The primitives other than the lock, by the directory of their queue.
const PRIMITIVES: [Mode; 3] = [Mode::Permit { limit: 1 }, Mode::Read, Mode::Leader];

impl EtcdBackend {
    /// One page with every grant held under `prefix` (a full-key prefix).
    pub(crate) async fn list_grants(
        &self,
        prefix: &str,
        _cursor: Option<String>,
        _limit: usize,
    ) -> Result<ListPage> {
        let base = self.inner.opts.prefix.as_str();
        let start = format!("{base}{prefix}");
        let end = prefix_end(start.as_bytes());
        // (full name, mode) of every queue with a key on a lease under the prefix.
        let mut queues: BTreeSet<(String, u8)> = BTreeSet::new();
        // etcd takes no empty key: the whole key space is the range from `\0` to `\0`.
        let mut from = if start.is_empty() { vec![0] } else { start.clone().into_bytes() };
        loop {
            let read = || {
                RangeRequest { key: from.clone(), range_end: end.clone(), ..RangeRequest::default() }
                    .with_limit(READ)
                    .without_values()
            };
            let r = self.call("get", || self.client().range(read())).await?;
            for kv in r.kvs.iter().filter(|kv| kv.lease != 0) {
                let Some(rest) = std::str::from_utf8(&kv.key).ok().and_then(|k| k.strip_prefix(base)) else {
                    continue;
                };
                // The lock's metadata keys (`<prefix>\0meta/…`, see `metadata.rs`) are no grants.
                if rest.starts_with('\0') {
                    continue;
                }
                let primitive = PRIMITIVES.iter().enumerate().find_map(|(i, m)| {
                    let (name, _) = rest.split_once(&format!("#{}/", dir(*m)))?;
                    Some((name.to_owned(), i as u8 + 1))
                });
                if let Some(q) = primitive {
                    queues.insert(q);
                } else if let Some((parent, _)) = rest.rsplit_once('/') {
                    if is_contender(&format!("{base}{parent}/"), kv) {
                        queues.insert((parent.to_owned(), 0));
                    }
                }
            }
            match r.kvs.last() {
                Some(last) if r.more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        let mut entries = Vec::new();
        for (name, kind) in queues {
            let holders = match kind {
                0 => self.lock_holder(&format!("{base}{name}/")).await?.into_iter().collect(),
                i => {
                    let mode = PRIMITIVES[usize::from(i) - 1];
                    self.holders_under(&format!("{base}{name}#{}/", dir(mode)), mode).await?
                }
            };
            entries.extend(holders.into_iter().map(|h| (name.clone(), h)));
        }
        Ok(ListPage::new(entries, None))
    }
}
