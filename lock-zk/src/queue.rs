//! A queue of contenders on the server: joining it (a create whose reply was lost is found
//! again by its uuid, so no orphan blocks the queue), reading its order, finding who is ahead,
//! and leaving it when an attempt is cancelled. Every primitive queues this way; the
//! [`Queue`] says where and under which name.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{AcquireRequest, Backoff, Lease, OwnerToken, Result, UndoOnDrop};
use zookeeper_client::{CreateMode, OneshotWatcher};

use crate::backend::Held;
use crate::children::{in_sequence_order, Child, Queue, Rule};
use crate::error::{unavailable, zk_err};
use crate::session::Session;
use crate::ZkBackend;

/// What joining a queue gives: the session, our node, and the undo that deletes the node
/// unless disarmed.
pub(crate) struct Joined {
    pub(crate) s: Arc<Session>,
    pub(crate) child: Child,
    pub(crate) undo: UndoOnDrop,
}

impl ZkBackend {
    /// Creates our node in `q` with `data` (making the directory as containers if needed). A
    /// create whose reply was lost is found again by its uuid.
    pub(crate) async fn enqueue(
        &self,
        s: &Session,
        q: &Queue,
        owner: OwnerToken,
        data: &[u8],
        adopt: bool,
    ) -> Result<Child> {
        let (dir, stem) = (&q.dir, q.stem(owner));
        // A retry of the same request adopts the node an earlier try created, if any.
        if adopt {
            if let Some(c) = self.find_created(s, dir, &stem).await? {
                return Ok(c);
            }
        }
        let prefix = format!("{dir}/{stem}");
        let acls = self.inner.opts.acls();
        for _ in 0..5 {
            let mode = CreateMode::EphemeralSequential.with_acls(acls);
            match s.call(|c| c.create(&prefix, data, &mode)).await {
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
                Err(e) if crate::error::connection_lost(&e) => {
                    if let Some(c) = self.find_created(s, dir, &stem).await? {
                        return Ok(c);
                    }
                }
                Err(e) => return Err(zk_err("create", &prefix, e)),
            }
        }
        Err(unavailable(format!("could not create a child in {dir}")))
    }

    /// The node of this session that a create of `stem` in `dir` whose reply was lost made, if
    /// it made one. The session may have moved to a server that has not applied that create yet
    /// (a follower is only as current as the last change this client saw, and the lost reply
    /// was not seen): a `sync` first brings it up to the leader, or the lookup could miss the
    /// node and a second create leave it behind, ahead of ours in the queue until the session
    /// ends.
    async fn find_created(&self, s: &Session, dir: &str, stem: &str) -> Result<Option<Child>> {
        match s.call(|c| c.sync(dir)).await {
            Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
            Err(e) => return Err(zk_err("sync", dir, e)),
        }
        self.find(s, dir, stem, true).await
    }

