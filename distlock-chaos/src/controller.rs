//! The controller: runs the chosen scenarios in order, starting each backend's servers once
//! for its consecutive scenarios, and writes the report after every scenario (so an
//! interrupted run keeps what it measured).

use std::path::{Path, PathBuf};

use conformance_tests::fixtures::{dynamo::MotoServer, etcd::EtcdCluster, temp_dir, zk::ZkEnsemble};

use crate::error::Result;
use crate::report::{self, Environment};
use crate::run::{run_scenario, scenario_seed, ScenarioResult, Settings};
use crate::scenarios::{Fault, Scenario, Servers};
use crate::servers::{RedisNode, ServerSet};

/// What to run and where to write.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Shared settings.
    pub settings: Settings,
    /// Where `RESULTS.md` and `results.json` go.
    pub out: PathBuf,
    /// `quick`, `full` or `custom`.
    pub mode: String,
    /// The command line, for the report.
    pub command: String,
}

async fn start_servers(kind: Servers, shim: Option<&Path>) -> Result<ServerSet> {
    Ok(match kind {
        Servers::Files => ServerSet::Files(temp_dir("distlock-chaos-files-")?),
        Servers::Redis(n, persist) => {
            let mut nodes = Vec::with_capacity(n);
            for _ in 0..n {
                nodes.push(RedisNode::start(persist, shim).await?);
            }
            ServerSet::Redis(nodes)
        }
        Servers::Etcd => ServerSet::Etcd(EtcdCluster::start(3).await?),
        Servers::Zk => ServerSet::Zk(ZkEnsemble::start(3).await?),
        Servers::Moto => ServerSet::Moto(Box::new(MotoServer::start().await?)),
    })
}

fn summary(i: usize, n: usize, r: &ScenarioResult) -> String {
    let f = &r.figures;
    let lost = |k: &str| f.registers.get(k).map_or(0, |x| x.lost);
    let verdict = if r.verdict.passed() { "pass" } else { "FAIL" };
    let mut s = format!(
        "[{}/{n}] {} {verdict}: {:.0} s, faults {:?}, grants {}, fenced lost {}, unfenced lost {}, overlaps {} definite / {} belief, takeover max {}",
        i + 1,
        r.name,
        r.duration_s,
        r.fault_counts,
        f.grants,
        lost("fenced"),
        lost("unfenced"),
        f.definite_overlaps,
        f.belief_overlaps,
        f.takeover_max_ms.map_or_else(|| "–".into(), |m| format!("{m:.0} ms")),
    );
    let on_renewed = r.faults.iter().filter(|e| e.on_renewed && !e.failed).count();
    if on_renewed > 0 {
        s.push_str(&format!(", {on_renewed} on renewed holds"));
    }
    for m in r.verdict.failures.iter().chain(&r.verdict.expected) {
        s.push_str(&format!("\n      {m}"));
    }
    s
}

/// Runs the plan; `Ok(true)` when every scenario passed.
///
/// # Errors
/// When the report cannot be written or the work directory made.
pub async fn run(plan: Plan) -> Result<bool> {
    let s = &plan.settings;
    let env = Environment {
        machine: report::machine(),
        servers: report::server_versions(),
        started: report::utc_now(),
        mode: plan.mode.clone(),
        seed: s.seed,
        command: plan.command.clone(),
        settings: [
            ("ttl", format!("{} s", s.ttl.as_secs_f64())),
            ("workers", s.workers.to_string()),
            ("duration", format!("{} s", s.duration.as_secs_f64())),
            ("interval", format!("{}–{} s", s.interval.0.as_secs_f64(), s.interval.1.as_secs_f64())),
            ("think", format!("{} ms", s.think.as_millis())),
        ]
        .into_iter()
        .collect(),
    };
    std::fs::create_dir_all(&s.work_dir)
        .map_err(|e| crate::error::ChaosError::io("create the work dir", e))?;
    let mut shim: Option<PathBuf> = None;
    let mut current: Option<((Servers, bool), ServerSet)> = None;
    let mut results = Vec::new();
    let n = plan.scenarios.len();
    for (i, sc) in plan.scenarios.iter().enumerate() {
        let clock = sc.faults.iter().any(|f| matches!(f, Fault::ClockStep | Fault::ClockStepRestart));
        let want = (sc.backend.servers(), clock);
        eprintln!("[{}/{n}] {} …", i + 1, sc.name);
        let result = match prepare(&mut current, want, &mut shim, &s.work_dir).await {
            Ok(servers) => run_scenario(sc, servers, s, i).await,
            Err(e) => Err(e),
        };
        let result = result.unwrap_or_else(|e| {
            // Start the next scenario on fresh servers.
            current = None;
            ScenarioResult::failed(sc, scenario_seed(s.seed, &sc.name), &e)
        });
        eprintln!("{}", summary(i, n, &result));
        results.push(result);
        report::write(&plan.out, &env, &results)?;
    }
    Ok(results.iter().all(|r| r.verdict.passed()))
}

async fn prepare<'a>(
    current: &'a mut Option<((Servers, bool), ServerSet)>,
    want: (Servers, bool),
    shim: &mut Option<PathBuf>,
    work: &Path,
) -> Result<&'a mut ServerSet> {
    if current.as_ref().is_none_or(|(k, _)| *k != want) {
        *current = None;
        if want.1 && shim.is_none() {
            *shim = Some(crate::clockshim::build(work)?);
        }
        let set = start_servers(want.0, if want.1 { shim.as_deref() } else { None }).await?;
        *current = Some((want, set));
    }
    match current {
        Some((_, set)) => Ok(set),
        None => Err(crate::error::ChaosError::Config("no servers".into())),
    }
}
