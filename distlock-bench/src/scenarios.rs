//! The measurements: uncontended latency, throughput over many keys, contended hand-off, and
//! the cost of holding many locks with auto-renewal.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use lock_core::{
    AcquireRequest, Attempt, Capabilities, ExtendOutcome, Lease, LockBackend, LockClient, LockInfo, LockKey,
    ReleaseOutcome,
};

use crate::contenders::{Factory, Held};

/// The server's request count now, where it has a counter.
pub(crate) async fn server_count(server: Option<&crate::RequestCounter>) -> Option<u64> {
    match server {
        Some(f) => f().await,
        None => None,
    }
}

/// Percentile `q` of `samples` (sorted in place), in milliseconds.
pub fn pct_ms(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i].as_secs_f64() * 1e3
}

/// Uncontended acquire+release latency of each factory's contender, interleaved in blocks so
/// all see the same machine. Returns (p50 ms, p99 ms) per factory.
pub async fn latency(factories: &[Arc<dyn Factory>], rounds: usize, tag: &str) -> Result<Vec<(f64, f64)>> {
    let mut contenders = Vec::new();
    for f in factories {
        contenders.push(f.make().await?);
    }
    let keys: Vec<String> = factories.iter().map(|f| format!("{tag}/lat/{}", f.kind())).collect();
    for (c, k) in contenders.iter().zip(&keys) {
        for _ in 0..20 {
            c.cycle(k).await?;
        }
    }
    let mut samples = vec![Vec::with_capacity(rounds); contenders.len()];
    let block = 50.min(rounds.max(1));
    let mut done = 0;
    while done < rounds {
        for (i, (c, k)) in contenders.iter().zip(&keys).enumerate() {
            for _ in 0..block {
                let t = Instant::now();
                c.cycle(k).await?;
                samples[i].push(t.elapsed());
            }
        }
        done += block;
    }
    Ok(samples.iter_mut().map(|s| (pct_ms(s, 0.5), pct_ms(s, 0.99))).collect())
}

/// Lock+release over `keys` distinct keys with `tasks` concurrent tasks (each with its own
/// contender); returns operations per second.
pub async fn throughput(f: &Arc<dyn Factory>, keys: usize, tasks: usize, tag: &str) -> Result<f64> {
    let mut cs = Vec::new();
    for j in 0..tasks {
        let c = f.make().await?;
        // One cycle before the clock starts, as the latency scenario warms up: a contender
        // that sets up its session, lease or connection on first use (distlock's etcd and
        // ZooKeeper backends do) would otherwise pay it inside the window, where the others
        // paid it in `make`.
        c.cycle(&format!("{tag}/tp-warm/{j}")).await?;
        cs.push(c);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in cs {
        let (next, tag) = (next.clone(), tag.to_owned());
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok::<_, anyhow::Error>(());
                }
                c.cycle(&format!("{tag}/tp/{i}")).await?;
            }
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(keys as f64 / start.elapsed().as_secs_f64())
}

