//! Curator's layouts: where each primitive of a name lives, how its nodes are named, and the
//! order they are served in.
//!
//! The name `jobs/nightly` is the znode path `<prefix>/jobs/nightly`, one node per key
//! segment. Its lock queues in that node; its semaphore, read-write lock and election live in
//! the sibling nodes `nightly#semaphore`, `nightly#rwlock` and `nightly#election`. `#` is never
//! in an encoded key segment, so no other name's node is ever called that, and the suffix keeps
//! them from ending in ten digits (the sequence of a queue node). Every queue node is
//! EPHEMERAL_SEQUENTIAL and named as Curator's protected mode names it,
//! `_c_<uuid>-<recipe name><10-digit sequence>`, with the attempt's owner token as its uuid.

use lock_core::{LockKey, Mode, OwnerToken};

/// The suffix of a name's semaphore node (Curator's `InterProcessSemaphoreV2` path).
pub(crate) const SEMAPHORE: &str = "#semaphore";
/// The suffix of a name's read-write lock node (Curator's `InterProcessReadWriteLock` path).
pub(crate) const RWLOCK: &str = "#rwlock";
/// The suffix of a name's election node (Curator's `LeaderLatch` path).
pub(crate) const ELECTION: &str = "#election";

/// Curator's name of a lock's (and a semaphore mutex's) queue nodes.
pub(crate) const LOCK: &str = "lock-";
/// Curator's name of a semaphore's lease nodes.
pub(crate) const LEASE: &str = "lease-";
/// Curator's name of a reader's node.
pub(crate) const READ: &str = "__READ__";
/// Curator's name of a writer's node.
pub(crate) const WRITE: &str = "__WRIT__";
/// Curator's name of an election candidate's node.
pub(crate) const LATCH: &str = "latch-";

/// A queue node: the path, its sequence name, its czxid, the session that owns it.
pub(crate) struct Child {
    pub(crate) path: String,
    pub(crate) name: String,
    pub(crate) czxid: i64,
    pub(crate) owner: i64,
}

/// Who keeps a contender waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Every contender ahead: only the first holds (a lock, a writer, a leader, a semaphore's
    /// mutex).
    First,
    /// Only writers ahead: a reader holds when no writer is ahead of it.
    Reader,
}

impl Rule {
    /// Whether a contender named `name` ahead of ours keeps ours waiting.
    pub(crate) fn blocks(self, name: &str) -> bool {
        match self {
            Rule::First => true,
            Rule::Reader => crate::rwlock::is_writer(name),
        }
    }
}

/// Where one primitive's contenders queue, what their nodes are called, and who they wait for.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    /// The node whose children are the queue.
    pub(crate) dir: String,
    /// The recipe's name of the nodes (after the protected-mode prefix).
    pub(crate) name: &'static str,
    /// Who keeps a contender waiting.
    pub(crate) rule: Rule,
}

impl Queue {
    /// The start of the name of `owner`'s node in this queue.
    pub(crate) fn stem(&self, owner: OwnerToken) -> String {
        stem(owner, self.name)
    }
}

/// The node of `key` under `prefix`: the directory of its lock's contenders.
pub(crate) fn lock_dir(prefix: &str, key: &LockKey) -> String {
    let mut dir = prefix.to_owned();
    for seg in key.full().split('/') {
        dir.push('/');
        dir.push_str(&encode_segment(seg));
    }
    dir
}

/// The queue of `key`'s primitive `mode` under `prefix`. For a semaphore it is the queue of
/// its leases (see [`semaphore_mutex`] for the mutex that guards it).
pub(crate) fn queue(prefix: &str, key: &LockKey, mode: Mode) -> Queue {
    let base = lock_dir(prefix, key);
    match mode {
        Mode::Permit { .. } => {
            Queue { dir: format!("{base}{SEMAPHORE}/leases"), name: LEASE, rule: Rule::First }
        }
        Mode::Read => Queue { dir: format!("{base}{RWLOCK}"), name: READ, rule: Rule::Reader },
        Mode::Write => Queue { dir: format!("{base}{RWLOCK}"), name: WRITE, rule: Rule::First },
        Mode::Leader => Queue { dir: format!("{base}{ELECTION}"), name: LATCH, rule: Rule::First },
        _ => Queue { dir: base, name: LOCK, rule: Rule::First },
    }
}

