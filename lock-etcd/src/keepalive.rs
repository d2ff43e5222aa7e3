//! Keeping leases alive: [`KeptLease`], one lease renewed on one keep-alive stream every
//! TTL/3 and reopened after a failure (a member restarting, a broken stream, an election),
//! with a loss signal that fires when the lease is gone or its TTL ran out with no renewal.
//! It carries a session's lease, and a per-lock waiter's lease through its wait. Also the
//! per-lock leases' single requests: grant, one keep-alive, time to live, revoke.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{drift_margin, Backoff, Instant, LossReason, LossSignal, Result};
use tokio_util::sync::CancellationToken;

use crate::backend::EtcdBackend;
use crate::error::{map_err, timeout, token_expired};
use crate::rpc::{self, LeaseKeepAlive};

/// A TTL in etcd's whole seconds, rounded up (at least 1; at most `i64::MAX`).
pub(crate) fn ttl_secs(d: Duration) -> i64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)).max(1);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// How long one keep-alive (opening the stream, or one renewal on it) may take: the request
/// timeout, but no longer than a renewal interval, so that a member that stopped answering
/// is left for another while the lease still has two intervals to live.
fn renew_timeout(ttl: Duration, request_timeout: Duration) -> Duration {
    request_timeout.min(ttl / 3).max(Duration::from_millis(200))
}

/// A lease kept alive by a background task until [`stop`](KeptLease::stop)ped or lost.
#[derive(Debug)]
pub(crate) struct KeptLease {
    pub(crate) id: i64,
    pub(crate) ttl: Duration,
    /// Fires when the lease is gone (the server says so) or, with `by_clock`, ran out by our
    /// clock.
    pub(crate) loss: LossSignal,
    valid_until: Mutex<Instant>,
    /// Whether the lease counts as lost once its TTL ran out by our clock with no renewal:
    /// for a session, whose holders act on `valid_until`. A waiter's lease is lost only when
    /// the server says so: it holds nothing meanwhile, and a new leader extends every lease
    /// by its TTL, so an outage longer than the TTL may well leave it alive.
    by_clock: bool,
    stop: CancellationToken,
}

impl KeptLease {
    /// Keeps lease `id`, granted `ttl` by a grant sent at `sent`, alive from now on; see
    /// the field `by_clock`.
    pub(crate) fn start(
        client: rpc::Client,
        (id, ttl, sent): (i64, Duration, Instant),
        by_clock: bool,
        request_timeout: Duration,
    ) -> Arc<Self> {
        let lease = Arc::new(Self {
            id,
            ttl,
            loss: LossSignal::new(),
            valid_until: Mutex::new(until(sent, ttl)),
            by_clock,
            stop: CancellationToken::new(),
        });
        tokio::spawn(keep_alive(client, lease.clone(), renew_timeout(ttl, request_timeout)));
        lease
    }

    /// Until when the lease is surely alive, by the last renewal.
    pub(crate) fn valid_until(&self) -> Instant {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Not lost, and within its TTL by our clock.
    pub(crate) fn alive(&self) -> bool {
        !self.loss.is_fired() && Instant::now() < self.valid_until()
    }

    /// Stops renewing (the lease then expires after its TTL unless revoked).
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Records one keep-alive reply (sent at `sent`, granting `ttl` seconds). `false` when the
    /// lease is gone (TTL 0: revoked, or expired while we were away): it is lost.
    fn record(&self, sent: Instant, ttl: i64) -> bool {
        if ttl <= 0 {
            tracing::warn!(lease = self.id, "etcd lease is gone");
            self.loss.fire(LossReason::SessionLost);
            return false;
        }
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) =
            until(sent, Duration::from_secs(ttl as u64));
        true
    }

    /// After a failed keep-alive: with `by_clock`, the lease is lost once its TTL has run out
    /// by our clock; until then, try again after a backoff. `false` when the task should end
    /// (lost or stopped).
    async fn retry_later(&self, backoff: &mut Backoff) -> bool {
        if self.by_clock && Instant::now() >= self.valid_until() {
            tracing::warn!(lease = self.id, "etcd keep-alive failed past the lease's TTL");
            self.loss.fire(LossReason::SessionLost);
            return false;
        }
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(backoff.next_delay()) => true,
        }
    }
}

/// The validity of a TTL granted from `sent`, less the drift margin.
fn until(sent: Instant, ttl: Duration) -> Instant {
    lock_core::lease::add_saturating(sent, ttl.saturating_sub(drift_margin(ttl)))
}

