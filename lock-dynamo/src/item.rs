//! The lock item: its attributes, read back as a [`Record`].

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;
use lock_core::{OwnerToken, Result};

use crate::error::protocol;

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

/// A lock item as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) owner: Option<OwnerToken>,
    pub(crate) rvn: String,
    pub(crate) fence: u64,
    pub(crate) lease: Duration,
    pub(crate) expires_at_ms: Option<u64>,
    pub(crate) release_rvn: Option<String>,
}

impl Record {
    pub(crate) fn parse(item: &HashMap<String, AttributeValue>) -> Result<Self> {
        Ok(Self {
            owner: token(item, OWNER)?,
            rvn: string(item, RVN)?.unwrap_or_default(),
            fence: number(item, FENCE)?.unwrap_or(0),
            lease: Duration::from_millis(number(item, LEASE_MS)?.unwrap_or(0)),
            expires_at_ms: number(item, EXPIRES_MS)?,
            release_rvn: string(item, RELEASE_RVN)?,
        })
    }
}

/// A string attribute, if present.
fn string(item: &HashMap<String, AttributeValue>, name: &str) -> Result<Option<String>> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
        Some(other) => Err(protocol(format!("{name} attribute has the wrong type: {other:?}"))),
    }
}

/// An owner token attribute (hex), if present.
fn token(item: &HashMap<String, AttributeValue>, name: &str) -> Result<Option<OwnerToken>> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(s)) => OwnerToken::parse_hex(s)
            .map(Some)
            .ok_or_else(|| protocol(format!("{name} attribute {s:?} is not a token"))),
        Some(other) => Err(protocol(format!("{name} attribute has the wrong type: {other:?}"))),
    }
}

/// A number attribute, if present.
pub(crate) fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Result<Option<u64>> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(n)) => {
            n.parse().map(Some).map_err(|_| protocol(format!("{name} attribute {n:?} is not a u64")))
        }
        Some(other) => Err(protocol(format!("{name} attribute has the wrong type: {other:?}"))),
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
}
