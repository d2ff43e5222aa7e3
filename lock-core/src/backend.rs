//! The contract every backend implements.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::capabilities::{Capabilities, WakeMode};
use crate::error::Result;
use crate::key::LockKey;
use crate::lease::{FencingToken, Lease};
use crate::metadata::Metadata;
use crate::mode::Mode;
use crate::outcome::{
    AcquireRequest, Attempt, CounterPage, ExtendOutcome, ListPage, LockInfo, ReleaseOutcome,
};
use crate::wait::wait_for_lock;

/// A lock backend: one store's encoding of the promises (numbered in the README's
/// "The promises" table, which the conformance suite's checks cite).
///
/// The trait is object safe: hold it as `Arc<dyn LockBackend>`. Users rarely call it; they use
/// [`LockClient`](crate::LockClient), which validates input, keeps the guard, renews and
/// records metrics. Backend authors implement the four required methods, may override
/// [`acquire`](LockBackend::acquire) when the store can notify waiters, and check themselves
/// with the `conformance-tests` crate.
#[async_trait]
pub trait LockBackend: Send + Sync + fmt::Debug + 'static {
    /// A short name used in errors and as the `backend` metrics label, e.g. `"redis"`.
    ///
    /// # Behavior
    /// Constant for the backend's life, sends nothing, and never fails: it names the backend in
    /// every [`Error::Backend`](crate::Error::Backend) and metrics series it produces.
    fn name(&self) -> &'static str;

    /// What this backend can do.
    ///
    /// # Behavior
    /// Answered locally, without a request, and the same on every call for one backend value:
    /// the client validates TTLs and keys against it, picks how to wait from
    /// [`Capabilities::wake`], and the conformance suite skips (saying why) only the checks a
    /// capability rules out. A backend must never claim what it does not do: a claim is a
    /// promise the suite holds it to.
    fn capabilities(&self) -> Capabilities;

    /// One attempt to take the lock, without waiting.
    ///
    /// # Behavior
    /// - Grants only if no unexpired grant of the key exists on the server (promise 1), and
    ///   gives the new grant a fencing token greater than every earlier grant of the key
    ///   (promise 2).
    /// - `valid_until` of the lease is measured from before the request was sent.
    /// - If the future is dropped mid-flight, a grant that the server made anyway is released
    ///   in the background (see [`UndoOnDrop`](crate::UndoOnDrop)); at worst, outside a
    ///   runtime, it lasts its TTL (promise 6).
    /// - An attempt that fails with an error may have been applied; a backend may release
    ///   what an attempt left in the background by its owner token too. A caller that tries
    ///   again does so with a fresh owner token ([`poll_acquire`] does).
    ///
    /// # Errors
    /// Backend errors only; a held lock is [`Attempt::Held`], not an error.
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt>;

    /// Takes the lock, waiting until `deadline` if it is held.
    ///
    /// # Behavior
    /// - Returns as soon as the lock can be had: by notification where the backend has one,
    ///   otherwise by polling (the default implementation: jittered exponential backoff capped
    ///   by [`WakeMode::Poll`]'s interval and by the holder's remaining TTL).
    /// - Cancel safe: dropping the future leaves nothing behind beyond the TTL (no queue
    ///   entry, no partial grant).
    ///
    /// # Errors
    /// [`Error::WaitTimedOut`](crate::Error::WaitTimedOut) at the deadline; backend errors that are not
    /// retryable at once, retryable ones once the deadline has passed.
    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        poll_acquire(self, req, deadline).await
    }

    /// Extends our grant so that it lasts `ttl` from now.
    ///
    /// # Behavior
    /// Compares the owner token on the server (promise 4): a stale holder never extends a newer
    /// grant, and an expired grant is never revived. Reports the truth:
    /// [`ExtendOutcome::NotHeld`] when the grant is gone.
    ///
    /// # Errors
    /// Backend errors only.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome>;

    /// Releases our grant.
    ///
    /// # Behavior
    /// Compares the owner token on the server (promise 4): deletes only our own grant and says
    /// whether it did ([`ReleaseOutcome::Released`]) or found it already gone
    /// ([`ReleaseOutcome::NotHeld`]). The fencing counter survives the release. Waiters are
    /// woken where the backend can notify.
    ///
    /// # Errors
    /// Backend errors only.
    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome>;

    /// Reads who holds the key, without changing anything.
    ///
    /// # Behavior
    /// `None` when no unexpired grant exists; otherwise the holder's fencing token and the
    /// remaining TTL when the backend knows them.
    ///
    /// # Errors
    /// Backend errors only.
    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>>;

    /// Every unexpired holder of `key` in the primitive of `mode`: the permits of a semaphore,
    /// or the readers and the writer of a read-write lock (each with its
    /// [`LockInfo::mode`]).
    ///
    /// # Behavior
    /// Reads only. Called only for a mode the backend's capabilities claim; the lock itself is
    /// [`inspect`](Self::inspect).
    ///
    /// # Errors
    /// [`Error::Unsupported`](crate::Error::Unsupported) by default; backend errors.
    async fn holders(&self, key: &LockKey, mode: Mode) -> Result<Vec<LockInfo>> {
        let _ = key;
        Err(crate::Error::Unsupported {
            backend: self.name(),
            capability: format!("listing the holders of {}s", mode.primitive()),
        })
    }

    /// Takes every lock of `reqs` (keys in canonical order, no duplicates) in one atomic
    /// request, or none.
    ///
    /// # Behavior
    /// `Ok(Some(leases))` in the order of `reqs` when all were granted; `Ok(None)` when any is
    /// held, with nothing granted. Cancel safe like [`try_acquire`](Self::try_acquire). Only
    /// called where [`Capabilities::atomic_multi_key`] is claimed; other backends are taken one
    /// key at a time by the client.
    ///
    /// # Errors
    /// [`Error::Unsupported`](crate::Error::Unsupported) by default; backend errors.
    async fn try_acquire_all(&self, reqs: &[AcquireRequest]) -> Result<Option<Vec<Lease>>> {
        let _ = reqs;
        Err(crate::Error::Unsupported { backend: self.name(), capability: "atomic multi-key locks".into() })
    }

    /// One page of the grants held under `prefix` (a full-key prefix: namespace included),
    /// locks and every other primitive, with their metadata, fencing token and remaining TTL.
    ///
    /// # Behavior
    /// Uses the store's own range reads (a SCAN with a match pattern, a key range, the
    /// children of a node, a query), at most about `limit` entries a page where
    /// [`Capabilities::listing_pages`] is claimed (otherwise one page with every grant); pass
    /// the returned cursor to get the next page. Reads only; a grant that changes while listing may be
    /// listed in either state. Only called where [`Capabilities::listing`] is claimed.
    ///
    /// # Errors
    /// [`Error::Unsupported`](crate::Error::Unsupported) by default; backend errors.
    async fn list(&self, prefix: &str, cursor: Option<String>, limit: usize) -> Result<ListPage> {
        let _ = (prefix, cursor, limit);
        Err(crate::Error::Unsupported { backend: self.name(), capability: "listing locks".into() })
    }

    /// Replaces the metadata of our grant (an election's `proclaim`).
    ///
    /// # Behavior
    /// Compares the owner token like [`extend`](Self::extend): [`ExtendOutcome::NotHeld`] when
    /// the grant is gone, never a write to another holder's grant. Does not change the grant's
    /// expiry unless the backend says so (`Extended` then carries the new `valid_until`).
    ///
    /// # Errors
    /// [`Error::Unsupported`](crate::Error::Unsupported) by default; backend errors.
    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<ExtendOutcome> {
        let _ = (lease, metadata);
        Err(crate::Error::Unsupported { backend: self.name(), capability: "updating holder metadata".into() })
    }

    /// A stream of the holders of `key` in `mode` as they change (for an election: its leader),
    /// where the store can notify; `Ok(None)` where it cannot, and the client polls
    /// [`inspect`](Self::inspect) / [`holders`](Self::holders) instead.
    ///
    /// # Behavior
    /// Each item is the current holder (`None`: vacant) after a change; the stream may repeat a
    /// state but never skips the latest one, and ends with an error (never silently) when the
    /// connection it watches through is lost.
    ///
    /// # Errors
    /// Backend errors when the watch cannot be opened.
    async fn observe(&self, key: &LockKey, mode: Mode) -> Result<Option<ObserveStream>> {
        let _ = (key, mode);
        Ok(None)
    }

    /// Extends many grants at once (renewal in batches; see [`crate::batch`]): one result per
    /// `(lease, ttl)`, in order.
    ///
    /// # Behavior
    /// Each grant as [`extend`](Self::extend) would: owner-compared, never reviving an expired
    /// grant, `valid_until` measured from before the request was sent. The default extends them
    /// one by one, concurrently; a backend that claims
    /// [`Capabilities::batch_extend`] sends them in as few requests as it can.
    async fn extend_many(&self, grants: &[(Lease, Duration)]) -> Vec<Result<ExtendOutcome>> {
        futures::future::join_all(grants.iter().map(|(l, ttl)| self.extend(l, *ttl))).await
    }

    /// One page of the fencing counters kept under `prefix` (a full-key prefix): for every key
    /// the backend has granted, held or not, the last token it issued. For moving a fleet to
    /// another backend without the resources' tokens going down (`migrate_tokens`).
    ///
    /// # Behavior
    /// Reads only. A backend whose tokens come from one counter for the whole store (etcd's
    /// revision, ZooKeeper's zxid) has no per-key counters and says so with `Unsupported`.
    ///
    /// # Errors
    /// [`Error::Unsupported`](crate::Error::Unsupported) by default; backend errors.
    async fn fencing_counters(
        &self,
        prefix: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<CounterPage> {
        let _ = (prefix, cursor, limit);
        Err(crate::Error::Unsupported { backend: self.name(), capability: "reading fencing counters".into() })
    }

    /// Raises the fencing counter of `key` (for `mode`'s primitive) so that its next grant's
    /// token is greater than `at_least`; never lowers it. Returns the counter's value after.
    ///
    /// # Behavior
    /// Safe to repeat and to run while the key is held or contended: it only ever raises the
    /// counter, in one atomic step.
    ///
    /// # Errors
    /// [`Error::Unsupported`](crate::Error::Unsupported) by default (and where tokens come from
    /// one store-wide counter that cannot be set); backend errors.
    async fn raise_fencing_counter(
        &self,
        key: &LockKey,
        mode: Mode,
        at_least: FencingToken,
    ) -> Result<FencingToken> {
        let _ = (key, mode, at_least);
        Err(crate::Error::Unsupported { backend: self.name(), capability: "raising fencing counters".into() })
    }
}

