//! The in-process backend: [`MemoryBackend`], private or shared by name within the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use lock_core::lease::add_saturating;
use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, CounterPage, ExtendOutcome, FencingToken, Instant,
    Lease, ListPage, LockBackend, LockInfo, LockKey, Metadata, Mode, OwnerToken, ReleaseOutcome, Result,
    WakeMode,
};
use tokio::sync::Notify;

use crate::error::mismatch;
use crate::table::{Admit, Ask, Kind, Role, Table};

const NAME: &str = "memory";

/// How often a waiter tries again when nothing wakes it.
const MAX_POLL: Duration = Duration::from_millis(50);

/// How long a waiting writer's intent lasts unless its next attempt (at most [`MAX_POLL`]
/// later) refreshes it.
const INTENT_TTL: Duration = Duration::from_secs(1);

/// Locks held in this process's memory.
///
/// # Behavior
/// - Clones share one store, so every [`LockClient`](lock_core::LockClient) built from clones
///   of one `MemoryBackend` excludes the others; two `MemoryBackend::new()` stores are
///   independent.
/// - [`MemoryBackend::named`] returns the process's store of that name (what `mem://NAME`
///   connects to; `mem://` is the store named `""`): every caller with the same name shares
///   one store, which lives as long as the process.
/// - Expiry is measured on tokio's clock, so tests may pause and advance time.
/// - Fencing counters are kept per key and primitive for the life of the store (one `u64` per
///   name ever used).
/// - Waiters are woken at once on release and at the holder's expiry; not fair.
/// - Semaphores (up to [`MAX_PERMITS`](lock_core::MAX_PERMITS) permits), read-write locks with
///   writer preference, and atomic multi-key locks (every key checked and granted under the
///   store's one mutex); see the crate docs.
/// - Elections (the leader is an exclusive grant in the election's own table; observers poll
///   `holders` every 250 ms), holder metadata kept beside each grant, and `list(prefix)` over
///   the whole store in one page.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    store: Arc<Mutex<HashMap<(Kind, String), Slot>>>,
}

/// One name's primitive: its grants, their holders' metadata, and its waiters' wake-up.
#[derive(Debug, Default)]
struct Slot {
    table: Table<Instant>,
    /// The metadata of each grant in `table`, by owner (pruned with the grants).
    meta: HashMap<OwnerToken, Metadata>,
    notify: Arc<Notify>,
}

impl Slot {
    /// Drops the metadata of grants no longer in the table (released or expired and pruned).
    fn prune_meta(&mut self) {
        let entries = &self.table.entries;
        self.meta.retain(|o, _| entries.iter().any(|e| e.owner == *o));
    }
}

impl MemoryBackend {
    /// A new, empty store of its own (shared only by its clones).
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide store called `name`, created empty on first use: every call with the
    /// same name, in any thread, returns a handle to the same store.
    pub fn named(name: &str) -> Self {
        static STORES: OnceLock<Mutex<HashMap<String, MemoryBackend>>> = OnceLock::new();
        // Inserting a clone cannot panic halfway, so a poisoned map is still sound.
        let mut stores = STORES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        stores.entry(name.to_owned()).or_default().clone()
    }

