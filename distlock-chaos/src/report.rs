//! The report: the machine and server versions, a markdown table with every figure, and the
//! same in JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::error::{ChaosError, Result};
use crate::run::ScenarioResult;
use crate::scenarios::{Expected, EXPECTED};

/// Where and how the run ran.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// Cores, memory, kernel, CPU.
    pub machine: BTreeMap<&'static str, String>,
    /// Server versions.
    pub servers: BTreeMap<&'static str, String>,
    /// When the run started (UTC).
    pub started: String,
    /// `quick` or `full` (or `custom`).
    pub mode: String,
    /// The run's seed.
    pub seed: u64,
    /// The command line.
    pub command: String,
    /// TTL, workers, duration, interval, think time.
    pub settings: BTreeMap<&'static str, String>,
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_owned()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The machine: cores, memory, kernel, CPU model.
pub fn machine() -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    m.insert("cores", cores.to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    m.insert("memory_gib", format!("{:.1}", kb as f64 / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    m.insert("kernel", format!("Linux {}", kernel.trim()));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned());
    m.insert("cpu", model.unwrap_or_else(|| "unknown".into()));
    m
}

/// The versions of the servers the fixtures start.
pub fn server_versions() -> BTreeMap<&'static str, String> {
    let mut v = BTreeMap::new();
    let redis = first_line("redis-server", &["--version"]);
    v.insert(
        "redis",
        redis.split_whitespace().find_map(|w| w.strip_prefix("v=")).unwrap_or(&redis).to_owned(),
    );
    v.insert("etcd", first_line("etcd", &["--version"]).replace("etcd Version: ", ""));
    let zk = first_line(
        "java",
        &[
            "-cp",
            conformance_tests::fixtures::zk::ZOOKEEPER_JAR,
            "org.apache.zookeeper.version.VersionInfoMain",
        ],
    );
    let zk = zk.replace("Apache ZooKeeper, version ", "");
    v.insert("zookeeper", zk.split_whitespace().next().unwrap_or("unknown").to_owned());
    let moto = conformance_tests::fixtures::test_python("DISTLOCK_MOTO_PYTHON")
        .map(|py| first_line(&py.display().to_string(), &["-c", "import moto; print(moto.__version__)"]))
        .unwrap_or_else(|_| "unknown".into());
    v.insert("moto", moto);
    v
}

/// The current UTC time, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The whole report, as the JSON file holds it.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// Where and how.
    pub environment: &'a Environment,
    /// Every scenario passed.
    pub passed: bool,
    /// The expected-violation list in force.
    pub expected_violations: &'static [Expected],
    /// The scenarios.
    pub scenarios: &'a [ScenarioResult],
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |x| format!("{:.0}", x))
}

fn row(r: &ScenarioResult) -> String {
    let f = &r.figures;
    let reg = |n: &str| f.registers.get(n).cloned().unwrap_or_default();
    let (fenced, wf, un) = (reg("fenced"), reg("write_fenced"), reg("unfenced"));
    let faults = if r.fault_counts.is_empty() {
        "none".to_owned()
    } else {
        r.fault_counts.iter().map(|(k, v)| format!("{k} ×{v}")).collect::<Vec<_>>().join(", ")
    };
    let verdict = if !r.verdict.passed() {
        "**FAIL**"
    } else if r.verdict.expected.is_empty() {
        "pass"
    } else {
        "pass (expected violations)"
    };
    let takeover = if f.takeovers_ms.is_empty() {
        "–".to_owned()
    } else {
        format!("{} / {} ({})", opt_ms(f.takeover_p50_ms), opt_ms(f.takeover_max_ms), r.crash_bound_ms)
    };
    format!(
        "| {} | {:.0} | {} | {} | {} | {} | {} / {} | **{}** | {} | {} | {} | {} | {} | {} | {:.0} | {} |\n",
        r.name,
        r.duration_s,
        faults,
        f.ops,
        f.grants,
        f.distinct_tokens,
        fenced.writes_accepted,
        fenced.writes_rejected,
        fenced.lost,
        fenced.accepted_tokens_down,
        f.duplicate_tokens + f.token_order_violations,
        wf.lost,
        un.lost,
        format_args!("{} / {}", f.definite_overlaps, f.belief_overlaps),
        takeover,
        f.longest_gap_ms,
        verdict
    )
}

