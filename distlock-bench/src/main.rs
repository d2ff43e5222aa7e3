//! # distlock-bench
//!
//! distlock beside the raw backend floor and beside the peer crate a user would otherwise
//! pick, on every backend, in one run, against servers the conformance fixtures start
//! (redis-server, etcd, ZooKeeper, and DynamoDB on two emulators: moto, which serves one
//! request at a time, and dynalite, which serves them concurrently) on loopback.
//!
//! ```text
//! cargo run --release -p distlock-bench                      # the full run (several minutes)
//! cargo run --release -p distlock-bench -- --quick           # a few seconds per backend (CI)
//! cargo run --release -p distlock-bench -- --backends redis,etcd --md out.md --json out.json
//! cargo run --release -p distlock-bench -- --backends etcd --only handoff   # one scenario
//! cargo run --release -p distlock-bench -- --only curves --svg bench-results/curves.svg
//! cargo run --release -p distlock-bench -- --backends redis --only throughput --contenders distlock
//! ```
//!
//! Measured per backend: uncontended acquire+release latency (p50, p99); throughput over
//! 10,000 keys with 1, 16 and 64 tasks; hand-off latency on one key with 2 to 32 waiters and
//! holds of 10, 50 and 300 ms; and what holding 1,000 and 10,000 locks with auto-renewal costs
//! (server requests and extend calls per second, client CPU, client memory per lock) and what
//! listing them all takes; and leader failover, a leader process killed with SIGKILL while a
//! candidate waits and an observer watches (time to the new leader, beside the backend's
//! claimed bound); semaphores (uncontended latency for N = 1, 8, 64, throughput on one name
//! with 1, 16, 64 tasks) and read-write locks (read lock throughput with 64 readers, writer to
//! readers hand-off), each beside the floor of one permit (`primitives.rs`). Numbers
//! are reported with ratios against the floor and the peer, and the targets of issue 8 beside
//! them; nothing is asserted.

mod alloc;
mod contenders;
mod curves;
mod failover;
mod primitives;
mod same;
mod scenarios;
mod servers;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::contenders::Factory;

struct Plan {
    quick: bool,
    latency_rounds: usize,
    keys: usize,
    tasks: Vec<usize>,
    /// Throughput passes per contender (the median is reported).
    rounds: usize,
    waiters: Vec<usize>,
    holds: Vec<Duration>,
    handoffs: usize,
    held: Vec<usize>,
    window: Duration,
    /// Leader failovers measured per backend.
    failovers: usize,
    /// The cost curves' points: held locks, and waiters on one key.
    curve_held: Vec<usize>,
    curve_waiters: Vec<usize>,
    /// How long each held-locks point is measured, and hand-offs per waiters point.
    curve_window: Duration,
    curve_handoffs: usize,
    /// Semaphore sizes measured, how long each throughput point runs, readers in the read
    /// lock throughput, and readers and rounds of the writer-to-readers hand-off.
    permits: Vec<u32>,
    prim_window: Duration,
    readers: usize,
    rw_readers: usize,
    rw_handoffs: usize,
    /// Which scenarios run: `latency`, `throughput`, `handoff`, `held`, `failover`, `curves`,
    /// `primitives` (all by default).
    only: Option<Vec<String>>,
}

impl Plan {
    fn runs(&self, scenario: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|s| s == scenario))
    }

    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                latency_rounds: 50,
                keys: 100,
                tasks: vec![1, 16],
                rounds: 1,
                waiters: vec![2],
                holds: vec![Duration::from_millis(10)],
                handoffs: 6,
                held: vec![100],
                window: Duration::from_secs(1),
                failovers: 1,
                // The held-locks scenario's point, so the quick run holds locks once.
                curve_held: vec![100],
                curve_waiters: vec![1, 4],
                curve_window: Duration::from_secs(1),
                curve_handoffs: 6,
                permits: vec![8],
                prim_window: Duration::from_millis(500),
                readers: 16,
                rw_readers: 4,
                rw_handoffs: 2,
                only: None,
            }
        } else {
            Self {
                quick,
                latency_rounds: 2000,
                keys: 10_000,
                tasks: vec![1, 16, 64],
                rounds: 3,
                waiters: vec![2, 8, 32],
                holds: vec![Duration::from_millis(10), Duration::from_millis(50), Duration::from_millis(300)],
                handoffs: 40,
                held: vec![1_000, 10_000],
                window: Duration::from_secs(10),
                failovers: 5,
                curve_held: vec![100, 1_000, 10_000, 100_000],
                curve_waiters: vec![1, 4, 16, 64, 256],
                curve_window: Duration::from_secs(5),
                curve_handoffs: 20,
                permits: vec![1, 8, 64],
                prim_window: Duration::from_secs(3),
                readers: 64,
                rw_readers: 16,
                rw_handoffs: 20,
                only: None,
            }
        }
    }
}

