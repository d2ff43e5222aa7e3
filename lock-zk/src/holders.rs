//! What the server says of a primitive's holders, each with the metadata its node carries:
//! the first contender of a lock or an election, the first N leases of a semaphore (a
//! read-write lock's are in `rwlock.rs`); and replacing a holder's metadata.

use lock_core::{ExtendOutcome, FencingToken, Lease, LockInfo, Metadata, Mode, Result};
use zookeeper_client::Stat;

use crate::backend::Held;
use crate::children::owner_of;
use crate::election::proclaimed_by;
use crate::error::{unavailable, zk_err};
use crate::session::Session;
use crate::ZkBackend;

/// The holder record of the queue node `name` with `data` and `stat`, as a holder of `mode`.
///
/// The data is our metadata (compact JSON). A foreign node carries something else (Curator
/// writes the client's address, or a `LeaderLatch` participant's id): no metadata, except in
/// an election, where the foreign data is the candidate's value.
pub(crate) fn info_of(name: &str, data: &[u8], stat: &Stat, mode: Mode) -> LockInfo {
    let metadata = std::str::from_utf8(data)
        .ok()
        .and_then(Metadata::decode)
        .or_else(|| (mode == Mode::Leader && !data.is_empty()).then(|| Metadata::foreign(data)));
    LockInfo::new(Some(FencingToken::new(stat.czxid as u64)), owner_of(name), None)
        .with_mode(mode)
        .with_metadata(metadata)
}

impl ZkBackend {
    /// The holder of the queue in `dir` whose first contender holds (the lock, an election):
    /// its first queue node (an ephemeral child) in sequence order. A leader's metadata is
    /// the one it proclaimed last, if any.
    pub(crate) async fn first_holder(&self, s: &Session, dir: &str, mode: Mode) -> Result<Option<LockInfo>> {
        for name in self.contenders(s, dir).await? {
            if let Some(info) = self.read_node(s, dir, &name, mode).await? {
                if mode != Mode::Leader {
                    return Ok(Some(info));
                }
                let proclaimed = match s.call(|c| c.get_data(dir)).await {
                    Ok((data, _)) => proclaimed_by(&data, &name),
                    Err(zookeeper_client::Error::NoNode) => None,
                    Err(e) => return Err(zk_err("read", dir, e)),
                };
                return Ok(Some(match proclaimed {
                    Some(m) => info.with_metadata(Some(m)),
                    None => info,
                }));
            }
        }
        Ok(None)
    }

    /// The holder record of the node `name` in `dir`; `None` when it is gone or is not a
    /// queue node (the directory of a longer name is not ephemeral).
    pub(crate) async fn read_node(
        &self,
        s: &Session,
        dir: &str,
        name: &str,
        mode: Mode,
    ) -> Result<Option<LockInfo>> {
        let path = format!("{dir}/{name}");
        match s.call(|c| c.get_data(&path)).await {
            Ok((data, stat)) if stat.ephemeral_owner != 0 => Ok(Some(info_of(name, &data, &stat, mode))),
            Ok(_) | Err(zookeeper_client::Error::NoNode) => Ok(None),
            Err(e) => Err(zk_err("read", &path, e)),
        }
    }

    /// The holders of the semaphore whose leases are in `dir`, for `limit` permits. Leases are
    /// made one at a time under the semaphore's mutex and only the newest may still wait, so
    /// the first `limit` hold.
    pub(crate) async fn permit_holders(&self, s: &Session, dir: &str, limit: u32) -> Result<Vec<LockInfo>> {
        let mut out = Vec::new();
        for name in self.contenders(s, dir).await?.iter().take(limit as usize) {
            out.extend(self.read_node(s, dir, name, Mode::Permit { limit }).await?);
        }
        Ok(out)
    }

    /// Replaces the metadata of `lease`'s grant, if its node is still there, with a version
    /// check (written over the state just read, never blindly): a leader's in the election's
    /// node ([`proclaim`](Self::proclaim)), any other grant's in its own node.
    pub(crate) async fn set_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<ExtendOutcome> {
        if lease.session().is_some_and(|sig| sig.is_fired()) {
            return Ok(ExtendOutcome::NotHeld);
        }
        let s = match lease.backend_data::<Held>() {
            // The node lives and dies with its session: once that is gone, so is the node.
            Some(h) => match h.session.upgrade().filter(|s| !s.lost.is_fired()) {
                Some(s) => s,
                None => return Ok(ExtendOutcome::NotHeld),
            },
            None => self.session().await?,
        };
        let Some(path) = self.path_of(&s, lease).await? else { return Ok(ExtendOutcome::NotHeld) };
        if lease.mode() == Mode::Leader {
            return self.proclaim(&s, lease, &path, metadata).await;
        }
        let data = metadata.encode();
        for _ in 0..3 {
            let stat = match s.call(|c| c.check_stat(&path)).await {
                Ok(Some(stat)) => stat,
                Ok(None) => return Ok(ExtendOutcome::NotHeld),
                Err(e) => return Err(zk_err("stat", &path, e)),
            };
            match s.call(|c| c.set_data(&path, data.as_bytes(), Some(stat.version))).await {
                Ok(_) => {
                    let ours = stat.ephemeral_owner == s.client.session_id().0;
                    let valid_until = if ours { s.valid_until() } else { lease.valid_until() };
                    return Ok(ExtendOutcome::Extended { valid_until });
                }
                Err(zookeeper_client::Error::NoNode) => return Ok(ExtendOutcome::NotHeld),
                Err(zookeeper_client::Error::BadVersion) => continue,
                Err(e) => return Err(zk_err("write", &path, e)),
            }
        }
        Err(unavailable(format!("the data of {path} kept changing; try again")))
    }
}
