//! Runs one scenario: probe the backend, start the register, the proxies and the workers,
//! let the nemesis work until the tail, heal, wait for the workers, check the history.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use distlock::{Capabilities, WakeMode};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::checker::{self, Figures, Kill, Params, Verdict};
use crate::clock::{mono_ns, ns};
use crate::error::{ChaosError, Result};
use crate::nemesis::{FaultEvent, Nemesis, Timing};
use crate::pool::Pool;
use crate::proxy::Proxy;
use crate::record;
use crate::register::RegisterServer;
use crate::scenarios::{self, Backend, Fault, Scenario};
use crate::servers::ServerSet;
use crate::worker::WorkerArgs;

/// Settings shared by every scenario of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The lock's TTL (and the session timeout on session backends).
    pub ttl: Duration,
    /// Worker processes.
    pub workers: u32,
    /// How long each scenario's workload runs (lengthened if its longest fault would not fit).
    pub duration: Duration,
    /// The gap before each fault, drawn from this range.
    pub interval: (Duration, Duration),
    /// The longest pause of a worker between rounds.
    pub think: Duration,
    /// The run's seed (each scenario's is derived from it and its name).
    pub seed: u64,
    /// Where histories and worker logs go.
    pub work_dir: PathBuf,
    /// The workers use this deliberately broken lock (the harness's own test).
    pub broken: Option<crate::broken::Breakage>,
}

/// Everything one scenario produced.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// `backend.family`.
    pub name: String,
    /// The backend.
    pub backend: Backend,
    /// The nemesis family.
    pub family: String,
    /// The faults the family draws from.
    pub family_faults: Vec<Fault>,
    /// This scenario's seed (reproduce with `--scenario NAME --seed SEED`).
    pub seed: u64,
    /// How long the workload ran, s.
    pub duration_s: f64,
    /// The TTL, ms.
    pub ttl_ms: u64,
    /// The lease (TTL or session timeout), ms.
    pub lease_ms: u64,
    /// `crash_bound(ttl)`, ms.
    pub crash_bound_ms: u64,
    /// The median uncontended acquire, ms (the critical section waits 0–2× it).
    pub latency_ms: f64,
    /// Fault lengths.
    pub timing: Option<Timing>,
    /// The faults injected.
    pub faults: Vec<FaultEvent>,
    /// How many of each (skipped ones excluded).
    pub fault_counts: BTreeMap<&'static str, usize>,
    /// The checker's figures.
    pub figures: Figures,
    /// The verdict.
    pub verdict: Verdict,
    /// Workers that exited abnormally.
    pub worker_failures: Vec<String>,
    /// Where the history is.
    pub history_dir: String,
}

impl ScenarioResult {
    /// A result for a scenario the harness could not run.
    pub fn failed(sc: &Scenario, seed: u64, err: &ChaosError) -> Self {
        Self {
            name: sc.name.clone(),
            backend: sc.backend,
            family: sc.family.to_owned(),
            family_faults: sc.faults.clone(),
            seed,
            duration_s: 0.0,
            ttl_ms: 0,
            lease_ms: 0,
            crash_bound_ms: 0,
            latency_ms: 0.0,
            timing: None,
            faults: Vec::new(),
            fault_counts: BTreeMap::new(),
            figures: Figures::default(),
            verdict: Verdict { failures: vec![format!("harness error: {err}")], expected: Vec::new() },
            worker_failures: Vec::new(),
            history_dir: String::new(),
        }
    }
}

/// A scenario's seed: the run's, mixed with its name (FNV-1a), so one scenario replays alone.
pub fn scenario_seed(run_seed: u64, name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
        ^ run_seed
}

struct Probe {
    caps: Capabilities,
    latency: Duration,
}

/// Connects straight to the servers (no proxy), takes and releases a scratch lock a few times:
/// the capabilities, and the request latency the critical section's wait scales with.
async fn probe(url: &str, key: &str, ttl: Duration) -> Result<Probe> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let client = loop {
        match distlock::connect(url).await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let mut lat = Vec::new();
    for _ in 0..15 {
        let t = tokio::time::Instant::now();
        let g = client.lock(key).ttl(ttl).wait(Duration::from_secs(20)).acquire().await?;
        lat.push(t.elapsed());
        g.release().await?;
    }
    lat.sort();
    Ok(Probe { caps: client.capabilities().clone(), latency: lat[lat.len() / 2] })
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| ChaosError::io(format!("clear {}", dir.display()), e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| ChaosError::io(format!("create {}", dir.display()), e))
}