    /// Our node in `dir` whose name starts with `stem`, if it exists (a queue node:
    /// ephemeral). With `mine`, only a node of this session counts (one left by an earlier
    /// session of ours is gone, or about to be, with that session).
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
    /// does not exist). In a lock's directory some may be directories of locks whose names
    /// extend this one: see [`contender_ahead`](Self::contender_ahead).
    pub(crate) async fn contenders(&self, s: &Session, dir: &str) -> Result<Vec<String>> {
        match s.call(|c| c.list_children(dir)).await {
            Ok(c) => Ok(in_sequence_order(c)),
            Err(zookeeper_client::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(zk_err("list", dir, e)),
        }
    }

    /// Whether a contender that keeps ours waiting under `rule` is among `ahead` (the children
    /// before ours, in order): a queue node, that is an ephemeral child, of ours or of another
    /// client (Curator, kazoo). Directories of locks whose names extend this one and children
    /// deleted meanwhile are skipped (a deleted child never comes back, and every child made
    /// later comes after ours). None: ours holds.
    pub(crate) async fn contender_ahead(
        &self,
        s: &Session,
        dir: &str,
        ahead: &[String],
        rule: Rule,
    ) -> Result<bool> {
        for name in ahead.iter().rev().filter(|n| rule.blocks(n)) {
            let path = format!("{dir}/{name}");
            let stat = s.call(|c| c.check_stat(&path)).await.map_err(|e| zk_err("stat", &path, e))?;
            if stat.is_some_and(|st| st.ephemeral_owner != 0) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// As [`contender_ahead`](Self::contender_ahead), watching the nearest such contender:
    /// its watcher fires when it changes or goes. `None`: ours holds.
    pub(crate) async fn watch_contender_ahead(
        &self,
        s: &Session,
        dir: &str,
        ahead: &[String],
        rule: Rule,
    ) -> Result<Option<OneshotWatcher>> {
        for name in ahead.iter().rev().filter(|n| rule.blocks(n)) {
            let path = format!("{dir}/{name}");
            let (stat, watcher) =
                s.call(|c| c.check_and_watch_stat(&path)).await.map_err(|e| zk_err("watch", &path, e))?;
            if stat.is_some_and(|st| st.ephemeral_owner != 0) {
                return Ok(Some(watcher));
            }
        }
        Ok(None)
    }

    /// If dropped armed (the creates may have been sent), finds our node in each `(dir, stem)`
    /// by its uuid and deletes it, in the background. Requests of one session are applied in
    /// order, and the lookup follows a `sync`, so it sees the create if it was sent, on
    /// whichever server the session is now.
    pub(crate) fn undo_create(&self, places: Vec<(String, String)>) -> UndoOnDrop {
        let this = self.clone();
        UndoOnDrop::new(async move { this.delete_ours(&places).await })
    }

    /// Finds our nodes in each `(dir, stem)` of this session and deletes them, looking again
    /// while a lookup fails with a retryable error, until the session ends (a node of ours
    /// left in a queue would keep every contender, ours included, waiting for as long as the
    /// session lives).
    pub(crate) async fn delete_ours(&self, places: &[(String, String)]) {
        let Ok(s) = self.session().await else { return };
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            match self.delete_ours_on(&s, places).await {
                Err(e) if e.is_retryable() && !s.lost.is_fired() => {
                    tracing::debug!(backend = crate::error::NAME, error = %e, "looking for a node of ours again");
                    tokio::select! {
                        _ = backoff.sleep_until_deadline(None) => {}
                        _ = s.lost.fired() => return,
                    }
                }
                _ => return,
            }
        }
    }

    /// One pass of [`delete_ours`](Self::delete_ours) on `s`: every node of this session in
    /// each `(dir, stem)` is deleted (a delete that gets no answer goes on in the background),
    /// or the lookup's error is returned.
    pub(crate) async fn delete_ours_on(&self, s: &Arc<Session>, places: &[(String, String)]) -> Result<()> {
        for (dir, stem) in places {
            // More than one only after a lost create's lookup failed and a later try made
            // another; each delete is of a node found just now, so this ends.
            while let Some(c) = self.find_created(s, dir, stem).await? {
                if !matches!(s.delete_surely(&c.path, Some(s.timeout())).await, Ok(true)) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Deletes our node (in the background if this is dropped first).
    pub(crate) fn undo(&self, s: &Arc<Session>, path: &str) -> UndoOnDrop {
        let (s, path) = (s.clone(), path.to_owned());
        UndoOnDrop::new(async move {
            let _ = s.delete_surely(&path, None).await;
        })
    }

    /// Creates our node for `req` in `q` on the live session, with `data`.
    ///
    /// `retry`: an earlier try of this request failed; its node, if one was made, is adopted,
    /// and a failure of this one is left to the next retry rather than undone (an undo racing
    /// the retry could delete the retry's node).
    pub(crate) async fn join_queue(
        &self,
        req: &AcquireRequest,
        q: &Queue,
        data: &[u8],
        retry: Option<bool>,
    ) -> Result<Joined> {
        let s = self.session().await?;
        let undo_create = self.undo_create(vec![(q.dir.clone(), q.stem(req.owner))]);
        let child = self.enqueue(&s, q, req.owner, data, retry == Some(true)).await;
        if retry.is_some() {
            undo_create.disarm();
            return child.map(|child| {
                let undo = self.undo(&s, &child.path);
                Joined { s, child, undo }
            });
        }
        let child = child?;
        undo_create.disarm();
        let undo = self.undo(&s, &child.path);
        Ok(Joined { s, child, undo })
    }

    /// The path of `lease`'s node: remembered, or found by its owner token.
    pub(crate) async fn path_of(&self, s: &Session, lease: &Lease) -> Result<Option<String>> {
        if let Some(h) = lease.backend_data::<Held>() {
            return Ok(Some(h.path.to_string()));
        }
        let q = self.queue(lease.key(), lease.mode());
        Ok(self.find(s, &q.dir, &q.stem(lease.owner()), false).await?.map(|c| c.path))
    }

    /// The data a grant's node carries: the holder's metadata, compact JSON (Curator writes
    /// the client's address there).
    pub(crate) fn node_data(req: &AcquireRequest) -> Vec<u8> {
        req.metadata.encode().into_bytes()
    }
}
