//! Semaphores and read-write locks, each beside its floor: the minimal commands one permit
//! needs on the store (no fencing counter, no metadata, no notification), sent with the same
//! client crate.
//!
//! - **Semaphore latency**: uncontended acquire + release of one permit of `N` (1, 8, 64),
//!   interleaved in blocks with the floor; target within 1.2× of the floor.
//! - **Semaphore throughput**: 1 / 16 / 64 tasks (each its own client, as processes would be)
//!   on one semaphore of `N` for a fixed window; distlock's tasks wait for a permit (by
//!   notification where the backend has it), the floor's retry after 1 ms when none is free.
//! - **Read lock throughput**: 64 readers on one name, taking and releasing the read lock;
//!   the floor is a permit's commands with no limit reached (it checks no writer).
//! - **Writer → readers hand-off**: a writer holds, readers wait; from the writer's release
//!   call to the first and to the last reader granted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use lock_core::LockClient;
use serde_json::{json, Value};

use crate::scenarios::pct_ms;
use crate::{ratio, Backend, BoxFut, Plan};

/// The TTL and the longest wait of every grant this module takes.
const TTL: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(120);

/// One permit of a semaphore taken and given back with the store's own commands.
#[async_trait]
pub trait PermitFloor: Send + Sync {
    /// Takes one of the `n` permits of `name` if one is free, then gives it back; `false`
    /// when all were taken.
    async fn cycle(&self, name: &str, n: u32) -> Result<bool>;

    /// Takes a read lock on `name` and gives it back; the floors take a permit of a semaphore
    /// whose limit is never reached.
    async fn read(&self, name: &str) -> Result<bool> {
        self.cycle(name, UNLIMITED).await
    }
}

/// Makes permit floors, each with its own connection or session.
pub(crate) struct PermitFloors {
    /// What the floor sends, for the report.
    pub(crate) what: &'static str,
    pub(crate) make: MakeFloor,
}

/// Makes one permit floor.
pub(crate) type MakeFloor = Arc<dyn Fn() -> BoxFut<Result<Arc<dyn PermitFloor>>> + Send + Sync>;

/// "No limit reached": the floor of a read lock.
const UNLIMITED: u32 = 10_000;

async fn ours(b: &Backend) -> Result<LockClient> {
    Ok(LockClient::from_arc((b.ours)().await?))
}

/// One permit of `name` taken (waiting if need be) and given back, as every measurement of
/// distlock here takes it.
pub(crate) async fn our_permit(locks: &LockClient, name: &str, n: u32) -> Result<()> {
    let g = locks.semaphore(name, n).ttl(TTL).wait(WAIT).acquire().await?;
    g.release().await?;
    Ok(())
}

async fn our_read(locks: &LockClient, name: &str) -> Result<()> {
    let g = locks.read_lock(name).ttl(TTL).wait(WAIT).acquire().await?;
    g.release().await?;
    Ok(())
}