/// The node of `key`'s semaphore (its data holds the permit count distlock clients use).
pub(crate) fn semaphore_dir(prefix: &str, key: &LockKey) -> String {
    format!("{}{SEMAPHORE}", lock_dir(prefix, key))
}

/// The mutex that guards the creation of `key`'s semaphore leases: Curator's
/// `<semaphore>/locks`, an `InterProcessMutex`.
pub(crate) fn semaphore_mutex(prefix: &str, key: &LockKey) -> Queue {
    Queue { dir: format!("{}/locks", semaphore_dir(prefix, key)), name: LOCK, rule: Rule::First }
}

/// The start of the name of `owner`'s node of recipe `name`: Curator's protected-mode prefix
/// with the owner token as its uuid, then the recipe's name.
pub(crate) fn stem(owner: OwnerToken, name: &str) -> String {
    format!("_c_{}-{name}", uuid::Uuid::from_u128(owner.as_u128()).hyphenated())
}

/// The recipe names whose nodes' sequences are read with their sign: Curator's, and kazoo's
/// (`__lock__`, `__rlock__`).
const STEMS: [&str; 7] = [LOCK, LEASE, READ, WRITE, LATCH, "__lock__", "__rlock__"];

/// The sequence ZooKeeper appended to `name`, formatted `%010d`: ten digits, or once the
/// parent's counter passed 2^31 - 1 and went on from -2^31, a minus sign and nine or ten
/// digits. A minus sign counts only right after one of the recipe names in [`STEMS`] (the name
/// of a lock node is `…lock-` then the sequence, so `…lock--2147483648` is negative and
/// `…lock-2147483647` is not); after any other name, ten digits are read as positive and a
/// sign with nine digits is no sequence. Children are ordered by it, so children written by
/// other recipes in the same directory are ordered rightly too.
pub(crate) fn sequence(name: &str) -> Option<i32> {
    parse_sequence(name).map(|(q, _)| q)
}

/// [`sequence`], and whether it follows a recipe name (a queue node's, not a directory's
/// that happens to end in digits).
fn parse_sequence(name: &str) -> Option<(i32, bool)> {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let after_stem = |head: &str| STEMS.iter().any(|s| head.ends_with(s));
    let cut = name.len().checked_sub(10)?;
    let (head, tail) = (name.get(..cut)?, name.get(cut..)?);
    if let Some(nine) = tail.strip_prefix('-') {
        if !digits(nine) || !after_stem(head) {
            return None;
        }
        return Some((-nine.parse::<i32>().ok()?, true));
    }
    if !digits(tail) {
        return None;
    }
    match head.strip_suffix('-') {
        Some(before) if after_stem(before) => Some((format!("-{tail}").parse().ok()?, true)),
        _ => Some((tail.parse().ok()?, after_stem(head))),
    }
}

/// The owner token in a node named `_c_<uuid>-…`.
pub(crate) fn owner_of(name: &str) -> Option<OwnerToken> {
    let uuid = name.strip_prefix("_c_")?.get(..36)?;
    uuid::Uuid::parse_str(uuid).ok().map(|u| OwnerToken::from_u128(u.as_u128()))
}

