//! Per-lock leases ([`LeaseMode::PerLock`](crate::LeaseMode::PerLock)): granting, one
//! keep-alive, the keep-alive that carries a waiter's lease through its wait, revoking.

use std::time::Duration;

use lock_core::Result;
use tokio_util::sync::CancellationToken;

use crate::backend::EtcdBackend;
use crate::error::{map_err, timeout};
use crate::rpc;

/// A TTL in etcd's whole seconds, rounded up (at least 1).
pub(crate) fn ttl_secs(d: Duration) -> i64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1) as i64
}

/// Keeps a per-lock lease alive (every TTL/3) while its owner waits in the queue; stops on
/// drop.
pub(crate) struct KeepAlive(CancellationToken);

impl KeepAlive {
    pub(crate) fn start(client: rpc::Client, id: i64, ttl: Duration) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let opened = tokio::select! {
                _ = token.cancelled() => return,
                opened = client.lease_keep_alive(id) => opened,
            };
            let Ok((mut stream, _)) = opened else { return };
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(ttl / 3) => {}
                }
                tokio::select! {
                    _ = token.cancelled() => return,
                    renewed = stream.renew() => if renewed.is_err() { return },
                }
            }
        });
        Self(stop)
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl EtcdBackend {
    /// One keep-alive of lease `id`: the TTL the server granted (0 when the lease is gone).
    pub(crate) async fn keep_alive_once(&self, id: i64) -> Result<i64> {
        let t = self.inner.opts.request_timeout;
        match tokio::time::timeout(t, self.client().lease_keep_alive(id)).await {
            Ok(Ok((_, ttl))) => Ok(ttl),
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(0),
            Ok(Err(s)) => Err(map_err(s)),
            Err(_) => Err(timeout("keep-alive", t)),
        }
    }

    /// The seconds lease `id` has left (0 or less when it is gone), without renewing it.
    pub(crate) async fn time_to_live(&self, id: i64) -> Result<i64> {
        self.call("lease ttl", || self.client().lease_time_to_live(id)).await
    }

    /// A new lease of `ttl` (whole seconds): its id and granted TTL in seconds.
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<(i64, i64)> {
        let t = self.inner.opts.request_timeout;
        let r = tokio::time::timeout(t, self.client().lease_grant(ttl_secs(ttl)))
            .await
            .map_err(|_| timeout("lease grant", t))?
            .map_err(map_err)?;
        Ok((r.id, r.ttl))
    }

    /// Revokes lease `id` (deleting its keys), ignoring failures: a lease that cannot be
    /// revoked expires at its TTL.
    pub(crate) async fn revoke(&self, id: i64) {
        let _ = self.client().lease_revoke(id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::from_secs(2)), 2);
        assert_eq!(ttl_secs(Duration::from_millis(2001)), 3);
    }
}
