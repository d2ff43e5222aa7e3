//! [`ZkBackend`]: the session it shares among its locks, and the [`LockBackend`] impl.

use std::sync::{Arc, Weak};
use std::time::Duration;

use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, Error, ExtendOutcome, FencingToken, Instant, Lease,
    LockBackend, LockInfo, LockKey, LossReason, ReleaseOutcome, Result, WakeMode,
};
use tokio::sync::Mutex;

use crate::children::{lock_dir, owner_of, stem};
use crate::error::{zk_err, NAME};
use crate::session::{open, Session};
use crate::ZkOptions;

/// Locks in a ZooKeeper ensemble. Cheap to clone; clones share one session.
///
/// # Behavior
/// See the [crate documentation](crate): Curator's layout and order, czxid fencing tokens,
/// one session per backend whose timeout is every lock's lease.
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

/// What a lease of this backend remembers: its child's path and the session that owns it.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) path: String,
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

    /// The directory of `key`'s contenders.
    pub(crate) fn dir(&self, key: &LockKey) -> String {
        lock_dir(&self.inner.opts.prefix, key)
    }
}

#[async_trait]
impl LockBackend for ZkBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_fair_queueing(true)
            .with_wake(WakeMode::Notify)
            .with_session_leases()
            .with_min_ttl(Duration::from_millis(1))
            // A crashed holder's child lives until the server expires its session: the
            // timeout the server agreed, not the one asked for.
            .with_expiry_margin(self.inner.negotiated + Duration::from_millis(1500))
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        let sent = Instant::now();
        let (s, dir, child, undo) = self.join_queue(req, None).await?;
        let order = self.contenders(&s, &dir).await?;
        let Some(pos) = order.iter().position(|n| *n == child.name) else {
            // Our child is already gone (the session ended): leave nothing behind, try again.
            drop(undo);
            return Err(crate::error::unavailable("the lock's child vanished as it was made; try again"));
        };
        if !self.contender_ahead(&s, &dir, &order[..pos]).await? {
            let lease = self.won(&s, req, child, sent)?;
            undo.disarm();
            return Ok(Attempt::Acquired(lease));
        }
        drop(undo); // deletes our child in the background
        Ok(Attempt::Held { expires_in: None })
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let start = Instant::now();
        // Until a try succeeds, a child some try left behind (its create's reply lost) is
        // deleted if this call ends without the lock, or is dropped, even between tries.
        let cleanup = self.undo_create(&self.dir(&req.key), req.owner);
        let mut retry = false;
        loop {
            let attempt = self.acquire_once(req, deadline, retry).await;
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
                        Error::WaitTimedOut { key, .. } => {
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
        // The child lives and dies with the session that created it, never with a newer one.
        // Its validity is what the server last confirmed, never the link's state: see
        // `Session::confirm`.
        if let Some(h) = lease.backend_data::<Held>() {
            let Some(s) = h.session.upgrade() else { return Ok(ExtendOutcome::NotHeld) };
            return Ok(match s.confirm(&h.path).await? {
                Some(valid_until) => ExtendOutcome::Extended { valid_until },
                None => ExtendOutcome::NotHeld,
            });
        }
        // A lease made elsewhere: its child must exist. Its session is another client's,
        // which we cannot vouch for past the moment we saw the child, unless it is ours.
        let s = self.session().await?;
        let sent = Instant::now();
        let Some(child) = self.find(&s, &self.dir(lease.key()), &stem(lease.owner()), false).await? else {
            return Ok(ExtendOutcome::NotHeld);
        };
        let ours = child.owner == s.client.session_id().0;
        Ok(ExtendOutcome::Extended { valid_until: if ours { s.valid_until() } else { sent } })
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let s = self.session().await?;
        let Some(path) = self.path_of(&s, lease).await? else { return Ok(ReleaseOutcome::NotHeld) };
        let outcome = match s.call(|c| c.delete(&path, None)).await {
            Ok(()) => ReleaseOutcome::Released,
            Err(zookeeper_client::Error::NoNode) => ReleaseOutcome::NotHeld,
            Err(e) => return Err(zk_err("delete", &path, e)),
        };
        // The child is gone: the lease's signal says so now, not only once its watcher has
        // seen the deletion, so an extend of any copy of the lease finds it not held.
        if let Some(signal) = lease.session() {
            signal.fire(LossReason::NotHeld);
        }
        Ok(outcome)
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        let s = self.session().await?;
        let dir = self.dir(key);
        // The holder is the first lock node; directories of locks whose names extend this
        // one are skipped.
        for name in self.contenders(&s, &dir).await? {
            let path = format!("{dir}/{name}");
            let stat = s.call(|c| c.check_stat(&path)).await.map_err(|e| zk_err("stat", &path, e))?;
            if let Some(stat) = stat.filter(|st| st.ephemeral_owner != 0) {
                return Ok(Some(LockInfo::new(
                    Some(FencingToken::new(stat.czxid as u64)),
                    owner_of(&name),
                    None,
                )));
            }
        }
        Ok(None)
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
