//! A session: one etcd lease, kept alive by one keep-alive stream, with a loss signal.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{drift_margin, Backoff, Instant, LossReason, LossSignal, Result};
use tokio_util::sync::CancellationToken;

use crate::error::{map_err, timeout, token_expired};
use crate::keywatch::KeyWatch;
use crate::rpc::{self, LeaseKeepAlive};

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
        client: &rpc::Client,
        ttl: Duration,
        request_timeout: Duration,
    ) -> Result<Arc<Self>> {
        let secs = ttl.as_secs().max(1) as i64 + i64::from(ttl.subsec_nanos() > 0);
        let sent = Instant::now();
        let grant = tokio::time::timeout(request_timeout, client.lease_grant(secs))
            .await
            .map_err(|_| timeout("lease grant", request_timeout))?
            .map_err(map_err)?;
        let ttl = Duration::from_secs(grant.ttl.max(1) as u64);
        let loss = LossSignal::new();
        let session = Arc::new(Self {
            id: grant.id,
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

    /// Records one keep-alive reply (sent at `sent`, granting `ttl` seconds). `false` when the
    /// lease is gone (TTL 0: revoked, or expired while we were away): the session is lost.
    fn record(&self, sent: Instant, ttl: i64) -> bool {
        if ttl <= 0 {
            tracing::warn!(lease = self.id, "etcd session lease is gone");
            self.loss.fire(LossReason::SessionLost);
            return false;
        }
        let ttl = Duration::from_secs(ttl as u64);
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) =
            sent + ttl.saturating_sub(drift_margin(ttl));
        true
    }

    /// After a failed keep-alive: the session is lost once its TTL has run out by our clock;
    /// until then, try again after a backoff. `false` when the task should end (lost or
    /// stopped).
    async fn retry_later(&self, backoff: &mut Backoff) -> bool {
        if Instant::now() >= self.valid_until() {
            tracing::warn!(lease = self.id, "etcd session keep-alive failed past the TTL");
            self.loss.fire(LossReason::SessionLost);
            return false;
        }
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(backoff.next_delay()) => true,
        }
    }

    /// Stops the keep-alive without revoking (what a crashed process does): the lease expires
    /// after its TTL.
    pub(crate) fn abandon(&self) {
        self.stop.cancel();
    }

    /// Revokes the lease (deleting every key on it) and stops the keep-alive.
    pub(crate) async fn close(&self, client: &rpc::Client) {
        self.stop.cancel();
        let _ = client.lease_revoke(self.id).await;
        self.loss.fire(LossReason::SessionLost);
    }
}

/// The keep-alive task: opens a keep-alive stream (its opening renews once) and renews on it
/// every TTL/3; reopens it after a failure, until the session is stopped or lost.
async fn keep_alive(client: rpc::Client, s: Arc<Session>, request_timeout: Duration) {
    let mut backoff = Backoff::new(Duration::from_millis(50), s.ttl / 6);
    while !s.stop.is_cancelled() {
        let sent = Instant::now();
        match tokio::time::timeout(request_timeout, client.lease_keep_alive(s.id)).await {
            Ok(Ok((mut stream, ttl))) => {
                if !s.record(sent, ttl) {
                    return;
                }
                backoff.reset();
                if !renew_on(&mut stream, &s, request_timeout, &mut backoff).await {
                    return;
                }
            }
            // An expired auth token: log in again before the next try.
            Ok(Err(e)) if token_expired(&e) => {
                let _ = client.refresh_token().await;
            }
            _ => {}
        }
        if !s.retry_later(&mut backoff).await {
            return;
        }
    }
}

/// Renews on an open stream every TTL/3. Returns `true` when the stream failed (reopen it),
/// `false` when the session is stopped or lost.
async fn renew_on(
    stream: &mut LeaseKeepAlive,
    s: &Session,
    request_timeout: Duration,
    backoff: &mut Backoff,
) -> bool {
    loop {
        tokio::select! {
            _ = s.stop.cancelled() => return false,
            _ = tokio::time::sleep(s.ttl / 3) => {}
        }
        let sent = Instant::now();
        match tokio::time::timeout(request_timeout, stream.renew()).await {
            Ok(Ok(ttl)) => {
                if !s.record(sent, ttl) {
                    return false;
                }
                backoff.reset();
            }
            _ => return true,
        }
    }
}