/// A floor cycle that retries (after 1 ms) until it had a permit (`n`), or a read lock
/// (`None`).
async fn floor_permit(f: &dyn PermitFloor, name: &str, n: Option<u32>) -> Result<()> {
    loop {
        let got = match n {
            Some(n) => f.cycle(name, n).await?,
            None => f.read(name).await?,
        };
        if got {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Every measurement of this module on `b`, as one JSON object.
pub(crate) async fn measure(b: &Backend, plan: &Plan, tag: &str) -> Result<Value> {
    let probe = ours(b).await?;
    let caps = probe.capabilities().clone();
    let mut out = json!({ "wake": format!("{:?}", caps.wake) });
    let floors = b.permit_floor.as_ref();
    out["floor"] = json!(floors.map(|f| f.what));
    out["same_floor"] = json!(b.same_floor.as_ref().map(|f| f.what));
    out["peer"] = json!(b.permit_peer.as_ref().map(|f| f.what));
    if caps.max_permits == 0 {
        out["semaphore"] = json!("not supported by this backend");
    } else {
        let mut lat = Vec::new();
        for &n in &plan.permits {
            eprintln!("[{}] semaphore latency N={n}", b.name);
            let rounds = if plan.quick { plan.latency_rounds.min(50) } else { plan.latency_rounds };
            let all = [floors, b.same_floor.as_ref(), b.permit_peer.as_ref()];
            lat.push(semaphore_latency(&probe, all, n, rounds, &format!("{tag}/sl{n}")).await?);
        }
        out["semaphore_latency_ms"] = json!(lat);
        let mut tp = Vec::new();
        // The quick run (CI) measures the largest task count only.
        let tasks_list = if plan.quick { &plan.tasks[plan.tasks.len() - 1..] } else { &plan.tasks[..] };
        for &n in &plan.permits {
            for &tasks in tasks_list {
                eprintln!("[{}] semaphore throughput N={n} x{tasks}", b.name);
                let name = format!("{tag}/st{n}-{tasks}");
                let mine = rate(tasks, plan.prim_window, b, {
                    let name = name.clone();
                    move |l: Arc<LockClient>| {
                        let name = name.clone();
                        async move { our_permit(&l, &name, n).await }
                    }
                })
                .await?;
                let mut row = json!({"permits": n, "tasks": tasks, "distlock": mine.round()});
                beside(&mut row, mine, b, tasks, plan.prim_window, &name, Some(n)).await?;
                tp.push(row);
            }
        }
        out["semaphore_throughput_ops_per_s"] = json!(tp);
    }
    if !caps.read_write {
        out["read_write"] = json!("not supported by this backend");
        return Ok(out);
    }
    eprintln!("[{}] read lock throughput x{}", b.name, plan.readers);
    let name = format!("{tag}/rt");
    let mine = rate(plan.readers, plan.prim_window, b, {
        let name = name.clone();
        move |l: Arc<LockClient>| {
            let name = name.clone();
            async move { our_read(&l, &name).await }
        }
    })
    .await?;
    let mut row = json!({"readers": plan.readers, "distlock": mine.round()});
    beside(&mut row, mine, b, plan.readers, plan.prim_window, &name, None).await?;
    out["read_throughput_ops_per_s"] = row;
    eprintln!("[{}] writer -> {} readers hand-off x{}", b.name, plan.rw_readers, plan.rw_handoffs);
    out["writer_to_readers_ms"] =
        writer_to_readers(b, plan.rw_readers, plan.rw_handoffs, &format!("{tag}/wr")).await?;
    Ok(out)
}

async fn semaphore_latency(
    locks: &LockClient,
    floors: [Option<&PermitFloors>; 3],
    n: u32,
    rounds: usize,
    name: &str,
) -> Result<Value> {
    // The minimal floor, the same requests sent raw and the peer, where this backend has them.
    let mut raw_floors = Vec::new();
    for (kind, f) in ["floor", "same", "peer"].into_iter().zip(floors) {
        if let Some(f) = f {
            raw_floors.push((kind, (f.make)().await?, format!("{name}-{kind}"), Vec::with_capacity(rounds)));
        }
    }
    for _ in 0..20 {
        our_permit(locks, name, n).await?;
        for (_, f, fname, _) in &raw_floors {
            floor_permit(f.as_ref(), fname, Some(n)).await?;
        }
    }
    let mut mine = Vec::with_capacity(rounds);
    let block = 50.min(rounds.max(1));
    while mine.len() < rounds {
        for _ in 0..block {
            let t = Instant::now();
            our_permit(locks, name, n).await?;
            mine.push(t.elapsed());
        }
        for (kind, f, fname, raw) in &mut raw_floors {
            for _ in 0..block {
                let t = Instant::now();
                anyhow::ensure!(f.cycle(fname, n).await?, "{kind}: no permit free on an idle semaphore");
                raw.push(t.elapsed());
            }
        }
    }
    let ours_p50 = pct_ms(&mut mine, 0.5);
    let mut row = json!({"permits": n, "distlock": {"p50": ours_p50, "p99": pct_ms(&mut mine, 0.99)}});
    for (kind, _, _, mut raw) in raw_floors {
        let p50 = pct_ms(&mut raw, 0.5);
        row[kind] = json!({"p50": p50, "p99": pct_ms(&mut raw, 0.99)});
        row[format!("ours_over_{kind}")] = ratio(ours_p50, p50);
        // The target is set against the same requests where they are measured.
        if kind != "peer" {
            row["target_met"] = json!(ours_p50 / p50 <= 1.2);
        }
    }
    Ok(row)
}

/// Rounds per second of `tasks` tasks, each with its own distlock client, running `round` for
/// `window`. Tasks still waiting at the end are dropped (a cancelled acquire leaves nothing).
async fn rate<F, Fut>(tasks: usize, window: Duration, b: &Backend, round: F) -> Result<f64>
where
    F: Fn(Arc<LockClient>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let mut clients = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        clients.push(Arc::new(ours(b).await?));
    }
    run_for(window, clients, round).await
}

/// The floor's and the peer's rates (where `b` has them) with `tasks` tasks on `name`, each
/// beside distlock's `mine` in `row`: permits of `n`, or read locks (`None`).
async fn beside(
    row: &mut Value,
    mine: f64,
    b: &Backend,
    tasks: usize,
    window: Duration,
    name: &str,
    n: Option<u32>,
) -> Result<()> {
    for (kind, f) in [("floor", b.permit_floor.as_ref()), ("peer", b.permit_peer.as_ref())] {
        if let Some(f) = f {
            let raw = floor_rate(tasks, window, f, format!("{name}-{kind}"), n).await?;
            row[kind] = json!(raw.round());
            row[format!("ours_over_{kind}")] = ratio(mine, raw);
        }
    }
    Ok(())
}

async fn floor_rate(
    tasks: usize,
    window: Duration,
    f: &PermitFloors,
    name: String,
    n: Option<u32>,
) -> Result<f64> {
    let mut floors = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        floors.push((f.make)().await?);
    }
    let name = Arc::new(name);
    run_for(window, floors, move |f| {
        let name = name.clone();
        async move { floor_permit(f.as_ref(), &name, n).await }
    })
    .await
}

/// Runs `round` in a loop on each of `each` for `window`; completed rounds per second.
async fn run_for<T, F, Fut>(window: Duration, each: Vec<T>, round: F) -> Result<f64>
where
    T: Clone + Send + Sync + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = each
        .into_iter()
        .map(|t| {
            let (done, round) = (done.clone(), round.clone());
            tokio::spawn(async move {
                loop {
                    round(t.clone()).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                #[allow(unreachable_code)]
                Ok::<(), anyhow::Error>(())
            })
        })
        .collect();
    tokio::time::sleep(window).await;
    let rounds = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    for h in handles {
        // A task ends only on an error.
        if h.is_finished() {
            h.await.context("task")??;
            anyhow::bail!("a task ended early");
        }
        h.abort();
    }
    Ok(rounds)
}

/// A writer holds `name`, `readers` clients wait for the read lock, the writer releases:
/// milliseconds from the release call to the first and to the last reader granted, over
/// `rounds` hand-offs.
async fn writer_to_readers(b: &Backend, readers: usize, rounds: usize, name: &str) -> Result<Value> {
    let writer = ours(b).await?;
    let mut clients = Vec::with_capacity(readers);
    for _ in 0..readers {
        clients.push(Arc::new(ours(b).await?));
    }
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let w = writer.write_lock(name).ttl(TTL).acquire().await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiting = Vec::new();
        for c in &clients {
            let (c, tx, name) = (c.clone(), tx.clone(), name.to_owned());
            waiting.push(tokio::spawn(async move {
                let g = c.read_lock(&name).ttl(TTL).wait(Duration::from_secs(60)).acquire().await?;
                let _ = tx.send(Instant::now());
                Ok::<_, anyhow::Error>(g)
            }));
        }
        drop(tx);
        // Every reader has queued (or is polling) before the release.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        w.release().await?;
        let mut granted = Vec::with_capacity(readers);
        while let Some(at) = rx.recv().await {
            granted.push(at.saturating_duration_since(t0));
        }
        let mut guards = Vec::with_capacity(readers);
        for h in waiting {
            guards.push(h.await.context("reader")??);
        }
        futures::future::join_all(guards.into_iter().map(|g| g.release())).await;
        granted.sort();
        anyhow::ensure!(granted.len() == readers, "a reader was not granted");
        first.push(granted[0]);
        last.push(granted[readers - 1]);
    }
    Ok(json!({
        "readers": readers,
        "rounds": rounds,
        "first_p50": pct_ms(&mut first, 0.5),
        "last_p50": pct_ms(&mut last, 0.5),
        "last_p99": pct_ms(&mut last, 0.99),
    }))
}

