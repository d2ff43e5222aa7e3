//! Renewal in batches: where a backend can extend many grants in one request
//! ([`Capabilities::batch_extend`](crate::Capabilities::batch_extend)), the renewals of a
//! client's guards that fall due close together are sent as one
//! [`LockBackend::extend_many`] call, so that renewing
//! thousands of held locks costs a few requests per renewal round, not one per lock.
//!
//! # Behavior
//! - A renewal waits at most its own *window* (a twentieth of its TTL, at most 100 ms) for
//!   others to join it, even in a batch that a longer TTL's renewal opened; renewal is due
//!   when a third of the validity left has passed, so the wait never puts a lease at risk.
//! - A batch in flight does not hold back the next one: a slow or failing request delays
//!   only the renewals in it.
//! - Each grant's outcome is its own: a key found gone in a batch fires that lock's loss alone.
//! - A renewal whose guard was released or dropped before the batch went out is left out of it.
//! - Each tokio runtime the client renews from has its own batcher task: a runtime left alive
//!   but idle holds back only its own guards' renewals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backend::LockBackend;
use crate::error::Result;
use crate::lease::Lease;
use crate::outcome::ExtendOutcome;

/// The most grants sent in one `extend_many` call.
pub const MAX_BATCH: usize = 1000;

struct Job {
    lease: Lease,
    ttl: Duration,
    reply: oneshot::Sender<Result<ExtendOutcome>>,
}

/// A client's renewal batcher (shared by its clones): one task per tokio runtime the
/// client renews from, started there on first use. Each runtime batches its own guards'
/// renewals, so a runtime left alive but idle (a current-thread runtime no one drives) holds
/// back only its own.
#[derive(Clone, Default)]
pub(crate) struct Batcher {
    tx: Arc<Mutex<HashMap<tokio::runtime::Id, mpsc::UnboundedSender<Job>>>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let running = self.tx.lock().map_or(0, |m| m.len());
        f.debug_struct("Batcher").field("runtimes", &running).finish()
    }
}

/// How long a renewal with `ttl` waits for others to join its batch.
fn window(ttl: Duration) -> Duration {
    (ttl / 20).min(Duration::from_millis(100))
}

impl Batcher {
    /// Extends `lease` by `ttl` in the next batch of `backend`'s renewals.
    pub(crate) async fn extend(
        &self,
        backend: &Arc<dyn LockBackend>,
        lease: Lease,
        ttl: Duration,
    ) -> Result<ExtendOutcome> {
        let tx = {
            let mut all = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            // The batchers of runtimes that are gone.
            all.retain(|_, tx| !tx.is_closed());
            all.entry(tokio::runtime::Handle::current().id())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(run(backend.clone(), rx));
                    tx
                })
                .clone()
        };
        let (reply, answer) = oneshot::channel();
        if tx.send(Job { lease: lease.clone(), ttl, reply }).is_err() {
            // The batcher's runtime is gone: renew on our own.
            return backend.extend(&lease, ttl).await;
        }
        match answer.await {
            Ok(r) => r,
            Err(_) => backend.extend(&lease, ttl).await,
        }
    }
}

/// The batcher's task: gathers renewals until the earliest of their windows ends (each
/// renewal waits at most its own window, however long the batch's first one would), then
/// sends them. A batch's request runs on its own task, so a slow or failing one does not hold
/// back the renewals due meanwhile.
async fn run(backend: Arc<dyn LockBackend>, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut flush_at = Instant::now() + window(first.ttl);
        let mut jobs = vec![first];
        let flush = tokio::time::sleep_until(flush_at);
        tokio::pin!(flush);
        loop {
            tokio::select! {
                job = rx.recv() => match job {
                    Some(j) => {
                        let due = Instant::now() + window(j.ttl);
                        if due < flush_at {
                            flush_at = due;
                            flush.as_mut().reset(flush_at);
                        }
                        jobs.push(j);
                        if jobs.len() >= MAX_BATCH {
                            break;
                        }
                    }
                    None => break,
                },
                _ = &mut flush => break,
            }
        }
        // Leave out the renewals nobody waits for any more (released or dropped guards).
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let backend = backend.clone();
        tokio::spawn(async move {
            let batch: Vec<(Lease, Duration)> = jobs.iter().map(|j| (j.lease.clone(), j.ttl)).collect();
            let results = backend.extend_many(&batch).await;
            for (job, res) in jobs.into_iter().zip(results) {
                let _ = job.reply.send(res);
            }
        });
    }
}
