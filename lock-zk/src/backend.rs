//! [`ZkBackend`]: the session it shares among its locks, and the [`LockBackend`] impl.

use std::sync::{Arc, Weak};
use std::time::Duration;

use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, Error, ExtendOutcome, Instant, Lease, ListPage,
    LockBackend, LockInfo, LockKey, LossReason, Metadata, Mode, ObserveStream, ReleaseOutcome, Result,
    WakeMode,
};
use tokio::sync::Mutex;

use crate::children::{lock_dir, queue, semaphore_mutex, Queue};
use crate::error::{zk_err, NAME};
use crate::session::{open, Session};
use crate::ZkOptions;

/// Locks in a ZooKeeper ensemble. Cheap to clone; clones share one session.
///
/// # Behavior
/// See the [crate documentation](crate): Curator's layouts and order (the lock, semaphores,
/// read-write locks, elections), czxid fencing tokens, one session per backend whose timeout
/// is every grant's lease.
#[derive(Clone)]
pub struct ZkBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) opts: ZkOptions,
    session: Mutex<Arc<Session>>,
    /// The session timeout the server agreed (it clamps the requested one to 2 to 20 ticks);
    /// later sessions ask for the same and get the same.
    negotiated: Duration,
}

impl std::fmt::Debug for ZkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkBackend").field("opts", &self.inner.opts).finish_non_exhaustive()
    }
}

/// What a lease of this backend remembers: its node's path and the session that owns it.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) path: Arc<str>,
    pub(crate) session: Weak<Session>,
}

impl ZkBackend {
    /// Validates the options, connects to the ensemble and opens the session.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for unusable options ([`ZkOptions::validate`]); a retryable
    /// connection error when no server answers within the connect timeout; an auth error
    /// when digest auth fails.
    pub async fn connect(opts: ZkOptions) -> Result<Self> {
        opts.validate()?;
        let session = open(&opts).await?;
        let negotiated = session.timeout();
        Ok(Self { inner: Arc::new(Inner { opts, session: Mutex::new(session), negotiated }) })
    }

    /// The options.
    pub fn options(&self) -> &ZkOptions {
        &self.inner.opts
    }

    /// The current session's id, for operators' logs.
    pub async fn session_id(&self) -> i64 {
        self.inner.session.lock().await.client.session_id().0
    }

    /// The live session, opening a new one if the last one was lost.
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        let mut current = self.inner.session.lock().await;
        if current.lost.is_fired() {
            *current = open(&self.inner.opts).await?;
        }
        Ok(current.clone())
    }

    /// The node of `key`: its lock's queue, and the parent of longer names.
    pub(crate) fn dir(&self, key: &LockKey) -> String {
        lock_dir(&self.inner.opts.prefix, key)
    }

    /// The queue of `key`'s primitive `mode` (a semaphore's: its leases).
    pub(crate) fn queue(&self, key: &LockKey, mode: Mode) -> Queue {
        queue(&self.inner.opts.prefix, key, mode)
    }

    /// One attempt at a queue (the lock, a read or write lock, an election): our node, held
    /// if nothing ahead keeps it waiting, deleted otherwise.
    async fn try_queue(&self, req: &AcquireRequest) -> Result<Attempt> {
        let sent = Instant::now();
        let q = self.queue(&req.key, req.mode);
        let j = self.join_queue(req, &q, &Self::node_data(req), None).await?;
        let order = self.contenders(&j.s, &q.dir).await?;
        let Some(pos) = order.iter().position(|n| *n == j.child.name) else {
            // Our node is already gone (the session ended): leave nothing behind, try again.
            drop(j.undo);
            return Err(crate::error::unavailable("the lock's child vanished as it was made; try again"));
        };
        if !self.contender_ahead(&j.s, &q.dir, &order[..pos], q.rule).await? {
            let lease = self.won(&j.s, req, j.child, sent)?;
            j.undo.disarm();
            return Ok(Attempt::Acquired(lease));
        }
        drop(j.undo); // deletes our node in the background
        Ok(Attempt::Held { expires_in: None })
    }

    /// Where `req`'s nodes may be: the queue's, and for a semaphore also its mutex's.
    pub(crate) fn places(&self, req: &AcquireRequest) -> Vec<(String, String)> {
        let q = self.queue(&req.key, req.mode);
        let mut places = vec![(q.dir.clone(), q.stem(req.owner))];
        if let Mode::Permit { .. } = req.mode {
            let m = semaphore_mutex(&self.inner.opts.prefix, &req.key);
            places.push((m.dir.clone(), m.stem(req.owner)));
        }
        places
    }
}

