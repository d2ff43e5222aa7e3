//! `distlock run`: hold a lock (renewing it) while a command runs; stop the command if the
//! lock is lost; exit with the command's status.

use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;
use distlock::{Guard, LockClient, LossReason, ReleaseOutcome};
use rustix::process::Signal;
use serde_json::json;
use tokio::process::Child;
use tokio::signal::unix::{signal as unix_signal, Signal as Listener, SignalKind};

use crate::exit;
use crate::output::Out;
use crate::take::{duration, Take};

/// What `run` does to the command when the lock is lost.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum OnLost {
    /// SIGTERM, then SIGKILL after --kill-grace.
    Term,
    /// SIGKILL at once.
    Kill,
    /// Leave the command running (a warning is printed).
    Ignore,
}

/// `run --lock NAME [--lock NAME…] [--permits N | --read | --write] [--ttl 30s] [--wait 0s]
/// [--on-lost term|kill|ignore] [--kill-grace 10s] -- CMD [ARGS...]`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    take: Take,
    #[command(flatten)]
    command: Supervised,
}

/// The command `run` and `elect` supervise, and what they do to it when the lock is lost.
#[derive(clap::Args, Debug)]
pub(crate) struct Supervised {
    /// What to do to the command if the lock is lost.
    #[arg(long, value_enum, default_value = "term")]
    on_lost: OnLost,
    /// After SIGTERM, how long to wait before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = duration)]
    kill_grace: Duration,
    /// The command and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    cmd: Vec<String>,
}

/// Takes the lock with auto-renewal, runs the command under it, and reports.
pub(crate) async fn exec(out: &Out, locks: &LockClient, args: &Args) -> ExitCode {
    let fut = args.take.acquire(locks, true);
    let taken = match out.waiting(&format!("waiting for lock '{}'", args.take.label()), fut).await {
        Ok(t) => t,
        Err(e) => return out.fail(&e),
    };
    announce(out, locks, &taken.guard, "acquired");
    supervise_command(out, taken.guard, &taken.tokens, &args.command).await
}

/// Runs `command` while `guard` holds, stops it as `--on-lost` says if the lock is lost,
/// releases, and reports; the exit code is the command's (70 when stopped for a loss).
pub(crate) async fn supervise_command(
    out: &Out,
    guard: Guard,
    tokens: &[(String, distlock::FencingToken)],
    args: &Supervised,
) -> ExitCode {
    // Signals are caught before the command starts, so none can kill us and leave it running.
    let Some(mut signals) = Forwarded::install() else {
        let _ = guard.release().await;
        eprintln!("distlock: cannot install signal handlers");
        return ExitCode::from(exit::BACKEND);
    };
    let mut child = match spawn(&args.cmd, &guard, tokens) {
        Ok(c) => c,
        Err(e) => {
            let _ = guard.release().await;
            eprintln!("distlock: cannot start '{}': {e}", args.cmd[0]);
            let code =
                if e.kind() == std::io::ErrorKind::NotFound { exit::NOT_FOUND } else { exit::CANNOT_START };
            return ExitCode::from(code);
        }
    };
    let (status, lost) = supervise(out, &guard, &mut child, &mut signals, args).await;
    finish(out, guard, status, lost, args.on_lost).await
}

/// Says that the lock is held (JSON lines go to stderr: stdout belongs to the command).
pub(crate) fn announce(out: &Out, locks: &LockClient, guard: &Guard, event: &str) {
    if out.json {
        let event = json!({
            "event": event,
            "key": guard.key(),
            "fencing_token": guard.fencing_token().get(),
            "backend": locks.backend_name(),
        });
        eprintln!("{event}");
    } else {
        eprintln!(
            "distlock: holding '{}' (fencing token {}) on {}",
            guard.key(),
            guard.fencing_token(),
            locks.backend_name()
        );
    }
}

/// The signals `run` forwards to the command.
struct Forwarded([Listener; 4]);

impl Forwarded {
    const KINDS: [(SignalKind, Signal); 4] = [
        (SignalKind::terminate(), Signal::TERM),
        (SignalKind::interrupt(), Signal::INT),
        (SignalKind::hangup(), Signal::HUP),
        (SignalKind::quit(), Signal::QUIT),
    ];

    fn install() -> Option<Self> {
        let listeners = Self::KINDS.map(|(kind, _)| unix_signal(kind));
        let listeners: Vec<Listener> = listeners.into_iter().collect::<Result<_, _>>().ok()?;
        <[Listener; 4]>::try_from(listeners).ok().map(Self)
    }

