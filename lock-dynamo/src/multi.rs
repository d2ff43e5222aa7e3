//! Multi-key locks in one atomic request: `TransactWriteItems` with one conditional update
//! per name (the same one a single acquire sends), all applied or none. A failed condition on
//! any name cancels the transaction: nothing is granted and the names are reported held.
//!
//! A transaction returns no attributes, so the grants' fencing tokens are read back with one
//! consistent `BatchGetItem`: two requests for an uncontended multi-key acquire. If that read
//! fails, the grants are released before the error is returned. DynamoDB takes at
//! most [`MAX_TRANSACTION`] actions in one transaction; more names are refused with
//! [`Error::Unsupported`] before anything is sent (the generic path, one name at a time, is
//! the client's, for waiting acquires). An endpoint without transactions (dynalite) gets the
//! names taken one at a time in their canonical order and released again if one is held: all
//! or nothing still, but not atomic to an observer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use lock_core::{AcquireRequest, Attempt, BackendErrorKind, Error, Instant, Lease, Mode, Result, UndoOnDrop};

use crate::error::{self, NAME};
use crate::item::{new_rvn, Item, Record};
use crate::place::{unsupported, Place};
use crate::request::bounded;
use crate::DynamoBackend;

/// The most names one atomic multi-key acquire takes: DynamoDB's limit of actions in one
/// transaction.
pub const MAX_TRANSACTION: usize = 100;

/// What one transaction found.
enum Outcome {
    Granted(Vec<Lease>),
    Held,
    /// Cancelled by a concurrent transaction or write, not by a condition: try again.
    Conflict,
    /// The endpoint has no transactions.
    NoTransactions,
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::InvalidConfig(format!("transaction: {e}"))
}

impl DynamoBackend {
    /// Takes every lock of `reqs` in one transaction, or none.
    pub(crate) async fn try_all(&self, reqs: &[AcquireRequest]) -> Result<Option<Vec<Lease>>> {
        if reqs.len() > MAX_TRANSACTION {
            return Err(Error::Unsupported {
                backend: NAME,
                capability: format!(
                    "atomic multi-key locks of more than {MAX_TRANSACTION} names (DynamoDB's transaction limit; {} asked)",
                    reqs.len()
                ),
            });
        }
        if let Some(r) = reqs.iter().find(|r| r.mode != Mode::Exclusive) {
            return Err(unsupported(r.mode));
        }
        if self.inner.no_transactions.load(Ordering::Relaxed) {
            return self.try_in_order(reqs).await;
        }
        let places = reqs.iter().map(|r| Place::of(&r.key, r.mode, r.owner)).collect::<Result<Vec<_>>>()?;
        let undo = UndoOnDrop::new(self.clone().undo_all(reqs.to_vec()));
        for _ in 0..3 {
            match self.transact(reqs, &places).await {
                Ok(Outcome::Conflict) => continue,
                Ok(Outcome::Granted(leases)) => {
                    undo.disarm();
                    return Ok(Some(leases));
                }
                Ok(Outcome::Held) => break,
                Ok(Outcome::NoTransactions) => {
                    undo.disarm();
                    self.inner.no_transactions.store(true, Ordering::Relaxed);
                    tracing::info!(backend = NAME, "the endpoint has no TransactWriteItems; multi-key locks are taken one name at a time");
                    return self.try_in_order(reqs).await;
                }
                // Maybe applied: the undo releases in the background.
                Err(e) if e.is_retryable() => return Err(e),
                Err(e) => {
                    undo.disarm();
                    return Err(e);
                }
            }
        }
        undo.disarm();
        Ok(None)
    }

