//! Listing what is held under a prefix: a walk of the nodes under the prefix's node, in the
//! order of their paths, reporting each name's lock holder, semaphore permits, readers and
//! writer, and leader, with their metadata and tokens (czxid). Remaining TTLs are not known:
//! every grant lasts as long as its holder's session. Pages end after a whole node once about
//! `limit` entries are gathered; the cursor is the path of that node, and the next page starts
//! after it.

use std::cmp::Ordering;

use futures::future::join_all;
use lock_core::{ListPage, LockInfo, Mode, Result};

use crate::children::{classify, encode_segment, in_sequence_order, sequence, Kind};
use crate::error::zk_err;
use crate::holders::info_of;
use crate::session::Session;
use crate::ZkBackend;

/// A node still to visit: its path relative to the prefix (one znode name per segment), the
/// name it belongs to, and what it is.
struct Node {
    rel: Vec<String>,
    key: String,
    kind: Kind,
}

/// Whether the node at `rel` and everything under it come after `cursor` in the walk's order
/// (a node before its children, children by name), or may (an ancestor of `cursor`).
fn still_ahead(rel: &[String], cursor: &[String]) -> bool {
    rel > cursor || cursor.starts_with(rel)
}

impl ZkBackend {
    /// One page of what is held under the full-key prefix `prefix`, after `cursor`.
    pub(crate) async fn list_page(
        &self,
        prefix: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<ListPage> {
        let s = self.session().await?;
        let cursor: Vec<String> =
            cursor.map(|c| c.split('/').map(str::to_owned).collect()).unwrap_or_default();
        // The whole segments name the node to start from; the last one (maybe partial) picks
        // among its children.
        let (base, partial) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let base_rel: Vec<String> =
            if base.is_empty() { Vec::new() } else { base.split('/').map(encode_segment).collect() };
        let mut stack = Vec::new();
        for (name, (seg, kind)) in self.children_of(&s, &base_rel).await?.into_iter().rev() {
            if !seg.starts_with(partial) {
                continue;
            }
            let key = if base.is_empty() { seg } else { format!("{base}/{seg}") };
            let rel = [base_rel.as_slice(), &[name]].concat();
            if still_ahead(&rel, &cursor) {
                stack.push(Node { rel, key, kind });
            }
        }
        let mut entries = Vec::new();
        while let Some(node) = stack.pop() {
            let listed = node.rel.as_slice().cmp(cursor.as_slice()) == Ordering::Greater;
            let (held, under) = self.visit(&s, &node).await?;
            if listed {
                entries.extend(held.into_iter().map(|info| (node.key.clone(), info)));
            }
            for (name, (seg, kind)) in under.into_iter().rev() {
                let rel = [node.rel.as_slice(), &[name]].concat();
                if still_ahead(&rel, &cursor) {
                    stack.push(Node { rel, key: format!("{}/{seg}", node.key), kind });
                }
            }
            if listed && entries.len() >= limit.max(1) && !stack.is_empty() {
                return Ok(ListPage::new(entries, Some(node.rel.join("/"))));
            }
        }
        Ok(ListPage::new(entries, None))
    }

    /// The absolute path of the node at `rel`.
    fn abs(&self, rel: &[String]) -> String {
        let mut p = self.inner.opts.prefix.clone();
        for seg in rel {
            p.push('/');
            p.push_str(seg);
        }
        p
    }

    /// The children of the node at `rel` that are the nodes of names or of their primitives,
    /// sorted by znode name, with the key segment and kind of each (not its queue nodes).
    async fn children_of(&self, s: &Session, rel: &[String]) -> Result<Vec<(String, (String, Kind))>> {
        Ok(self.holder_and_nodes(s, rel).await?.1)
    }

    /// What the node `node` holds, and the nodes under it to visit.
    async fn visit(
        &self,
        s: &Session,
        node: &Node,
    ) -> Result<(Vec<LockInfo>, Vec<(String, (String, Kind))>)> {
        let path = self.abs(&node.rel);
        Ok(match node.kind {
            Kind::Name => {
                let (holder, under) = self.holder_and_nodes(s, &node.rel).await?;
                (holder.into_iter().collect(), under)
            }
            Kind::Semaphore => {
                let limit = match s.call(|c| c.get_data(&path)).await {
                    Ok((data, _)) => crate::semaphore::stored_permits(&data),
                    Err(zookeeper_client::Error::NoNode) => return Ok((Vec::new(), Vec::new())),
                    Err(e) => return Err(zk_err("read", &path, e)),
                };
                let leases = format!("{path}/leases");
                // Without a stored number (only Curator's clients), every lease is counted.
                let limit = limit.unwrap_or(u32::MAX);
                (self.permit_holders(s, &leases, limit).await?, Vec::new())
            }
            Kind::RwLock => (self.rw_holders(s, &path).await?, Vec::new()),
            Kind::Election => {
                (self.first_holder(s, &path, Mode::Leader).await?.into_iter().collect(), Vec::new())
            }
        })
    }

    /// The lock holder of the name node at `rel` (its first queue node), and its children that
    /// are nodes of longer names or of primitives, sorted by znode name. A child whose name
    /// ends in a sequence is a queue node if ephemeral, the node of a longer name otherwise.
    async fn holder_and_nodes(
        &self,
        s: &Session,
        rel: &[String],
    ) -> Result<(Option<LockInfo>, Vec<(String, (String, Kind))>)> {
        let path = self.abs(rel);
        let mut names = match s.call(|c| c.list_children(&path)).await {
            Ok(n) => n,
            Err(zookeeper_client::Error::NoNode) => return Ok((None, Vec::new())),
            Err(e) => return Err(zk_err("list", &path, e)),
        };
        names.sort();
        let sequenced = in_sequence_order(names.iter().filter(|n| sequence(n).is_some()).cloned().collect());
        let stats = join_all(sequenced.iter().map(|n| {
            let child = format!("{path}/{n}");
            async move { s.call(|c| c.check_stat(&child)).await.map_err(|e| zk_err("stat", &child, e)) }
        }))
        .await;
        let mut queue_nodes = Vec::new();
        let mut dirs = std::collections::HashSet::new();
        for (name, stat) in sequenced.iter().zip(stats) {
            match stat? {
                Some(st) if st.ephemeral_owner != 0 => queue_nodes.push(name.clone()),
                Some(_) => {
                    dirs.insert(name.clone());
                }
                None => {}
            }
        }
        let mut holder = None;
        for name in queue_nodes {
            let child = format!("{path}/{name}");
            match s.call(|c| c.get_data(&child)).await {
                Ok((data, stat)) => {
                    holder = Some(info_of(&name, &data, &stat, Mode::Exclusive));
                    break;
                }
                Err(zookeeper_client::Error::NoNode) => continue,
                Err(e) => return Err(zk_err("read", &child, e)),
            }
        }
        let under = names
            .into_iter()
            .filter(|n| sequence(n).is_none() || dirs.contains(n))
            .filter_map(|n| classify(&n).map(|c| (n, c)))
            .collect();
        Ok((holder, under))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        p.split('/').map(str::to_owned).collect()
    }

    #[test]
    fn the_walk_resumes_after_the_cursor() {
        let cursor = segs("a/b/c");
        assert!(still_ahead(&segs("a"), &cursor), "an ancestor may have more under it");
        assert!(still_ahead(&segs("a/b"), &cursor));
        assert!(!still_ahead(&segs("a/b/c"), &cursor) || cursor.starts_with(&segs("a/b/c")));
        assert!(still_ahead(&segs("a/b/c/d"), &cursor), "below the cursor comes after it");
        assert!(still_ahead(&segs("a/b/d"), &cursor));
        assert!(!still_ahead(&segs("a/a"), &cursor), "a subtree before the cursor is done");
        assert!(!still_ahead(&segs("a/b/b/z"), &cursor));
        // `a-c` sorts before `a/…` as a string, but after `a`'s subtree as a path.
        assert!(still_ahead(&segs("a-c"), &cursor));
    }
}
