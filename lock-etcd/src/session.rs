//! A session: one etcd lease, kept alive by one keep-alive stream, with a loss signal.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, LeaseGrantOptions};
use lock_core::{drift_margin, Backoff, Instant, LossReason, LossSignal, Result};
use tokio_util::sync::CancellationToken;

use crate::keywatch::KeyWatch;
use crate::map_err;

/// One lease and its keep-alive task.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: i64,
    pub(crate) ttl: Duration,
    pub(crate) loss: LossSignal,
    valid_until: Mutex<Instant>,
    stop: CancellationToken,
    /// Watches the keys held on this session, so renewing them needs no request.
    pub(crate) keys: KeyWatch,
}

impl Session {
    /// Grants a lease of `ttl` (whole seconds) and starts keeping it alive every TTL/3.
    pub(crate) async fn start(
        client: &Client,
        ttl: Duration,
        request_timeout: Duration,
    ) -> Result<Arc<Self>> {
        let secs = ttl.as_secs().max(1) as i64 + i64::from(ttl.subsec_nanos() > 0);
        let sent = Instant::now();
        let mut lc = client.lease_client();
        let grant = tokio::time::timeout(request_timeout, lc.grant(secs, None::<LeaseGrantOptions>))
            .await
            .map_err(|_| crate::timeout("lease grant", request_timeout))?
            .map_err(map_err)?;
        let ttl = Duration::from_secs(grant.ttl().max(1) as u64);
        let loss = LossSignal::new();
        let session = Arc::new(Self {
            id: grant.id(),
            ttl,
            keys: KeyWatch::start(client.clone(), loss.clone()),
            loss,
            valid_until: Mutex::new(sent + ttl.saturating_sub(drift_margin(ttl))),
            stop: CancellationToken::new(),
        });
        tokio::spawn(keep_alive(client.clone(), session.clone(), request_timeout));
        Ok(session)
    }

    pub(crate) fn valid_until(&self) -> Instant {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn alive(&self) -> bool {
        !self.loss.is_fired() && Instant::now() < self.valid_until()
    }

    fn renewed(&self, sent: Instant, ttl: Duration) {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) =
            sent + ttl.saturating_sub(drift_margin(ttl));
    }

    /// Stops the keep-alive without revoking (what a crashed process does): the lease expires
    /// after its TTL.
    pub(crate) fn abandon(&self) {
        self.stop.cancel();
    }

    /// Revokes the lease (deleting every key on it) and stops the keep-alive.
    pub(crate) async fn close(&self, client: &Client) {
        self.stop.cancel();
        let _ = client.lease_client().revoke(self.id).await;
        self.loss.fire(LossReason::SessionLost);
    }
}

async fn keep_alive(client: Client, s: Arc<Session>, request_timeout: Duration) {
    let mut backoff = Backoff::new(Duration::from_millis(50), s.ttl / 6);
    'reconnect: loop {
        if s.stop.is_cancelled() {
            return;
        }
        let stream = tokio::time::timeout(request_timeout, client.lease_client().keep_alive(s.id)).await;
        let (mut keeper, mut responses) = match stream {
            Ok(Ok(pair)) => pair,
            failed => {
                // An expired auth token: log in again before the next try.
                if let Ok(Err(e)) = &failed {
                    if crate::token_expired(e) {
                        let _ = client.refresh_token().await;
                    }
                }
                if Instant::now() >= s.valid_until() {
                    s.loss.fire(LossReason::SessionLost);
                    return;
                }
                tokio::select! {
                    _ = s.stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue 'reconnect,
                }
            }
        };
        loop {
            let sent = Instant::now();
            // The TTL the server granted, or None when the keep-alive failed.
            let reply: Option<i64> = if keeper.keep_alive().await.is_ok() {
                match tokio::time::timeout(request_timeout, responses.message()).await {
                    Ok(Ok(Some(r))) => Some(r.ttl()),
                    _ => None,
                }
            } else {
                None
            };
            match reply {
                Some(ttl) if ttl > 0 => {
                    s.renewed(sent, Duration::from_secs(ttl as u64));
                    backoff.reset();
                }
                Some(_) => {
                    // TTL 0: the lease is gone (revoked, or expired while we were away).
                    tracing::warn!(lease = s.id, "etcd session lease is gone");
                    s.loss.fire(LossReason::SessionLost);
                    return;
                }
                _ => {
                    if Instant::now() >= s.valid_until() {
                        tracing::warn!(lease = s.id, "etcd session keep-alive failed past the TTL");
                        s.loss.fire(LossReason::SessionLost);
                        return;
                    }
                    tokio::select! {
                        _ = s.stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue 'reconnect,
                    }
                }
            }
            tokio::select! {
                _ = s.stop.cancelled() => return,
                _ = tokio::time::sleep(s.ttl / 3) => {}
            }
        }
    }
}