/// What [`LockBackend::observe`] returns: the holder after each change.
pub type ObserveStream = futures::stream::BoxStream<'static, Result<Option<LockInfo>>>;

/// The default waiting acquire: attempts with [`LockBackend::try_acquire`] and sleeps with
/// jittered backoff between attempts, never past the holder's remaining TTL, the backend's
/// polling interval, or `deadline`. Makes a last attempt at the deadline.
///
/// # Behavior
/// An attempt that failed may have been applied all the same (its reply lost, its time run
/// out), and a backend may release what an attempt left in the background by its owner token,
/// as it does a dropped attempt's (Redlock does so after a round that found the lock held but
/// whose undo a master did not answer). Every attempt after the first asks with a fresh owner
/// token, so that no undo of an earlier attempt can remove the grant a later one returns (the
/// lease carries the owner token it was granted with).
///
/// # Errors
/// [`Error::WaitTimedOut`](crate::Error::WaitTimedOut) at the deadline. Retryable backend
/// errors are retried until the deadline (the last one is returned then); others are returned
/// at once.
pub async fn poll_acquire<B: LockBackend + ?Sized>(
    backend: &B,
    req: &AcquireRequest,
    deadline: Instant,
) -> Result<Lease> {
    let max = match backend.capabilities().wake {
        WakeMode::Poll { max_interval } => max_interval,
        WakeMode::Notify => Duration::from_millis(250),
    };
    let first = std::sync::atomic::AtomicBool::new(true);
    let first = &first;
    wait_for_lock(&[], &req.key, deadline, max, || async move {
        if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
            backend.try_acquire(req).await
        } else {
            let fresh = AcquireRequest { owner: crate::lease::OwnerToken::random(), ..req.clone() };
            backend.try_acquire(&fresh).await
        }
    })
    .await
}
