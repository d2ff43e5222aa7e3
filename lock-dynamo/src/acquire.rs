//! Acquiring: one attempt (the conditional write that grants, bounded in time), the waiting
//! loop around it, and the undo of a grant the caller never learnt of.
//!
//! # Deadlines
//! An attempt is cut off at its own time limit, whatever the client's retry and timeout
//! configuration would allow (the SDK retries a timed-out attempt, three attempts in all by
//! default, which would let a 500 ms wait run for three request timeouts). Within that time
//! the SDK still retries what is safe to retry at once (throttling, 5xx, a broken connection).
//! - `try_acquire`: one request timeout.
//! - each attempt of a waiting acquire: the time left until the deadline, but at least one
//!   second (or the request timeout, if shorter) so that an attempt near the deadline can
//!   still be answered, and at most one request timeout. A waiting acquire so returns within
//!   its deadline plus one request timeout.
//!
//! # Undo
//! An attempt whose write may have been applied without the caller learning so (its reply was
//! lost, its time ran out, or it was dropped mid-flight) would leave a grant that blocks every
//! other client for a whole lease, then a takeover period. It is released by owner token in
//! the background instead: by `try_acquire` when it fails or is dropped, and by the waiting
//! acquire when it ends without the lock (its own later attempts recognise an earlier grant
//! by the owner token, so they must not be undone behind it).

use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use lock_core::{AcquireRequest, Attempt, Error, Instant, Lease, Result, UndoOnDrop};

use crate::error::protocol;
use crate::item::{self, new_rvn, wall_ms, Record, FENCE};
use crate::request::{ms, n, Update, Written};
use crate::DynamoBackend;

/// The least time an attempt of a waiting acquire gets, even at its deadline (unless the
/// request timeout is shorter).
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

impl DynamoBackend {
    /// Until when an attempt that starts now may run: one request timeout, or for a waiting
    /// acquire with `deadline` the time left (at least [`MIN_ATTEMPT`], at most one request
    /// timeout).
    fn attempt_until(&self, deadline: Option<Instant>) -> Instant {
        let timeout = self.inner.opts.request_timeout;
        let now = Instant::now();
        let limit = match deadline {
            None => timeout,
            Some(d) => d.saturating_duration_since(now).max(MIN_ATTEMPT.min(timeout)).min(timeout),
        };
        lock_core::lease::add_saturating(now, limit)
    }

    /// A `try_acquire`: one attempt within one request timeout; a grant it may have left
    /// behind when it fails is undone.
    pub(crate) async fn try_once(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.attempt(req, self.attempt_until(None), true).await
    }

    /// A waiting acquire: attempts until `deadline` (polling with lock-core's backoff), each
    /// within its own time; when it ends without the lock (or is dropped), a grant an attempt
    /// may have left behind is undone.
    pub(crate) async fn wait_until(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let undo = UndoOnDrop::new(self.clone().undo_acquire(req.key.clone(), req.owner));
        let poll = self.inner.opts.poll_interval;
        let got = lock_core::wait_for_lock(&[], &req.key, deadline, poll, || {
            self.attempt(req, self.attempt_until(Some(deadline)), false)
        })
        .await;
        // A timeout needs nothing: its last attempt was refused cleanly, by an item that was
        // not ours.
        if matches!(got, Ok(_) | Err(Error::WaitTimedOut { .. })) {
            undo.disarm();
        }
        got
    }

    /// One attempt, done by `until`. Dropped mid-flight, or (with `undo_on_error`) failed in a
    /// way that may hide an applied write (a timeout, a lost connection, a 5xx: the retryable
    /// errors), it releases by owner token in the background whatever it may have granted.
    async fn attempt(&self, req: &AcquireRequest, until: Instant, undo_on_error: bool) -> Result<Attempt> {
        let undo = UndoOnDrop::new(self.clone().undo_acquire(req.key.clone(), req.owner));
        let got = self.grant(req, until).await;
        let maybe_applied = matches!(&got, Err(e) if e.is_retryable());
        if !(undo_on_error && maybe_applied) {
            undo.disarm();
        }
        got
    }

    /// The conditional write that grants: free (never used, or released), or held by an RVN
    /// this client has seen unchanged for a whole lease. A refusal says how long the lock
    /// stays held; one that carries our own owner token is an earlier try's grant whose reply
    /// was lost.
    async fn grant(&self, req: &AcquireRequest, until: Instant) -> Result<Attempt> {
        let sent = Instant::now();
        let rvn = new_rvn();
        let mut condition = String::from("attribute_not_exists(#o)");
        let mut values = vec![
            (":o", AttributeValue::S(req.owner.to_string())),
            (":v", AttributeValue::S(rvn.clone())),
            (":l", n(ms(req.ttl))),
            (":e", n(wall_ms().saturating_add(ms(req.ttl)))),
            (":zero", n(0)),
            (":one", n(1)),
        ];
        self.takeover_condition(&req.key, &mut condition, &mut values);
        let acquire = Update {
            op: "acquire",
            expression: "SET #o = :o, #v = :v, #l = :l, #e = :e, #f = if_not_exists(#f, :zero) + :one",
            condition: &condition,
            values,
            returns: ReturnValue::UpdatedNew,
        };
        let item = match self.write(&req.key, acquire, Some(until)).await? {
            Written::Applied(attrs) => {
                let fence =
                    item::number(&attrs, FENCE)?.ok_or_else(|| protocol("acquire returned no fence"))?;
                return Ok(Attempt::Acquired(self.lease(req, fence, rvn, sent)));
            }
            Written::Refused(Some(item)) => Record::parse(&item)?,
            // An emulator that does not return the item: read it.
            Written::Refused(None) => match self.read(&req.key, Some(until)).await? {
                Some(rec) => rec,
                None => return Ok(Attempt::Held { expires_in: Some(Duration::ZERO) }),
            },
        };
        match item.owner {
            // An earlier try of this same request was applied but its reply was lost (the
            // SDK or the waiting loop retried): the grant is ours.
            Some(owner) if owner == req.owner => self.recover(req, item, until).await,
            Some(_) => Ok(Attempt::Held { expires_in: Some(self.saw_held(&req.key, &item)) }),
            // Freed between the condition and now: try again at once.
            None => Ok(Attempt::Held { expires_in: Some(Duration::ZERO) }),
        }
    }
}