/// The keep-alive task: opens a keep-alive stream (its opening renews once) and renews on it
/// every TTL/3; reopens it after a failure, until the lease is stopped or lost.
async fn keep_alive(client: rpc::Client, l: Arc<KeptLease>, timeout: Duration) {
    let mut backoff = Backoff::new(Duration::from_millis(50), (l.ttl / 6).max(Duration::from_millis(100)));
    while !l.stop.is_cancelled() {
        let sent = Instant::now();
        let opened = tokio::select! {
            _ = l.stop.cancelled() => return,
            opened = tokio::time::timeout(timeout, client.lease_keep_alive(l.id)) => opened,
        };
        match opened {
            Ok(Ok((mut stream, ttl))) => {
                if !l.record(sent, ttl) {
                    return;
                }
                backoff.reset();
                if !renew_on(&mut stream, &l, timeout).await {
                    return;
                }
            }
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                l.record(sent, 0);
                return;
            }
            // An expired auth token: log in again before the next try.
            Ok(Err(e)) if token_expired(&e) => {
                let _ = client.refresh_token().await;
            }
            Ok(Err(e)) => tracing::debug!(lease = l.id, error = %e, "etcd keep-alive failed; retrying"),
            Err(_) => tracing::debug!(lease = l.id, "etcd keep-alive timed out; retrying"),
        }
        if !l.retry_later(&mut backoff).await {
            return;
        }
    }
}

/// Renews on an open stream every TTL/3. Returns `true` when the stream failed (reopen it),
/// `false` when the lease is stopped or lost.
async fn renew_on(stream: &mut LeaseKeepAlive, l: &KeptLease, timeout: Duration) -> bool {
    loop {
        tokio::select! {
            _ = l.stop.cancelled() => return false,
            _ = tokio::time::sleep(l.ttl / 3) => {}
        }
        let sent = Instant::now();
        let renewed = tokio::select! {
            _ = l.stop.cancelled() => return false,
            renewed = tokio::time::timeout(timeout, stream.renew()) => renewed,
        };
        match renewed {
            Ok(Ok(ttl)) => {
                if !l.record(sent, ttl) {
                    return false;
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(lease = l.id, error = %e, "etcd keep-alive stream failed; reopening");
                return true;
            }
            Err(_) => {
                stream.unanswered();
                tracing::debug!(lease = l.id, "etcd keep-alive stream timed out; reopening");
                return true;
            }
        }
    }
}

/// A per-lock lease kept alive while its owner waits in the queue; stops on drop.
pub(crate) struct KeepAlive(pub(crate) Arc<KeptLease>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl EtcdBackend {
    /// One keep-alive of lease `id` (repeated through elections and failing members within
    /// the request timeout): the TTL the server granted (0 when the lease is gone).
    pub(crate) async fn keep_alive_once(&self, id: i64) -> Result<i64> {
        self.call("keep-alive", || async move {
            match self.client().lease_keep_alive(id).await {
                Ok((_, ttl)) => Ok(ttl),
                Err(s) if s.code() == tonic::Code::NotFound => Ok(0),
                Err(s) => Err(s),
            }
        })
        .await
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

    /// Revokes lease `id`, repeated through elections and failing members within the request
    /// timeout; a lease that is gone already counts as revoked.
    pub(crate) async fn try_revoke(&self, id: i64) -> Result<()> {
        self.call("lease revoke", || async move {
            match self.client().lease_revoke(id).await {
                Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                other => other,
            }
        })
        .await
    }
}

impl EtcdBackend {
    /// The time left on lease `id` (whole seconds, as etcd counts), if etcd says within the
    /// request timeout; `None` for no lease.
    pub(crate) async fn lease_left(&self, id: i64) -> Option<Duration> {
        if id == 0 {
            return None;
        }
        let t = self.inner.opts.request_timeout;
        tokio::time::timeout(t, self.client().lease_time_to_live(id))
            .await
            .ok()
            .and_then(|r| r.ok())
            .filter(|ttl| *ttl >= 0)
            .map(|ttl| Duration::from_secs(ttl as u64))
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
        assert_eq!(ttl_secs(Duration::MAX), i64::MAX);
    }

    #[test]
    fn a_keep_alive_waits_at_most_one_renewal_interval() {
        let t = Duration::from_secs(5);
        assert_eq!(renew_timeout(Duration::from_secs(2), t), Duration::from_secs(2) / 3);
        assert_eq!(renew_timeout(Duration::from_secs(60), t), t);
        assert_eq!(
            renew_timeout(Duration::from_secs(1), Duration::from_millis(1)),
            Duration::from_millis(200)
        );
    }
}