/// What a scenario runs with, once the backend has been probed.
struct Setup {
    seed: u64,
    dir: PathBuf,
    key: String,
    direct: String,
    urls: Vec<String>,
    proxies: Arc<Vec<Vec<Proxy>>>,
    probe: Probe,
    ttl_ms: u64,
    lease: Duration,
    bound: Duration,
    timing: Timing,
    tail: Duration,
    duration: Duration,
}

async fn setup(sc: &Scenario, servers: &mut ServerSet, s: &Settings, index: usize) -> Result<Setup> {
    let seed = scenario_seed(s.seed, &sc.name);
    let dir = s.work_dir.join(&sc.name);
    fresh_dir(&dir)?;
    let key = format!("chaos/{}", sc.name);
    let table = format!("chaos_{index}");
    let ttl_ms = u64::try_from(s.ttl.as_millis()).unwrap_or(u64::MAX);
    let upstreams = servers.upstreams();
    let files = servers.files_dir().map(Path::to_owned);
    let direct = sc.backend.url(&upstreams, files.as_deref(), &table, ttl_ms, true);
    let probe = probe(&direct, &format!("{key}/probe"), s.ttl).await?;
    let (lease, bound) = (probe.caps.lease_length(s.ttl), probe.caps.crash_bound(s.ttl));
    let timing = Timing::new(sc.backend, lease, bound);
    let tail = lease.max(Duration::from_secs(2));
    let longest = sc.faults.iter().map(|f| timing.length(*f)).max().unwrap_or_default();
    let duration = s.duration.max(s.interval.1 + longest + tail + Duration::from_secs(1));
    // Each worker reaches every server node through its own proxy.
    let (mut proxies, mut urls) = (Vec::new(), Vec::new());
    for _ in 0..s.workers {
        let mut mine = Vec::new();
        for up in &upstreams {
            mine.push(Proxy::start(*up).await?);
        }
        let addrs: Vec<_> = mine.iter().map(Proxy::addr).collect();
        urls.push(sc.backend.url(&addrs, files.as_deref(), &table, ttl_ms, false));
        proxies.push(mine);
    }
    let proxies = Arc::new(proxies);
    Ok(Setup { seed, dir, key, direct, urls, proxies, probe, ttl_ms, lease, bound, timing, tail, duration })
}

/// Runs `sc` on `servers`.
///
/// # Errors
/// When the harness itself cannot run it (a server, the probe, a worker that cannot start).
pub async fn run_scenario(
    sc: &Scenario,
    servers: &mut ServerSet,
    s: &Settings,
    index: usize,
) -> Result<ScenarioResult> {
    let st = setup(sc, servers, s, index).await?;
    let register = RegisterServer::start().await?;
    let start = mono_ns();
    let deadline = start + ns(st.duration);
    let wait = st.bound * 2 + Duration::from_secs(5);
    let template = WorkerArgs {
        url: String::new(),
        key: st.key.clone(),
        slot: 0,
        inc: 0,
        register: register.addr(),
        history: PathBuf::new(),
        ttl_ms: st.ttl_ms,
        wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        deadline_ns: deadline,
        latency_us: u64::try_from(st.probe.latency.as_micros()).unwrap_or(u64::MAX).max(1),
        think_ms: u64::try_from(s.think.as_millis()).unwrap_or(100),
        // Holder faults need many short holds (the lock-set workload's interleavings); network
        // and server faults need holds that last into the lease's end too.
        long_hold_one_in: if sc.faults.iter().all(|f| f.on_holder_only()) { 0 } else { 8 },
        // Now and then a grant lives on auto-renewal: the renewal's promise (the guard's
        // `valid_until`) is held to exclusion like the first grant's. A holder fault that
        // comes while such a hold is in its first TTL is put on it (the nemesis asks the
        // register for one before arming on the next read): the renewals must survive the
        // fault, or the guard must say it lost.
        renewed_hold_every_ms: 12_000,
        seed: st.seed,
        parent: std::process::id(),
        broken: s.broken,
    };
    let mut pool = Pool::start(template, st.urls.clone(), st.dir.clone())?;
    let mut nemesis = Nemesis {
        servers,
        pool: &mut pool,
        register: &register,
        proxies: st.proxies.clone(),
        timing: st.timing,
        rng: StdRng::seed_from_u64(st.seed),
        backend: sc.backend,
        recreate_url: (sc.backend == Backend::Dynamodb).then(|| st.direct.clone()),
        stretch_until: None,
    };
    let faults = nemesis.run(&sc.faults, deadline.saturating_sub(ns(st.tail)), s.interval).await;
    nemesis.heal().await;
    drop(nemesis);
    // The proxies (held by `st`) live until every worker has exited.
    let left = Duration::from_nanos(deadline.saturating_sub(mono_ns()));
    pool.finish(left + wait + Duration::from_secs(30)).await;
    let duration_s = (mono_ns() - start) as f64 / 1e9;
    let log = register.snapshot();
    let ops = record::load_dir(&st.dir)?;
    Ok(evaluate(sc, &st, faults, &ops, &log, &pool.failures, duration_s))
}