    /// The next signal received.
    async fn recv(&mut self) -> Signal {
        let [a, b, c, d] = &mut self.0;
        tokio::select! {
            _ = a.recv() => Self::KINDS[0].1,
            _ = b.recv() => Self::KINDS[1].1,
            _ = c.recv() => Self::KINDS[2].1,
            _ = d.recv() => Self::KINDS[3].1,
        }
    }
}

/// Starts the command with the lock's name and fencing token in its environment (for a
/// multi-key lock, also every name's token in `DISTLOCK_FENCING_TOKENS`, `name=token,…`).
fn spawn(
    cmd: &[String],
    guard: &Guard,
    tokens: &[(String, distlock::FencingToken)],
) -> std::io::Result<Child> {
    let mut command = tokio::process::Command::new(&cmd[0]);
    let all: Vec<String> = tokens.iter().map(|(k, t)| format!("{k}={t}")).collect();
    command
        .args(&cmd[1..])
        .env("DISTLOCK_FENCING_TOKEN", guard.fencing_token().to_string())
        .env("DISTLOCK_FENCING_TOKENS", all.join(","))
        .env("DISTLOCK_LOCK", guard.key())
        .kill_on_drop(true);
    // If distlock itself dies (even by SIGKILL), the kernel kills the command: it never runs
    // on without the lock's holder watching it.
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).map_err(std::io::Error::from)
        });
    }
    command.spawn()
}

fn signal(pid: Option<u32>, sig: Signal) {
    if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Waits for the command, forwarding signals, and stops it as `--on-lost` says if the lock is
/// lost. Returns its status and the loss, if any.
async fn supervise(
    out: &Out,
    guard: &Guard,
    child: &mut Child,
    signals: &mut Forwarded,
    args: &Supervised,
) -> (std::io::Result<std::process::ExitStatus>, Option<LossReason>) {
    let pid = child.id();
    let mut lost = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            sig = signals.recv() => signal(pid, sig),
            reason = guard.lost(), if lost.is_none() => {
                lost = Some(reason);
                report_loss(out, guard, reason, args.on_lost);
                match args.on_lost {
                    OnLost::Ignore => {
                        eprintln!("distlock: --on-lost ignore: the command keeps running without the lock")
                    }
                    OnLost::Kill => signal(pid, Signal::KILL),
                    OnLost::Term => {
                        signal(pid, Signal::TERM);
                        let grace = tokio::time::sleep(args.kill_grace);
                        tokio::pin!(grace);
                        tokio::select! {
                            status = child.wait() => break status,
                            _ = &mut grace => signal(pid, Signal::KILL),
                        }
                    }
                }
            }
        }
    };
    (status, lost)
}

fn report_loss(out: &Out, guard: &Guard, reason: LossReason, on_lost: OnLost) {
    if out.json {
        let event = json!({
            "event": "lost",
            "key": guard.key(),
            "reason": reason.to_string(),
            "on_lost": format!("{on_lost:?}").to_lowercase(),
        });
        eprintln!("{event}");
    } else {
        eprintln!("distlock: lock '{}' lost ({reason})", guard.key());
    }
}

/// Releases the lock and reports how the run ended; the exit code is the command's, or 70
/// when the lock was lost and the command stopped for it.
async fn finish(
    out: &Out,
    guard: Guard,
    status: std::io::Result<std::process::ExitStatus>,
    lost: Option<LossReason>,
    on_lost: OnLost,
) -> ExitCode {
    let key = guard.key().to_owned();
    let released = guard.release().await;
    if let (Err(e), false) = (&released, out.json) {
        eprintln!("distlock: release failed ({e}); the lock expires with its TTL");
    }
    if let (Err(e), false) = (&status, out.json) {
        eprintln!("distlock: waiting for the command failed: {e}");
    }
    let code = match (&status, lost, on_lost) {
        (_, Some(_), OnLost::Term | OnLost::Kill) => exit::LOST,
        (Ok(s), _, _) => exit::for_status(*s),
        (Err(_), _, _) => exit::BACKEND,
    };
    if out.json {
        let event = json!({
            "event": "finished",
            "key": key,
            "exit_code": code,
            "command_status": status.as_ref().ok().and_then(|s| s.code()),
            "lost": lost.map(|r| r.to_string()),
            "released": match &released {
                Ok(o) => json!(*o == ReleaseOutcome::Released),
                Err(e) => json!({ "error": e.to_string() }),
            },
        });
        eprintln!("{event}");
    }
    ExitCode::from(code)
}
