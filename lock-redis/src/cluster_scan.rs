//! A `SCAN` over every primary of a Redis Cluster that is complete or fails: the rules and the
//! cursor (the requests are [`Node::scan`](crate::node::Node)'s).
//!
//! One `SCAN` reaches one node, so a cluster is scanned primary by primary, in the order of
//! their node ids, and a page's cursor is `<fingerprint>.<node id>.<that node's SCAN cursor>`.
//! A `SCAN` goes on a connection of its own to the address the cluster client reached that
//! primary at, not by slot: after a move the client's slot map can be behind, and a `SCAN`
//! carries no key to be redirected by.
//!
//! What must not happen is a listing that ends without an error and misses a name:
//! `migrate-tokens` trusts the fencing counters it reads to be all of them. Keys move between
//! primaries only in a slot migration (`MIGRATE`, key by key, while the slot map stands, then
//! `SETSLOT … NODE`) and in a failover (another node serves the slots); and a `SCAN` cursor
//! means nothing to a primary that restarted (a new hash seed) or was a replica meanwhile (a
//! full resync rebuilds its table). So before each page the client asks every primary it
//! knows for `CLUSTER NODES` and its `run_id` (`INFO server`), and the page fails with a
//! retryable error when
//!
//! - a primary is migrating or importing a slot (`[slot->-id]`, `[slot-<-id]`; a node shows
//!   these only on its own line, hence every primary is asked);
//! - a primary the client knows calls itself a replica, or names a primary with slots that
//!   the client does not know, or the primaries' slots overlap or leave some of the 16384
//!   slots to nobody (a failover under way, or the client's view behind a change);
//! - the primaries, their slots, their config epochs (raised by a failover or failback) and
//!   their run ids (new at a restart) — the fingerprint — differ from the first page's.
//!
//! The last page checks once more after its `SCAN`, so a move that started during the listing
//! is caught even when its keys went to a primary scanned before. The limits left: changes
//! that undo each other between two pages (the same slot out and back) are not seen; and a
//! cluster that leaves slots unassigned on purpose (`cluster-require-full-coverage no`) is
//! never listed.

use std::collections::BTreeMap;

/// Slots in a Redis Cluster.
const SLOTS: usize = 16384;

/// What one node's `CLUSTER NODES` says: of itself (its own line), and which other primaries
/// serve slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeView {
    /// Its node id.
    pub id: String,
    /// Whether it calls itself a primary.
    pub primary: bool,
    /// The slot ranges it serves (inclusive).
    pub slots: Vec<(u16, u16)>,
    /// Whether it is migrating or importing a slot.
    pub moving: bool,
    /// Its config epoch.
    pub epoch: u64,
    /// The other primaries with slots in its table.
    pub others: Vec<String>,
}

/// Whether the flags field of a `CLUSTER NODES` line holds `flag`.
fn flagged(line: &[&str], flag: &str) -> bool {
    line.get(2).is_some_and(|f| f.split(',').any(|f| f == flag))
}

/// The line flagged `myself` in a `CLUSTER NODES` reply: `<id> <address> <flags> <primary>
/// <ping> <pong> <epoch> <link> <slot>…`, a slot being `N`, `N-M`, `[N->-id]` or `[N-<-id]`;
/// and the other primaries with slots the reply names. `None` when there is no such line or
/// a field does not parse.
pub(crate) fn node_view(reply: &str) -> Option<NodeView> {
    let lines: Vec<Vec<&str>> = reply.lines().map(|l| l.split_whitespace().collect()).collect();
    let f = lines.iter().find(|l| flagged(l, "myself"))?;
    let (ranges, moving) = slots(f)?;
    let mut others = Vec::new();
    for l in lines.iter().filter(|l| flagged(l, "master") && !flagged(l, "myself")) {
        if !slots(l)?.0.is_empty() {
            others.push(l[0].to_owned());
        }
    }
    Some(NodeView {
        id: f.first()?.to_string(),
        primary: flagged(f, "master"),
        slots: ranges,
        moving,
        epoch: f.get(6)?.parse().ok()?,
        others,
    })
}

/// The slot ranges of one `CLUSTER NODES` line, and whether it marks a slot migrating or
/// importing. `None` when a slot does not parse.
fn slots(line: &[&str]) -> Option<(Vec<(u16, u16)>, bool)> {
    let (mut ranges, mut moving) = (Vec::new(), false);
    for s in line.iter().skip(8) {
        if s.starts_with('[') {
            moving = true;
            continue;
        }
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
        if a > b || usize::from(b) >= SLOTS {
            return None;
        }
        ranges.push((a, b));
    }
    Some((ranges, moving))
}

/// The primaries to scan, in order, and the fingerprint of the slot map they make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Topology {
    /// Each primary that serves slots: its node id and the address the client reaches it at
    /// (`host:port`, as the cluster client names it), ordered by id.
    pub primaries: Vec<(String, String)>,
    /// FNV-1a of the primaries' ids, slot ranges, config epochs and run ids.
    pub fingerprint: u64,
}

