//! Lock keys: validated once, then encoded by each backend.

use std::fmt;

/// The longest key, in bytes of UTF-8, that [`LockKey::new`] accepts (namespace excluded).
pub const MAX_KEY_LEN: usize = 256;

/// The rule a rejected key or namespace broke.
///
/// Returned inside [`Error::InvalidKey`](crate::Error::InvalidKey); its `Display` names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key was the empty string.
    #[error("lock key is empty; a key needs at least one character")]
    Empty,
    /// The key was longer than the limit.
    #[error("lock key is {len} bytes long; the limit is {max} bytes of UTF-8")]
    TooLong {
        /// Length of the rejected key in bytes.
        len: usize,
        /// The limit that applied.
        max: usize,
    },
    /// The key held a control character (U+0000..U+001F, U+007F..U+009F).
    #[error(
        "lock key contains control character {ch:?} at byte {index}; control characters are not allowed"
    )]
    ControlCharacter {
        /// The offending character.
        ch: char,
        /// Its byte offset in the key.
        index: usize,
    },
    /// A namespace broke one of the key rules; the inner error says which.
    #[error("invalid namespace: {0}")]
    Namespace(Box<KeyError>),
    /// A multi-key lock was asked for with no keys.
    #[error("a multi-key lock needs at least one key")]
    NoKeys,
    /// A multi-key lock named the same key twice.
    #[error("lock key {0:?} appears twice in one multi-key lock")]
    Duplicate(String),
}

fn check(s: &str, max: usize) -> Result<(), KeyError> {
    if s.is_empty() {
        return Err(KeyError::Empty);
    }
    if s.len() > max {
        return Err(KeyError::TooLong { len: s.len(), max });
    }
    if let Some((index, ch)) = s.char_indices().find(|(_, c)| c.is_control()) {
        return Err(KeyError::ControlCharacter { ch, index });
    }
    Ok(())
}

/// A validated lock name, with the namespace of the client that made it.
///
/// # Behavior
/// - The name is non-empty, at most [`MAX_KEY_LEN`] bytes of UTF-8 and free of control
///   characters; anything else is a [`KeyError`] naming the rule broken.
/// - The namespace (possibly empty) is a per-client prefix so that several applications can
///   share one store without colliding. Backends store [`LockKey::full`], which is
///   `namespace + "/" + name` (or just `name` when the namespace is empty).
/// - Backends may impose a tighter limit ([`Capabilities::max_key_len`](crate::Capabilities)).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LockKey {
    full: String,
    ns_len: usize,
}

impl LockKey {
    /// Validates `name` as a key with no namespace.
    ///
    /// # Errors
    /// [`KeyError`] when the name is empty, too long, or holds a control character.
    pub fn new(name: &str) -> Result<Self, KeyError> {
        Self::with_namespace(&Namespace::default(), name)
    }

    /// Validates `name` and places it under `ns`.
    ///
    /// # Errors
    /// [`KeyError`] when the name is empty, too long, or holds a control character.
    pub fn with_namespace(ns: &Namespace, name: &str) -> Result<Self, KeyError> {
        check(name, MAX_KEY_LEN)?;
        if ns.0.is_empty() {
            return Ok(Self { full: name.to_owned(), ns_len: 0 });
        }
        let mut full = String::with_capacity(ns.0.len() + 1 + name.len());
        full.push_str(&ns.0);
        full.push('/');
        full.push_str(name);
        Ok(Self { full, ns_len: ns.0.len() })
    }

    /// A key from its full form as a backend stored it (`namespace/name` or `name`), for
    /// operator tools that read keys back from a store. The namespace is not told apart
    /// ([`namespace`](Self::namespace) is empty): backends only ever use [`full`](Self::full).
    ///
    /// # Errors
    /// [`KeyError`] when it is empty, longer than a namespaced key may be, or holds a control
    /// character.
    pub fn from_full(full: &str) -> Result<Self, KeyError> {
        check(full, MAX_KEY_LEN * 2 + 1)?;
        Ok(Self { full: full.to_owned(), ns_len: 0 })
    }

    /// The name the user gave, without the namespace.
    pub fn name(&self) -> &str {
        if self.ns_len == 0 {
            &self.full
        } else {
            &self.full[self.ns_len + 1..]
        }
    }

    /// The namespace, empty when none was set.
    pub fn namespace(&self) -> &str {
        &self.full[..self.ns_len]
    }

    /// The string backends store: `namespace/name`, or `name` without a namespace.
    pub fn full(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockKey({:?})", self.full)
    }
}

/// A per-client key prefix, validated by the same rules as a key.
///
/// The empty namespace (the default) adds no prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    /// Validates a namespace. The empty string is allowed and means "no prefix".
    ///
    /// # Errors
    /// [`KeyError::Namespace`] when it is too long or holds a control character.
    pub fn new(ns: &str) -> Result<Self, KeyError> {
        if ns.is_empty() {
            return Ok(Self::default());
        }
        check(ns, MAX_KEY_LEN).map_err(|e| KeyError::Namespace(Box::new(e)))?;
        Ok(Self(ns.trim_end_matches('/').to_owned()))
    }

    /// The prefix as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_named() {
        assert_eq!(LockKey::new(""), Err(KeyError::Empty));
        let long = "x".repeat(MAX_KEY_LEN + 1);
        assert!(matches!(LockKey::new(&long), Err(KeyError::TooLong { len: 257, max: 256 })));
        assert!(LockKey::new(&"x".repeat(MAX_KEY_LEN)).is_ok());
        let err = LockKey::new("a\nb").unwrap_err();
        assert_eq!(err, KeyError::ControlCharacter { ch: '\n', index: 1 });
        assert!(err.to_string().contains("control character"));
        assert!(LockKey::new("jobs/nightly ü").is_ok());
    }

    #[test]
    fn namespace_prefixes() {
        let ns = Namespace::new("app1/").unwrap();
        let k = LockKey::with_namespace(&ns, "jobs/a").unwrap();
        assert_eq!(k.full(), "app1/jobs/a");
        assert_eq!(k.name(), "jobs/a");
        assert_eq!(k.namespace(), "app1");
        assert!(matches!(Namespace::new("a\u{7}"), Err(KeyError::Namespace(_))));
    }
}
