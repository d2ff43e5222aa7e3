//! A multi-key lock's first try in one transaction: every name's queue key is put, and every
//! queue's oldest keys read, in one request.
//!
//! The keys are put whatever the queues hold (a "no key under this prefix" comparison cannot
//! be used: a lock's prefix also holds the keys of locks nested under its name, see
//! `layout`), so the try has every name exactly when its key is each queue's oldest
//! contender. Otherwise the keys are deleted again and the client takes the names one at a
//! time in canonical order, as for every backend. Two such transactions are ordered by etcd:
//! the earlier one's keys are ahead in every queue they share, so tries never hold parts of
//! each other's names in a cycle.

use std::sync::Arc;
use std::time::Duration;

use lock_core::{AcquireRequest, Error, Instant, Lease, Mode, Result};

use crate::backend::EtcdBackend;
use crate::error::NAME;
use crate::queue::QueueEntry;
use crate::rpc::pb::TxnRequest;
use crate::session::Session;

/// A name's lease: its id, TTL and session (session mode).
type Lease3 = (i64, Duration, Option<Arc<Session>>);

/// The most names one transaction takes: two operations each (the lock's `lock_ops`), within
/// etcd's default `--max-txn-ops` of 128. More names are tried one transaction each.
const MAX_NAMES: usize = 128 / 2;

impl EtcdBackend {
    /// [`try_acquire_all`](lock_core::LockBackend::try_acquire_all): every lock of `reqs`, or
    /// none.
    pub(crate) async fn try_lock_all(&self, reqs: &[AcquireRequest]) -> Result<Option<Vec<Lease>>> {
        if let Some(r) = reqs.iter().find(|r| r.mode != Mode::Exclusive) {
            return Err(Error::Unsupported {
                backend: NAME,
                capability: format!("{}s in a multi-key lock", r.mode.primitive()),
            });
        }
        let sent = Instant::now();
        let got = futures::future::join_all(reqs.iter().map(|r| self.lease_for(r))).await;
        let (mut leases, mut failed) = (Vec::with_capacity(reqs.len()), None);
        for (req, g) in reqs.iter().zip(got) {
            match g {
                Ok(l) => leases.push((req, l)),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            // Per-lock leases already granted are revoked (the entries' undo).
            let undo = leases
                .into_iter()
                .map(|(req, (lease, _, session))| QueueEntry::new(self, req, lease, session).undo(false));
            futures::future::join_all(undo).await;
            return Err(e);
        }
        let leases: Vec<Lease3> = leases.into_iter().map(|(_, l)| l).collect();
        // In session mode, another task of this client that holds or queues for a name holds
        // it: nothing is sent.
        if !self.claim_slots(reqs, &leases) {
            return Ok(None);
        }
        let entries: Vec<(QueueEntry, Duration)> = reqs
            .iter()
            .zip(leases)
            .map(|(req, (lease, granted, session))| (QueueEntry::new(self, req, lease, session), granted))
            .collect();
        match self.enqueue_all(&entries).await {
            Ok(Some(revs)) => {
                let won = reqs
                    .iter()
                    .zip(entries)
                    .zip(revs)
                    .map(|((req, (e, granted)), rev)| e.won(req, rev, granted, sent));
                Ok(Some(won.collect()))
            }
            Ok(None) => {
                futures::future::join_all(entries.into_iter().map(|(e, _)| e.undo(false))).await;
                Ok(None)
            }
            Err(err) => {
                futures::future::join_all(entries.into_iter().map(|(e, _)| e.undo(true))).await;
                Err(err)
            }
        }
    }

    /// Claims every name's local slot (session mode); false, with none claimed, when another
    /// task of this client has one.
    fn claim_slots(&self, reqs: &[AcquireRequest], leases: &[Lease3]) -> bool {
        for (i, (req, (_, _, session))) in reqs.iter().zip(leases).enumerate() {
            let Some(s) = session else { continue };
            if self.inner.local.claim(req.key.full(), req.owner, s.id).is_err() {
                for r in &reqs[..i] {
                    self.inner.local.free(r.key.full(), r.owner);
                }
                return false;
            }
        }
        true
    }

    /// Puts every entry's key and reads every queue, in one transaction when there are at
    /// most [`MAX_NAMES`]. Every key's create revision (its fencing token) when each key is
    /// its queue's oldest contender.
    async fn enqueue_all(&self, entries: &[(QueueEntry, Duration)]) -> Result<Option<Vec<i64>>> {
        if entries.len() <= MAX_NAMES {
            // Two comparisons per name with undo markers: 128 at most, etcd's default limit.
            let txn = |markers: bool| {
                TxnRequest::when(entries.iter().flat_map(|(e, _)| e.when_new(markers)))
                    .and_then(entries.iter().flat_map(|(e, _)| Self::lock_ops(e)))
            };
            let checked = |m: bool| entries.iter().for_each(|(e, _)| e.set_put_checked(m));
            let resp = self.put_txn(checked, txn).await?;
            if resp.succeeded {
                let rev = resp.revision();
                for (i, (e, _)) in entries.iter().enumerate() {
                    if self.owner_rev(&e.pfx, resp.range(2 * i + 1), rev).await? != rev {
                        return Ok(None);
                    }
                }
                return Ok(Some(vec![rev; entries.len()]));
            }
            // A key of ours is there already: the orphan of a cancelled attempt, which the
            // one-name enqueue deletes.
        }
        let mut revs = Vec::with_capacity(entries.len());
        for (e, _) in entries {
            match self.enqueue(e).await? {
                Some((rev, true)) => revs.push(rev),
                _ => return Ok(None),
            }
        }
        Ok(Some(revs))
    }
}
