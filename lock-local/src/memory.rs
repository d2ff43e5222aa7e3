//! The in-process backend: [`MemoryBackend`], private or shared by name within the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use lock_core::{
    async_trait, AcquireRequest, Attempt, Capabilities, ExtendOutcome, FencingToken, Instant, Lease,
    LockBackend, LockInfo, LockKey, OwnerToken, ReleaseOutcome, Result, WakeMode,
};
use tokio::sync::Notify;

const NAME: &str = "memory";

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
/// - Fencing counters are kept per key for the life of the store (one `u64` per key ever
///   locked).
/// - Waiters are woken at once on release and at the holder's expiry; not fair.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    store: Arc<Mutex<HashMap<String, Slot>>>,
}

#[derive(Debug, Default)]
struct Slot {
    counter: u64,
    holder: Option<Holder>,
    notify: Arc<Notify>,
}

#[derive(Debug, Clone, Copy)]
struct Holder {
    owner: OwnerToken,
    fence: FencingToken,
    expires: Instant,
}

impl Slot {
    fn live_holder(&self, now: Instant) -> Option<Holder> {
        self.holder.filter(|h| h.expires > now)
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

    fn store(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // The critical sections below cannot panic halfway, so a poisoned map is still sound.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attempt(&self, req: &AcquireRequest) -> (Attempt, Arc<Notify>) {
        let sent = Instant::now();
        let mut store = self.store();
        let slot = store.entry(req.key.full().to_owned()).or_default();
        let notify = slot.notify.clone();
        if let Some(h) = slot.live_holder(sent) {
            return (Attempt::Held { expires_in: Some(h.expires - sent) }, notify);
        }
        slot.counter += 1;
        let fence = FencingToken::new(slot.counter);
        slot.holder = Some(Holder { owner: req.owner, fence, expires: sent + req.ttl });
        let lease = Lease::new(req.key.clone(), req.owner, fence, req.ttl, sent);
        (Attempt::Acquired(lease), notify)
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
            .with_min_ttl(Duration::from_millis(1))
            .with_expiry_margin(Duration::from_millis(5))
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<Attempt> {
        Ok(self.attempt(req).0)
    }

    async fn acquire(&self, req: &AcquireRequest, deadline: Instant) -> Result<Lease> {
        let notify = self.store().entry(req.key.full().to_owned()).or_default().notify.clone();
        // Released grants wake waiters at once; expired ones are retried at their expiry.
        lock_core::wait_for_lock(&[&notify], &req.key, deadline, Duration::from_millis(50), || async {
            Ok(self.attempt(req).0)
        })
        .await
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<ExtendOutcome> {
        let sent = Instant::now();
        let mut store = self.store();
        let Some(slot) = store.get_mut(lease.key().full()) else { return Ok(ExtendOutcome::NotHeld) };
        match slot.holder.as_mut() {
            Some(h) if h.owner == lease.owner() && h.expires > sent => {
                h.expires = sent + ttl;
                Ok(ExtendOutcome::Extended { valid_until: lock_core::lease::valid_until(sent, ttl) })
            }
            _ => Ok(ExtendOutcome::NotHeld),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<ReleaseOutcome> {
        let now = Instant::now();
        let mut store = self.store();
        let Some(slot) = store.get_mut(lease.key().full()) else { return Ok(ReleaseOutcome::NotHeld) };
        match slot.holder {
            Some(h) if h.owner == lease.owner() => {
                slot.holder = None;
                slot.notify.notify_waiters();
                Ok(if h.expires > now { ReleaseOutcome::Released } else { ReleaseOutcome::NotHeld })
            }
            _ => Ok(ReleaseOutcome::NotHeld),
        }
    }

    async fn inspect(&self, key: &LockKey) -> Result<Option<LockInfo>> {
        let now = Instant::now();
        let store = self.store();
        Ok(store
            .get(key.full())
            .and_then(|s| s.live_holder(now))
            .map(|h| LockInfo::new(Some(h.fence), Some(h.owner), Some(h.expires - now))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_core::LockClient;

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
}
