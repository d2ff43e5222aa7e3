//! Several locks at once, all or nothing, with ZooKeeper's `multi`.
//!
//! The queue nodes of every lock are created in one transaction, so either all of them are
//! made or none. Each is then checked as a single try checks its node: it holds its lock if no
//! contender is ahead of it. If one does not, every node is deleted in one more transaction and
//! nothing is granted. This keeps the queue's meaning: a node that is first in its queue holds
//! that lock whatever happens in other queues, and until the second transaction our nodes are
//! contenders like those of any single try, which are deleted the same way when the try fails.
//! A waiting multi-key acquire then takes the names one at a time in canonical order (lock-core's
//! ordered path), which never deadlocks.

use lock_core::{AcquireRequest, Instant, Lease, Result};
use zookeeper_client::{CreateMode, MultiWriteResult};

use crate::children::{Child, Queue};
use crate::error::{unavailable, zk_err};
use crate::session::Session;
use crate::ZkBackend;

impl ZkBackend {
    /// One atomic try at every lock of `reqs`: `None` (nothing held) when any is held.
    pub(crate) async fn try_all(&self, reqs: &[AcquireRequest]) -> Result<Option<Vec<Lease>>> {
        let s = self.session().await?;
        let queues: Vec<Queue> = reqs.iter().map(|r| self.queue(&r.key, r.mode)).collect();
        // Creates one by one if the server answers before we could look (a lost reply).
        let undo = self
            .undo_create(reqs.iter().zip(&queues).map(|(r, q)| (q.dir.clone(), q.stem(r.owner))).collect());
        let sent = Instant::now();
        let children = self.create_all(&s, reqs, &queues).await?;
        let mut all = true;
        for (q, c) in queues.iter().zip(&children) {
            let order = self.contenders(&s, &q.dir).await?;
            let Some(pos) = order.iter().position(|n| *n == c.name) else {
                return Err(unavailable("a lock's node vanished as it was made; try again"));
            };
            if self.contender_ahead(&s, &q.dir, &order[..pos], q.rule).await? {
                all = false;
                break;
            }
        }
        if !all {
            let deleted = s
                .call(|c| {
                    let mut w = c.new_multi_writer();
                    let added = children.iter().try_for_each(|ch| w.add_delete(&ch.path, None));
                    async move {
                        added?;
                        w.commit().await.map_err(zookeeper_client::Error::from)
                    }
                })
                .await;
            if deleted.is_ok() {
                undo.disarm();
            }
            return Ok(None);
        }
        let leases =
            reqs.iter().zip(children).map(|(r, c)| self.won(&s, r, c, sent)).collect::<Result<Vec<_>>>()?;
        undo.disarm();
        Ok(Some(leases))
    }

    /// Creates our node in every queue in one transaction, making the directories first (a
    /// create in a missing directory fails the whole transaction; an empty directory reaped
    /// meanwhile is made again).
    async fn create_all(&self, s: &Session, reqs: &[AcquireRequest], queues: &[Queue]) -> Result<Vec<Child>> {
        let acls = self.inner.opts.acls();
        let data: Vec<Vec<u8>> = reqs.iter().map(Self::node_data).collect();
        let prefixes: Vec<String> =
            reqs.iter().zip(queues).map(|(r, q)| format!("{}/{}", q.dir, q.stem(r.owner))).collect();
        let dirs = CreateMode::Container.with_acls(acls);
        for _ in 0..5 {
            for q in queues {
                match s.call(|c| c.mkdir(&q.dir, &dirs)).await {
                    Ok(()) | Err(zookeeper_client::Error::NodeExists) => {}
                    Err(e) => return Err(zk_err("create lock directory", &q.dir, e)),
                }
            }
            let mode = CreateMode::EphemeralSequential.with_acls(acls);
            let committed = s
                .call(|c| {
                    let mut w = c.new_multi_writer();
                    let added = prefixes.iter().zip(&data).try_for_each(|(p, d)| w.add_create(p, d, &mode));
                    async move {
                        added?;
                        w.commit().await.map_err(zookeeper_client::Error::from)
                    }
                })
                .await;
            let results = match committed {
                Ok(r) => r,
                Err(zookeeper_client::Error::NoNode) => continue,
                Err(e) => return Err(zk_err("create (multi)", &prefixes.join(", "), e)),
            };
            return self.created(s, results).await;
        }
        Err(unavailable("could not create the locks' nodes"))
    }

    /// Our nodes from the transaction's results, with their stats (the server does not always
    /// return them in a `multi`).
    async fn created(&self, s: &Session, results: Vec<MultiWriteResult>) -> Result<Vec<Child>> {
        let mut children = Vec::with_capacity(results.len());
        for r in results {
            let MultiWriteResult::Create { path, .. } = r else {
                return Err(unavailable("the server answered a create with something else"));
            };
            let stat = s.call(|c| c.check_stat(&path)).await.map_err(|e| zk_err("stat", &path, e))?;
            let Some(stat) = stat else { return Err(unavailable("a lock's node vanished as it was made")) };
            let name = path.rsplit('/').next().unwrap_or_default().to_owned();
            children.push(Child { path, name, czxid: stat.czxid, owner: stat.ephemeral_owner });
        }
        Ok(children)
    }
}
