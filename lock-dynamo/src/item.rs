//! The items and their attributes: where each primitive of a name lives (its item's
//! partition key), the lock item read back as a [`Record`], and the item of a semaphore or a
//! read-write lock read back as [`Slots`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;
use lock_core::{LockKey, Mode, OwnerToken, Result};

use crate::error::protocol;

/// A raw item as the SDK gives it.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// The holder's owner token (hex); absent when the lock is free.
pub(crate) const OWNER: &str = "owner";
/// The record version number: a fresh random value on every write.
pub(crate) const RVN: &str = "rvn";
/// The fencing counter; kept by release, incremented by every grant.
pub(crate) const FENCE: &str = "fence";
/// The holder's lease duration in milliseconds.
pub(crate) const LEASE_MS: &str = "lease_ms";
/// The RVN the last release wrote: a release whose reply was lost recognises itself by it
/// when its request is sent again.
pub(crate) const RELEASE_RVN: &str = "release_rvn";
/// When the holder's lease ends by the holder's wall clock (ms since the Unix epoch); only
/// [`Takeover::Clock`](crate::Takeover::Clock) contenders read it.
pub(crate) const EXPIRES_MS: &str = "expires_at_ms";
/// The holder's metadata ([`lock_core::Metadata::encode`]'s compact JSON).
pub(crate) const META: &str = "meta";
/// Semaphore: the number of permits its holders use.
pub(crate) const LIMIT: &str = "limit";
/// Semaphore and read-write lock: how many permit (or reader) entries the item has.
pub(crate) const COUNT: &str = "holders";
/// Read-write lock: the writer's entry.
pub(crate) const WRITER: &str = "writer";
/// Read-write lock: the writer's fencing token.
pub(crate) const WRITER_FENCE: &str = "writer_fence";
/// Read-write lock: the waiting writer's intent (an entry without a grant).
pub(crate) const INTENT: &str = "intent";
/// An entry's owner token (the writer's and the intent's; a permit's or reader's owner is in
/// its attribute name).
pub(crate) const E_OWNER: &str = "o";
/// An entry's RVN.
pub(crate) const E_RVN: &str = "r";
/// An entry's lease in milliseconds.
pub(crate) const E_LEASE: &str = "l";
/// An entry's wall-clock expiry (ms since the Unix epoch).
pub(crate) const E_EXPIRES: &str = "e";
/// An entry's holder metadata.
pub(crate) const E_META: &str = "m";

/// Separates a name from the primitive's suffix in an item's partition key. A control
/// character, which lock keys never contain: no lock's item can be another primitive's.
pub(crate) const KIND_SEP: char = '\u{1f}';

/// Which item of a name a mode's grants live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Lock,
    Leader,
    Semaphore,
    ReadWrite,
}

impl Kind {
    pub(crate) fn of(mode: Mode) -> Option<Kind> {
        match mode {
            Mode::Exclusive => Some(Kind::Lock),
            Mode::Leader => Some(Kind::Leader),
            Mode::Permit { .. } => Some(Kind::Semaphore),
            Mode::Read | Mode::Write => Some(Kind::ReadWrite),
            _ => None,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Kind::Lock => "",
            Kind::Leader => "leader",
            Kind::Semaphore => "semaphore",
            Kind::ReadWrite => "rwlock",
        }
    }

    /// The partition key value of `key`'s item of this kind.
    pub(crate) fn id(self, key: &LockKey) -> String {
        match self {
            Kind::Lock => key.full().to_owned(),
            other => format!("{}{KIND_SEP}{}", key.full(), other.suffix()),
        }
    }

    /// The full key and kind of a partition key value this crate wrote (`None` for another).
    pub(crate) fn parse(id: &str) -> Option<(&str, Kind)> {
        let Some((key, suffix)) = id.split_once(KIND_SEP) else { return Some((id, Kind::Lock)) };
        [Kind::Leader, Kind::Semaphore, Kind::ReadWrite]
            .into_iter()
            .find(|k| k.suffix() == suffix)
            .map(|k| (key, k))
    }
}

/// A lock (or leader) item as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) owner: Option<OwnerToken>,
    pub(crate) rvn: String,
    pub(crate) fence: u64,
    pub(crate) lease: Duration,
    pub(crate) expires_at_ms: Option<u64>,
    pub(crate) release_rvn: Option<String>,
    pub(crate) meta: Option<String>,
}

