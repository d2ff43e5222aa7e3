//! Acquiring: one attempt (the conditional write that grants, bounded in time, for whichever
//! primitive the request is of), the waiting loop around it, and the undo of a grant the
//! caller never learnt of.
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
//! the background instead: by `try_acquire` when it fails or is dropped. A waiting acquire
//! gives such an attempt's owner token up: its grant is undone at once and again when the wait
//! ends (whatever the outcome: a write landing after the lock was taken and released is undone
//! too), and the later attempts ask with a fresh token that no undo touches. A waiting
//! writer's intent is withdrawn the same way, and when its wait runs out.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lock_core::{AcquireRequest, Attempt, Instant, Lease, LockKey, Mode, OwnerToken, Result, UndoOnDrop};

use crate::error::NAME;
use crate::place::{unsupported, Place};
use crate::rwlock::IntentState;
use crate::DynamoBackend;

/// The least time an attempt of a waiting acquire gets, even at its deadline (unless the
/// request timeout is shorter).
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

impl DynamoBackend {
    /// Until when an attempt that starts now may run: one request timeout, or for a waiting
    /// acquire with `deadline` the time left (at least [`MIN_ATTEMPT`], at most one request
    /// timeout).
    pub(crate) fn attempt_until(&self, deadline: Option<Instant>) -> Instant {
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
        self.attempt(req, self.attempt_until(None), true, None).await
    }

    /// A waiting acquire: attempts until `deadline` (polling with lock-core's backoff), each
    /// within its own time.
    ///
    /// An attempt that fails in a way that may hide a write applied later (cut off by its time
    /// limit while its request was still on the way) is given up with its owner token: that
    /// token's grant is undone in the background at once (so that a write already applied does
    /// not block the wait) and again once the wait ends (so that one landing later, after the
    /// lock was taken and released, is not left behind), and the attempts after it ask with a
    /// fresh token, which no such undo can touch. When the wait is dropped, every token's grant
    /// is undone; when it ends without the lock, a writer's intent is withdrawn.
    pub(crate) async fn wait_until(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let owners =
            Arc::new(Mutex::new(Owners { current: req.owner, given_up: Vec::new(), suspect: false }));
        let undo = UndoOnDrop::new({
            let (this, owners, key, mode) = (self.clone(), owners.clone(), req.key.clone(), req.mode);
            async move {
                let all = lock(&owners).all();
                for o in all {
                    tokio::spawn(this.clone().undo_acquire(key.clone(), o, mode));
                }
            }
        });
        let poll = self.inner.opts.poll_interval;
        let intent = (req.mode == Mode::Write).then(|| Mutex::new(IntentState::default()));
        let got = lock_core::wait_for_lock(&[], &req.key, deadline, poll, || {
            let this = AcquireRequest { owner: lock(&owners).current, ..req.clone() };
            let (owners, intent) = (&owners, intent.as_ref());
            async move {
                let r = self.attempt(&this, self.attempt_until(Some(deadline)), false, intent).await;
                if matches!(&r, Err(e) if throttled(e)) {
                    // Maybe granted by an earlier try of the call: the next attempt, under the
                    // same token, finds that grant as its own; if none comes, the wait's end
                    // releases it.
                    lock(owners).suspect = true;
                }
                if matches!(&r, Err(e) if lost_in_flight(e)) {
                    lock(owners).give_up(this.owner);
                    tokio::spawn(self.clone().undo_acquire(this.key.clone(), this.owner, this.mode));
                    if let Some(i) = intent {
                        *i.lock().unwrap_or_else(|p| p.into_inner()) = IntentState::default();
                    }
                }
                r
            }
        })
        .await;
        undo.disarm();
        let (current, given_up, suspect) = {
            let o = lock(&owners);
            (o.current, o.given_up.clone(), o.suspect)
        };
        for o in given_up {
            tokio::spawn(self.clone().undo_acquire(req.key.clone(), o, req.mode));
        }
        if suspect && got.is_err() {
            tokio::spawn(self.clone().release_once(req.key.clone(), current, req.mode));
        }
        let late = intent.as_ref().is_some_and(|i| i.lock().unwrap_or_else(|p| p.into_inner()).late);
        if late {
            // An intent write cut off unanswered may land after the writer gave up, or got the
            // lock and released it: withdrawn again over a request timeout (it would hold
            // readers back until it lapsed). Started first, so that a caller that drops this
            // future during the withdraw below does not stop it.
            tokio::spawn(self.clone().withdraw_late_intent(req.key.clone(), current));
        }
        if intent.is_some() && got.is_err() {
            // Withdrawn before the error returns (a reader asking right after is served), within
            // what is left of the deadline and a request timeout (the bound the wait promises);
            // past that, or dropped meanwhile (the caller gave up waiting), in the background.
            let bound = lock_core::lease::add_saturating(deadline, self.inner.opts.request_timeout)
                .saturating_duration_since(Instant::now());
            let until =
                Some(self.attempt_until(None).min(lock_core::lease::add_saturating(Instant::now(), bound)));
            let background = UndoOnDrop::new({
                let (this, key) = (self.clone(), req.key.clone());
                async move {
                    let _ = this.withdraw_intent(&key, current, Some(this.attempt_until(None))).await;
                }
            });
            match tokio::time::timeout(bound, self.withdraw_intent(&req.key, current, until)).await {
                Ok(Ok(_)) => background.disarm(),
                Ok(Err(e)) if !e.is_retryable() => {
                    background.disarm();
                    tracing::debug!(backend = NAME, key = %req.key, error = %e, "could not withdraw a writer's intent; it lapses");
                }
                // The late withdraw started above goes on anyway.
                _ if late => background.disarm(),
                _ => drop(background),
            }
        }
        got
    }

