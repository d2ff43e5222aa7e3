//! `distlock-chaos`: runs every distlock backend under faults with real processes and real
//! servers, checks the history, writes `RESULTS.md` and `results.json`, and exits non-zero on
//! any violation. See the library's documentation for the design.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use distlock_chaos::controller::{self, Plan};
use distlock_chaos::error::ChaosError;
use distlock_chaos::run::Settings;
use distlock_chaos::scenarios::{self, Scenario};
use distlock_chaos::worker::{self, WorkerArgs};

fn duration(s: &str) -> Result<Duration, String> {
    distlock::parse_duration(s)
}

fn interval(s: &str) -> Result<(Duration, Duration), String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("'{s}' is not MIN..MAX (e.g. 5s..10s)"))?;
    let (a, b) = (duration(a)?, duration(b)?);
    if a > b {
        return Err(format!("'{s}': the minimum is above the maximum"));
    }
    Ok((a, b))
}

/// Jepsen-style fault runs of every distlock backend.
#[derive(Debug, Parser)]
#[command(name = "distlock-chaos", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The CI run: every backend under the pause and kill nemeses, 15 s each, a fault every 2–4 s.
    #[arg(long)]
    quick: bool,
    /// Only these scenarios: exact names (`redis.pause`), backends (`redis`), or families (`*.kill`).
    #[arg(long, value_delimiter = ',')]
    scenario: Vec<String>,
    /// Workload per scenario (default: 120 s; 15 s with --quick).
    #[arg(long, value_parser = duration)]
    duration: Option<Duration>,
    /// The gap before each fault, MIN..MAX (default: 5s..10s, Jepsen's; 2s..4s with --quick).
    #[arg(long, value_parser = interval)]
    interval: Option<(Duration, Duration)>,
    /// The lock's TTL, and the session timeout of etcd and ZooKeeper.
    #[arg(long, value_parser = duration, default_value = "2s")]
    ttl: Duration,
    /// Worker processes (at least 5).
    #[arg(long, default_value_t = 5)]
    workers: u32,
    /// The longest pause of a worker between rounds.
    #[arg(long, value_parser = duration, default_value = "100ms")]
    think: Duration,
    /// The seed (default: from the clock); the report prints it.
    #[arg(long)]
    seed: Option<u64>,
    /// Where RESULTS.md and results.json go.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Where histories and worker logs go (default: OUT/work).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// The workers use a deliberately broken lock: the harness's own test (the run must fail).
    #[arg(long, value_enum, hide = true)]
    broken: Option<distlock_chaos::broken::Breakage>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One contender (started by the controller).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

fn select(cli: &Cli) -> Result<Vec<Scenario>, String> {
    if cli.scenario.is_empty() {
        return Ok(if cli.quick { scenarios::quick() } else { scenarios::all() });
    }
    let all = scenarios::all();
    let mut out: Vec<Scenario> = Vec::new();
    for want in &cli.scenario {
        let hits: Vec<&Scenario> = all
            .iter()
            .filter(|s| {
                s.name == *want
                    || s.backend.name() == want
                    || want.strip_prefix("*.").is_some_and(|fam| s.family == fam)
            })
            .collect();
        if hits.is_empty() {
            return Err(format!("no scenario matches '{want}' (see --list)"));
        }
        out.extend(hits.into_iter().filter(|h| !out.contains(h)).cloned().collect::<Vec<_>>());
    }
    Ok(out)
}

/// The emulator needs credentials and a region, not real ones; keep the host's out.
fn dummy_aws_environment() {
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ] {
        std::env::set_var(k, v);
    }
    std::env::remove_var("AWS_PROFILE");
    std::env::remove_var("AWS_SESSION_TOKEN");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Worker(args)) = cli.command {
        return match worker::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker: {e}");
                ExitCode::from(3)
            }
        };
    }
    let scenarios = match select(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("distlock-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.list {
        for s in &scenarios {
            let faults: Vec<&str> = s.faults.iter().map(|f| f.name()).collect();
            println!("{:<32} {}", s.name, faults.join(", "));
        }
        return ExitCode::SUCCESS;
    }
    if cli.workers < 5 {
        eprintln!("distlock-chaos: --workers must be at least 5");
        return ExitCode::from(2);
    }
    dummy_aws_environment();
    let plan = plan(&cli, scenarios);
    eprintln!(
        "distlock-chaos: {} scenarios, seed {}, report in {}",
        plan.scenarios.len(),
        plan.settings.seed,
        plan.out.display()
    );
    match run(plan) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("distlock-chaos: violations found (see the report)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("distlock-chaos: {e}");
            ExitCode::from(if matches!(e, ChaosError::Interrupted(_)) { 130 } else { 3 })
        }
    }
}

fn plan(cli: &Cli, scenarios: Vec<Scenario>) -> Plan {
    let (d, i) = if cli.quick {
        (Duration::from_secs(15), (Duration::from_secs(2), Duration::from_secs(4)))
    } else {
        (Duration::from_secs(120), (Duration::from_secs(5), Duration::from_secs(10)))
    };
    let seed = cli.seed.unwrap_or_else(|| distlock_chaos::clock::mono_ns() ^ u64::from(std::process::id()));
    let mode = match (cli.quick, cli.scenario.is_empty() && cli.duration.is_none()) {
        (true, _) => "quick",
        (false, true) => "full",
        (false, false) => "custom",
    };
    Plan {
        scenarios,
        settings: Settings {
            ttl: cli.ttl,
            workers: cli.workers,
            duration: cli.duration.unwrap_or(d),
            interval: cli.interval.unwrap_or(i),
            think: cli.think,
            seed,
            work_dir: cli.work_dir.clone().unwrap_or_else(|| cli.out.join("work")),
            broken: cli.broken,
        },
        out: cli.out.clone(),
        mode: mode.into(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    }
}

/// Runs the plan on a single-threaded runtime (the workers are processes; the controller
/// only serves the registers and proxies, so one thread is plenty, and every child is spawned
/// from the thread that lives as long as the run, which `PR_SET_PDEATHSIG` needs). Ctrl-C and
/// SIGTERM stop the run: dropping it kills every worker and server.
fn run(plan: Plan) -> Result<bool, ChaosError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ChaosError::io("start the runtime", e))?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| ChaosError::io("listen for SIGTERM", e))?;
        tokio::select! {
            r = controller::run(plan) => r,
            _ = tokio::signal::ctrl_c() => Err(ChaosError::Interrupted("Ctrl-C")),
            _ = term.recv() => Err(ChaosError::Interrupted("SIGTERM")),
        }
    })
}