/// The report's section for one backend.
pub(crate) fn markdown(b: &Value, fmt: fn(&Value) -> String) -> String {
    let p = &b["primitives"];
    if p.is_null() {
        return String::new();
    }
    let mut md = format!(
        "\nSemaphores and read-write locks (floor: {}; waiting wakes by {}):\n\n",
        p["floor"].as_str().unwrap_or("none"),
        p["wake"].as_str().unwrap_or("?")
    );
    if let Some(s) = p["semaphore"].as_str() {
        md.push_str(&format!("Semaphore: {s}.\n\n"));
    } else {
        let same = p["same_floor"].as_str();
        md.push_str(&match same {
            Some(what) => format!(
                "Semaphore, uncontended acquire+release of one permit (ms; target ≤ 1.2× the same requests \
                 sent raw: {what}):\n\n| N | distlock p50 / p99 | floor p50 / p99 | ours/floor | same requests \
                 p50 / p99 | ours/same |\n|---|---|---|---|---|---|\n"
            ),
            None => "Semaphore, uncontended acquire+release of one permit (ms; target ≤ 1.2× the floor):\n\n| N \
                     | distlock p50 / p99 | floor p50 / p99 | ours/floor |\n|---|---|---|---|\n"
                .to_owned(),
        });
        for r in p["semaphore_latency_ms"].as_array().into_iter().flatten() {
            let met = match r["target_met"].as_bool() {
                Some(true) => " (met)",
                Some(false) => " (missed)",
                None => "",
            };
            let pair = |k: &str| format!("{} / {}", fmt(&r[k]["p50"]), fmt(&r[k]["p99"]));
            md.push_str(&format!(
                "| {} | {} | {} | {}{} |",
                r["permits"],
                pair("distlock"),
                pair("floor"),
                fmt(&r["ours_over_floor"]),
                if same.is_some() { "" } else { met },
            ));
            if same.is_some() {
                md.push_str(&format!(" {} | {}{met} |", pair("same"), fmt(&r["ours_over_same"])));
            }
            md.push('\n');
        }
        if let Some(peer) = p["peer"].as_str() {
            md.push_str(&format!("\nBeside the peer ({peer}), p50 ms, ours/peer:"));
            for r in p["semaphore_latency_ms"].as_array().into_iter().flatten() {
                md.push_str(&format!(
                    " N = {}: {} ({});",
                    r["permits"],
                    fmt(&r["peer"]["p50"]),
                    fmt(&r["ours_over_peer"])
                ));
            }
            md.push('\n');
        }
        let peer = p["peer"].is_string();
        md.push_str(if peer {
            "\nSemaphore throughput on one name (permits acquired+released per second; distlock waits, the floor \
             retries every 1 ms, the peer polls with its own backoff):\n\n| N | tasks | distlock | floor | ours/floor \
             | peer | ours/peer |\n|---|---|---|---|---|---|---|\n"
        } else {
            "\nSemaphore throughput on one name (permits acquired+released per second; distlock waits, the floor \
             retries every 1 ms):\n\n| N | tasks | distlock | floor | ours/floor |\n|---|---|---|---|---|\n"
        });
        for r in p["semaphore_throughput_ops_per_s"].as_array().into_iter().flatten() {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} |",
                r["permits"],
                r["tasks"],
                fmt(&r["distlock"]),
                fmt(&r["floor"]),
                fmt(&r["ours_over_floor"])
            ));
            if peer {
                md.push_str(&format!(" {} | {} |", fmt(&r["peer"]), fmt(&r["ours_over_peer"])));
            }
            md.push('\n');
        }
    }
    if let Some(s) = p["read_write"].as_str() {
        md.push_str(&format!("\nRead-write lock: {s}.\n"));
        return md;
    }
    let r = &p["read_throughput_ops_per_s"];
    md.push_str(&format!(
        "\nRead lock throughput, {} readers on one name (per second): distlock {}, floor {}, ours/floor {}",
        r["readers"],
        fmt(&r["distlock"]),
        fmt(&r["floor"]),
        fmt(&r["ours_over_floor"])
    ));
    if r["peer"].is_number() {
        md.push_str(&format!("; peer {}, ours/peer {}", fmt(&r["peer"]), fmt(&r["ours_over_peer"])));
    }
    md.push_str(".\n");
    let h = &p["writer_to_readers_ms"];
    md.push_str(&format!(
        "\nWriter → {} readers hand-off, from the writer's release call ({} rounds): first reader p50 {} ms, last reader p50 {} ms (p99 {}).\n",
        h["readers"],
        h["rounds"],
        fmt(&h["first_p50"]),
        fmt(&h["last_p50"]),
        fmt(&h["last_p99"])
    ));
    md
}