    /// Withdraws `owner`'s intent on `key` at once and again a few times over a request
    /// timeout, for an intent write that may still land.
    async fn withdraw_late_intent(self, key: LockKey, owner: OwnerToken) {
        let pauses = lock_core::cancel::late_grant_pauses(Some(self.inner.opts.request_timeout));
        lock_core::cancel::undo_after(pauses, || async {
            let _ = self.withdraw_intent(&key, owner, Some(self.attempt_until(None))).await;
            false
        })
        .await;
    }

    /// One attempt, done by `until`. Dropped mid-flight, or (with `undo_on_error`) failed in a
    /// way that may hide an applied write (a timeout, a lost connection, a 5xx: the retryable
    /// errors but throttling), it releases by owner token in the background whatever it may
    /// have granted, also a write that lands later. Throttled (with `undo_on_error`), it
    /// releases once: an earlier try of the SDK's call may have been applied.
    async fn attempt(
        &self,
        req: &AcquireRequest,
        until: Instant,
        undo_on_error: bool,
        intent: Option<&Mutex<IntentState>>,
    ) -> Result<Attempt> {
        let undo = UndoOnDrop::new(self.clone().undo_acquire(req.key.clone(), req.owner, req.mode));
        let got = match req.mode {
            Mode::Exclusive | Mode::Leader => self.grant_lock(req, until).await,
            Mode::Permit { limit } => self.grant_permit(req, limit, until).await,
            Mode::Read | Mode::Write => self.grant_rw(req, until, intent).await,
            other => Err(unsupported(other)),
        };
        match &got {
            Err(e) if undo_on_error && lost_in_flight(e) => {}
            Err(e) if undo_on_error && throttled(e) => {
                // The SDK's last try was refused, but an earlier one of the same call (answered
                // 500, or cut off) may have been applied: one release by owner token, no
                // looks for a write still on its way (a throttled table needs no more load).
                undo.disarm();
                tokio::spawn(self.clone().release_once(req.key.clone(), req.owner, req.mode));
            }
            _ => undo.disarm(),
        }
        got
    }

    /// Releases `owner`'s grant of `key` once, if it is there.
    async fn release_once(self, key: LockKey, owner: OwnerToken, mode: Mode) {
        let Ok(place) = Place::of(&key, mode, owner) else { return };
        if matches!(self.release_grant(&place, owner).await, Ok(true)) {
            tracing::debug!(backend = NAME, key = %key, "released the grant of a throttled acquire");
        }
    }

    /// The undo of an acquire whose caller went away mid-flight. The request may still reach
    /// DynamoDB after this starts (it travels on its own connection), so the release is
    /// tried again, a few times, until it finds the grant or a request timeout has passed; a
    /// writer's intent is withdrawn each time too.
    pub(crate) async fn undo_acquire(self, key: LockKey, owner: OwnerToken, mode: Mode) {
        let Ok(place) = Place::of(&key, mode, owner) else { return };
        let pauses = lock_core::cancel::late_grant_pauses(Some(self.inner.opts.request_timeout));
        let released = lock_core::cancel::undo_after(pauses, || async {
            if mode == Mode::Write {
                let _ = self.withdraw_intent(&key, owner, Some(self.attempt_until(None))).await;
            }
            matches!(self.release_grant(&place, owner).await, Ok(true))
        })
        .await;
        if released {
            tracing::debug!(backend = NAME, key = %key, "released the grant of a cancelled acquire");
        }
    }
}

/// The owner tokens of a waiting acquire: the one its attempts ask with, and the ones given
/// up after an attempt that may have been applied unseen.
struct Owners {
    current: OwnerToken,
    given_up: Vec<OwnerToken>,
    /// An attempt under `current` was throttled (it may have been granted by an earlier try).
    suspect: bool,
}

impl Owners {
    fn give_up(&mut self, owner: OwnerToken) {
        if owner == self.current {
            self.given_up.push(owner);
            self.current = OwnerToken::random();
            self.suspect = false;
        }
    }

    fn all(&self) -> Vec<OwnerToken> {
        self.given_up.iter().copied().chain([self.current]).collect()
    }
}

fn lock(owners: &Mutex<Owners>) -> MutexGuard<'_, Owners> {
    owners.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether an attempt that failed with `e` may have been carried out unseen, or may still be:
/// a retryable failure other than throttling (a request cut off, a lost connection, a 5xx).
fn lost_in_flight(e: &lock_core::Error) -> bool {
    e.is_retryable() && !throttled(e)
}

/// Whether `e` is throttling. The request it answers was refused, but the SDK retries a call
/// (three tries): an earlier try of the same call may have been applied, its reply lost.
fn throttled(e: &lock_core::Error) -> bool {
    matches!(e, lock_core::Error::Backend { kind: lock_core::BackendErrorKind::Throttled, .. })
}