    fn store(&self) -> MutexGuard<'_, HashMap<(Kind, String), Slot>> {
        // The critical sections below cannot panic halfway, so a poisoned map is still sound.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ask(req: &AcquireRequest, now: Instant, intent: Option<Instant>) -> Ask<Instant> {
        let expires = add_saturating(now, req.ttl);
        Ask { owner: req.owner, mode: req.mode, now, expires, intent, capacity: usize::MAX }
    }

    fn lease(req: &AcquireRequest, fence: u64, sent: Instant) -> Lease {
        Lease::new(req.key.clone(), req.owner, FencingToken::new(fence), req.ttl, sent).with_mode(req.mode)
    }

    /// One attempt; a waiting writer (`intent`) leaves its intent when refused.
    fn attempt(&self, req: &AcquireRequest, intent: bool) -> Result<Attempt> {
        let sent = Instant::now();
        let kind = Role::of(req.mode, NAME)?.kind();
        let mut store = self.store();
        let slot = store.entry((kind, req.key.full().to_owned())).or_default();
        let ask = Self::ask(req, sent, intent.then(|| add_saturating(sent, INTENT_TTL)));
        match slot.table.acquire(&ask, NAME)? {
            Admit::Granted(fence) => {
                slot.meta.insert(req.owner, (*req.metadata).clone());
                slot.prune_meta();
                Ok(Attempt::Acquired(Self::lease(req, fence, sent)))
            }
            Admit::Held(until) => Ok(Attempt::Held { expires_in: until.map(|t| t - sent) }),
            Admit::Mismatch(held) => Err(mismatch(req, held)),
        }
    }

    /// The unexpired holders of a slot, with their metadata.
    fn infos(slot: &Slot, now: Instant) -> Vec<LockInfo> {
        slot.table
            .holders(now)
            .map(|(e, mode)| {
                LockInfo::new(Some(FencingToken::new(e.fence)), Some(e.owner), Some(e.expires - now))
                    .with_mode(mode)
                    .with_metadata(slot.meta.get(&e.owner).cloned())
            })
            .collect()
    }

    fn notify_of(&self, kind: Kind, key: &LockKey) -> Arc<Notify> {
        self.store().entry((kind, key.full().to_owned())).or_default().notify.clone()
    }

    /// Runs `f` on the slot of `key`'s primitive of `mode`, if it exists.
    fn with_slot<R>(
        &self,
        key: &LockKey,
        mode: Mode,
        f: impl FnOnce(&mut Slot, Role) -> R,
    ) -> Result<Option<R>> {
        let role = Role::of(mode, NAME)?;
        Ok(self.store().get_mut(&(role.kind(), key.full().to_owned())).map(|slot| f(slot, role)))
    }
}

/// Withdraws a waiting writer's intent when its acquire ends, however it ends (a granted
/// writer has none left), and wakes the readers it held back.
struct Intent<'a> {
    backend: &'a MemoryBackend,
    req: &'a AcquireRequest,
}

impl Drop for Intent<'_> {
    fn drop(&mut self) {
        let _ = self.backend.with_slot(&self.req.key, Mode::Write, |slot, _| {
            if slot.table.withdraw_intent(self.req.owner) {
                slot.notify.notify_waiters();
            }
        });
    }
}