// --- the floors, per store -------------------------------------------------------------------

/// A random start in `0..n`.
fn random_below(n: u32) -> u32 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n.max(1))) as u32
}

/// Redis: one script drops expired permits from a sorted set, counts, adds ours with its
/// expiry; `ZREM` gives it back.
const REDIS_PERMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + 30000, ARGV[2])
  return 1
end
return 0";

struct RedisPermits {
    con: redis::aio::ConnectionManager,
    script: redis::Script,
}

#[async_trait]
impl PermitFloor for RedisPermits {
    async fn cycle(&self, name: &str, n: u32) -> Result<bool> {
        let (key, token) = (format!("floor:{name}"), uuid::Uuid::new_v4().simple().to_string());
        let mut con = self.con.clone();
        let got: i64 = self.script.key(&key).arg(n).arg(&token).invoke_async(&mut con).await?;
        if got == 0 {
            return Ok(false);
        }
        let _: i64 = redis::cmd("ZREM").arg(&key).arg(&token).query_async(&mut con).await?;
        Ok(true)
    }
}

pub(crate) fn redis_floors(url: String) -> PermitFloors {
    PermitFloors {
        what: "EVALSHA (ZREMRANGEBYSCORE expired + ZCARD + ZADD) + ZREM (redis crate)",
        make: Arc::new(move || {
            let url = url.clone();
            Box::pin(async move {
                let con = redis::aio::ConnectionManager::new(redis::Client::open(url.as_str())?).await?;
                Ok(Arc::new(RedisPermits { con, script: redis::Script::new(REDIS_PERMIT) })
                    as Arc<dyn PermitFloor>)
            })
        }),
    }
}

