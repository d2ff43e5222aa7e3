//! The lock's key value: its owner token (32 hex digits), a newline, then its holder metadata
//! (`<owner>\n<metadata JSON>`). Go's Mutex layout leaves the value to us, so one key carries
//! both and a grant writes one key (before, the metadata had a key of its own: a second write
//! per grant and per release, a fifth of etcd's work in a lock+release cycle).
//!
//! Whatever matches the lock's grant by its owner token (an attempt's undo, a metadata
//! rewrite, the release of a lease rebuilt without its client) compares the token alone, on
//! the server: a value starts with `<owner>\n` exactly when it lies strictly between
//! `<owner>\t` and `<owner>\x0b` (bytes compare in order; the token has a fixed length), two
//! comparisons of the transaction ([`owned_by`]). So none of them needs the metadata, and a
//! rewritten metadata changes no one's comparison. A lock key put by `etcdctl lock` or Go's Mutex
//! (an empty value) has no owner token and no metadata. The other primitives keep their
//! metadata in their own key's value (`grants.rs`).

use std::io::Write;

use lock_core::{ExtendOutcome, Lease, Metadata, OwnerToken, Result};

use crate::backend::{EtcdBackend, Held};
use crate::rpc::pb::{Compare, RequestOp, TxnRequest};

/// The value of a lock key: the owner token, a newline, the holder metadata.
pub(crate) fn lock_value(owner: OwnerToken, metadata: &Metadata) -> Vec<u8> {
    let json = metadata.encode();
    let mut value = Vec::with_capacity(33 + json.len());
    let _ = writeln!(value, "{owner}");
    value.extend_from_slice(json.as_bytes());
    value
}

/// The owner token a lock key's value starts with, if it holds one.
pub(crate) fn value_owner(value: &[u8]) -> Option<OwnerToken> {
    let (token, _) = split(value)?;
    OwnerToken::parse_hex(token)
}

/// The holder metadata in a lock key's value, if it holds any.
pub(crate) fn value_metadata(value: &[u8]) -> Option<Metadata> {
    let (_, meta) = split(value)?;
    Metadata::decode(std::str::from_utf8(meta).ok()?)
}

/// Whether a lock key's value is `owner`'s (what [`owned_by`] compares on the server).
pub(crate) fn holds(value: &[u8], owner: OwnerToken) -> bool {
    let mut token = [0u8; 32];
    let _ = write!(&mut token[..], "{owner}");
    split(value).is_some_and(|(t, _)| t.as_bytes() == token)
}

/// A lock key's value split at its first newline into the owner token and the metadata.
fn split(value: &[u8]) -> Option<(&str, &[u8])> {
    let at = value.iter().position(|b| *b == b'\n')?;
    Some((std::str::from_utf8(&value[..at]).ok()?, &value[at + 1..]))
}

/// The comparisons, inside a transaction, that the lock key `key` exists and its value is
/// `owner`'s: the value lies strictly between `<owner>\t` and `<owner>\x0b`, which holds
/// exactly for the values starting with `<owner>\n` (the token has a fixed length).
pub(crate) fn owned_by(key: &str, owner: OwnerToken) -> [Compare; 2] {
    let token = owner.to_string();
    [Compare::value_above(key, format!("{token}\t")), Compare::value_below(key, format!("{token}\x0b"))]
}

impl EtcdBackend {
    /// Replaces the metadata of our grant of the lock: one transaction that compares the lock
    /// key's owner token and rewrites its value (its lease, create revision and so its fencing
    /// token stay).
    pub(crate) async fn rewrite_lock_metadata(
        &self,
        lease: &Lease,
        metadata: &Metadata,
    ) -> Result<ExtendOutcome> {
        let found = match lease.backend_data::<Held>() {
            Some(h) => Some(h.etcd_key.clone()),
            None => self.find_key(&self.etcd_prefix(lease.key()), lease.owner()).await?.map(|(k, _)| k),
        };
        let Some(key) = found else { return Ok(ExtendOutcome::NotHeld) };
        let txn = TxnRequest::when(owned_by(&key, lease.owner()))
            .and_then([RequestOp::put_keeping_lease(key.as_str(), lock_value(lease.owner(), metadata))]);
        if self.call("txn", || self.client().txn(txn.clone())).await?.succeeded {
            Ok(ExtendOutcome::Extended { valid_until: lease.valid_until() })
        } else {
            Ok(ExtendOutcome::NotHeld)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_holds_its_owner_and_metadata() {
        let owner = OwnerToken::random();
        let meta = Metadata::current().with_value("job 7\nline two").expect("a valid value");
        let v = lock_value(owner, &meta);
        assert!(holds(&v, owner));
        assert!(!holds(&v, OwnerToken::random()));
        assert_eq!(value_owner(&v), Some(owner));
        assert_eq!(value_metadata(&v), Some(meta));
        // etcdctl's and Go's Mutex's empty value, and the owner alone (no newline).
        for foreign in [b"".to_vec(), owner.to_string().into_bytes()] {
            assert!(!holds(&foreign, owner));
            assert_eq!(value_owner(&foreign), None);
            assert_eq!(value_metadata(&foreign), None);
        }
    }

    /// The server's comparison ([`owned_by`]: strictly between `<owner>\t` and `<owner>\x0b`,
    /// byte order) accepts exactly the values [`holds`] accepts.
    #[test]
    fn the_server_comparison_accepts_exactly_the_owners_values() {
        let owner = OwnerToken::random();
        let token = owner.to_string();
        let (lo, hi) = (format!("{token}\t").into_bytes(), format!("{token}\x0b").into_bytes());
        let between = |v: &[u8]| v > lo.as_slice() && v < hi.as_slice();
        let other = OwnerToken::random().to_string();
        let cases: Vec<Vec<u8>> = vec![
            lock_value(owner, &Metadata::current()),
            format!("{token}\n").into_bytes(),
            format!("{token}\n{{}}").into_bytes(),
            token.clone().into_bytes(),
            format!("{token}\t").into_bytes(),
            format!("{token}\tx").into_bytes(),
            format!("{token}\x0b").into_bytes(),
            format!("{token}0\n").into_bytes(),
            format!("{}\n", &token[..31]).into_bytes(),
            format!("{other}\n").into_bytes(),
            Vec::new(),
        ];
        for v in cases {
            // `<owner>\t…` lies between the bounds but is no value we write: holds says no,
            // the server says yes. Only a foreign writer on our own lease's key could put it.
            if v.starts_with(format!("{token}\t").as_bytes()) && v.len() > token.len() + 1 {
                assert!(between(&v) && !holds(&v, owner));
                continue;
            }
            assert_eq!(between(&v), holds(&v, owner), "{:?}", String::from_utf8_lossy(&v));
        }
    }
}
