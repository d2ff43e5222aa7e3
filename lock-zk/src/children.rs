//! Curator's layout: where a lock's contenders live, how their children are named, and the
//! order they are served in.
//!
//! A lock named `jobs/nightly` is the directory `<prefix>/jobs/nightly`; each contender is an
//! EPHEMERAL_SEQUENTIAL child named as Curator's protected mode names it,
//! `_c_<uuid>-lock-<10-digit sequence>`, with the attempt's owner token as its uuid.

use lock_core::{LockKey, OwnerToken};

/// A contender's child: the path, its sequence name, its czxid, the session that owns it.
pub(crate) struct Child {
    pub(crate) path: String,
    pub(crate) name: String,
    pub(crate) czxid: i64,
    pub(crate) owner: i64,
}

/// The directory of `key`'s contenders under `prefix`.
pub(crate) fn lock_dir(prefix: &str, key: &LockKey) -> String {
    let mut dir = prefix.to_owned();
    for seg in key.full().split('/') {
        dir.push('/');
        dir.push_str(&encode_segment(seg));
    }
    dir
}

/// The start of the name of `owner`'s child: Curator's protected-mode prefix with the owner
/// token as its uuid, and Curator's lock name.
pub(crate) fn stem(owner: OwnerToken) -> String {
    format!("_c_{}-lock-", uuid::Uuid::from_u128(owner.as_u128()).hyphenated())
}

/// The sequence ZooKeeper appended to `name`: its last 10 digits. Children are ordered by
/// it, so children written by other recipes in the same directory are ordered rightly too.
pub(crate) fn sequence(name: &str) -> Option<u64> {
    let tail = name.get(name.len().checked_sub(10)?..)?;
    tail.bytes().all(|b| b.is_ascii_digit()).then(|| tail.parse().ok()).flatten()
}

/// The owner token in a child named `_c_<uuid>-lock-<sequence>`.
pub(crate) fn owner_of(name: &str) -> Option<OwnerToken> {
    let uuid = name.strip_prefix("_c_")?.get(..36)?;
    uuid::Uuid::parse_str(uuid).ok().map(|u| OwnerToken::from_u128(u.as_u128()))
}

/// Keeps the children that carry a sequence and sorts them by it. The first of them that is
/// a lock node (an ephemeral child) holds the lock: a name that carries a sequence may also
/// be the directory of a lock whose name extends this one (`jobs/0000000001` is the child
/// `0000000001` of `jobs`), which is not ephemeral and never a contender.
pub(crate) fn in_sequence_order(mut children: Vec<String>) -> Vec<String> {
    children.retain(|n| sequence(n).is_some());
    children.sort_by_key(|n| sequence(n).unwrap_or(u64::MAX));
    children
}

/// One key segment as a znode name: segments that ZooKeeper cannot name (empty, `.`, `..`,
/// or holding characters outside `[A-Za-z0-9_.:@~-]`) are percent-encoded.
pub(crate) fn encode_segment(seg: &str) -> String {
    match seg {
        "" => return "%".into(),
        "." => return "%2E".into(),
        ".." => return "%2E%2E".into(),
        _ => {}
    }
    let mut out = String::with_capacity(seg.len());
    for b in seg.bytes() {
        if b.is_ascii_alphanumeric() || b"_.:@~-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_and_owners_are_read_from_child_names() {
        let owner = OwnerToken::from_u128(0x1234);
        let name = format!("{}0000000042", stem(owner));
        assert_eq!(sequence(&name), Some(42));
        assert_eq!(owner_of(&name), Some(owner));
        assert_eq!(sequence("x__lock__0000000007"), Some(7));
        assert_eq!(sequence("nightly"), None);
        assert_eq!(owner_of("abc__lock__0000000007"), None);
    }

    #[test]
    fn children_of_every_recipe_are_served_by_sequence() {
        let names = ["b-lock-0000000003", "nightly", "a__lock__0000000001", "_c_x-lock-0000000002"];
        let order = in_sequence_order(names.iter().map(|s| s.to_string()).collect());
        assert_eq!(order, ["a__lock__0000000001", "_c_x-lock-0000000002", "b-lock-0000000003"]);
    }

    #[test]
    fn key_segments_become_valid_znode_names() {
        assert_eq!(encode_segment("jobs"), "jobs");
        assert_eq!(encode_segment(""), "%");
        assert_eq!(encode_segment(".."), "%2E%2E");
        assert_eq!(encode_segment("a b%"), "a%20b%25");
        assert_eq!(encode_segment("ü"), "%C3%BC");
    }
}
