//! `distlock`: run a command under a distributed lock, and inspect or release locks.
//!
//! ```text
//! distlock [--backend URL] [--json] [--metrics-addr ADDR] <COMMAND>
//!   run      --lock NAME [--ttl 30s] [--wait 0s] [--on-lost term|kill|ignore] [--kill-grace 10s] -- CMD [ARGS...]
//!   acquire  --lock NAME [--ttl 30s] [--wait 0s]
//!   inspect  --lock NAME
//!   release  --lock NAME --owner TOKEN
//!   list     [--prefix P]
//!   force-release --lock NAME
//!   elect    --name NAME --value V [--ttl 30s] [--wait D] -- CMD [ARGS...]
//!   leader   --name NAME [--watch]
//!   migrate-tokens --from OLD_URL --to NEW_URL [--prefix P] [--dry-run]
//! ```
//!
//! `run` and `acquire` also take `--permits N` (a semaphore), `--read` / `--write` (a
//! read-write lock), several `--lock` (all of them, or none) and `--value V` (holder metadata).
//!
//! The backend is `--backend URL`, else `$DISTLOCK_URL`, else the single-host file backend
//! (no server needed). See the facade's URL table for every form. One module per command;
//! the exit codes are in [`exit`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `eprintln!` that never panics: a closed or failed standard error (a log pipe whose reader
/// went away, a hung-up terminal) must not end a command that holds a lock or supervises a
/// job before it stops the job and releases.
macro_rules! say_err {
    ($($arg:tt)*) => {
        $crate::output::write_err(format_args!($($arg)*))
    };
}

/// `println!` that never panics (see [`say_err!`]); a failure to write is ignored (where it
/// matters, call `output::write_out`).
macro_rules! say_out {
    ($($arg:tt)*) => {{
        let _ = $crate::output::write_out(format_args!($($arg)*));
    }};
}

mod acquire;
mod elect;
mod exit;
mod force_release;
mod holder;
mod inspect;
mod leader;
mod list;
mod metrics;
mod migrate_tokens;
mod output;
mod release;
mod run;
mod take;

#[derive(Parser, Debug)]
#[command(
    name = "distlock",
    version,
    about = "Run a command under a distributed lock; inspect and release locks"
)]
struct Cli {
    /// Backend URL (redis://…, redlock://…, etcd://…, zk://…, dynamodb://…, file:///…, mem://).
    /// Default: the single-host file backend.
    #[arg(long, global = true, env = "DISTLOCK_URL", hide_env_values = true)]
    backend: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Serve Prometheus metrics at this address (e.g. 127.0.0.1:9464) while the command runs.
    #[arg(long, global = true)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// With --metrics-addr: keep serving the metrics this long after the command ends, so that
    /// the next scrape sees how a short job ended (timed out, released, lost).
    #[arg(long, global = true, value_parser = take::duration, default_value = "0s")]
    metrics_linger: std::time::Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Hold the lock (renewing it) while CMD runs; exit with CMD's status.
    Run(run::Args),
    /// Take the lock and keep it until its TTL runs out or `release`; prints the owner token.
    Acquire(acquire::Args),
    /// Show who holds the lock.
    Inspect(inspect::Args),
    /// Release a lock taken with `acquire`, by its owner token.
    Release(release::Args),
    /// List the locks held under a prefix, with their holders' metadata.
    List(list::Args),
    /// Release whoever holds the lock (an operator's tool; logged).
    ForceRelease(force_release::Args),
    /// Campaign in an election and run CMD only while leader.
    Elect(elect::Args),
    /// Show an election's leader, once or as it changes.
    Leader(leader::Args),
    /// Raise a new backend's fencing counters above an old one's before a cut-over.
    MigrateTokens(migrate_tokens::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::List(_) | Command::Inspect(_) | Command::Leader(_)) {
        // The commands that only read end quietly when their reader goes away (`distlock list
        // | head`), as other tools do: Rust ignores SIGPIPE, so the next print panicked. The
        // commands that hold a lock keep ignoring it: they must release before they end.
        #[allow(unsafe_code)]
        // SAFETY: signal(2) sets SIGPIPE's disposition to the default; no handler runs.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let out = output::Out {
        json: cli.json,
        spin: !cli.json && std::io::stderr().is_terminal(),
        events: matches!(cli.command, Command::Run(_) | Command::Elect(_)),
    };
    if let Some(addr) = cli.metrics_addr {
        if let Err(e) = metrics::serve(addr) {
            say_err!("distlock: --metrics-addr {addr}: {e}");
            return ExitCode::from(exit::INVALID);
        }
    }
    if let Command::MigrateTokens(args) = &cli.command {
        return migrate_tokens::exec(&out, args).await;
    }
    let url = cli.backend.clone().unwrap_or_else(|| "file://".to_owned());
    let locks = match distlock::connect(&url).await {
        Ok(c) => c,
        Err(e) => return out.fail(&e),
    };
    if cli.metrics_addr.is_some() {
        // Every series from zero, so the first event of this short-lived process counts.
        distlock::core::observe::register(locks.backend().name());
    }
    let lingers = cli.metrics_addr.is_some() && !cli.metrics_linger.is_zero();
    // The commands that catch signals (to forward them, or to end a wait) keep them from
    // ending the process by default: their linger listens from the start, so that a signal
    // between the command's end and the linger is not lost. The others end by default until
    // they linger.
    let early = lingers && matches!(cli.command, Command::Run(_) | Command::Elect(_) | Command::Acquire(_));
    let mut listeners = early.then(ending_signals);
    let code = match &cli.command {
        Command::Run(args) => run::exec(&out, &locks, args).await,
        Command::Acquire(args) => acquire::exec(&out, &locks, args).await,
        Command::Inspect(args) => inspect::exec(&out, &locks, args).await,
        Command::Release(args) => release::exec(&out, &locks, args).await,
        Command::List(args) => list::exec(&out, &locks, args).await,
        Command::ForceRelease(args) => force_release::exec(&out, &locks, args).await,
        Command::Elect(args) => elect::exec(&out, &locks, args).await,
        Command::Leader(args) => leader::exec(&out, &locks, args).await,
        Command::MigrateTokens(args) => migrate_tokens::exec(&out, args).await,
    };
    if lingers {
        let listeners = listeners.get_or_insert_with(ending_signals);
        linger(listeners, cli.metrics_linger).await;
    }
    code
}

/// Listeners of the signals that end a process by default (those `run` forwards), those that
/// can be installed.
fn ending_signals() -> Vec<tokio::signal::unix::Signal> {
    run::Forwarded::KINDS.into_iter().filter_map(|(k, _)| tokio::signal::unix::signal(k).ok()).collect()
}

/// Keeps serving the metrics for `linger`, or until one of `listeners` hears its signal.
async fn linger(listeners: &mut [tokio::signal::unix::Signal], linger: std::time::Duration) {
    if listeners.is_empty() {
        return tokio::time::sleep(linger).await;
    }
    tokio::select! {
        _ = tokio::time::sleep(linger) => {}
        _ = futures::future::select_all(listeners.iter_mut().map(|l| Box::pin(l.recv()))) => {}
    }
}