impl Record {
    pub(crate) fn parse(item: &Item) -> Result<Self> {
        Ok(Self {
            owner: token(item, OWNER)?,
            rvn: string(item, RVN)?.unwrap_or_default(),
            fence: number(item, FENCE)?.unwrap_or(0),
            lease: Duration::from_millis(number(item, LEASE_MS)?.unwrap_or(0)),
            expires_at_ms: number(item, EXPIRES_MS)?,
            release_rvn: string(item, RELEASE_RVN)?,
            meta: string(item, META)?,
        })
    }
}

/// One holder's entry in a semaphore or read-write lock item (or a waiting writer's intent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) owner: OwnerToken,
    pub(crate) rvn: String,
    pub(crate) lease: Duration,
    pub(crate) expires_at_ms: Option<u64>,
    pub(crate) fence: u64,
    pub(crate) meta: Option<String>,
}

/// The item of a semaphore or a read-write lock: the fencing counter, the permits or readers
/// (attribute name, entry), the writer and a waiting writer's intent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Slots {
    pub(crate) fence: u64,
    pub(crate) limit: Option<u32>,
    pub(crate) release_rvn: Option<String>,
    pub(crate) counted: Vec<(String, Entry)>,
    pub(crate) writer: Option<Entry>,
    pub(crate) intent: Option<Entry>,
}

/// The attribute prefix of `mode`'s counted entries (permits, readers).
pub(crate) fn counted_prefix(mode: Mode) -> Option<&'static str> {
    match mode {
        Mode::Permit { .. } => Some("p:"),
        Mode::Read => Some("r:"),
        _ => None,
    }
}

/// The attributes the items use themselves, and the starts of their entries' names: a table
/// key so named could not be written the way a grant writes it.
pub(crate) const ITEM_ATTRS: [&str; 12] =
    [OWNER, RVN, FENCE, LEASE_MS, RELEASE_RVN, EXPIRES_MS, META, LIMIT, COUNT, WRITER, WRITER_FENCE, INTENT];
pub(crate) const ENTRY_PREFIXES: [&str; 4] = ["p:", "r:", "pf:", "rf:"];

/// Whether `name` is one of [`ITEM_ATTRS`] or starts as an entry's name does.
pub(crate) fn reserved_attr(name: &str) -> bool {
    ITEM_ATTRS.contains(&name) || ENTRY_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The attribute that holds a counted entry's fencing token.
pub(crate) fn fence_attr(entry: &str) -> String {
    match entry.split_once(':') {
        Some((p, owner)) => format!("{p}f:{owner}"),
        None => WRITER_FENCE.to_owned(),
    }
}

impl Slots {
    /// Reads a semaphore item (`prefix` `p:`) or a read-write lock item (`r:`).
    pub(crate) fn parse(item: &Item, prefix: &str) -> Result<Self> {
        let mut counted = Vec::new();
        for (name, value) in item {
            let Some(hex) = name.strip_prefix(prefix) else { continue };
            let owner = OwnerToken::parse_hex(hex)
                .ok_or_else(|| protocol(format!("entry {name:?} does not name an owner token")))?;
            let fence = number(item, &fence_attr(name))?.unwrap_or(0);
            counted.push((name.clone(), entry(name, value, Some(owner), fence)?));
        }
        counted.sort_by_key(|a| a.1.fence);
        let writer_fence = number(item, WRITER_FENCE)?.unwrap_or(0);
        let nested = |name: &str, fence: u64| item.get(name).map(|v| entry(name, v, None, fence)).transpose();
        Ok(Self {
            fence: number(item, FENCE)?.unwrap_or(0),
            limit: number(item, LIMIT)?.map(|l| l.min(u64::from(u32::MAX)) as u32),
            release_rvn: string(item, RELEASE_RVN)?,
            counted,
            writer: nested(WRITER, writer_fence)?,
            intent: nested(INTENT, 0)?,
        })
    }

    /// The entry `name` (a counted entry, [`WRITER`] or [`INTENT`]), if present.
    pub(crate) fn get(&self, name: &str) -> Option<&Entry> {
        match name {
            WRITER => self.writer.as_ref(),
            INTENT => self.intent.as_ref(),
            _ => self.counted.iter().find(|(n, _)| n == name).map(|(_, e)| e),
        }
    }

    /// Every entry with its attribute name: counted ones, the writer, the intent.
    pub(crate) fn all(&self) -> impl Iterator<Item = (&str, &Entry)> {
        let counted = self.counted.iter().map(|(n, e)| (n.as_str(), e));
        counted.chain(self.writer.iter().map(|e| (WRITER, e))).chain(self.intent.iter().map(|e| (INTENT, e)))
    }
}

/// An entry (a map attribute); `owner` when its attribute name gives it.
fn entry(name: &str, value: &AttributeValue, owner: Option<OwnerToken>, fence: u64) -> Result<Entry> {
    let AttributeValue::M(m) = value else {
        return Err(protocol(format!("entry {name:?} is not a map: {value:?}")));
    };
    let owner = match owner {
        Some(o) => o,
        None => token(m, E_OWNER)?.ok_or_else(|| protocol(format!("entry {name:?} has no owner")))?,
    };
    Ok(Entry {
        owner,
        rvn: string(m, E_RVN)?.unwrap_or_default(),
        lease: Duration::from_millis(number(m, E_LEASE)?.unwrap_or(0)),
        expires_at_ms: number(m, E_EXPIRES)?,
        fence,
        meta: string(m, E_META)?,
    })
}

/// A string attribute, if present.
pub(crate) fn string(item: &Item, name: &str) -> Result<Option<String>> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
        Some(other) => Err(protocol(format!("{name} attribute has the wrong type: {other:?}"))),
    }
}

