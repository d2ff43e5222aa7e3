//! The queue of a lock's contenders on the server: joining it (a create whose reply was lost
//! is found again by its uuid, so no orphan blocks the queue), reading its order, and leaving
//! it when an attempt is cancelled.

use std::sync::Arc;

use lock_core::{AcquireRequest, Lease, OwnerToken, Result, UndoOnDrop};
use zookeeper_client::{CreateMode, OneshotWatcher};

use crate::backend::Held;
use crate::children::{in_sequence_order, stem, Child};
use crate::error::{unavailable, zk_err};
use crate::session::Session;
use crate::ZkBackend;

impl ZkBackend {
    /// Creates our child in `dir` (making the directory as containers if needed). A create
    /// whose reply was lost is found again by its uuid.
    async fn enqueue(&self, s: &Session, dir: &str, owner: OwnerToken, adopt: bool) -> Result<Child> {
        let stem = stem(owner);
        // A retry of the same request adopts the child an earlier try created, if any.
        if adopt {
            if let Some(c) = self.find(s, dir, &stem, true).await? {
                return Ok(c);
            }
        }
        let prefix = format!("{dir}/{stem}");
        let acls = self.inner.opts.acls();
        for _ in 0..5 {
            let mode = CreateMode::EphemeralSequential.with_acls(acls);
            match s.call(|c| c.create(&prefix, b"", &mode)).await {
                Ok((stat, seq)) => {
                    let name = format!("{stem}{seq}");
                    let (czxid, owner) = (stat.czxid, stat.ephemeral_owner);
                    return Ok(Child { path: format!("{dir}/{name}"), name, czxid, owner });
                }
                Err(zookeeper_client::Error::NoNode) => {
                    let mode = CreateMode::Container.with_acls(acls);
                    match s.call(|c| c.mkdir(dir, &mode)).await {
                        Ok(()) | Err(zookeeper_client::Error::NodeExists) => continue,
                        Err(e) => return Err(zk_err("create lock directory", dir, e)),
                    }
                }
                Err(zookeeper_client::Error::ConnectionLoss) => {
                    if let Some(c) = self.find(s, dir, &stem, true).await? {
                        return Ok(c);
                    }
                }
                Err(e) => return Err(zk_err("create", &prefix, e)),
            }
        }
        Err(unavailable(format!("could not create a child in {dir}")))
    }

    /// Our child in `dir` whose name starts with `stem`, if it exists (a lock node: ephemeral).
    /// With `mine`, only a child of this session counts (one left by an earlier session of
    /// ours is gone, or about to be, with that session).
    pub(crate) async fn find(&self, s: &Session, dir: &str, stem: &str, mine: bool) -> Result<Option<Child>> {
        let children = match s.call(|c| c.list_children(dir)).await {
            Ok(c) => c,
            Err(zookeeper_client::Error::NoNode) => return Ok(None),
            Err(e) => return Err(zk_err("list", dir, e)),
        };
        for name in children.into_iter().filter(|n| n.starts_with(stem)) {
            let path = format!("{dir}/{name}");
            let stat = s.call(|c| c.check_stat(&path)).await.map_err(|e| zk_err("stat", &path, e))?;
            if let Some(stat) = stat.filter(|st| st.ephemeral_owner != 0) {
                if !mine || stat.ephemeral_owner == s.client.session_id().0 {
                    let (czxid, owner) = (stat.czxid, stat.ephemeral_owner);
                    return Ok(Some(Child { path, name, czxid, owner }));
                }
            }
        }
        Ok(None)
    }