/// What one primary the client knows says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The address the client reached it at (`host:port`, as the cluster client names it).
    pub address: String,
    /// Its `CLUSTER NODES`.
    pub view: NodeView,
    /// Its `run_id` (`INFO server`): new at every start.
    pub run_id: String,
}

/// The topology the primaries make, or why it is not settled (a retryable state).
pub(crate) fn topology(seen: Vec<Seen>) -> Result<Topology, String> {
    let mut by_id = BTreeMap::new();
    let mut owner = vec![false; SLOTS];
    let mut replica = None;
    let known: Vec<String> = seen.iter().map(|s| s.view.id.clone()).collect();
    for Seen { address, view, run_id } in seen {
        if view.moving {
            return Err(format!("node {} is migrating or importing a slot", view.id));
        }
        if let Some(other) = view.others.iter().find(|id| !known.contains(id)) {
            return Err(format!("node {} names primary {other}, which this client does not know", view.id));
        }
        if !view.primary {
            replica = Some(format!("node {} is a replica now (a failover)", view.id));
            continue;
        }
        for &(a, b) in &view.slots {
            for s in a..=b {
                if std::mem::replace(&mut owner[usize::from(s)], true) {
                    return Err(format!("slot {s} is claimed by two primaries"));
                }
            }
        }
        if !view.slots.is_empty() {
            let mut slots = view.slots;
            slots.sort_unstable();
            by_id.insert(view.id, (slots, view.epoch, run_id, address));
        }
    }
    if let Some(why) = replica {
        return Err(why);
    }
    if let Some(s) = owner.iter().position(|o| !o) {
        return Err(format!("slot {s} is served by no primary this client knows"));
    }
    let mut hash = Fnv::new();
    for (id, (slots, epoch, run_id, _)) in &by_id {
        hash.write(id.as_bytes());
        hash.write(&epoch.to_be_bytes());
        hash.write(run_id.as_bytes());
        for (a, b) in slots {
            hash.write(&a.to_be_bytes());
            hash.write(&b.to_be_bytes());
        }
        hash.write(b";");
    }
    Ok(Topology {
        primaries: by_id.into_iter().map(|(id, (_, _, _, address))| (id, address)).collect(),
        fingerprint: hash.0,
    })
}

/// Where a cluster listing goes on, on the topology it began on (the cursor's text also
/// carries that topology's fingerprint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The primary to scan: its position in [`Topology::primaries`].
    pub at: usize,
    /// That primary's `SCAN` cursor.
    pub from: u64,
}

impl Cursor {
    /// The cursor `text` on `topology`: `Ok(None)` for a cursor made on another topology (a
    /// retryable state), `Err` for text no listing made.
    pub(crate) fn parse(text: &str, topology: &Topology) -> Result<Option<Self>, ()> {
        let mut parts = text.splitn(3, '.');
        let (Some(fp), Some(id), Some(from)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(());
        };
        let fingerprint = u64::from_str_radix(fp, 16).map_err(|_| ())?;
        let from = from.parse().map_err(|_| ())?;
        if fingerprint != topology.fingerprint {
            return Ok(None);
        }
        let at = topology.primaries.iter().position(|(p, _)| p == id).ok_or(())?;
        Ok(Some(Cursor { at, from }))
    }

    /// The cursor after a `SCAN` of primary `at` answered `next` (`0`: that primary is done):
    /// `None` once the last primary is done.
    pub(crate) fn after(topology: &Topology, at: usize, next: u64) -> Option<String> {
        let (at, from) = if next == 0 { (at + 1, 0) } else { (at, next) };
        let (id, _) = topology.primaries.get(at)?;
        Some(format!("{:016x}.{id}.{from}", topology.fingerprint))
    }
}

