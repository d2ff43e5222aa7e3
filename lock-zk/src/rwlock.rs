//! Read-write locks, laid out as Curator's `InterProcessReadWriteLock`, so that distlock's and
//! Curator's readers and writers of one path respect each other.
//!
//! The read-write lock `jobs/db` is the node `<prefix>/jobs/db#rwlock`; readers and writers
//! queue in it together, as EPHEMERAL_SEQUENTIAL children `_c_<uuid>-__READ__<sequence>` and
//! `_c_<uuid>-__WRIT__<sequence>`, ordered by their sequence. A writer holds when it is first
//! (it waits on the node just before its own, as the lock's waiters do); a reader holds when no
//! writer is ahead of it (it waits on the nearest writer ahead). So readers share, a writer
//! excludes everyone, and a waiting writer keeps every later reader out: writers are not
//! starved (`writer_preference`). These are Curator's rules, so the order is one queue for both
//! clients.
//!
//! Fencing tokens are the nodes' czxids. A writer is granted only once every node ahead of it
//! is gone, and nodes are created in queue order, so its token is above every earlier grant's;
//! a reader is granted only once every writer ahead of it is gone, so its token is above every
//! earlier writer's.

use lock_core::{LockInfo, Mode, Result};

use crate::children::WRITE;
use crate::session::Session;
use crate::ZkBackend;

/// Whether the node `name` is a writer's: Curator's test, the name holds `__WRIT__`.
pub(crate) fn is_writer(name: &str) -> bool {
    name.contains(WRITE)
}

impl ZkBackend {
    /// The holders of the read-write lock in `dir`: the first writer if it is first, otherwise
    /// the readers ahead of the first writer.
    pub(crate) async fn rw_holders(&self, s: &Session, dir: &str) -> Result<Vec<LockInfo>> {
        let mut out = Vec::new();
        for name in self.contenders(s, dir).await? {
            let writer = is_writer(&name);
            if writer && !out.is_empty() {
                break;
            }
            let mode = if writer { Mode::Write } else { Mode::Read };
            let Some(info) = self.read_node(s, dir, &name, mode).await? else { continue };
            out.push(info);
            if writer {
                break;
            }
        }
        Ok(out)
    }
}