/// A boxed, sendable future.
pub(crate) type BoxFut<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Makes a fresh distlock backend.
pub(crate) type MakeBackend = Arc<dyn Fn() -> BoxFut<Result<Arc<dyn lock_core::LockBackend>>> + Send + Sync>;

/// Reads a server's count of requests served so far.
pub(crate) type RequestCounter = Arc<dyn Fn() -> BoxFut<Option<u64>> + Send + Sync>;

/// One backend's contenders and how to read its server's request counter.
pub(crate) struct Backend {
    /// For the report.
    pub(crate) name: &'static str,
    /// distlock first, then the floor and the peer where there is one.
    pub(crate) factories: Vec<Arc<dyn Factory>>,
    /// Makes a fresh distlock backend for the held-locks measurement.
    pub(crate) ours: MakeBackend,
    /// The server's count of requests served so far, where it exposes one.
    pub(crate) server_requests: Option<RequestCounter>,
    /// The renewal TTL for the held-locks measurement.
    pub(crate) held_ttl: Duration,
    /// Not measured, and why.
    pub(crate) notes: Vec<String>,
    /// Smaller sizes for a slow server (the emulator), applied to the plan.
    pub(crate) cap: Option<Cap>,
    /// Counts requests per uncontended acquire and per release, where the client can.
    pub(crate) requests_per_op: Option<Arc<dyn Fn() -> BoxFut<Result<Value>> + Send + Sync>>,
    /// How a leader process reaches the backend, for the failover measurement (more than
    /// one: the Redis run also measures Redlock and the file backend, which have no run of
    /// their own).
    pub(crate) reach: Vec<failover::Reach>,
    /// The floor of a semaphore permit on this store.
    pub(crate) permit_floor: Option<primitives::PermitFloors>,
    /// The same requests distlock sends for a permit, sent raw (where this program measures
    /// it; Redis and etcd have it in their crates' benches).
    pub(crate) same_floor: Option<primitives::PermitFloors>,
    /// A Rust crate that offers semaphores and read-write locks on this store, as a user
    /// would otherwise pick (Redis: distributed-lock-redis; none found for the others).
    pub(crate) permit_peer: Option<primitives::PermitFloors>,
}

/// Upper bounds on a plan's sizes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cap {
    pub(crate) latency_rounds: usize,
    pub(crate) keys: usize,
    pub(crate) held: usize,
    /// Waiters on one key in the cost curve.
    pub(crate) waiters: usize,
}

/// `sizes`, each at most `cap`, without repeats, in order.
fn dedup_capped(sizes: &[usize], cap: usize) -> Vec<usize> {
    sizes.iter().map(|&n| n.min(cap)).collect::<std::collections::BTreeSet<_>>().into_iter().collect()
}

