//! Which task of a client holds which lock, so that a task that waits for a lock it already
//! holds gets [`Error::AlreadyHeld`](crate::Error::AlreadyHeld) at once instead of waiting for
//! itself. (One attempt without a wait cannot wait for itself: it finds the lock held.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Who acquired a grant: the tokio task, or, for a future run by `block_on` (no task id:
/// `#[tokio::main]`'s body, a synchronous wrapper's call), the thread that runs it, since
/// `block_on` polls its future on the calling thread alone. (Every `block_on` caller had
/// the same `None`: a thread waiting for a name another thread's `block_on` held was refused
/// as if it waited for itself.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acquirer {
    Task(tokio::task::Id),
    Thread(std::thread::ThreadId),
}

impl Acquirer {
    fn current() -> Self {
        tokio::task::try_id().map_or_else(|| Acquirer::Thread(std::thread::current().id()), Acquirer::Task)
    }
}

use crate::error::{Error, Result};
use crate::mode::Mode;

/// The kind of resource a mode takes on a name (modes of one primitive share one resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Resource {
    Lock,
    Semaphore,
    ReadWrite,
    Election,
}

fn resource(mode: Mode) -> Resource {
    match mode {
        Mode::Permit { .. } => Resource::Semaphore,
        Mode::Read | Mode::Write => Resource::ReadWrite,
        Mode::Leader => Resource::Election,
        _ => Resource::Lock,
    }
}

/// Whether a recorded grant is still held (the guard's `is_held`).
pub(crate) trait Alive: Send + Sync {
    fn alive(&self) -> bool;
}

/// A recorded grant's probe: the guard's shared state.
pub(crate) type Probe = Arc<dyn Alive>;

/// One task's hold of a name.
struct Holder {
    task: Acquirer,
    mode: Mode,
    alive: Probe,
}

/// Who holds what on each name (one entry per name, however many grants).
type Holders = HashMap<Arc<str>, Vec<Holder>>;

/// A client's registry of the grants its tasks hold (shared by the client's clones).
#[derive(Default, Clone)]
pub(crate) struct HeldByTasks(Arc<Mutex<Holders>>);

impl std::fmt::Debug for HeldByTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldByTasks").field("names", &self.map().len()).finish()
    }
}

impl HeldByTasks {
    fn map(&self) -> std::sync::MutexGuard<'_, Holders> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses `mode` on `key` when the current task holds something there that the request
    /// would wait for: the lock, the write side, or leadership; the read side when it asks to
    /// write; as many permits as the semaphore has, when it asks for one more. A task may hold
    /// several permits (fewer than the limit), and several read locks.
    pub(crate) fn check(&self, key: &str, mode: Mode) -> Result<()> {
        let me = Acquirer::current();
        let map = self.map();
        let Some(held) = map.get(key) else { return Ok(()) };
        let mine =
            || held.iter().filter(|h| resource(h.mode) == resource(mode) && h.task == me && h.alive.alive());
        let conflict = match mode {
            Mode::Permit { limit } => {
                mine().filter(|h| matches!(h.mode, Mode::Permit { .. })).count() >= limit as usize
            }
            _ => mine().any(|h| !matches!((h.mode, mode), (Mode::Read, Mode::Read))),
        };
        if conflict {
            return Err(Error::AlreadyHeld { key: key.to_owned() });
        }
        Ok(())
    }

    /// Records that the current task holds `mode` on `key` while `alive` says so, until the
    /// entry is dropped.
    pub(crate) fn enter(&self, key: &str, mode: Mode, alive: Probe) -> HeldEntry {
        let task = Acquirer::current();
        let mut map = self.map();
        let name = match map.get_key_value(key) {
            Some((name, _)) => name.clone(),
            None => Arc::from(key),
        };
        let probe = alive.clone();
        map.entry(name.clone()).or_default().push(Holder { task, mode, alive });
        HeldEntry { registry: self.clone(), key: name, probe }
    }
}

/// One task's hold of one grant in a client's registry; removed on drop.
pub(crate) struct HeldEntry {
    registry: HeldByTasks,
    key: Arc<str>,
    /// The grant's probe, which tells its holder apart from the same task's other grants in
    /// the same mode on the same name (two read locks, two permits).
    probe: Probe,
}

impl std::fmt::Debug for HeldEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldEntry").field("key", &self.key).finish_non_exhaustive()
    }
}

impl Drop for HeldEntry {
    fn drop(&mut self) {
        let mut map = self.registry.map();
        if let Some(v) = map.get_mut(&*self.key) {
            if let Some(i) =
                v.iter().position(|h| std::ptr::addr_eq(Arc::as_ptr(&h.alive), Arc::as_ptr(&self.probe)))
            {
                v.swap_remove(i);
            }
            if v.is_empty() {
                map.remove(&*self.key);
            }
        }
    }
}