fn evaluate(
    sc: &Scenario,
    st: &Setup,
    faults: Vec<FaultEvent>,
    ops: &[record::Op],
    log: &crate::register::RegisterLog,
    worker_failures: &[String],
    duration_s: f64,
) -> ScenarioResult {
    // Faults that happened (an armed fault that found no holder did not; one whose action
    // failed may not have).
    let happened = |e: &&FaultEvent| {
        !e.failed && (e.holder.is_some() || e.node.is_some() || e.fault == Fault::SlowLinks)
    };
    let injected: Vec<Fault> = faults.iter().filter(happened).map(|e| e.fault).collect();
    let renewed: std::collections::HashSet<(u32, u32, u64)> = ops
        .iter()
        .filter(|o| o.kind == record::OpKind::Renew)
        .filter_map(|o| Some((o.w, o.inc, o.token?)))
        .collect();
    let (expected_exclusion, expected_tokens) = scenarios::expected(sc.backend, &injected);
    let poll = match st.probe.caps.wake {
        WakeMode::Poll { max_interval } => max_interval,
        _ => Duration::from_millis(250),
    };
    let params = Params {
        lease_ns: ns(st.lease),
        bound_ns: ns(st.bound),
        slack_ns: ns(poll + st.probe.latency * 4 + Duration::from_secs(1)),
        kills: faults
            .iter()
            .filter(|e| e.fault == Fault::KillHolder)
            .filter_map(|e| e.holder.map(|h| Kill { at: e.start_ns, token: h.token }))
            .collect(),
        // A pause of a grant on auto-renewal outlasts its renewals: its guard then says it
        // lost the lock and the worker writes nothing, so such a pause cannot cost the
        // unfenced control an update.
        require_unfenced_loss: faults.iter().filter(happened).any(|e| {
            e.fault.stales_holder() && e.holder.is_some_and(|h| !renewed.contains(&(h.w, h.inc, h.token)))
        }),
        expected_exclusion,
        expected_windows: faults
            .iter()
            .filter(happened)
            .filter(|e| scenarios::excuses_overlaps(sc.backend, e.fault))
            .map(|e| (e.start_ns, e.end_ns.max(e.start_ns).saturating_add(ns(st.lease))))
            .collect(),
        expected_tokens,
        expected_tokens_from: faults
            .iter()
            .filter(happened)
            .filter(|e| scenarios::excuses_tokens(sc.backend, e.fault))
            .map(|e| e.start_ns)
            .min(),
        faults_scheduled: !sc.faults.is_empty(),
        heals: faults.iter().filter(happened).map(|e| e.end_ns.max(e.start_ns)).collect(),
        fault_spans: faults
            .iter()
            .filter(happened)
            .filter(|e| !e.fault.on_holder_only())
            .map(|e| (e.start_ns, e.end_ns.max(e.start_ns).saturating_add(ns(st.lease))))
            .collect(),
    };
    let (figures, mut verdict) = checker::check(ops, log, &params);
    verdict.failures.extend(worker_failures.iter().map(|f| format!("worker failure: {f}")));
    verdict.failures.extend(
        faults
            .iter()
            .filter(|e| e.failed)
            .map(|e| format!("the fault {} failed: {}", e.fault.name(), e.detail)),
    );
    let mut fault_counts = BTreeMap::new();
    for f in &injected {
        *fault_counts.entry(f.name()).or_default() += 1;
    }
    ScenarioResult {
        name: sc.name.clone(),
        backend: sc.backend,
        family: sc.family.to_owned(),
        family_faults: sc.faults.clone(),
        seed: st.seed,
        duration_s,
        ttl_ms: st.ttl_ms,
        lease_ms: u64::try_from(st.lease.as_millis()).unwrap_or(0),
        crash_bound_ms: u64::try_from(st.bound.as_millis()).unwrap_or(0),
        latency_ms: st.probe.latency.as_secs_f64() * 1e3,
        timing: Some(st.timing),
        faults,
        fault_counts,
        figures,
        verdict,
        worker_failures: worker_failures.to_vec(),
        history_dir: st.dir.display().to_string(),
    }
}
