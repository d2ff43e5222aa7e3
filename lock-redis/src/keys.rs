//! The Redis keys of one name's primitive (the lock, the semaphore or the read-write lock of
//! a name), and the scripts that act on them. See [`scripts`](crate::scripts) for the layouts.

use std::sync::LazyLock;

use lock_core::{Error, LockKey, Mode, Result};
use redis::{Script, ScriptInvocation};

use crate::scripts::{self, rwlock, semaphore};

type Lua = &'static LazyLock<Script>;

/// The scripts of one primitive.
pub(crate) struct Scripts {
    pub(crate) acquire: Lua,
    pub(crate) extend: Lua,
    pub(crate) release: Lua,
    /// Redlock's write-back (none for the semaphore, which Redlock does not offer).
    pub(crate) write_back: Option<Lua>,
    /// Lists the holders (none for the lock, read with the inspect script).
    pub(crate) holders: Option<Lua>,
}

static LOCK: Scripts = Scripts {
    acquire: &scripts::ACQUIRE,
    extend: &scripts::EXTEND,
    release: &scripts::RELEASE,
    write_back: Some(&scripts::WRITE_BACK),
    holders: None,
};

static SEMAPHORE: Scripts = Scripts {
    acquire: &semaphore::ACQUIRE,
    extend: &semaphore::EXTEND,
    release: &semaphore::RELEASE,
    write_back: None,
    holders: Some(&semaphore::HOLDERS),
};

static READ: Scripts = Scripts {
    acquire: &rwlock::ACQUIRE_READ,
    extend: &rwlock::EXTEND,
    release: &rwlock::RELEASE,
    write_back: Some(&rwlock::WRITE_BACK),
    holders: Some(&rwlock::HOLDERS),
};

static WRITE: Scripts = Scripts {
    acquire: &rwlock::ACQUIRE_WRITE,
    extend: &rwlock::EXTEND,
    release: &rwlock::RELEASE,
    write_back: Some(&rwlock::WRITE_BACK),
    holders: Some(&rwlock::HOLDERS),
};

/// Where a primitive's keys live: the stem after `P{K}`, and each key's suffix.
type Layout = (&'static str, &'static [&'static str]);

const LOCK_LAYOUT: Layout = ("", &["", ":fence"]);

/// The keys of one name's primitive of `mode`, all under the hash tag `{K}`.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) mode: Mode,
    /// Every key of the primitive, in the order its scripts take them.
    pub(crate) all: Vec<String>,
    /// The release channel of the primitive.
    pub(crate) channel: String,
    /// The queue of waiters, where a release wakes one waiter (the lock and the semaphore;
    /// see [`scripts`](crate::scripts)); `None` where a release wakes every waiter.
    pub(crate) queue: Option<String>,
}

impl Keys {
    /// The keys of `key`'s primitive of `mode` under `prefix`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a mode this crate does not know.
    pub(crate) fn new(backend: &'static str, prefix: &str, key: &LockKey, mode: Mode) -> Result<Self> {
        Self::of_full(backend, prefix, key.full(), mode)
    }

    /// The keys of the primitive of `mode` of the full key `full` (namespace included; as a
    /// listing finds it).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a mode this crate does not know.
    pub(crate) fn of_full(backend: &'static str, prefix: &str, full: &str, mode: Mode) -> Result<Self> {
        let layout: Layout = match mode {
            Mode::Exclusive => LOCK_LAYOUT,
            Mode::Permit { .. } => (":sem", &["", ":info", ":fence"]),
            Mode::Read | Mode::Write => (":rw", &[":writer", ":readers", ":tokens", ":intents", ":fence"]),
            Mode::Leader => (":elect", &["", ":fence"]),
            other => return Err(Error::Unsupported { backend, capability: format!("{other:?} grants") }),
        };
        Ok(Self::at(prefix, full, mode, layout))
    }

    /// The lock's keys of `key`.
    pub(crate) fn lock(prefix: &str, key: &LockKey) -> Self {
        Self::at(prefix, key.full(), Mode::Exclusive, LOCK_LAYOUT)
    }

    fn at(prefix: &str, full: &str, mode: Mode, (stem, names): Layout) -> Self {
        let stem = format!("{prefix}{{{full}}}{stem}");
        let all = names.iter().map(|n| format!("{stem}{n}")).collect();
        let queue = matches!(mode, Mode::Exclusive | Mode::Permit { .. }).then(|| format!("{stem}:q"));
        Self { mode, all, channel: format!("{stem}:released"), queue }
    }

    /// These keys with every waiter woken by a release (no queue of waiters): Redlock's, whose
    /// masters' queues would each pick another waiter.
    pub(crate) fn waking_all(mut self) -> Self {
        self.queue = None;
        self
    }

    /// The primitive's fencing counter (the last of its keys in every layout).
    pub(crate) fn counter(&self) -> &str {
        self.all.last().map_or("", String::as_str)
    }

    /// The scripts of this primitive.
    pub(crate) fn scripts(&self) -> &'static Scripts {
        match self.mode {
            Mode::Permit { .. } => &SEMAPHORE,
            Mode::Read => &READ,
            Mode::Write => &WRITE,
            _ => &LOCK,
        }
    }

    /// The role argument of the extend, release and write-back scripts.
    pub(crate) fn role(&self) -> &'static str {
        match self.mode {
            Mode::Permit { .. } => "p",
            Mode::Read => "r",
            Mode::Write => "w",
            _ => "l",
        }
    }

    /// Adds every key to `inv`.
    pub(crate) fn add_to(&self, inv: &mut ScriptInvocation<'_>) {
        for k in &self.all {
            inv.key(k);
        }
    }

    /// Adds every key and then the queue of waiters, if any, to `inv` (the acquire and release
    /// scripts).
    pub(crate) fn add_with_queue(&self, inv: &mut ScriptInvocation<'_>) {
        self.add_to(inv);
        if let Some(q) = &self.queue {
            inv.key(q);
        }
    }
}