fn ratio(a: f64, b: f64) -> Value {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        json!((a / b * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let version = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_owned())
            .unwrap_or_default()
    };
    json!({
        "cpu": cpu,
        "cores": cores,
        "memory_gib": (mem_kb as f64 / 1048576.0 * 10.0).round() / 10.0,
        "os": version("sh", &["-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "redis": version("redis-server", &["--version"]),
        "etcd": version("etcd", &["--version"]),
        "zookeeper": version("sh", &["-c", "dpkg-query -W -f='${Version}' zookeeper 2>/dev/null"]),
        "moto": version(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/pyenv/bin/python"), &["-c", "import moto; print(moto.__version__)"]),
        "dynalite": std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dynalite/node_modules/dynalite/package.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned))
            .unwrap_or_default(),
    })
}

async fn run_backend(b: &Backend, plan: &Plan) -> Result<Value> {
    let capped;
    let plan = match b.cap {
        Some(c) => {
            capped = Plan {
                quick: plan.quick,
                latency_rounds: plan.latency_rounds.min(c.latency_rounds),
                keys: plan.keys.min(c.keys),
                tasks: plan.tasks.clone(),
                rounds: plan.rounds,
                waiters: plan.waiters.clone(),
                holds: plan.holds.clone(),
                handoffs: plan.handoffs,
                held: dedup_capped(&plan.held, c.held),
                window: plan.window,
                failovers: plan.failovers,
                curve_held: dedup_capped(&plan.curve_held, c.held),
                curve_waiters: dedup_capped(&plan.curve_waiters, c.waiters),
                curve_window: plan.curve_window,
                curve_handoffs: plan.curve_handoffs,
                permits: plan.permits.clone(),
                prim_window: plan.prim_window,
                readers: plan.readers,
                rw_readers: plan.rw_readers,
                rw_handoffs: plan.rw_handoffs,
                only: plan.only.clone(),
            };
            &capped
        }
        None => plan,
    };
    let tag = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let mut out = json!({ "backend": b.name, "notes": b.notes });
    out["contenders"] = json!(b
        .factories
        .iter()
        .map(|f| json!({"kind": f.kind(), "what": f.describe()}))
        .collect::<Vec<_>>());
    if plan.runs("latency") {
        latency(b, plan, &tag, &mut out).await?;
    }
    if plan.runs("throughput") {
        throughput(b, plan, &tag, &mut out).await?;
    }
    if plan.runs("handoff") {
        handoff(b, plan, &tag, &mut out).await?;
    }
    if plan.runs("held") {
        held(b, plan, &tag, &mut out).await?;
    }
    if plan.runs("curves") {
        curves::measure(b, plan, &tag, &mut out).await?;
    }
    if plan.runs("primitives") {
        out["primitives"] = primitives::measure(b, plan, &tag).await?;
    }
    if plan.runs("failover") {
        let mut rows = Vec::new();
        for reach in &b.reach {
            eprintln!("[{}] leader failover on {} x{}", b.name, reach.kind, plan.failovers);
            let mut row = failover::measure(reach, plan.failovers, &tag).await?;
            row["backend"] = json!(reach.kind);
            rows.push(row);
        }
        out["failover"] = json!(rows);
    }
    Ok(out)
}

async fn latency(b: &Backend, plan: &Plan, tag: &str, out: &mut Value) -> Result<()> {
    let kinds: Vec<&str> = b.factories.iter().map(|f| f.kind()).collect();
    let idx = |k: &str| kinds.iter().position(|x| *x == k);
    eprintln!("[{}] latency", b.name);
    let lat = scenarios::latency(&b.factories, plan.latency_rounds, tag).await?;
    out["latency_ms"] = json!(b
        .factories
        .iter()
        .zip(&lat)
        .map(|(f, (p50, p99))| json!({"kind": f.kind(), "p50": p50, "p99": p99}))
        .collect::<Vec<_>>());
    let ours = lat[0].0;
    out["latency_ratio"] = json!({
        "ours_over_floor": idx("floor").map(|i| ratio(ours, lat[i].0)).unwrap_or(Value::Null),
        "ours_over_peer": idx("peer").map(|i| ratio(ours, lat[i].0)).unwrap_or(Value::Null),
    });

    if let Some(f) = &b.requests_per_op {
        eprintln!("[{}] requests per operation", b.name);
        out["requests_per_op"] = f().await?;
    }
    Ok(())
}

/// Throughput, each contender measured `plan.rounds` times in turn, the order rotated each
/// round (so none always runs first, right after another's clients went away), and the
/// median kept: one pass over the keys takes well under a second on a fast backend, and
/// single passes on this machine vary by tens of percent.
async fn throughput(b: &Backend, plan: &Plan, tag: &str, out: &mut Value) -> Result<()> {
    let mut tp = Vec::new();
    for &tasks in &plan.tasks {
        let mut row = json!({"tasks": tasks, "keys": plan.keys, "rounds": plan.rounds});
        let mut ours_ops = f64::NAN;
        let n = b.factories.len();
        let mut runs = vec![Vec::new(); n];
        for round in 0..plan.rounds {
            for k in 0..n {
                let i = (round + k) % n;
                let f = &b.factories[i];
                eprintln!("[{}] throughput {} x{tasks} (round {})", b.name, f.kind(), round + 1);
                let t = format!("{tag}/{}/{tasks}/{round}", f.kind());
                runs[i].push(scenarios::throughput(f, plan.keys, tasks, &t).await?);
            }
        }
        for (f, mut r) in b.factories.iter().zip(runs) {
            r.sort_by(f64::total_cmp);
            let ops = r[r.len() / 2];
            if f.kind() == "distlock" {
                ours_ops = ops;
            }
            row[f.kind()] = json!(ops.round());
        }
        for k in ["floor", "peer"] {
            if let Some(v) = row[k].as_f64() {
                row[format!("ours_over_{k}")] = ratio(ours_ops, v);
            }
        }
        tp.push(row);
    }
    out["throughput_ops_per_s"] = json!(tp);
    Ok(())
}

async fn handoff(b: &Backend, plan: &Plan, tag: &str, out: &mut Value) -> Result<()> {
    let mut ho = Vec::new();
    for &hold in &plan.holds {
        for &w in &plan.waiters {
            let mut row = json!({"waiters": w, "hold_ms": hold.as_millis() as u64});
            for f in &b.factories {
                eprintln!("[{}] hand-off {} waiters={w} hold={hold:?}", b.name, f.kind());
                let key = format!("{tag}/ho/{}/{w}/{}", f.kind(), hold.as_millis());
                if let Some((p50, p99)) = scenarios::handoff(f, w, hold, plan.handoffs, &key).await? {
                    row[f.kind()] = json!({"p50": p50, "p99": p99});
                }
            }
            ho.push(row);
        }
    }
    out["handoff_ms"] = json!(ho);
    Ok(())
}

async fn held(b: &Backend, plan: &Plan, tag: &str, out: &mut Value) -> Result<()> {
    let mut held = Vec::new();
    for &n in &plan.held {
        eprintln!("[{}] holding {n} locks", b.name);
        let backend = (b.ours)().await?;
        let tag_n = format!("{tag}/{n}");
        let cost = match scenarios::held_cost(
            backend,
            n,
            b.held_ttl,
            plan.window,
            &tag_n,
            b.server_requests.as_ref(),
            true,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                // Reported, not fatal: an emulator that cannot keep up loses locks.
                eprintln!("[{}] holding {n} locks: {e:#}", b.name);
                held.push(
                    json!({ "locks": n, "ttl_ms": b.held_ttl.as_millis() as u64, "error": format!("{e:#}") }),
                );
                continue;
            }
        };
        let per_s = cost.server_per_s.map(|v| json!((v * 10.0).round() / 10.0)).unwrap_or(Value::Null);
        held.push(json!({
            "locks": n,
            "ttl_ms": b.held_ttl.as_millis() as u64,
            "extend_calls_per_s": (cost.extends_per_s * 10.0).round() / 10.0,
            "server_requests_per_s": per_s,
            "client_cpu_pct": (cost.cpu_pct * 10.0).round() / 10.0,
            "client_bytes_per_lock": cost.bytes_per_lock.round(),
            "client_bytes_per_lock_all": cost.bytes_per_lock_all.round(),
            "list_ms": cost.listing.map(|l| (l.ms * 10.0).round() / 10.0),
            "list_server_requests": cost.listing.and_then(|l| l.requests),
        }));
    }
    out["held_locks"] = json!(held);
    Ok(())
}

