//! Session mode's local slots: a session has one queue key per name (`<prefix><name>/<lease
//! id>`), so the client's own tasks that want the same name queue here, inside the process,
//! and only the slot's owner queues on etcd.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use lock_core::OwnerToken;
use tokio::sync::Notify;

struct LocalSlot {
    owner: OwnerToken,
    session: i64,
    released: Arc<Notify>,
}

/// Which local owner holds or queues for each name, per session.
#[derive(Default)]
pub(crate) struct LocalSlots(Mutex<HashMap<String, LocalSlot>>);

impl LocalSlots {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, LocalSlot>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the slot of `name` for `owner` on session `session`. When another local owner
    /// of the same session holds or queues for it, returns the `Notify` its release signals.
    pub(crate) fn claim(&self, name: &str, owner: OwnerToken, session: i64) -> Result<(), Arc<Notify>> {
        let mut local = self.lock();
        match local.get(name) {
            Some(slot) if slot.owner != owner && slot.session == session => Err(slot.released.clone()),
            _ => {
                let released = local.get(name).map(|s| s.released.clone()).unwrap_or_default();
                local.insert(name.to_owned(), LocalSlot { owner, session, released });
                Ok(())
            }
        }
    }

    /// Frees the slot of `name` if `owner` has it, waking the tasks waiting for it.
    pub(crate) fn free(&self, name: &str, owner: OwnerToken) {
        let mut local = self.lock();
        if local.get(name).is_some_and(|s| s.owner == owner) {
            if let Some(slot) = local.remove(name) {
                slot.released.notify_waiters();
            }
        }
    }
}
