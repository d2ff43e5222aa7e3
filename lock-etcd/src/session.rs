//! A session: one etcd lease shared by every lock of a client, kept alive by a
//! [`KeptLease`], with a loss signal and the watch of the keys held on it.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{Instant, LossReason, LossSignal, Result};

use crate::error::{map_err, timeout};
use crate::keepalive::{ttl_secs, KeptLease};
use crate::keywatch::KeyWatch;
use crate::rpc;

/// One lease, its keep-alive and its key watch.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: i64,
    pub(crate) ttl: Duration,
    /// Fires when the lease is lost (gone on the server, or past its TTL by our clock).
    pub(crate) loss: LossSignal,
    lease: Arc<KeptLease>,
    /// Watches the keys held on this session, so renewing them needs no request.
    pub(crate) keys: KeyWatch,
}

impl Session {
    /// Grants a lease of `ttl` (whole seconds) and starts keeping it alive every TTL/3.
    pub(crate) async fn start(
        client: &rpc::Client,
        ttl: Duration,
        request_timeout: Duration,
    ) -> Result<Arc<Self>> {
        let sent = Instant::now();
        let grant = tokio::time::timeout(request_timeout, client.lease_grant(ttl_secs(ttl)))
            .await
            .map_err(|_| timeout("lease grant", request_timeout))?
            .map_err(map_err)?;
        let asked = ttl;
        let ttl = Duration::from_secs(grant.ttl.max(1) as u64);
        if ttl > Duration::from_secs(ttl_secs(asked) as u64) {
            // The server's minimum lease TTL (1.5 election timeouts) is above the one asked.
            tracing::warn!(
                asked = ?asked,
                granted = ?ttl,
                "etcd granted the session a longer lease than asked: a crashed holder blocks others for up to the granted TTL, beyond the session timeout the backend's capabilities state"
            );
        }
        let lease = KeptLease::start(client.clone(), (grant.id, ttl, sent), true, request_timeout);
        let loss = lease.loss.clone();
        Ok(Arc::new(Self {
            id: grant.id,
            ttl,
            keys: KeyWatch::start(client.clone(), loss.clone(), request_timeout),
            loss,
            lease,
        }))
    }

    pub(crate) fn valid_until(&self) -> Instant {
        self.lease.valid_until()
    }

    pub(crate) fn alive(&self) -> bool {
        self.lease.alive()
    }

    /// Stops the keep-alive without revoking (what a crashed process does): the lease expires
    /// after its TTL.
    pub(crate) fn abandon(&self) {
        self.lease.stop();
    }

    /// Stops the keep-alive, tells the session's guards their locks are gone, then revokes the
    /// lease (deleting every key on it). In that order: etcd deletes the keys as it revokes,
    /// before its reply comes back (if it does), and another client may take them at once.
    pub(crate) async fn close(&self, client: &rpc::Client) {
        self.lease.stop();
        self.loss.fire(LossReason::SessionLost);
        let _ = client.lease_revoke(self.id).await;
    }
}

impl Drop for Session {
    /// Nobody can use the lease any more: stop renewing it (it expires after its TTL).
    fn drop(&mut self) {
        self.lease.stop();
    }
}