#[async_trait]
impl LockBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_wake(WakeMode::Notify)
            .with_min_ttl(lock_core::SHORTEST_TTL)
            .with_expiry_margin(Duration::from_millis(5))
            .with_max_permits(lock_core::MAX_PERMITS)
            .with_read_write(true)
            .with_writer_preference(true)
            .with_atomic_multi_key(true)
            .with_elections(true)
            .with_holder_metadata(true)
            .with_fencing_counters(true)
            .with_listing(true)
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        self.attempt(req, false)
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let notify = self.notify_of(Role::of(req.mode, NAME)?.kind(), &req.key);
        let writer = req.mode == Mode::Write;
        let _intent = writer.then_some(Intent { backend: self, req });
        // Released grants wake waiters at once; expired ones are retried at their expiry.
        lock_core::wait_for_lock(&[&notify], &req.key, deadline, MAX_POLL, || async {
            self.attempt(req, writer)
        })
        .await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let sent = Instant::now();
        let extended = self.with_slot(lease.key(), lease.mode(), |slot, role| {
            slot.table.extend(lease.owner(), role, sent, add_saturating(sent, ttl))
        })?;
        Ok(if extended == Some(true) {
            ExtendOutcome::Extended { valid_until: lock_core::lease::valid_until(sent, ttl) }
        } else {
            ExtendOutcome::NotHeld
        })
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let now = Instant::now();
        let live = self.with_slot(lease.key(), lease.mode(), |slot, role| {
            let (live, removed) = slot.table.release(lease.owner(), role, now);
            slot.prune_meta();
            if removed {
                slot.notify.notify_waiters();
            }
            live
        })?;
        Ok(if live == Some(true) { ReleaseOutcome::Released } else { ReleaseOutcome::NotHeld })
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        Ok(self.holders(key, Mode::Exclusive).await?.into_iter().next())
    }

    async fn holders(&self, key: &LockKey, mode: Mode) -> Result<Vec<LockInfo>> {
        let now = Instant::now();
        Ok(self.with_slot(key, mode, |slot, _| Self::infos(slot, now))?.unwrap_or_default())
    }

    async fn update_metadata(&self, lease: &Lease, metadata: &Metadata) -> Result<ExtendOutcome> {
        let now = Instant::now();
        let held = self.with_slot(lease.key(), lease.mode(), |slot, role| {
            let held = slot.table.holds(lease.owner(), role, now);
            if held {
                slot.meta.insert(lease.owner(), metadata.clone());
            }
            held
        })?;
        Ok(if held == Some(true) {
            ExtendOutcome::Extended { valid_until: lease.valid_until() }
        } else {
            ExtendOutcome::NotHeld
        })
    }

    /// Every counter under `prefix`, in one page.
    async fn fencing_counters(
        &self,
        prefix: &str,
        _cursor: Option<String>,
        _limit: usize,
    ) -> Result<CounterPage> {
        let store = self.store();
        let mut counters: Vec<(String, Mode, FencingToken)> = store
            .iter()
            .filter(|((_, name), slot)| name.starts_with(prefix) && slot.table.fence > 0)
            .map(|((kind, name), slot)| {
                (name.clone(), kind.counter_mode(slot.table.limit), FencingToken::new(slot.table.fence))
            })
            .collect();
        counters.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(CounterPage::new(counters, None))
    }

    /// Raises the counter of `key`'s primitive of `mode` (never lowers it).
    async fn raise_fencing_counter(
        &self,
        key: &LockKey,
        mode: Mode,
        at_least: FencingToken,
    ) -> Result<FencingToken> {
        let kind = Role::of(mode, NAME)?.kind();
        crate::table::raisable(NAME, at_least.get())?;
        let mut store = self.store();
        let slot = store.entry((kind, key.full().to_owned())).or_default();
        Ok(FencingToken::new(slot.table.raise(at_least.get())))
    }

    /// The grants under `prefix` of at most `limit` names (each with all its holders), in
    /// name order after `cursor` (the last name of the page before).
    async fn list(&self, prefix: &str, cursor: Option<String>, limit: usize) -> Result<ListPage> {
        let now = Instant::now();
        let store = self.store();
        let mut entries: Vec<(String, LockInfo)> = store
            .iter()
            .filter(|((_, name), _)| name.starts_with(prefix) && cursor.as_ref().is_none_or(|c| name > c))
            .flat_map(|((_, name), slot)| Self::infos(slot, now).into_iter().map(move |i| (name.clone(), i)))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut names = 0;
        let cut = entries.iter().enumerate().position(|(i, (name, _))| {
            if i == 0 || entries[i - 1].0 != *name {
                names += 1;
            }
            names > limit.max(1)
        });
        let next = cut.map(|at| {
            entries.truncate(at);
            entries.last().map(|(name, _)| name.clone()).unwrap_or_default()
        });
        Ok(ListPage::new(entries, next))
    }

    async fn try_acquire_all(&self, reqs: &[AcquireRequest]) -> Result<Option<Vec<Lease>>> {
        let sent = Instant::now();
        let mut store = self.store();
        for req in reqs {
            let role = Role::of(req.mode, NAME)?;
            let slot = store.entry((role.kind(), req.key.full().to_owned())).or_default();
            slot.table.prune(sent);
            slot.prune_meta();
            if slot.table.check(&Self::ask(req, sent, None), role).is_some() {
                return Ok(None);
            }
            // An exhausted counter refuses before any name is granted, not after some were.
            slot.table.next_fence(NAME)?;
        }
        let mut leases = Vec::with_capacity(reqs.len());
        for req in reqs {
            let slot =
                store.entry((Role::of(req.mode, NAME)?.kind(), req.key.full().to_owned())).or_default();
            match slot.table.acquire(&Self::ask(req, sent, None), NAME)? {
                Admit::Granted(fence) => {
                    slot.meta.insert(req.owner, (*req.metadata).clone());
                    leases.push(Self::lease(req, fence, sent));
                }
                // Checked above under the same mutex; cannot happen.
                _ => return Ok(None),
            }
        }
        Ok(Some(leases))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::{LockClient, OwnerToken};

    /// Multi-key grants that expire leave no metadata behind: the store holds one entry per
    /// live grant however many came and went.
    #[tokio::test]
    async fn expired_multi_key_grants_leave_no_metadata() {
        let b = MemoryBackend::new();
        let locks = LockClient::new(b.clone());
        for _ in 0..20 {
            let g =
                locks.lock_all(["a", "b"]).ttl(Duration::from_millis(5)).acquire().await.expect("lock_all");
            drop(g.into_guard().detach());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let key = LockKey::new("a").expect("key");
        let kept = b.with_slot(&key, Mode::Exclusive, |s, _| s.meta.len()).expect("slot").unwrap_or_default();
        assert!(kept <= 1, "{kept} metadata entries kept for expired grants");
    }

    /// A multi-key try that meets an exhausted counter on a later name is an error with no
    /// name granted (the names before it were granted and left held for their TTL).
    #[tokio::test]
    async fn an_exhausted_counter_refuses_a_multi_key_try_before_any_grant() {
        use lock_core::{FencingToken, LockBackend};
        let b = MemoryBackend::new();
        let locks = LockClient::new(b.clone());
        let key = LockKey::new("b").expect("key");
        b.raise_fencing_counter(&key, Mode::Exclusive, FencingToken::new(u64::MAX - 1)).await.expect("raise");
        let last = locks.lock("b").try_acquire().await.expect("try").expect("granted");
        assert_eq!(last.fencing_token().get(), u64::MAX);
        last.release().await.expect("release");
        let tried = locks.lock_all(["a", "b"]).ttl(Duration::from_secs(60)).try_acquire().await;
        assert!(tried.is_err(), "{tried:?}");
        assert!(locks.inspect("a").await.expect("inspect").is_none(), "'a' was left held");
    }

    /// The owner tokens of the holders of one name's lock.
    fn owners(b: &MemoryBackend, key: &str) -> Vec<OwnerToken> {
        let key = LockKey::new(key).expect("key");
        b.with_slot(&key, Mode::Exclusive, |s, _| s.table.entries.iter().map(|e| e.owner).collect())
            .expect("slot")
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_follows_tokio_clock() {
        let locks = LockClient::new(MemoryBackend::new());
        let g = locks.lock("a").ttl(Duration::from_secs(10)).acquire().await.unwrap();
        let lease = g.detach();
        assert!(locks.lock("a").try_acquire().await.unwrap().is_none());
        tokio::time::advance(Duration::from_secs(10)).await;
        let g2 = locks.lock("a").try_acquire().await.unwrap().expect("expired");
        assert!(g2.fencing_token() > lease.fencing_token());
        assert_eq!(locks.release_lease(&lease).await.unwrap(), ReleaseOutcome::NotHeld);
    }

    #[tokio::test]
    async fn named_stores_are_shared_by_name_and_new_ones_are_private() {
        let a = LockClient::new(MemoryBackend::named("memory-test/shared"));
        let b = LockClient::new(MemoryBackend::named("memory-test/shared"));
        let other = LockClient::new(MemoryBackend::named("memory-test/other"));
        let private = LockClient::new(MemoryBackend::new());
        let g = a.lock("k").acquire().await.unwrap();
        assert!(b.lock("k").try_acquire().await.unwrap().is_none(), "one name, one store");
        assert!(other.lock("k").try_acquire().await.unwrap().is_some(), "another name, another store");
        assert!(private.lock("k").try_acquire().await.unwrap().is_some(), "new() is private");
        assert_eq!(g.release().await.unwrap(), ReleaseOutcome::Released);
    }

    #[tokio::test]
    async fn an_atomic_multi_key_attempt_takes_nothing_when_one_key_is_held() {
        let store = MemoryBackend::new();
        let locks = LockClient::new(store.clone());
        let held = locks.lock("b").acquire().await.unwrap();
        let reqs: Vec<AcquireRequest> = ["a", "b", "c"]
            .iter()
            .map(|n| AcquireRequest::new(LockKey::new(n).unwrap(), Duration::from_secs(5)))
            .collect();
        assert!(store.try_acquire_all(&reqs).await.unwrap().is_none());
        assert!(owners(&store, "a").is_empty() && owners(&store, "c").is_empty(), "a partial grant stayed");
        held.release().await.unwrap();
        let leases = store.try_acquire_all(&reqs).await.unwrap().expect("all free");
        assert_eq!(leases.len(), 3);
        assert_eq!(owners(&store, "b"), vec![reqs[1].owner]);
    }
}