/// Keeps the children that carry a sequence and sorts them by it, in creation order across
/// the counter's wrap (see [`sequence`]). In a lock's directory the
/// first of them that is a lock node (an ephemeral child) holds the lock: a name that carries
/// a sequence may also be the directory of a lock whose name extends this one
/// (`jobs/0000000001` is the child `0000000001` of `jobs`), which is not ephemeral and never a
/// contender.
pub(crate) fn in_sequence_order(children: Vec<String>) -> Vec<String> {
    let mut seqs: Vec<(i32, bool, String)> =
        children.into_iter().filter_map(|n| parse_sequence(&n).map(|(q, node)| (q, node, n))).collect();
    // The counter wraps: live queue nodes span far less than half its range, so the first of
    // them is the one every other follows (serial-number order, as in RFC 1982), and all are
    // ordered by their distance from it. Only queue nodes may choose it: a directory whose
    // name ends in digits can lie anywhere in the range, and two such directories half the
    // range apart make "earliest" depend on the listing's order (a later contender then sorts
    // ahead of the holder). So the start is found from the nodes named by a random id (ours,
    // Curator's protected nodes, kazoo's), which no directory of a distlock name can be (see
    // `encode_segment`); then from any child with a sequence at most a quarter of the range
    // before it: a node of a client that names its nodes otherwise (Curator's unprotected
    // nodes, ZooKeeper's own WriteLock recipe's `x-<session>-<seq>`), made before ours, is
    // ahead of ours; a directory there does no harm, as every live node is after it.
    let earliest =
        |qs: &mut dyn Iterator<Item = i32>| qs.reduce(|a, b| if b.wrapping_sub(a) < 0 { b } else { a });
    let by_id = earliest(&mut seqs.iter().filter(|(_, node, n)| *node && id_named(n)).map(|(q, _, _)| *q));
    let first = match by_id {
        Some(f) => {
            let near = |q: i32| (1..=i32::MAX / 4).contains(&f.wrapping_sub(q));
            earliest(&mut seqs.iter().filter(|(q, _, _)| near(*q)).map(|(q, _, _)| *q)).or(by_id)
        }
        None => earliest(&mut seqs.iter().filter(|(_, node, _)| *node).map(|(q, _, _)| *q))
            .or_else(|| earliest(&mut seqs.iter().map(|(q, _, _)| *q))),
    };
    if let Some(first) = first {
        seqs.sort_by_key(|(q, _, _)| q.wrapping_sub(first) as u32);
    }
    seqs.into_iter().map(|(_, _, n)| n).collect()
}

/// Whether `name` is shaped as the node of a recipe that names its nodes by a random id:
/// `_c_<uuid>-…` (ours and Curator's protected mode) or `<32 hex digits>__lock__…` /
/// `…__rlock__…` (kazoo).
fn id_named(name: &str) -> bool {
    let kazoo = name.get(..32).is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        && name.get(32..).is_some_and(|r| r.starts_with("__lock__") || r.starts_with("__rlock__"));
    kazoo || owner_of(name).is_some()
}