/// Hand-off on one key: `waiters` + 1 contenders each take the lock, hold it for `hold`,
/// release it, and queue again. The hand-off is the time from the release call to the next
/// holder having the lock. Returns (p50 ms, p99 ms), or `None` if the factory cannot wait.
pub async fn handoff(
    f: &Arc<dyn Factory>,
    waiters: usize,
    hold: Duration,
    handoffs: usize,
    key: &str,
) -> Result<Option<(f64, f64)>> {
    let mut cs = Vec::new();
    for _ in 0..=waiters {
        cs.push(f.make().await?);
    }
    // A contender that cannot wait says so at once.
    let probe = format!("{key}/probe");
    match cs[0].lock_wait(&probe).await? {
        None => return Ok(None),
        Some(h) => h.unlock().await?,
    }
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for c in cs {
        let (released_at, samples, count, key) =
            (released_at.clone(), samples.clone(), count.clone(), key.to_owned());
        handles.push(tokio::spawn(async move {
            while count.load(Ordering::SeqCst) < handoffs {
                let Some(held): Option<Box<dyn Held>> = c.lock_wait(&key).await? else { return Ok(()) };
                let now = Instant::now();
                if let Some(t) = released_at.lock().expect("released_at").take() {
                    samples.lock().expect("samples").push(now - t);
                    count.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(hold).await;
                *released_at.lock().expect("released_at") = Some(Instant::now());
                held.unlock().await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let mut s = std::mem::take(&mut *samples.lock().expect("samples"));
    Ok(Some((pct_ms(&mut s, 0.5), pct_ms(&mut s, 0.99))))
}

/// Counts the extends a backend is asked for (each grant of a renewal batch counts one);
/// everything else, renewal batches and listing included, goes to the backend as it is.
#[derive(Debug)]
pub struct Counting {
    pub inner: Arc<dyn LockBackend>,
    pub extends: Arc<AtomicU64>,
}

#[async_trait]
impl LockBackend for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn try_acquire(&self, req: &AcquireRequest) -> lock_core::Result<Attempt> {
        self.inner.try_acquire(req).await
    }
    async fn acquire(&self, req: &AcquireRequest, deadline: lock_core::Instant) -> lock_core::Result<Lease> {
        self.inner.acquire(req, deadline).await
    }
    async fn extend(&self, lease: &Lease, ttl: Duration) -> lock_core::Result<ExtendOutcome> {
        self.extends.fetch_add(1, Ordering::Relaxed);
        self.inner.extend(lease, ttl).await
    }
    async fn extend_many(&self, grants: &[(Lease, Duration)]) -> Vec<lock_core::Result<ExtendOutcome>> {
        self.extends.fetch_add(grants.len() as u64, Ordering::Relaxed);
        self.inner.extend_many(grants).await
    }
    async fn release(&self, lease: &Lease) -> lock_core::Result<ReleaseOutcome> {
        self.inner.release(lease).await
    }
    async fn inspect(&self, key: &LockKey) -> lock_core::Result<Option<LockInfo>> {
        self.inner.inspect(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> lock_core::Result<lock_core::ListPage> {
        self.inner.list(prefix, cursor, limit).await
    }
}

/// Listing every held lock once.
#[derive(Debug, Clone, Copy)]
pub struct Listing {
    /// How long `list` took, paging included, in ms.
    pub ms: f64,
    /// The server requests it cost, where the server counts them.
    pub requests: Option<u64>,
}

/// What holding many locks with auto-renewal costs the client.
#[derive(Debug, Clone, Copy)]
pub struct HeldCost {
    /// Listing them all, where the backend can list.
    pub listing: Option<Listing>,
    /// Extend calls per second (session backends answer them without a request per lock).
    pub extends_per_s: f64,
    /// Client CPU while holding, in percent of one core.
    pub cpu_pct: f64,
    /// Client heap growth per held lock, in bytes (guards, renewal tasks, backend state),
    /// measured over the second half of the locks: what one more lock costs, once the
    /// connections and pools that the first acquires grew are in place.
    pub bytes_per_lock: f64,
    /// Client heap growth over all the locks divided by their number (one-time growth of
    /// connections and pools included).
    pub bytes_per_lock_all: f64,
    /// Requests the server counted per second while the locks were held, where it counts.
    pub server_per_s: Option<f64>,
}

/// Takes `n` locks with auto-renewal through `backend` (TTL `ttl`), holds them for `window`,
/// and measures; lists them all once if `list` and the backend can.
pub async fn held_cost(
    backend: Arc<dyn LockBackend>,
    n: usize,
    ttl: Duration,
    window: Duration,
    tag: &str,
    server: Option<&crate::RequestCounter>,
    list: bool,
) -> Result<HeldCost> {
    let extends = Arc::new(AtomicU64::new(0));
    let locks = LockClient::from_arc(Arc::new(Counting { inner: backend, extends: extends.clone() }));
    let mut guards = Vec::with_capacity(n);
    let heap0 = crate::alloc::live_bytes();
    // The chunk boundary nearest past half way (0, so all the locks, when there is none).
    let split = Some((n / 2).next_multiple_of(64)).filter(|&s| s < n).unwrap_or(0);
    let mut heap_split = heap0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        if chunk[0] == split {
            heap_split = crate::alloc::live_bytes();
        }
        let mut batch = Vec::new();
        for &i in chunk {
            let l = locks.clone();
            let key = format!("{tag}/held/{i}");
            batch.push(tokio::spawn(async move { l.lock(&key).ttl(ttl).auto_renew().acquire().await }));
        }
        for b in batch {
            guards.push(b.await??);
        }
    }
    let heap1 = crate::alloc::live_bytes();
    // Let every lock renew once before measuring: the first renewal may cost what the steady
    // state does not (etcd reads each key once, then only watches). Wait for the event (as
    // many extend calls as locks, bounded) rather than a fixed time: a session backend renews
    // at a third of the session's TTL, not of the lock's.
    let first_round = Instant::now() + Duration::from_secs(30);
    while extends.load(Ordering::Relaxed) < n as u64 && Instant::now() < first_round {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(ttl / 10).await;
    let s0 = server_count(server).await;
    let (e0, cpu0, t0) = (extends.load(Ordering::Relaxed), cpu_seconds(), Instant::now());
    tokio::time::sleep(window).await;
    let (e1, cpu1, dt) = (extends.load(Ordering::Relaxed), cpu_seconds(), t0.elapsed().as_secs_f64());
    let s1 = server_count(server).await;
    let lost = guards.iter().filter(|g| !g.is_held()).count();
    anyhow::ensure!(lost == 0, "{lost} of {n} held locks were lost while renewing");
    // Listing them all (paged by the client): time and server requests.
    let listing = if list && locks.capabilities().listing {
        let s0 = server_count(server).await;
        let t0 = Instant::now();
        let found = locks.list(&format!("{tag}/held/")).await?.len();
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let s1 = server_count(server).await;
        anyhow::ensure!(found == n, "list found {found} of {n} held locks");
        // The counter reads themselves are requests too (one before, one after).
        let requests = s0.zip(s1).map(|(a, z)| z.saturating_sub(a).saturating_sub(1));
        Some(Listing { ms, requests })
    } else {
        None
    };
    for chunk in guards.chunks(0x100).map(|c| c.len()).collect::<Vec<_>>() {
        let batch: Vec<_> = guards.drain(..chunk).collect();
        let hs: Vec<_> = batch.into_iter().map(|g| tokio::spawn(async move { g.release().await })).collect();
        for h in hs {
            let _ = h.await?;
        }
    }
    Ok(HeldCost {
        extends_per_s: (e1 - e0) as f64 / dt,
        cpu_pct: (cpu1 - cpu0) / dt * 100.0,
        bytes_per_lock: heap1.saturating_sub(heap_split) as f64 / (n - split).max(1) as f64,
        bytes_per_lock_all: heap1.saturating_sub(heap0) as f64 / n as f64,
        server_per_s: match (s0, s1) {
            (Some(a), Some(z)) => Some(z.saturating_sub(a) as f64 / dt),
            _ => None,
        },
        listing,
    })
}

/// This process's user+system CPU time (USER_HZ = 100 on Linux).
pub fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}