/// The markdown report.
pub fn markdown(env: &Environment, results: &[ScenarioResult]) -> String {
    let mut md = String::from("# distlock under faults: `distlock-chaos` results\n\n");
    let m = &env.machine;
    let _ = writeln!(
        md,
        "Machine: {} cores ({}), {} GiB, {}. Servers: Redis {}, etcd {}, ZooKeeper {}, moto {}.  ",
        m["cores"],
        m["cpu"],
        m["memory_gib"],
        m["kernel"],
        env.servers["redis"],
        env.servers["etcd"],
        env.servers["zookeeper"],
        env.servers["moto"]
    );
    let s = &env.settings;
    let _ = writeln!(
        md,
        "Run: {} mode, started {}, seed {}, {} worker processes, TTL {} (the session timeout on etcd and ZooKeeper), \
         workload {} per scenario (longer where the longest fault needs it), a fault every {}.  ",
        env.mode, env.started, env.seed, s["workers"], s["ttl"], s["duration"], s["interval"]
    );
    let _ = writeln!(md, "Command: `{}`\n", env.command);
    md.push_str(
        "Columns: *fenced acc / rej*: writes the fenced register accepted / rejected; *fenced lost*: acknowledged \
         fenced updates missing from the final value (must be 0); *tokens down*: the fenced register accepting a \
         lower token (must be 0); *token order*: grants sharing a token or getting a lower one than a grant that \
         had completed before; *wf lost* and *unfenced lost*: acknowledged updates lost by the write-only-fenced \
         register and by the unfenced control; *overlaps*: pairs of definite holds (server-side exclusion) / of \
         beliefs; *takeover*: ms from killing a holder to the next grant, p50 / max (crash bound); *gap*: the \
         longest time without a grant, ms.\n\n",
    );
    md.push_str(
        "| scenario | s | faults | ops | grants | tokens | fenced acc / rej | fenced lost | tokens down | token order \
         | wf lost | unfenced lost | overlaps | takeover | gap | verdict |\n",
    );
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        md.push_str(&row(r));
    }
    details(&mut md, results);
    md
}

fn details(md: &mut String, results: &[ScenarioResult]) {
    let _ = writeln!(md, "\n## Violations the backends do not promise to prevent (the expected list)\n");
    for e in EXPECTED {
        let why = [e.exclusion.map(|x| format!("exclusion: {x}")), e.tokens.map(|x| format!("tokens: {x}"))];
        let why: Vec<String> = why.into_iter().flatten().collect();
        let _ = writeln!(md, "- `{}` under `{}`: {}", e.backend.name(), e.fault.name(), why.join("; "));
    }
    let _ = writeln!(md, "\n## Per scenario\n");
    for r in results {
        let mut lines: Vec<String> = Vec::new();
        lines.extend(r.verdict.failures.iter().map(|f| format!("FAIL: {f}")));
        lines.extend(r.verdict.expected.iter().map(|f| format!("expected: {f}")));
        lines.extend(r.figures.examples.iter().take(6).map(|e| format!("e.g. {e}")));
        if lines.is_empty() {
            continue;
        }
        let _ = writeln!(md, "- **{}** (seed {}, latency {:.2} ms):", r.name, r.seed, r.latency_ms);
        for l in lines {
            let _ = writeln!(md, "  - {l}");
        }
    }
}

/// Writes `RESULTS.md` and `results.json` into `dir`.
///
/// # Errors
/// When they cannot be written.
pub fn write(dir: &Path, env: &Environment, results: &[ScenarioResult]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ChaosError::io(format!("create {}", dir.display()), e))?;
    let report = Report {
        environment: env,
        passed: results.iter().all(|r| r.verdict.passed()),
        expected_violations: EXPECTED,
        scenarios: results,
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| ChaosError::Protocol(e.to_string()))?;
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| ChaosError::io(format!("write {}", p.display()), e))
    };
    write("results.json", &json)?;
    write("RESULTS.md", &markdown(env, results))
}