/// The Redis peer: distributed-lock-redis (a Rust port of .NET's DistributedLock, on fred):
/// a semaphore is a sorted set of tickets taken by one `EVAL` (the whole script sent each
/// time), given back by another; a waiting acquire polls with a backoff of 10 to 200 ms. Its
/// read-write lock likewise. Each maker connects its own provider (its own client).
struct RedisPeerPermits(distributed_lock_redis::RedisLockProvider);

#[async_trait]
impl PermitFloor for RedisPeerPermits {
    async fn cycle(&self, name: &str, n: u32) -> Result<bool> {
        use distributed_lock_core::traits::{DistributedSemaphore, LockHandle, SemaphoreProvider};
        let ticket = self.0.create_semaphore(&format!("peer/{name}"), n).acquire(Some(WAIT)).await?;
        ticket.release().await?;
        Ok(true)
    }

    async fn read(&self, name: &str) -> Result<bool> {
        use distributed_lock_core::traits::{
            DistributedReaderWriterLock, LockHandle, ReaderWriterLockProvider,
        };
        let h = self.0.create_reader_writer_lock(&format!("peer/{name}")).acquire_read(Some(WAIT)).await?;
        h.release().await?;
        Ok(true)
    }
}

pub(crate) fn redis_peer(url: String) -> PermitFloors {
    PermitFloors {
        what: "distributed-lock-redis 0.2 (fred): EVAL of its acquire script, EVAL of its release; polls 10-200 ms",
        make: Arc::new(move || {
            let url = url.clone();
            Box::pin(async move {
                let provider = distributed_lock_redis::RedisLockProvider::builder()
                    .url(url)
                    .expiry(TTL)
                    .build()
                    .await?;
                Ok(Arc::new(RedisPeerPermits(provider)) as Arc<dyn PermitFloor>)
            })
        }),
    }
}