/// FNV-1a, 64 bits: stable across builds, so a cursor outlives the process that made it.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "07c37dfeb235213a872192d90877d0cd55635b91";
    const B: &str = "e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca";

    fn line(id: &str, flags: &str, slots: &str) -> String {
        format!("{id} 127.0.0.1:30004@31004 {flags} - 0 1426238317239 4 connected {slots}")
    }

    fn own(id: &str, slots: &[(u16, u16)]) -> Seen {
        let line = NodeView {
            id: id.into(),
            primary: true,
            slots: slots.to_vec(),
            moving: false,
            epoch: 4,
            others: vec![],
        };
        Seen { address: format!("10.0.0.{}:6379", &id[..1]), view: line, run_id: "r1".into() }
    }

    fn with(mut seen: Seen, change: impl FnOnce(&mut Seen)) -> Seen {
        change(&mut seen);
        seen
    }

    #[test]
    fn a_node_says_what_it_serves_on_its_node_view() {
        let reply = [
            line(B, "master", "0-5460"),
            line(A, "myself,master", "5461-10922 16000 [10923->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]"),
            line("c", "slave", ""),
        ]
        .join("\n");
        let me = node_view(&reply).expect("the myself line");
        assert_eq!(me.id, A);
        assert!(me.primary && me.moving && me.epoch == 4);
        assert_eq!(me.others, vec![B.to_owned()], "the other primary with slots, not the replica");
        assert_eq!(me.slots, vec![(5461, 10922), (16000, 16000)]);
        let replica = node_view(&line("c", "myself,slave", "")).expect("a replica's line");
        assert!(!replica.primary && !replica.moving && replica.slots.is_empty());
        assert_eq!(node_view(&line(B, "master", "0-5460")), None, "no myself line");
        // A primary that failed and was replaced keeps no slots: it is not named.
        let replaced = [line(B, "master,fail", ""), line(A, "myself,master", "0-16383")].join("\n");
        assert!(node_view(&replaced).expect("a line").others.is_empty());
        assert_eq!(node_view(&line(A, "myself,master", "0-16384")), None, "a slot out of range");
        assert_eq!(node_view(&line(A, "myself,master", "9-3")), None, "a range backwards");
    }

    #[test]
    fn a_slot_map_that_is_moving_or_incomplete_is_not_settled() {
        let whole = topology(vec![own(B, &[(0, 8191)]), own(A, &[(8192, 16383)])]).expect("settled");
        let want =
            vec![(A.to_owned(), "10.0.0.0:6379".to_owned()), (B.to_owned(), "10.0.0.e:6379".to_owned())];
        assert_eq!(whole.primaries, want, "ordered by id, each with its own address");
        let moving = with(own(A, &[(8192, 16383)]), |s| s.view.moving = true);
        assert!(topology(vec![own(B, &[(0, 8191)]), moving]).unwrap_err().contains("migrating"));
        // A primary the client does not know (a promoted replica), named by one it knows.
        let names = with(own(A, &[(8192, 16383)]), |s| s.view.others = vec![B.into(), "c".into()]);
        assert!(topology(vec![own(B, &[(0, 8191)]), names]).unwrap_err().contains("does not know"));
        // A restart (new run id) or a failover and back (new config epoch): another fingerprint.
        for changed in [
            with(own(A, &[(8192, 16383)]), |s| s.run_id = "r2".into()),
            with(own(A, &[(8192, 16383)]), |s| s.view.epoch = 5),
        ] {
            let t = topology(vec![own(B, &[(0, 8191)]), changed]).expect("settled");
            assert_ne!(t.fingerprint, whole.fingerprint);
        }
        let replica = with(own(A, &[]), |s| s.view.primary = false);
        assert!(topology(vec![own(B, &[(0, 16383)]), replica]).unwrap_err().contains("replica"));
        assert!(topology(vec![own(B, &[(0, 8191)])]).unwrap_err().contains("slot 8192"));
        assert!(topology(vec![own(B, &[(0, 8192)]), own(A, &[(8192, 16383)])]).unwrap_err().contains("two"));
        // A slot moved from one primary to the other: another fingerprint.
        let moved = topology(vec![own(B, &[(0, 8190)]), own(A, &[(8191, 16383)])]).expect("settled");
        assert_ne!(moved.fingerprint, whole.fingerprint);
        // A primary without slots (all moved away) is not scanned.
        let empty = topology(vec![own(B, &[(0, 16383)]), own(A, &[])]).expect("settled");
        assert_eq!(empty.primaries.len(), 1);
    }

    #[test]
    fn a_cursor_goes_on_at_its_primary_or_the_next_and_only_on_its_slot_map() {
        let t = topology(vec![own(B, &[(0, 8191)]), own(A, &[(8192, 16383)])]).expect("settled");
        let c = Cursor::after(&t, 0, 42).expect("more on the first primary");
        assert_eq!(Cursor::parse(&c, &t), Ok(Some(Cursor { at: 0, from: 42 })));
        let c = Cursor::after(&t, 0, 0).expect("the second primary next");
        assert_eq!(Cursor::parse(&c, &t), Ok(Some(Cursor { at: 1, from: 0 })));
        assert_eq!(Cursor::after(&t, 1, 0), None, "the last primary done");
        let moved = topology(vec![own(B, &[(0, 8190)]), own(A, &[(8191, 16383)])]).expect("settled");
        assert_eq!(Cursor::parse(&c, &moved), Ok(None), "made on another slot map");
        let unknown = format!("{:016x}.c.0", t.fingerprint);
        for bad in ["42", "x.y.z", "00.a", &format!("{:016x}.{A}.x", t.fingerprint), &unknown] {
            assert_eq!(Cursor::parse(bad, &t), Err(()), "{bad}");
        }
    }
}