/// An owner token attribute (hex), if present.
fn token(item: &Item, name: &str) -> Result<Option<OwnerToken>> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(s)) => OwnerToken::parse_hex(s)
            .map(Some)
            .ok_or_else(|| protocol(format!("{name} attribute {s:?} is not a token"))),
        Some(other) => Err(protocol(format!("{name} attribute has the wrong type: {other:?}"))),
    }
}

/// A number attribute, if present.
pub(crate) fn number(item: &Item, name: &str) -> Result<Option<u64>> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(n)) => {
            n.parse().map(Some).map_err(|_| protocol(format!("{name} attribute {n:?} is not a u64")))
        }
        Some(other) => Err(protocol(format!("{name} attribute has the wrong type: {other:?}"))),
    }
}

/// What a lease of this backend remembers: the RVN of its last write.
#[derive(Debug)]
pub(crate) struct Held {
    rvn: Mutex<String>,
}

impl Held {
    pub(crate) fn new(rvn: String) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self { rvn: Mutex::new(rvn) })
    }
    pub(crate) fn rvn(&self) -> String {
        self.rvn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub(crate) fn set(&self, rvn: String) {
        *self.rvn.lock().unwrap_or_else(|p| p.into_inner()) = rvn;
    }
}

/// A fresh record version number.
pub(crate) fn new_rvn() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Milliseconds since the Unix epoch by this host's wall clock.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_reject_wrong_types() {
        let mut item = HashMap::new();
        item.insert(FENCE.to_owned(), AttributeValue::N("7".into()));
        item.insert(RVN.to_owned(), AttributeValue::S("r".into()));
        let r = Record::parse(&item).expect("parses");
        assert_eq!((r.owner, r.fence, r.rvn.as_str()), (None, 7, "r"));
        item.insert(OWNER.to_owned(), AttributeValue::N("1".into()));
        assert!(Record::parse(&item).is_err());
    }

    #[test]
    fn kinds_have_their_own_items_and_parse_back() {
        let key = LockKey::new("jobs/a").expect("key");
        for kind in [Kind::Lock, Kind::Leader, Kind::Semaphore, Kind::ReadWrite] {
            let id = kind.id(&key);
            assert_eq!(Kind::parse(&id), Some(("jobs/a", kind)));
        }
        assert_eq!(Kind::parse("a\u{1f}other"), None);
        assert_eq!(fence_attr("p:ab"), "pf:ab");
        assert_eq!(fence_attr(WRITER), WRITER_FENCE);
    }

    #[test]
    fn slots_parse_entries_with_their_fences() {
        let owner = OwnerToken::from_u128(5);
        let mut m = HashMap::new();
        m.insert(E_RVN.to_owned(), AttributeValue::S("x".into()));
        m.insert(E_LEASE.to_owned(), AttributeValue::N("1000".into()));
        let mut item = HashMap::new();
        let name = format!("p:{owner}");
        item.insert(name.clone(), AttributeValue::M(m));
        item.insert(fence_attr(&name), AttributeValue::N("3".into()));
        item.insert(LIMIT.to_owned(), AttributeValue::N("2".into()));
        let s = Slots::parse(&item, "p:").expect("parses");
        assert_eq!(s.limit, Some(2));
        let e = s.get(&name).expect("entry");
        assert_eq!((e.owner, e.fence, e.lease), (owner, 3, Duration::from_millis(1000)));
        assert!(s.writer.is_none() && s.intent.is_none());
    }
}