    /// One `TransactWriteItems` of the grants of `reqs`, and what it found.
    async fn transact(&self, reqs: &[AcquireRequest], places: &[Place]) -> Result<Outcome> {
        let table = &self.inner.opts.table;
        let until = self.attempt_until(None);
        let sent = Instant::now();
        let mut tx = self.inner.client.transact_write_items().client_request_token(new_rvn());
        for (req, place) in reqs.iter().zip(places) {
            let u = self.lock_grant(req, place, &new_rvn());
            let (names, values) = u.resolve()?;
            let update = Update::builder()
                .table_name(table)
                .set_key(Some(self.item_key(&place.id)))
                .update_expression(u.expression)
                .condition_expression(u.condition)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .build()
                .map_err(invalid)?;
            tx = tx.transact_items(TransactWriteItem::builder().update(update).build());
        }
        let e = match bounded("TransactWriteItems", table, Some(until), tx.send()).await? {
            Ok(_) => return self.granted_or_undone(reqs, places, sent, until).await,
            Err(e) => e,
        };
        let reasons = match e.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                c.cancellation_reasons().to_vec()
            }
            Some(other) if other.code() == Some("UnknownOperationException") => {
                return Ok(Outcome::NoTransactions)
            }
            _ => return Err(error::sdk("TransactWriteItems", table, e)),
        };
        let code = |r: &aws_sdk_dynamodb::types::CancellationReason| r.code().unwrap_or("None").to_owned();
        if !reasons.iter().any(|r| code(r) == "ConditionalCheckFailed") {
            if reasons.iter().all(|r| matches!(code(r).as_str(), "None" | "TransactionConflict")) {
                return Ok(Outcome::Conflict);
            }
            let codes: Vec<String> = reasons.iter().map(code).collect();
            let kind = if codes.iter().any(|c| c.contains("Throttl") || c.contains("Throughput")) {
                BackendErrorKind::Throttled
            } else {
                BackendErrorKind::Other
            };
            let msg = format!("TransactWriteItems on table {table}: cancelled ({})", codes.join(", "));
            return Err(Error::backend_msg(NAME, kind, msg));
        }
        let failed_items: Vec<Option<Item>> = reasons
            .iter()
            .map(|r| (code(r) == "ConditionalCheckFailed").then(|| r.item().cloned()).flatten())
            .collect();
        let complete = reasons
            .iter()
            .zip(&failed_items)
            .all(|(r, i)| code(r) != "ConditionalCheckFailed" || i.is_some());
        let items = if complete { failed_items } else { self.read_all(places, until).await? };
        let mut ours = false;
        for ((req, place), item) in reqs.iter().zip(places).zip(&items) {
            let Some(item) = item else { continue };
            let rec = Record::parse(item)?;
            match rec.owner {
                Some(o) if o == req.owner => ours = true,
                Some(_) => {
                    self.saw_held(&place.id, &rec);
                }
                None => {}
            }
        }
        if ours {
            // An earlier try of this transaction was applied and its reply lost (the SDK
            // retried): every grant is ours.
            return self.granted_or_undone(reqs, places, sent, until).await;
        }
        Ok(Outcome::Held)
    }

    /// The leases of an applied transaction; if they cannot be read back, or one was taken
    /// over meanwhile, every grant is released (by owner token) before the error or `Held` is
    /// returned.
    async fn granted_or_undone(
        &self,
        reqs: &[AcquireRequest],
        places: &[Place],
        sent: Instant,
        until: Instant,
    ) -> Result<Outcome> {
        let got = self.granted(reqs, places, sent, until).await;
        if !matches!(got, Ok(Outcome::Granted(_))) {
            self.release_places(reqs, places, until).await;
        }
        got
    }

    /// Releases the grants of `reqs` at `places` by owner token, whichever the transaction
    /// made, all at once (one release's time, however many names; errors ignored: each then
    /// lasts its lease). Waited for until `until` at most: past it they go on in the
    /// background, so a try still answers within its bound.
    async fn release_places(&self, reqs: &[AcquireRequest], places: &[Place], until: Instant) {
        let releases: Vec<_> = reqs
            .iter()
            .zip(places)
            .map(|(req, place)| {
                let (this, place, owner) = (self.clone(), place.clone(), req.owner);
                tokio::spawn(async move { this.release_grant(&place, owner).await })
            })
            .collect();
        let all = async {
            for r in releases {
                let _ = r.await;
            }
        };
        let _ = tokio::time::timeout_at(until, all).await;
    }

    /// The leases of an applied transaction, with the fencing tokens read back.
    async fn granted(
        &self,
        reqs: &[AcquireRequest],
        places: &[Place],
        sent: Instant,
        until: Instant,
    ) -> Result<Outcome> {
        let items = self.read_all(places, until).await?;
        let mut leases = Vec::with_capacity(reqs.len());
        for ((req, place), item) in reqs.iter().zip(places).zip(items) {
            let rec = item.as_ref().map(Record::parse).transpose()?;
            match rec {
                Some(rec) if rec.owner == Some(req.owner) => {
                    leases.push(self.lease(req, place, rec.fence, rec.rvn, sent))
                }
                // Taken over between the transaction and the read (more than a lease): the
                // caller gives back every name, the later ones' grants included.
                _ => return Ok(Outcome::Held),
            }
        }
        Ok(Outcome::Granted(leases))
    }

    /// The items of `places`, in order, read with one consistent `BatchGetItem` (and more
    /// for any keys it leaves unprocessed).
    async fn read_all(&self, places: &[Place], until: Instant) -> Result<Vec<Option<Item>>> {
        let o = &self.inner.opts;
        let keys: Vec<Item> = places.iter().map(|p| self.item_key(&p.id)).collect();
        let mut pending = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(true)
            .build()
            .map_err(invalid)?;
        let mut found: HashMap<String, Item> = HashMap::with_capacity(places.len());
        loop {
            let get = self.inner.client.batch_get_item().request_items(&o.table, pending);
            let out = bounded("BatchGetItem", &o.table, Some(until), get.send())
                .await?
                .map_err(|e| error::sdk("BatchGetItem", &o.table, e))?;
            for item in out.responses().and_then(|r| r.get(&o.table)).into_iter().flatten() {
                if let Some(AttributeValue::S(id)) = item.get(&o.partition_key) {
                    found.insert(id.clone(), item.clone());
                }
            }
            match out.unprocessed_keys().and_then(|u| u.get(&o.table)) {
                Some(rest) if !rest.keys().is_empty() => pending = rest.clone(),
                _ => break,
            }
        }
        Ok(places.iter().map(|p| found.remove(&p.id)).collect())
    }

    /// Without transactions: one name at a time in canonical order; the ones taken are
    /// released again when one is held or fails (in the background if dropped).
    async fn try_in_order(&self, reqs: &[AcquireRequest]) -> Result<Option<Vec<Lease>>> {
        let taken: Arc<Mutex<Vec<Lease>>> = Arc::default();
        let undo = UndoOnDrop::new({
            let (this, taken) = (self.clone(), taken.clone());
            async move {
                let leases = std::mem::take(&mut *locked(&taken));
                this.release_leases(leases).await
            }
        });
        let mut outcome = Ok(None);
        for req in reqs {
            match self.try_once(req).await {
                Ok(Attempt::Acquired(l)) => locked(&taken).push(l),
                Ok(Attempt::Held { .. }) => break,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if outcome.is_ok() && locked(&taken).len() == reqs.len() {
            let leases = std::mem::take(&mut *locked(&taken));
            undo.disarm();
            return Ok(Some(leases));
        }
        // Given back with the undo still armed: dropped meanwhile, it gives back the rest.
        let leases = locked(&taken).clone();
        self.release_leases(leases).await;
        locked(&taken).clear();
        undo.disarm();
        outcome
    }

    /// Releases `leases` (errors logged: each then lasts its lease).
    async fn release_leases(&self, leases: Vec<Lease>) {
        for l in leases.iter().rev() {
            let released = match Place::of(l.key(), l.mode(), l.owner()) {
                Ok(place) => self.release_grant(&place, l.owner()).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = released {
                tracing::warn!(backend = NAME, key = %l.key(), error = %e, "release of a multi-key part failed; it lasts its lease");
            }
        }
    }

    /// The undo of a transaction whose caller went away, or whose reply never came: each name
    /// released by owner token, at once and again a few times.
    async fn undo_all(self, reqs: Vec<AcquireRequest>) {
        for r in reqs {
            tokio::spawn(self.clone().undo_acquire(r.key, r.owner, r.mode));
        }
    }
}

fn locked(v: &Mutex<Vec<Lease>>) -> std::sync::MutexGuard<'_, Vec<Lease>> {
    v.lock().unwrap_or_else(|p| p.into_inner())
}
