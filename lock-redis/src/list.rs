//! Listing what is held under a prefix: `SCAN` with a `MATCH` pattern over the fencing
//! counters of every primitive under it (`P{<name>}:fence`, `P{<name>}:sem:fence`,
//! `P{<name>}:rw:fence`, `P{<name>}:elect:fence`: one key per primitive ever granted, so each
//! is found once), then each one's holders by its own script, sent together. The SCAN cursor
//! is the page cursor (on a cluster, each primary's in turn, see [`crate::cluster_scan`]).
//! Locks held only by a foreign client (a `SET NX` on `P{K}` that keeps no counter) are not
//! listed.

use lock_core::{CounterPage, FencingToken, ListPage, LockInfo, Mode, Result};

use crate::keys::Keys;
use crate::node::{Node, NAME};

/// Holders scripts of one page in flight at once.
const HOLDER_READS: usize = 64;

/// The counter suffix of each primitive, after the hash tag's closing brace.
const COUNTERS: [(&str, Mode); 4] = [
    ("}:fence", Mode::Exclusive),
    ("}:sem:fence", Mode::Permit { limit: 1 }),
    ("}:rw:fence", Mode::Read),
    ("}:elect:fence", Mode::Leader),
];

/// `s` with the glob characters of `SCAN MATCH` escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The full name and primitive of a counter key found under `base` (the backend's prefix).
fn counter_of<'a>(base: &str, key: &'a str) -> Option<(&'a str, Mode)> {
    let rest = key.strip_prefix(base)?.strip_prefix('{')?;
    COUNTERS.iter().find_map(|(suffix, mode)| rest.strip_suffix(suffix).map(|name| (name, *mode)))
}

/// One `SCAN` call for the counters under `prefix`: the (full name, primitive, counter key)
/// found, and the next cursor (`None`: done).
async fn scan_counters(
    node: &Node,
    base: &str,
    prefix: &str,
    cursor: Option<String>,
    limit: usize,
) -> Result<(Vec<(String, Mode, String)>, Option<String>)> {
    let pattern = format!("{}{{{}*:fence", glob_escape(base), glob_escape(prefix));
    let (keys, next) = node.scan(cursor.as_deref(), &pattern, limit.max(10)).await?;
    let found = keys
        .iter()
        .filter_map(|key| counter_of(base, key).map(|(name, mode)| (name.to_owned(), mode, key.clone())))
        .collect();
    Ok((found, next))
}

/// One page of the grants held under `prefix` (a full-key prefix): one `SCAN` call.
pub(crate) async fn page(
    node: &Node,
    base: &str,
    prefix: &str,
    cursor: Option<String>,
    limit: usize,
) -> Result<ListPage> {
    use futures::StreamExt;
    let (found, next) = scan_counters(node, base, prefix, cursor, limit).await?;
    // One holders script per primitive found, sent together (the connection pipelines them).
    let reads = futures::stream::iter(found)
        .map(|(name, mode, _)| async move {
            let keys = Keys::of_full(NAME, base, &name, mode)?;
            Ok::<_, lock_core::Error>(node.holders(&keys).await?.into_iter().map(move |h| (name.clone(), h)))
        })
        .buffered(HOLDER_READS)
        .collect::<Vec<_>>()
        .await;
    let mut entries: Vec<(String, LockInfo)> = Vec::new();
    for r in reads {
        entries.extend(r?);
    }
    Ok(ListPage::new(entries, next))
}

/// One page of the fencing counters under `prefix`: one `SCAN` call and one `MGET`. A
/// read-write lock's counter is reported with [`Mode::Write`], a semaphore's with its mode
/// (any number of permits: the counter is the semaphore's).
pub(crate) async fn counters(
    node: &Node,
    base: &str,
    prefix: &str,
    cursor: Option<String>,
    limit: usize,
) -> Result<CounterPage> {
    let (found, next) = scan_counters(node, base, prefix, cursor, limit).await?;
    let values = node.counters(&found.iter().map(|(_, _, k)| k.clone()).collect::<Vec<_>>()).await?;
    let counters = found
        .into_iter()
        .zip(values)
        .filter(|(_, v)| *v > 0)
        .map(|((name, mode, _), v)| {
            let mode = if mode == Mode::Read { Mode::Write } else { mode };
            (name, mode, FencingToken::new(v))
        })
        .collect();
    Ok(CounterPage::new(counters, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_name_their_primitive_and_globs_are_escaped() {
        assert_eq!(counter_of("p:", "p:{jobs/a}:fence"), Some(("jobs/a", Mode::Exclusive)));
        assert_eq!(counter_of("p:", "p:{jobs/a}:sem:fence").map(|c| c.0), Some("jobs/a"));
        assert_eq!(counter_of("p:", "p:{a}b}:elect:fence"), Some(("a}b", Mode::Leader)));
        assert_eq!(counter_of("p:", "p:{jobs/a}"), None);
        assert_eq!(counter_of("p:", "q:{jobs/a}:fence"), None);
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
