//! `distlock`: run a command under a distributed lock, and inspect or release locks.
//!
//! ```text
//! distlock [--backend URL] [--json] [--metrics-addr ADDR] <COMMAND>
//!   run      --lock NAME [--ttl 30s] [--wait 0s] [--on-lost term|kill|ignore] [--kill-grace 10s] -- CMD [ARGS...]
//!   acquire  --lock NAME [--ttl 30s] [--wait 0s]
//!   inspect  --lock NAME
//!   release  --lock NAME --owner TOKEN
//! ```
//!
//! The backend is `--backend URL`, else `$DISTLOCK_URL`, else the single-host file backend
//! (no server needed). See the facade's URL table for every form.
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (`run`: the command exited 0) |
//! | 1 | `release`: the lock was not held by that owner (expired or taken) |
//! | 2 | bad command line |
//! | 64 | invalid input: lock name, TTL, URL |
//! | 69 | the backend failed or could not be reached |
//! | 70 | `run`: the lock was lost while the command ran (the command was stopped) |
//! | 75 | the lock is held by someone else (not acquired within `--wait`) |
//! | 126, 127 | `run`: the command could not be started / was not found |
//! | 128+N | `run`: the command was killed by signal N |
//! | other | `run`: the command's own exit status |

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use distlock::{Error, LockClient, OwnerToken, ReleaseOutcome};
use serde_json::json;

mod metrics;

const EXIT_NOT_HELD: u8 = 1;
const EXIT_INVALID: u8 = 64;
const EXIT_BACKEND: u8 = 69;
const EXIT_LOST: u8 = 70;
const EXIT_HELD: u8 = 75;

fn duration(s: &str) -> Result<Duration, String> {
    distlock::parse_duration(s)
}