/// etcd: one transaction puts our key and reads the `N` oldest under the name; a delete
/// gives it back.
struct EtcdPermits(lock_etcd::rpc::Client);

#[async_trait]
impl PermitFloor for EtcdPermits {
    async fn cycle(&self, name: &str, n: u32) -> Result<bool> {
        use lock_etcd::rpc::pb::{Compare, DeleteRangeRequest, RangeRequest, RequestOp, TxnRequest};
        let pfx = format!("floor/{name}/");
        let key = format!("{pfx}{}", uuid::Uuid::new_v4().simple());
        let oldest =
            RangeRequest::prefix(pfx.as_str()).oldest_first().with_limit(i64::from(n)).without_values();
        let txn = TxnRequest::when([Compare::create_revision_is(key.as_str(), 0)])
            .and_then([RequestOp::put(key.as_str(), "", 0), RequestOp::range(oldest)]);
        let r = self.0.txn(txn).await?;
        let got = r.range(1).is_some_and(|rr| rr.kvs.iter().any(|kv| kv.key == key.as_bytes()));
        self.0.delete_range(DeleteRangeRequest::key(key.as_str())).await?;
        Ok(got)
    }
}

pub(crate) fn etcd_floors(endpoints: Vec<String>) -> PermitFloors {
    PermitFloors {
        what: "txn (put + range of the N oldest) + delete (lock-etcd's gRPC client)",
        make: Arc::new(move || {
            let eps = endpoints.clone();
            Box::pin(async move {
                let c = lock_etcd::rpc::Client::connect(&lock_etcd::EtcdOptions::new(&eps)).await?;
                Ok(Arc::new(EtcdPermits(c)) as Arc<dyn PermitFloor>)
            })
        }),
    }
}

/// ZooKeeper: an ephemeral sequential node, the children listed (ours among the `N` lowest
/// holds), the node deleted.
struct ZkPermits(zookeeper_client::Client);

#[async_trait]
impl PermitFloor for ZkPermits {
    async fn cycle(&self, name: &str, n: u32) -> Result<bool> {
        let dir = format!("/bench/floor_{}", name.replace('/', "_"));
        let created = crate::contenders::zk_floor_create(&self.0, &dir).await?;
        let mine = format!("n-{}", created.1);
        let mut children = self.0.list_children(&dir).await?;
        children.sort();
        let got = children.iter().take(n as usize).any(|c| *c == mine);
        self.0.delete(&format!("{dir}/{mine}"), None).await?;
        Ok(got)
    }
}

pub(crate) fn zk_floors(connect: String) -> PermitFloors {
    PermitFloors {
        what: "create EPHEMERAL_SEQUENTIAL + getChildren + delete (zookeeper-client)",
        make: Arc::new(move || {
            let c = connect.clone();
            Box::pin(async move {
                Ok(Arc::new(ZkPermits(zookeeper_client::Client::connect(&c).await?)) as Arc<dyn PermitFloor>)
            })
        }),
    }
}

/// DynamoDB: `N` slot items per name; a conditional PutItem on a free slot (from a random
/// one on), a conditional DeleteItem gives it back.
struct DynamoPermits(aws_sdk_dynamodb::Client, String);

#[async_trait]
impl PermitFloor for DynamoPermits {
    async fn cycle(&self, name: &str, n: u32) -> Result<bool> {
        use crate::contenders::{dynamo_floor_delete, dynamo_floor_put};
        let token = uuid::Uuid::new_v4().simple().to_string();
        let start = random_below(n);
        for k in 0..n {
            let slot = format!("floor/{name}#{}", (start + k) % n);
            if dynamo_floor_put(&self.0, &self.1, &slot, &token).await? {
                dynamo_floor_delete(&self.0, &self.1, &slot, &token).await?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

pub(crate) fn dynamo_floors(client: aws_sdk_dynamodb::Client, table: String) -> PermitFloors {
    PermitFloors {
        what: "conditional PutItem on one of N slot items + conditional DeleteItem (aws-sdk-dynamodb)",
        make: Arc::new(move || {
            let (c, t) = (client.clone(), table.clone());
            Box::pin(async move { Ok(Arc::new(DynamoPermits(c, t)) as Arc<dyn PermitFloor>) })
        }),
    }
}