/// How many session timeouts a crashed holder's nodes may outlive it: a change of the
/// ensemble's leader restarts the count of every session (`tests/leader_change.rs` measures it).
const EXPIRY_SESSIONS: u32 = 2;

#[async_trait]
impl LockBackend for ZkBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let session = self.inner.negotiated;
        Capabilities::new()
            .with_fair_queueing(true)
            .with_wake(WakeMode::Notify)
            // Every grant lives as long as the session: the timeout the server agreed.
            .with_session_timeout(session)
            .with_min_ttl(Duration::from_millis(1))
            .with_expiry_ttls(EXPIRY_SESSIONS)
            // The server expires sessions on tick boundaries and hears of a follower's
            // sessions at its pings (2.5 ticks in all, counting a leader change), and a
            // leader election takes its time: one more session timeout (a tick is at most
            // 2/5 of it in any usual configuration) and 1.5 s.
            .with_expiry_margin(session + Duration::from_millis(1500))
            .with_max_permits(lock_core::MAX_PERMITS)
            .with_read_write(true)
            .with_writer_preference(true)
            .with_atomic_multi_key(true)
            .with_elections(true)
            .with_listing(true)
            .with_holder_metadata(true)
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        match req.mode {
            Mode::Permit { limit } => self.try_permit(req, limit).await,
            _ => self.try_queue(req).await,
        }
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let start = Instant::now();
        // Until a try succeeds, a node some try left behind (its create's reply lost) is
        // deleted if this call ends without the grant, or is dropped, even between tries.
        let cleanup = self.undo_create(self.places(req));
        let mut retry = false;
        loop {
            let attempt = match req.mode {
                Mode::Permit { limit } => self.permit_once(req, limit, deadline, retry).await,
                _ => self.acquire_once(req, deadline, retry).await,
            };
            retry = true;
            match attempt {
                // The session ended, or the connection broke, while we waited (not while we
                // held): queue again, on a new session if need be, until the deadline.
                Err(e)
                    if (matches!(e, Error::Lost { .. }) || e.is_retryable()) && Instant::now() < deadline =>
                {
                    tracing::debug!(backend = NAME, key = %req.key, error = %e, "queueing again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(lease) => {
                    cleanup.disarm();
                    return Ok(lease);
                }
                Err(e) => {
                    // No further try will come with this owner token: `cleanup` runs now.
                    drop(cleanup);
                    return Err(match e {
                        // A session lost at the deadline ends a wait that never held: the
                        // wait timed out (`Lost` is for a grant that was held).
                        Error::WaitTimedOut { key, .. } | Error::Lost { key, .. } => {
                            Error::WaitTimedOut { key, waited: start.elapsed() }
                        }
                        other => other,
                    });
                }
            }
        }
    }

    async fn extend(&self, lease: &Lease, _ttl: Duration) -> Result<ExtendOutcome> {
        if lease.session().is_some_and(|sig| sig.is_fired()) {
            return Ok(ExtendOutcome::NotHeld);
        }
        // The node lives and dies with the session that created it, never with a newer one.
        // Its validity is what the server last confirmed, never the link's state: see
        // `Session::confirm`.
        if let Some(h) = lease.backend_data::<Held>() {
            let Some(s) = h.session.upgrade() else { return Ok(ExtendOutcome::NotHeld) };
            return Ok(match s.confirm(&h.path).await? {
                Some(valid_until) => ExtendOutcome::Extended { valid_until },
                None => ExtendOutcome::NotHeld,
            });
        }
        // A lease made elsewhere: its node must exist. Its session is another client's,
        // which we cannot vouch for past the moment we saw the node, unless it is ours.
        let s = self.session().await?;
        let sent = Instant::now();
        let q = self.queue(lease.key(), lease.mode());
        let Some(child) = self.find(&s, &q.dir, &q.stem(lease.owner()), false).await? else {
            return Ok(ExtendOutcome::NotHeld);
        };
        let ours = child.owner == s.client.session_id().0;
        Ok(ExtendOutcome::Extended { valid_until: if ours { s.valid_until() } else { sent } })
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let s = self.session().await?;
        let Some(path) = self.path_of(&s, lease).await? else { return Ok(ReleaseOutcome::NotHeld) };
        // A delete lost with its connection is sent again after the reconnect (for up to a
        // session timeout here, then in the background): the node must not outlive the call.
        // A grant whose session is lost died with it: a resent delete that finds its node
        // gone says nothing about our delete then.
        let died = lease
            .backend_data::<Held>()
            .is_some_and(|h| h.session.upgrade().is_none_or(|hs| hs.lost.is_fired()));
        let outcome = match s.delete_surely(&path, Some(s.timeout())).await {
            Ok(true) if died => ReleaseOutcome::NotHeld,
            Ok(true) => ReleaseOutcome::Released,
            Ok(false) => ReleaseOutcome::NotHeld,
            Err(e) => return Err(zk_err("delete", &path, e)),
        };
        // The node is gone: the lease's signal says so now, not only once its watcher has
        // seen the deletion, so an extend of any copy of the lease finds it not held.
        if let Some(signal) = lease.session() {
            signal.fire(LossReason::NotHeld);
        }
        if let Some(h) = lease.backend_data::<Held>() {
            if let Some(s) = h.session.upgrade() {
                s.held.forget(&h.path);
            }
        }
        Ok(outcome)
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        let s = self.session().await?;
        self.first_holder(&s, &self.dir(key), Mode::Exclusive).await
    }

    async fn holders(&self, key: &LockKey, mode: Mode) -> Result<Vec<LockInfo>> {
        let s = self.session().await?;
        let q = self.queue(key, mode);
        match mode {
            Mode::Permit { limit } => {
                // The number of permits the holders stored (the caller's may differ: a waiter
                // counted as a holder, or a holder left out).
                let sem = crate::children::semaphore_dir(&self.inner.opts.prefix, key);
                let limit = match s.call(|c| c.get_data(&sem)).await {
                    Ok((data, _)) => crate::semaphore::stored_permits(&data).unwrap_or(limit),
                    Err(zookeeper_client::Error::NoNode) => return Ok(Vec::new()),
                    Err(e) => return Err(crate::error::zk_err("read", &sem, e)),
                };
                self.permit_holders(&s, &q.dir, limit).await
            }
            Mode::Read | Mode::Write => self.rw_holders(&s, &q.dir).await,
            _ => Ok(self.first_holder(&s, &q.dir, mode).await?.into_iter().collect()),
        }
    }

    async fn try_acquire_all(&self, reqs: &[AcquireRequest]) -> Result<Option<Vec<Lease>>> {
        self.try_all(reqs).await
    }

    async fn list(&self, prefix: &str, cursor: Option<String>, limit: usize) -> Result<ListPage> {
        self.list_page(prefix, cursor, limit).await
    }

    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<ExtendOutcome> {
        self.set_metadata(lease, metadata).await
    }

    async fn observe(&self, key: &LockKey, mode: Mode) -> Result<Option<ObserveStream>> {
        match mode {
            Mode::Exclusive | Mode::Leader => Ok(Some(self.observe_first(key, mode).await?)),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A malformed connect string is a configuration error found before connecting, never
    /// a connection error.
    #[tokio::test]
    async fn a_malformed_connect_string_is_invalid_config_before_connecting() {
        for connect in ["127.0.0.1:99999", ",127.0.0.1:2181", ":2181", "127.0.0.1:2181,,h:2181", "h:0"] {
            let o = ZkOptions::new(connect).connect_timeout(Duration::from_secs(1));
            let e = ZkBackend::connect(o).await.expect_err(connect);
            assert!(matches!(e, Error::InvalidConfig(_)) && !e.is_retryable(), "{connect}: {e:?}");
            assert!(e.to_string().contains("connect string"), "{connect}: {e}");
        }
    }
}