fn fmt(v: &Value) -> String {
    match v {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 || f.abs() >= 100.0 {
                format!("{f:.0}")
            } else {
                format!("{f:.3}")
            }
        }
        Value::Null => "–".into(),
        other => other.to_string(),
    }
}

fn markdown(report: &Value) -> String {
    let mut md = String::new();
    md.push_str("# distlock-bench results\n\n");
    let m = &report["machine"];
    md.push_str(&format!(
        "Machine: {} ({} cores), {} GiB, {}. Servers: {}; {}; ZooKeeper {}; moto {}; dynalite {}. Mode: {}.\n\n",
        m["cpu"].as_str().unwrap_or(""),
        m["cores"],
        m["memory_gib"],
        m["os"].as_str().unwrap_or(""),
        m["redis"].as_str().unwrap_or(""),
        m["etcd"].as_str().unwrap_or(""),
        m["zookeeper"].as_str().unwrap_or(""),
        m["moto"].as_str().unwrap_or(""),
        m["dynalite"].as_str().unwrap_or(""),
        report["mode"].as_str().unwrap_or(""),
    ));
    md.push_str("Client and servers share the machine over loopback: compare the ratios, not the absolute numbers.\n\n");
    for b in report["backends"].as_array().into_iter().flatten() {
        md.push_str(&format!("## {}\n\n", b["backend"].as_str().unwrap_or("")));
        if let Some(e) = b["error"].as_str() {
            md.push_str(&format!("Not measured: {e}\n\n"));
            continue;
        }
        for c in b["contenders"].as_array().into_iter().flatten() {
            md.push_str(&format!(
                "- {}: {}\n",
                c["kind"].as_str().unwrap_or(""),
                c["what"].as_str().unwrap_or("")
            ));
        }
        for n in b["notes"].as_array().into_iter().flatten() {
            md.push_str(&format!("- note: {}\n", n.as_str().unwrap_or("")));
        }
        md.push_str("\nUncontended acquire+release:\n\n| contender | p50 (ms) | p99 (ms) |\n|---|---|---|\n");
        for l in b["latency_ms"].as_array().into_iter().flatten() {
            md.push_str(&format!(
                "| {} | {} | {} |\n",
                l["kind"].as_str().unwrap_or(""),
                fmt(&l["p50"]),
                fmt(&l["p99"])
            ));
        }
        md.push_str(&format!(
            "\nours/floor p50 = **{}**, ours/peer p50 = **{}**\n\n",
            fmt(&b["latency_ratio"]["ours_over_floor"]),
            fmt(&b["latency_ratio"]["ours_over_peer"])
        ));
        let r = &b["requests_per_op"];
        if !r.is_null() {
            md.push_str(&format!(
                "Requests per operation (every HTTP attempt, counted at the client, {} rounds; target one each):\n\n\
                 | contender | per uncontended acquire | per release |\n|---|---|---|\n\
                 | distlock | {} | {} |\n| floor | {} | {} |\n| peer | {} | {} |\n\n",
                r["rounds"],
                fmt(&r["distlock"]["acquire"]),
                fmt(&r["distlock"]["release"]),
                fmt(&r["floor"]["acquire"]),
                fmt(&r["floor"]["release"]),
                fmt(&r["peer"]["acquire"]),
                fmt(&r["peer"]["release"])
            ));
        }
        md.push_str("Throughput (lock+release per second over distinct keys; the median of the passes, each contender in turn, the order rotated each pass):\n\n| tasks | keys | distlock | floor | peer | ours/floor | ours/peer |\n|---|---|---|---|---|---|---|\n");
        for r in b["throughput_ops_per_s"].as_array().into_iter().flatten() {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r["tasks"],
                r["keys"],
                fmt(&r["distlock"]),
                fmt(&r["floor"]),
                fmt(&r["peer"]),
                fmt(&r["ours_over_floor"]),
                fmt(&r["ours_over_peer"])
            ));
        }
        md.push_str("\nHand-off on one key, from the release call to the next holder (p50 / p99 ms):\n\n| hold | waiters | distlock | peer |\n|---|---|---|---|\n");
        for r in b["handoff_ms"].as_array().into_iter().flatten() {
            let cell = |k: &str| {
                if r[k].is_null() {
                    "–".to_owned()
                } else {
                    format!("{} / {}", fmt(&r[k]["p50"]), fmt(&r[k]["p99"]))
                }
            };
            md.push_str(&format!(
                "| {} ms | {} | {} | {} |\n",
                r["hold_ms"],
                r["waiters"],
                cell("distlock"),
                cell("peer")
            ));
        }
        md.push_str("\nHolding many locks with auto-renewal (distlock):\n\n| locks | TTL (ms) | extend calls/s | server requests/s | client CPU % | client heap bytes/lock (one more lock) | (all locks, pools included) | list all (ms) | list server requests |\n|---|---|---|---|---|---|---|---|---|\n");
        for r in b["held_locks"].as_array().into_iter().flatten() {
            if let Some(e) = r["error"].as_str() {
                md.push_str(&format!("| {} | {} | failed: {e} | | | | | | |\n", r["locks"], r["ttl_ms"]));
                continue;
            }
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r["locks"],
                r["ttl_ms"],
                fmt(&r["extend_calls_per_s"]),
                fmt(&r["server_requests_per_s"]),
                fmt(&r["client_cpu_pct"]),
                fmt(&r["client_bytes_per_lock"]),
                fmt(&r["client_bytes_per_lock_all"]),
                fmt(&r["list_ms"]),
                fmt(&r["list_server_requests"])
            ));
        }
        md.push_str(&curves::markdown(b, fmt));
        md.push_str(&primitives::markdown(b, fmt));
        let rows = b["failover"].as_array().cloned().unwrap_or_default();
        if !rows.is_empty() {
            md.push_str(
                "\nLeader failover: a leader process killed with SIGKILL, a candidate waiting and an observer watching \
                 (from the kill, ms):\n\n\
                 | backend | rounds | TTL | bound | elected p50 | elected max | observed p50 | observed max |\n\
                 |---|---|---|---|---|---|---|---|\n",
            );
            for f in rows {
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    f["backend"].as_str().unwrap_or("?"),
                    f["rounds"],
                    f["ttl_ms"],
                    f["bound_ms"],
                    fmt(&f["elected_ms"]["p50"]),
                    fmt(&f["elected_ms"]["max"]),
                    fmt(&f["observed_ms"]["p50"]),
                    fmt(&f["observed_ms"]["max"])
                ));
            }
        }
        md.push('\n');
    }
    md.push_str(TARGETS);
    md
}