/// One key segment as a znode name: segments that ZooKeeper cannot name (empty, `.`, `..`,
/// or holding characters outside `[A-Za-z0-9_.:@~-]`) are percent-encoded. So is the first
/// character of a segment shaped as a queue node named by a random id (`_c_<uuid>-…`,
/// kazoo's `<hex>__lock__…`): the directory of such a name would otherwise take part in
/// deciding the order of the queue it sits in (see `in_sequence_order`).
pub(crate) fn encode_segment(seg: &str) -> String {
    match seg {
        "" => return "%".into(),
        "." => return "%2E".into(),
        ".." => return "%2E%2E".into(),
        _ => {}
    }
    let mut out = String::with_capacity(seg.len());
    let id_shaped = id_named(seg);
    for (i, b) in seg.bytes().enumerate() {
        if i == 0 && id_shaped {
            out.push_str(&format!("%{b:02X}"));
        } else if b.is_ascii_alphanumeric() || b"_.:@~-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The key segment a znode name encodes ([`encode_segment`] reversed); `None` for a name no
/// key segment is encoded as.
pub(crate) fn decode_segment(name: &str) -> Option<String> {
    if name == "%" {
        return Some(String::new());
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = name.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b"_.:@~-".contains(&b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    // Only the exact encoding of a segment: `%41`, `%2f` or `%+F` name no key (read as `A`,
    // a listing would report a name that `inspect` looks for elsewhere).
    let seg = String::from_utf8(out).ok()?;
    (encode_segment(&seg) == name).then_some(seg)
}

/// What a node under the prefix is, by its name: a name's node (its lock's directory, and the
/// parent of longer names), or one of its other primitives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A name's node: its lock's queue, and the nodes of longer names.
    Name,
    /// A name's semaphore.
    Semaphore,
    /// A name's read-write lock.
    RwLock,
    /// A name's election.
    Election,
}

/// The key segment and the kind of the node named `name`; `None` for a node no key makes.
pub(crate) fn classify(name: &str) -> Option<(String, Kind)> {
    for (suffix, kind) in [(SEMAPHORE, Kind::Semaphore), (RWLOCK, Kind::RwLock), (ELECTION, Kind::Election)] {
        if let Some(base) = name.strip_suffix(suffix) {
            return decode_segment(base).map(|s| (s, kind));
        }
    }
    decode_segment(name).map(|s| (s, Kind::Name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_and_owners_are_read_from_child_names() {
        let owner = OwnerToken::from_u128(0x1234);
        let name = format!("{}0000000042", stem(owner, LOCK));
        assert_eq!(sequence(&name), Some(42));
        assert_eq!(owner_of(&name), Some(owner));
        let reader = format!("{}0000000043", stem(owner, READ));
        assert!(reader.ends_with("-__READ__0000000043") && owner_of(&reader) == Some(owner));
        assert_eq!(sequence("x__lock__0000000007"), Some(7));
        assert_eq!(sequence("nightly"), None);
        assert_eq!(owner_of("abc__lock__0000000007"), None);
    }

    /// Two directories of nested names, half the counter's range apart, cannot move the start
    /// of the order: the holder stays ahead of a later contender whatever the listing's order
    /// (they made the contender sort ahead of the holder, two holders at once).
    #[test]
    fn directories_of_nested_names_do_not_reorder_the_queue() {
        let (a, b) = (stem(OwnerToken::from_u128(1), LOCK), stem(OwnerToken::from_u128(2), LOCK));
        let (holder, later) = (format!("{a}0000000005"), format!("{b}0000000010"));
        let dirs = ["a-lock--2147483642", "b-lock-0000000007", "c-lock-1500000000", "x__lock__0000000001"];
        let mut names: Vec<String> = vec![holder.clone(), later.clone()];
        names.extend(dirs.iter().map(|d| d.to_string()));
        for rotate in 0..names.len() {
            for swap in 0..names.len() {
                let mut listed = names.clone();
                listed.rotate_left(rotate);
                listed.swap(0, swap);
                let order = in_sequence_order(listed.clone());
                let pos = |n: &str| order.iter().position(|x| x == n);
                assert!(pos(&holder) < pos(&later), "listed {listed:?}: ordered {order:?}");
            }
        }
        // A node of a client that names its nodes otherwise, made before ours, stays first.
        let plain = "lock-0000000003".to_owned();
        let order = in_sequence_order(vec![later.clone(), holder.clone(), plain.clone(), dirs[0].into()]);
        assert_eq!(order.iter().position(|n| *n == plain), Some(0), "{order:?}");
        // So does one named after no recipe we know (ZooKeeper's WriteLock recipe): it sorted
        // last, behind ours, and both held.
        let write_lock = "x-72057594037927936-0000000004".to_owned();
        let order =
            in_sequence_order(vec![later.clone(), holder.clone(), write_lock.clone(), dirs[2].into()]);
        assert_eq!(order.iter().position(|n| *n == write_lock), Some(0), "{order:?}");
        // No name of ours makes a directory shaped as such a node.
        let crafted = format!("{a}0000000001");
        let encoded = encode_segment(&crafted);
        assert!(encoded.starts_with("%5F") && !id_named(&encoded), "{encoded}");
        assert_eq!(decode_segment(&encoded).as_deref(), Some(crafted.as_str()));
        for odd in ["%41", "%2f", "%+F", "a%2Fb%2"] {
            assert_eq!(decode_segment(odd), None, "{odd}");
        }
        let kazoo = format!("{}__lock__0000000001", "0123456789abcdef".repeat(2));
        assert!(id_named(&kazoo) && !id_named(&encode_segment(&kazoo)));
    }

    #[test]
    fn children_of_every_recipe_are_served_by_sequence() {
        let names = ["b-lock-0000000003", "nightly", "a__lock__0000000001", "_c_x-lock-0000000002"];
        let order = in_sequence_order(names.iter().map(|s| s.to_string()).collect());
        assert_eq!(order, ["a__lock__0000000001", "_c_x-lock-0000000002", "b-lock-0000000003"]);
    }

    /// ZooKeeper's sequence is the parent's child version, a signed 32-bit counter that every
    /// child creation and deletion advances: past 2^31 - 1 (about a billion lock cycles on one
    /// name that never sat idle long enough for its directory to be removed) it goes on from
    /// -2^31, formatted `%010d`. Nodes are still served in the order they were created.
    #[test]
    fn sequences_are_served_in_order_across_the_wrap() {
        let o = stem(OwnerToken::from_u128(7), LOCK);
        let seqs = ["2147483646", "2147483647", "-2147483648", "-2147483647", "-1000000000", "-999999999"];
        let names: Vec<String> = seqs.iter().map(|q| format!("{o}{q}")).collect();
        for rotate in 0..names.len() {
            let mut shuffled = names.clone();
            shuffled.rotate_left(rotate);
            shuffled.swap(0, names.len() - 1);
            assert_eq!(in_sequence_order(shuffled), names, "rotated by {rotate}");
        }
        let near_zero = ["-000000002", "-000000001", "0000000000", "0000000001"];
        let names: Vec<String> = near_zero.iter().map(|q| format!("{o}{q}")).collect();
        let mut reversed = names.clone();
        reversed.reverse();
        assert_eq!(in_sequence_order(reversed), names);
        // Directories of longer names that end in digits do not decide where the order starts,
        // and a sign with nine digits after another name is no sequence.
        let dirs = ["2000000000", "x-999999999"].map(String::from);
        let mixed =
            vec![format!("{o}0000000005"), dirs[0].clone(), format!("{o}0000001000"), dirs[1].clone()];
        let order = in_sequence_order(mixed);
        let pos = |n: &str| order.iter().position(|x| x == n);
        assert!(pos(&format!("{o}0000000005")) < pos(&format!("{o}0000001000")), "{order:?}");
        assert_eq!(sequence("x-999999999"), None);
        for (stem_name, q, want) in [
            (READ, "-2147483648", i32::MIN),
            (LATCH, "-000000001", -1),
            (LEASE, "1500000000", 1_500_000_000),
            (LOCK, "-1500000000", -1_500_000_000),
        ] {
            let name = format!("{}{q}", stem(OwnerToken::from_u128(1), stem_name));
            assert_eq!(sequence(&name), Some(want), "{name}");
        }
    }

    #[test]
    fn key_segments_become_valid_znode_names_and_back() {
        assert_eq!(encode_segment("jobs"), "jobs");
        assert_eq!(encode_segment(""), "%");
        assert_eq!(encode_segment(".."), "%2E%2E");
        assert_eq!(encode_segment("a b%"), "a%20b%25");
        assert_eq!(encode_segment("ü"), "%C3%BC");
        for seg in ["jobs", "", ".", "..", "a b%", "ü", "x#semaphore", "0000000001"] {
            assert_eq!(decode_segment(&encode_segment(seg)).as_deref(), Some(seg), "{seg:?}");
        }
        assert_eq!(decode_segment("a#b"), None);
        assert_eq!(decode_segment("%zz"), None);
    }

    #[test]
    fn every_primitive_of_a_name_has_its_own_node() {
        let key = LockKey::new("pool/db").expect("key");
        let q = |m| queue("/distlock", &key, m).dir;
        assert_eq!(q(Mode::Exclusive), "/distlock/pool/db");
        assert_eq!(q(Mode::Permit { limit: 2 }), "/distlock/pool/db#semaphore/leases");
        assert_eq!(semaphore_mutex("/distlock", &key).dir, "/distlock/pool/db#semaphore/locks");
        assert_eq!(q(Mode::Read), "/distlock/pool/db#rwlock");
        assert_eq!(q(Mode::Write), "/distlock/pool/db#rwlock");
        assert_eq!(q(Mode::Leader), "/distlock/pool/db#election");
        assert_eq!(classify("db#semaphore"), Some(("db".into(), Kind::Semaphore)));
        assert_eq!(classify("a%20b#election"), Some(("a b".into(), Kind::Election)));
        assert_eq!(classify("db"), Some(("db".into(), Kind::Name)));
        assert_eq!(classify("db#other"), None);
        // A primitive's node never looks like a queue node.
        assert_eq!(sequence("0000000001#rwlock"), None);
    }
}