    /// The names of `dir`'s children that carry a sequence, in sequence order (empty if `dir`
    /// does not exist). Some may be directories of locks whose names extend this one: see
    /// [`contender_ahead`](Self::contender_ahead).
    pub(crate) async fn contenders(&self, s: &Session, dir: &str) -> Result<Vec<String>> {
        match s.call(|c| c.list_children(dir)).await {
            Ok(c) => Ok(in_sequence_order(c)),
            Err(zookeeper_client::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(zk_err("list", dir, e)),
        }
    }

    /// Whether a contender is among `ahead` (the children before ours, in order): a lock
    /// node, that is an ephemeral child, of ours or of another client (Curator, kazoo).
    /// Directories of locks whose names extend this one and children deleted meanwhile are
    /// skipped (a deleted child never comes back, and every child made later comes after
    /// ours). No contender ahead: ours holds the lock.
    pub(crate) async fn contender_ahead(&self, s: &Session, dir: &str, ahead: &[String]) -> Result<bool> {
        for name in ahead.iter().rev() {
            let path = format!("{dir}/{name}");
            let stat = s.call(|c| c.check_stat(&path)).await.map_err(|e| zk_err("stat", &path, e))?;
            if stat.is_some_and(|st| st.ephemeral_owner != 0) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// As [`contender_ahead`](Self::contender_ahead), watching the nearest contender: its
    /// watcher fires when it changes or goes. `None`: ours holds the lock.
    pub(crate) async fn watch_contender_ahead(
        &self,
        s: &Session,
        dir: &str,
        ahead: &[String],
    ) -> Result<Option<OneshotWatcher>> {
        for name in ahead.iter().rev() {
            let path = format!("{dir}/{name}");
            let (stat, watcher) =
                s.call(|c| c.check_and_watch_stat(&path)).await.map_err(|e| zk_err("watch", &path, e))?;
            if stat.is_some_and(|st| st.ephemeral_owner != 0) {
                return Ok(Some(watcher));
            }
        }
        Ok(None)
    }

    /// If dropped armed (the create may have been sent), finds our child by its uuid and
    /// deletes it, in the background. Requests of one session are applied in order, so the
    /// lookup sees the create if it was sent.
    pub(crate) fn undo_create(&self, dir: &str, owner: OwnerToken) -> UndoOnDrop {
        let (this, dir) = (self.clone(), dir.to_owned());
        UndoOnDrop::new(async move {
            let Ok(s) = this.session().await else { return };
            if let Ok(Some(c)) = this.find(&s, &dir, &stem(owner), true).await {
                let _ = s.call(|client| client.delete(&c.path, None)).await;
            }
        })
    }

    /// Deletes our child (in the background if this is dropped first).
    fn undo(&self, s: &Arc<Session>, path: &str) -> UndoOnDrop {
        let (client, path) = (s.client.clone(), path.to_owned());
        UndoOnDrop::new(async move {
            let _ = client.delete(&path, None).await;
        })
    }

    /// Creates our child for `req` on the live session. Returns the session, the lock's
    /// directory, the child, and the undo that deletes the child unless disarmed.
    ///
    /// `retry`: an earlier try of this request failed; its child, if one was made, is adopted,
    /// and a failure of this one is left to the next retry rather than undone (an undo racing
    /// the retry could delete the retry's child).
    pub(crate) async fn join_queue(
        &self,
        req: &AcquireRequest,
        retry: Option<bool>,
    ) -> Result<(Arc<Session>, String, Child, UndoOnDrop)> {
        let s = self.session().await?;
        let dir = self.dir(&req.key);
        let undo_create = self.undo_create(&dir, req.owner);
        let child = self.enqueue(&s, &dir, req.owner, retry == Some(true)).await;
        if retry.is_some() {
            undo_create.disarm();
            return child.map(|child| {
                let undo = self.undo(&s, &child.path);
                (s, dir, child, undo)
            });
        }
        let child = child?;
        undo_create.disarm();
        let undo = self.undo(&s, &child.path);
        Ok((s, dir, child, undo))
    }

    /// The path of `lease`'s child: remembered, or found by its owner token.
    pub(crate) async fn path_of(&self, s: &Session, lease: &Lease) -> Result<Option<String>> {
        if let Some(h) = lease.backend_data::<Held>() {
            return Ok(Some(h.path.clone()));
        }
        Ok(self.find(s, &self.dir(lease.key()), &stem(lease.owner()), false).await?.map(|c| c.path))
    }
}