#[derive(Parser, Debug)]
#[command(
    name = "distlock",
    version,
    about = "Run a command under a distributed lock; inspect and release locks"
)]
struct Cli {
    /// Backend URL (redis://…, redlock://…, file:///…, mem://). Default: the single-host file
    /// backend.
    #[arg(long, global = true, env = "DISTLOCK_URL", hide_env_values = true)]
    backend: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Serve Prometheus metrics at this address (e.g. 127.0.0.1:9464) while the command runs.
    #[arg(long, global = true)]
    metrics_addr: Option<std::net::SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnLost {
    /// SIGTERM, then SIGKILL after --kill-grace.
    Term,
    /// SIGKILL at once.
    Kill,
    /// Leave the command running (a warning is printed).
    Ignore,
}

/// The lock a command takes: `--lock`, `--ttl`, `--wait`.
#[derive(clap::Args, Debug)]
struct Take {
    /// The lock's name.
    #[arg(long)]
    lock: String,
    /// Lease TTL; a crashed holder blocks others for at most this long.
    #[arg(long, default_value = "30s", value_parser = duration)]
    ttl: Duration,
    /// How long to wait for the lock (0: one attempt).
    #[arg(long, default_value = "0s", value_parser = duration)]
    wait: Duration,
}

impl Take {
    fn builder(&self, locks: &LockClient) -> distlock::LockBuilder {
        locks.lock(&self.lock).ttl(self.ttl).wait(self.wait)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Hold the lock (renewing it) while CMD runs; exit with CMD's status.
    Run {
        #[command(flatten)]
        take: Take,
        /// What to do to the command if the lock is lost.
        #[arg(long, value_enum, default_value = "term")]
        on_lost: OnLost,
        /// After SIGTERM, how long to wait before SIGKILL.
        #[arg(long, default_value = "10s", value_parser = duration)]
        kill_grace: Duration,
        /// The command and its arguments.
        #[arg(last = true, required = true, num_args = 1..)]
        cmd: Vec<String>,
    },
    /// Take the lock and keep it until its TTL runs out or `release`; prints the owner token.
    Acquire {
        #[command(flatten)]
        take: Take,
    },
    /// Show who holds the lock.
    Inspect {
        /// The lock's name.
        #[arg(long)]
        lock: String,
    },
    /// Release a lock taken with `acquire`, by its owner token.
    Release {
        /// The lock's name.
        #[arg(long)]
        lock: String,
        /// The owner token `acquire` printed.
        #[arg(long)]
        owner: String,
    },
}

struct Out {
    json: bool,
}

impl Out {
    fn fail(&self, e: &Error) -> ExitCode {
        let code = match e {
            Error::WaitTimedOut { .. } => EXIT_HELD,
            Error::InvalidKey(_)
            | Error::InvalidTtl { .. }
            | Error::InvalidConfig(_)
            | Error::Unsupported { .. } => EXIT_INVALID,
            Error::Lost { .. } => EXIT_LOST,
            _ => EXIT_BACKEND,
        };
        if self.json {
            println!(
                "{}",
                json!({ "error": e.to_string(), "kind": e.label(), "retryable": e.is_retryable() })
            );
        } else {
            eprintln!("distlock: {e}");
        }
        ExitCode::from(code)
    }
}

/// Shows a spinner with the elapsed time on a terminal while a future runs.
async fn with_spinner<F: std::future::Future>(show: bool, what: &str, fut: F) -> F::Output {
    if !show {
        return fut.await;
    }
    let start = std::time::Instant::now();
    let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut i = 0;
    let out = loop {
        tokio::select! {
            out = &mut fut => break out,
            _ = tick.tick() => {
                if start.elapsed() > Duration::from_millis(300) {
                    eprint!("\r{} {what} ({:.1}s)", frames[i % frames.len()], start.elapsed().as_secs_f64());
                    i += 1;
                }
            }
        }
    };
    if i > 0 {
        eprint!("\r\x1b[2K");
    }
    out
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Out { json: cli.json };
    let _metrics = match cli.metrics_addr {
        Some(addr) => match metrics::serve(addr).await {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("distlock: --metrics-addr {addr}: {e}");
                return ExitCode::from(EXIT_INVALID);
            }
        },
        None => None,
    };
    let url = cli.backend.clone().unwrap_or_else(|| "file://".to_owned());
    let locks = match distlock::connect(&url).await {
        Ok(c) => c,
        Err(e) => return out.fail(&e),
    };
    let spin = !cli.json && std::io::stderr().is_terminal();
    match cli.command {
        Command::Run { take, on_lost, kill_grace, cmd } => {
            run(&out, &locks, spin, &take, on_lost, kill_grace, &cmd).await
        }
        Command::Acquire { take } => acquire(&out, &locks, spin, &take).await,
        Command::Inspect { lock } => inspect(&out, &locks, &lock).await,
        Command::Release { lock, owner } => release(&out, &locks, &lock, &owner).await,
    }
}

async fn acquire(out: &Out, locks: &LockClient, spin: bool, take: &Take) -> ExitCode {
    let name = take.lock.as_str();
    if locks.capabilities().session_leases {
        // A session lease ends with this process: the lock would not outlive the command.
        return out.fail(&Error::Unsupported {
            backend: locks.backend_name(),
            capability: "keeping a lock after the process that took it exits (its lease is that \
                         process's session); use a per-lock lease (for etcd: ?lease=per-lock) or `distlock run`"
                .into(),
        });
    }
    let fut = take.builder(locks).acquire();
    let guard = match with_spinner(spin, &format!("waiting for lock '{name}'"), fut).await {
        Ok(g) => g,
        Err(e) => return out.fail(&e),
    };
    let lease = guard.detach();
    if out.json {
        println!(
            "{}",
            json!({
                "key": lease.key().full(),
                "owner": lease.owner().to_string(),
                "fencing_token": lease.fencing_token().get(),
                "ttl_ms": lease.ttl().as_millis() as u64,
                "valid_for_ms": lease.remaining().as_millis() as u64,
                "backend": locks.backend_name(),
            })
        );
    } else {
        println!(
            "acquired '{}' on {}: fencing token {}, owner {}, valid for {:.1}s (release with: distlock release --lock {name} --owner {})",
            lease.key(),
            locks.backend_name(),
            lease.fencing_token(),
            lease.owner(),
            lease.remaining().as_secs_f64(),
            lease.owner()
        );
    }
    ExitCode::SUCCESS
}

async fn inspect(out: &Out, locks: &LockClient, name: &str) -> ExitCode {
    let info = match locks.inspect(name).await {
        Ok(i) => i,
        Err(e) => return out.fail(&e),
    };
    let key = locks.key(name).map(|k| k.full().to_owned()).unwrap_or_else(|_| name.to_owned());
    if out.json {
        let v = match &info {
            Some(i) => json!({
                "key": key,
                "held": true,
                "fencing_token": i.fencing_token.map(|f| f.get()),
                "owner": i.owner.map(|o| o.to_string()),
                "remaining_ttl_ms": i.remaining_ttl.map(|d| d.as_millis() as u64),
            }),
            None => json!({ "key": key, "held": false }),
        };
        println!("{v}");
    } else {
        match info {
            Some(i) => println!(
                "'{key}' is held: fencing token {}, owner {}, {} left",
                i.fencing_token.map_or("unknown (foreign holder)".to_owned(), |f| f.to_string()),
                i.owner.map_or("unknown".to_owned(), |o| o.to_string()),
                i.remaining_ttl.map_or("unknown time".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
            ),
            None => println!("'{key}' is free"),
        }
    }
    ExitCode::SUCCESS
}

async fn release(out: &Out, locks: &LockClient, name: &str, owner: &str) -> ExitCode {
    let Some(owner) = OwnerToken::parse_hex(owner) else {
        return out.fail(&Error::InvalidConfig(format!(
            "--owner '{owner}' is not an owner token (32 hex digits, as `acquire` prints)"
        )));
    };
    let lease =
        match locks.lease_from_parts(name, owner, distlock::FencingToken::new(0), Duration::from_secs(1)) {
            Ok(l) => l,
            Err(e) => return out.fail(&e),
        };
    match locks.release_lease(&lease).await {
        Ok(outcome) => {
            let released = outcome == ReleaseOutcome::Released;
            if out.json {
                println!("{}", json!({ "key": lease.key().full(), "released": released }));
            } else if released {
                println!("released '{}'", lease.key());
            } else {
                println!("'{}' was not held by that owner (it expired or another owner has it)", lease.key());
            }
            if released {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_NOT_HELD)
            }
        }
        Err(e) => out.fail(&e),
    }
}

fn signal(pid: Option<u32>, sig: rustix::process::Signal) {
    if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

fn status_code_u8(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        _ => 1,
    }
}

async fn run(
    out: &Out,
    locks: &LockClient,
    spin: bool,
    take: &Take,
    on_lost: OnLost,
    kill_grace: Duration,
    cmd: &[String],
) -> ExitCode {
    use tokio::signal::unix::{signal as unix_signal, SignalKind};

    let name = take.lock.as_str();
    let fut = take.builder(locks).auto_renew().acquire();
    let guard = match with_spinner(spin, &format!("waiting for lock '{name}'"), fut).await {
        Ok(g) => g,
        Err(e) => return out.fail(&e),
    };
    if out.json {
        // stdout belongs to the command: `run` reports its events as JSON lines on stderr.
        eprintln!(
            "{}",
            json!({
                "event": "acquired",
                "key": guard.key(),
                "fencing_token": guard.fencing_token().get(),
                "backend": locks.backend_name(),
            })
        );
    } else {
        eprintln!(
            "distlock: holding '{}' (fencing token {}) on {}",
            guard.key(),
            guard.fencing_token(),
            locks.backend_name()
        );
    }
    // Signals are caught before the command starts, so none can kill us and leave it running.
    let signals =
        [SignalKind::terminate(), SignalKind::interrupt(), SignalKind::hangup(), SignalKind::quit()]
            .map(unix_signal)
            .into_iter()
            .collect::<Result<Vec<_>, _>>();
    let Some([mut on_term, mut on_int, mut on_hup, mut on_quit]) =
        signals.ok().and_then(|v| <[_; 4]>::try_from(v).ok())
    else {
        let _ = guard.release().await;
        eprintln!("distlock: cannot install signal handlers");
        return ExitCode::from(EXIT_BACKEND);
    };
    let mut command = tokio::process::Command::new(&cmd[0]);
    command
        .args(&cmd[1..])
        .env("DISTLOCK_FENCING_TOKEN", guard.fencing_token().to_string())
        .env("DISTLOCK_LOCK", guard.key())
        .kill_on_drop(true);
    // If distlock itself dies (even by SIGKILL), the kernel kills the command: it never runs
    // on without the lock's holder watching it.
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = guard.release().await;
            eprintln!("distlock: cannot start '{}': {e}", cmd[0]);
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
        }
    };
    let pid = child.id();
    let mut lost_reason = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = on_term.recv() => signal(pid, rustix::process::Signal::TERM),
            _ = on_int.recv() => signal(pid, rustix::process::Signal::INT),
            _ = on_hup.recv() => signal(pid, rustix::process::Signal::HUP),
            _ = on_quit.recv() => signal(pid, rustix::process::Signal::QUIT),
            reason = guard.lost(), if lost_reason.is_none() => {
                lost_reason = Some(reason);
                if out.json {
                    eprintln!("{}", json!({ "event": "lost", "key": guard.key(), "reason": reason.to_string(), "on_lost": format!("{on_lost:?}").to_lowercase() }));
                } else {
                    eprintln!("distlock: lock '{}' lost ({reason})", guard.key());
                }
                match on_lost {
                    OnLost::Ignore => eprintln!("distlock: --on-lost ignore: the command keeps running without the lock"),
                    OnLost::Kill => signal(pid, rustix::process::Signal::KILL),
                    OnLost::Term => {
                        signal(pid, rustix::process::Signal::TERM);
                        let grace = tokio::time::sleep(kill_grace);
                        tokio::pin!(grace);
                        tokio::select! {
                            status = child.wait() => break status,
                            _ = &mut grace => signal(pid, rustix::process::Signal::KILL),
                        }
                    }
                }
            }
        }
    };
    let key = guard.key().to_owned();
    let released = guard.release().await;
    if let (Err(e), false) = (&released, out.json) {
        eprintln!("distlock: release failed ({e}); the lock expires with its TTL");
    }
    if let (Err(e), false) = (&status, out.json) {
        eprintln!("distlock: waiting for the command failed: {e}");
    }
    let code = match (&status, lost_reason, on_lost) {
        (_, Some(_), OnLost::Term | OnLost::Kill) => EXIT_LOST,
        (Ok(s), _, _) => status_code_u8(*s),
        (Err(_), _, _) => EXIT_BACKEND,
    };
    if out.json {
        eprintln!(
            "{}",
            json!({
                "event": "finished",
                "key": key,
                "exit_code": code,
                "command_status": status.as_ref().ok().and_then(|s| s.code()),
                "lost": lost_reason.map(|r| r.to_string()),
                "released": match &released {
                    Ok(o) => json!(*o == ReleaseOutcome::Released),
                    Err(e) => json!({ "error": e.to_string() }),
                },
            })
        );
    }
    ExitCode::from(code)
}