const TARGETS: &str = "## Targets (issue 8; reported, not asserted)\n\n\
- Redis acquire+release within 1.1× of the floor, and no slower than rslock.\n\
- Hand-off p50 at most 1 ms on Redis, at most 3 ms on etcd at every hold length, at most 3 ms on ZooKeeper.\n\
- 10,000 held etcd locks renewed through one lease keep-alive: server requests per TTL/3 independent of the number of locks.\n\
- Client memory at most 2 KiB per held lock (read against the one-more-lock column: the other one includes connection pools grown by 64 concurrent acquires).\n";

/// The scenarios `--only` can pick.
const SCENARIOS: [&str; 7] = ["latency", "throughput", "handoff", "held", "failover", "curves", "primitives"];

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The leader process of the failover measurement: this program again.
    if let [flag, kind, target, name] = args.as_slice() {
        if flag == "--leader" {
            return failover::lead(kind, target, name).await;
        }
    }
    let quick = args.iter().any(|a| a == "--quick");
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let wanted: Vec<String> = value("--backends")
        .unwrap_or_else(|| "redis,etcd,zookeeper,dynamodb,dynalite".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    let mut plan = Plan::new(quick);
    plan.only = value("--only").map(|s| s.split(',').map(|x| x.trim().to_owned()).collect());
    if let Some(bad) = plan.only.iter().flatten().find(|s| !SCENARIOS.contains(&s.as_str())) {
        anyhow::bail!("--only: unknown scenario {bad:?}; the scenarios are {}", SCENARIOS.join(", "));
    }
    // Only these contenders (distlock, floor, peer), for profiling one of them.
    let contenders: Option<Vec<String>> =
        value("--contenders").map(|s| s.split(',').map(|x| x.trim().to_owned()).collect());
    let mut results = Vec::new();
    let mut keep = Vec::new();
    let mut failed = Vec::new();
    for name in &wanted {
        let (mut backend, servers) =
            servers::start(name).await.with_context(|| format!("starting {name}"))?;
        if let Some(kinds) = &contenders {
            // distlock stays first where kept: the scenarios read it as the first contender.
            backend.factories.retain(|f| kinds.iter().any(|k| k == f.kind()));
            anyhow::ensure!(!backend.factories.is_empty(), "--contenders: none of {kinds:?} runs on {name}");
        }
        keep.push(servers);
        // One backend failing does not lose the others' results; the run still fails at the end.
        match run_backend(&backend, &plan).await {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("measuring {name} failed: {e:#}");
                results.push(json!({ "backend": backend.name, "error": format!("{e:#}") }));
                failed.push(name.clone());
            }
        }
    }
    let report = json!({
        "mode": if plan.quick { "quick" } else { "full" },
        "machine": machine(),
        "backends": results,
    });
    let md = markdown(&report);
    println!("{md}");
    if let Some(p) = value("--md") {
        std::fs::write(&p, &md).with_context(|| format!("writing {p}"))?;
    }
    if let Some(p) = value("--svg") {
        std::fs::write(&p, curves::svg(&report)).with_context(|| format!("writing {p}"))?;
    }
    if let Some(p) = value("--json") {
        std::fs::write(&p, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {p}"))?;
    }
    anyhow::ensure!(failed.is_empty(), "measuring {} failed", failed.join(", "));
    Ok(())
}
