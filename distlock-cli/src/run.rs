//! `distlock run`: hold a lock (renewing it) while a command runs; stop the command if the
//! lock is lost; exit with the command's status.

use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;
use distlock::{Guard, Instant, LockClient, LossReason, ReleaseOutcome};
use rustix::process::{Pid, Signal};
use serde_json::json;
use tokio::process::Child;
use tokio::signal::unix::{signal as unix_signal, Signal as Listener, SignalKind};

use crate::exit;
use crate::output::Out;
use crate::take::{duration, Take};

/// What `run` does to the command when the lock is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnLost {
    /// SIGTERM, then SIGKILL after --kill-grace.
    Term,
    /// SIGKILL at once.
    Kill,
    /// Leave the command running (a warning is printed; with `--json`, the `lost` event says
    /// `"on_lost":"ignore"`).
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
    /// After SIGTERM, how long to wait before SIGKILL. With `--on-lost term`, when renewal
    /// falls behind so that the lock has at most this long (and at most a third of the
    /// validity it had when taken) left, the command gets SIGTERM then, and SIGKILL when the lock expires: it never runs
    /// past the lock's validity for the grace.
    #[arg(long, default_value = "10s", value_parser = duration)]
    kill_grace: Duration,
    /// The command and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    cmd: Vec<String>,
}

/// Takes the lock with auto-renewal, runs the command under it, and reports.
pub(crate) async fn exec(out: &Out, locks: &LockClient, args: &Args) -> ExitCode {
    let mut signals = match Forwarded::install(out) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let fut = args.take.acquire(locks, true);
    let what = format!("waiting for lock '{}'", args.take.label());
    let taken = match wait_or_signal(out, &what, &mut signals, fut).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return out.fail(&e),
        Err(code) => return code,
    };
    announce(out, locks, &taken.guard, &taken.tokens, "acquired");
    supervise_command(out, taken.guard, &taken.tokens, &args.command, signals).await
}

/// How long a wait ended by a signal gives the abandoned attempt's clean-up (which the backend
/// runs in the background) before distlock exits.
const CLEAN_UP: Duration = Duration::from_secs(2);

/// Awaits `fut` (taking the lock, campaigning) with the signals `run` forwards caught: one that
/// comes meanwhile ends the wait instead of killing distlock with an attempt, or a grant just
/// made, in flight. The attempt is dropped (its grant or place in the queue is then undone in
/// the background, given up to [`CLEAN_UP`] to finish), and the exit code is 128 + the
/// signal's number.
pub(crate) async fn wait_or_signal<F: std::future::Future>(
    out: &Out,
    what: &str,
    signals: &mut Forwarded,
    fut: F,
) -> Result<F::Output, ExitCode> {
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let before = tasks();
    let sig = tokio::select! {
        done = out.waiting(what, fut) => return Ok(done),
        sig = signals.recv() => sig,
    };
    out.say(
        format_args!("{} while {what}; giving up", name(sig)),
        "gave_up",
        json!({ "signal": name(sig), "while": what }),
    );
    let deadline = tokio::time::Instant::now() + CLEAN_UP;
    while tasks() > before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(ExitCode::from(128u8.saturating_add(u8::try_from(sig.as_raw()).unwrap_or(0))))
}

/// Runs `command` while `guard` holds, stops it as `--on-lost` says if the lock is lost,
/// releases, and reports; the exit code is the command's (70 when stopped for a loss).
pub(crate) async fn supervise_command(
    out: &Out,
    guard: Guard,
    tokens: &[(String, distlock::FencingToken)],
    args: &Supervised,
    // Caught since before the lock was awaited, so none can kill us and leave the command
    // running, or a grant behind.
    mut signals: Forwarded,
) -> ExitCode {
    // Listening for the command's stops before it starts, so that none is missed.
    let mut job = Foreground::ours().and_then(Job::listen);
    let mut child = match spawn(&args.cmd, &guard, tokens) {
        Ok(c) => c,
        Err(e) => {
            let released = guard.release().await;
            let code =
                if e.kind() == std::io::ErrorKind::NotFound { exit::NOT_FOUND } else { exit::CANNOT_START };
            let error = format!("cannot start '{}': {e}", args.cmd[0]);
            out.say(
                &error,
                "error",
                json!({
                    "error": error,
                    "kind": if code == exit::NOT_FOUND { "not_found" } else { "cannot_start" },
                    "exit_code": code,
                    "released": released.is_ok(),
                }),
            );
            return ExitCode::from(code);
        }
    };
    // The command leads a process group of its own: what it starts is stopped with it.
    let group = child.id().and_then(|p| Pid::from_raw(p as i32));
    if let (Some(j), Some(g)) = (&job, group) {
        j.terminal.give(g);
    }
    let (status, lost) = supervise(out, &guard, &mut child, group, job.as_mut(), &mut signals, args).await;
    if let Some(g) = group {
        // Stopped by the time the lock may expire: at once once it is lost.
        let left = guard.lease().valid_until().saturating_duration_since(Instant::now());
        let grace = if lost.is_some() { Duration::ZERO } else { args.kill_grace.min(left) };
        stop_leftovers(out, g, grace, &guard, &mut signals).await;
    }
    if let (Some(j), Some(g)) = (&job, group) {
        j.terminal.take_back_from(g);
    }
    finish(out, guard, status, lost, args.on_lost).await
}

/// Stops what the command left running in its process group (a background job of a shell
/// script, say) before the lock is released: SIGTERM, then SIGKILL after `grace`, or at once
/// if the lock is lost meanwhile. Signals sent to distlock meanwhile are forwarded to them.
async fn stop_leftovers(out: &Out, group: Pid, grace: Duration, guard: &Guard, signals: &mut Forwarded) {
    if !alive(group) {
        return;
    }
    signal(Some(group), Signal::TERM);
    out.say(
        "the command left processes running in its process group; stopping them",
        "leftovers",
        json!({ "signal": "SIGTERM", "kill_after_ms": grace.as_millis() as u64 }),
    );
    let until = tokio::time::Instant::now() + grace;
    while alive(group) && tokio::time::Instant::now() < until {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = tokio::time::sleep_until(until) => break,
            _ = guard.lost() => break,
            sig = signals.recv() => signal(Some(group), sig),
        }
    }
    signal(Some(group), Signal::KILL);
    // Killed processes are gone once their parent (init, for orphans) reaps them.
    wait_gone(group, Duration::from_secs(5)).await;
}

/// Waits until no process of `group` is left, for at most `within`.
async fn wait_gone(group: Pid, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while alive(group) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether any process of `group` is left.
fn alive(group: Pid) -> bool {
    rustix::process::test_kill_process_group(group).is_ok()
}

/// The terminal distlock runs in the foreground of, when it does (standard input is a
/// terminal whose foreground process group is distlock's). The command's process group is
/// made its foreground while the command runs, as a shell does for a job, so that the command
/// can read from it and gets the terminal's signals (Ctrl-C) once, directly.
struct Foreground {
    ours: Pid,
}

impl Foreground {
    fn ours() -> Option<Self> {
        let stdin = std::io::stdin();
        if !rustix::termios::isatty(&stdin) {
            return None;
        }
        let ours = rustix::process::getpgrp();
        (rustix::termios::tcgetpgrp(&stdin).ok()? == ours).then_some(Self { ours })
    }

    /// Makes `group` the terminal's foreground; wakes it if it was stopped for reading the
    /// terminal before that.
    fn give(&self, group: Pid) {
        if rustix::termios::tcsetpgrp(std::io::stdin(), group).is_ok() {
            signal(Some(group), Signal::CONT);
        }
    }

    /// Takes the terminal's foreground back from the command's `group`, if the group has it
    /// (not from the shell, which has it while the job runs in the background). A process
    /// may do so from the background while it blocks SIGTTOU.
    fn take_back_from(&self, group: Pid) {
        if rustix::termios::tcgetpgrp(std::io::stdin()).ok() != Some(group) {
            return;
        }
        #[allow(unsafe_code)]
        // SAFETY: pthread_sigmask only changes this thread's signal mask, through pointers
        // to two sigset_t that live on this stack for the calls' duration.
        unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            let mut before: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            libc::sigaddset(&mut block, libc::SIGTTOU);
            libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut before);
            let _ = rustix::termios::tcsetpgrp(std::io::stdin(), self.ours);
            libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
        }
    }

    /// The command's `group` was stopped from the terminal: Ctrl-Z (SIGTSTP, sent to
    /// the terminal's foreground, which is the command's), or reading or writing the terminal
    /// from the background (SIGTTIN, SIGTTOU). distlock takes the terminal back and stops
    /// itself too, so that the shell that started it sees the job stopped and gets the
    /// terminal. Renewal stops with it: a lock suspended past its TTL is lost, and `--on-lost`
    /// applies once it is continued. Continued, see [`resumed`](Self::resumed).
    ///
    /// A SIGSTOP sent to the command from outside is not mirrored: whoever sent it continues
    /// the command, and distlock keeps supervising it. A process group with no parent outside
    /// it in the session (orphaned: no shell to continue it) is not stopped by SIGTSTP; the
    /// command is continued at once then.
    fn suspend(&self, group: Pid) {
        self.take_back_from(group);
        #[allow(unsafe_code)]
        // SAFETY: raise(3) sends a signal to the calling thread; the stop takes the whole
        // process before it returns.
        unsafe {
            libc::raise(libc::SIGTSTP);
        }
        // Here once continued.
        self.resumed(group);
    }

    /// distlock was continued (`fg`, `bg`): so is the command, and it gets the terminal if the
    /// shell gave it to distlock (`fg`).
    fn resumed(&self, group: Pid) {
        if rustix::termios::tcgetpgrp(std::io::stdin()).ok() == Some(self.ours) {
            let _ = rustix::termios::tcsetpgrp(std::io::stdin(), group);
        }
        signal(Some(group), Signal::CONT);
    }
}

/// Job control while the command runs from a terminal's foreground, as a shell's job: the
/// terminal, and the signals that tell of the command's stops (SIGCHLD) and of distlock being
/// continued (SIGCONT).
struct Job {
    terminal: Foreground,
    children: Listener,
    continued: Listener,
}

impl Job {
    /// Listens from now on; `None` where the signals cannot be caught.
    fn listen(terminal: Foreground) -> Option<Self> {
        let children = unix_signal(SignalKind::child()).ok()?;
        let continued = unix_signal(SignalKind::from_raw(libc::SIGCONT)).ok()?;
        Some(Self { terminal, children, continued })
    }
}

/// Says that the lock is held (JSON lines go to stderr: stdout belongs to the command): its
/// name and that name's own fencing token, and for a multi-key lock every name's token.
pub(crate) fn announce(
    out: &Out,
    locks: &LockClient,
    guard: &Guard,
    tokens: &[(String, distlock::FencingToken)],
    event: &str,
) {
    let token = own_token(guard, tokens);
    let mut fields =
        json!({ "key": guard.key(), "fencing_token": token.get(), "backend": locks.backend_name() });
    let others = if tokens.len() > 1 {
        fields["fencing_tokens"] = crate::take::tokens_json(tokens);
        let all: Vec<String> = tokens.iter().map(|(k, t)| format!("'{k}' {t}")).collect();
        format!("; tokens: {}", all.join(", "))
    } else {
        String::new()
    };
    out.say(
        format_args!("holding '{}' (fencing token {token}{others}) on {}", guard.key(), locks.backend_name()),
        event,
        fields,
    );
}

/// The fencing token of the name `guard` stands for. A multi-key guard's own token is the
/// highest of its names' tokens, which come from different counters: writes to the first
/// name's resource must carry that name's token.
fn own_token(guard: &Guard, tokens: &[(String, distlock::FencingToken)]) -> distlock::FencingToken {
    tokens.iter().find(|(k, _)| k == guard.key()).map_or_else(|| guard.fencing_token(), |(_, t)| *t)
}

/// The signals `run` forwards to the command.
pub(crate) struct Forwarded([Listener; 4]);

impl Forwarded {
    /// The signals that end a process by default, which `run` forwards, with their numbers.
    pub(crate) const KINDS: [(SignalKind, Signal); 4] = [
        (SignalKind::terminate(), Signal::TERM),
        (SignalKind::interrupt(), Signal::INT),
        (SignalKind::hangup(), Signal::HUP),
        (SignalKind::quit(), Signal::QUIT),
    ];

    /// Catches the forwarded signals from now on.
    ///
    /// # Errors
    /// The exit code to end with, once the failure is reported.
    pub(crate) fn install(out: &Out) -> Result<Self, ExitCode> {
        let listeners = Self::KINDS.map(|(kind, _)| unix_signal(kind));
        let listeners: Option<Vec<Listener>> = listeners.into_iter().collect::<Result<_, _>>().ok();
        listeners.and_then(|l| <[Listener; 4]>::try_from(l).ok()).map(Self).ok_or_else(|| {
            let error = "cannot install signal handlers";
            out.say(error, "error", json!({ "error": error, "kind": "signals" }));
            ExitCode::from(exit::BACKEND)
        })
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

/// Starts the command with the lock's name and that name's fencing token in its environment,
/// and every name's token in `DISTLOCK_FENCING_TOKENS`: one `name=token` line per name (names
/// hold no control characters, and a token is digits after the last `=`).
fn spawn(
    cmd: &[String],
    guard: &Guard,
    tokens: &[(String, distlock::FencingToken)],
) -> std::io::Result<Child> {
    let mut command = tokio::process::Command::new(&cmd[0]);
    let all: Vec<String> = tokens.iter().map(|(k, t)| format!("{k}={t}")).collect();
    command
        .args(&cmd[1..])
        .env("DISTLOCK_FENCING_TOKEN", own_token(guard, tokens).to_string())
        .env("DISTLOCK_FENCING_TOKENS", all.join("\n"))
        .env("DISTLOCK_LOCK", guard.key())
        .process_group(0)
        .kill_on_drop(true);
    // If distlock itself dies (even by SIGKILL), the kernel kills the command: it never runs
    // on without the lock's holder watching it. If distlock died before that was set up, the
    // command does not start.
    let parent = rustix::process::getpid();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl and
    // getppid, which are async-signal-safe; it touches no memory of the parent.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                .map_err(std::io::Error::from)?;
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other("distlock exited before the command started"));
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Whether the child `pid` was stopped by the terminal's job control (SIGTSTP, SIGTTIN,
/// SIGTTOU) since last asked (a stop is reported once; the exit is left for tokio to reap).
fn stopped_from_the_terminal(pid: Pid) -> bool {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    let Ok(Some(status)) = waitid(WaitId::Pid(pid), WaitIdOptions::STOPPED | WaitIdOptions::NOHANG) else {
        return false;
    };
    matches!(status.stopping_signal(), Some(libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU))
}

/// The next signal `listener` hears; never without one.
async fn next(listener: &mut Option<&mut Listener>) -> Option<()> {
    match listener {
        Some(l) => l.recv().await,
        None => std::future::pending().await,
    }
}

/// The name of a signal `run` forwards or sends, as in `kill -l` with `SIG`.
fn name(sig: Signal) -> &'static str {
    match sig {
        Signal::TERM => "SIGTERM",
        Signal::INT => "SIGINT",
        Signal::HUP => "SIGHUP",
        Signal::QUIT => "SIGQUIT",
        Signal::KILL => "SIGKILL",
        _ => "a signal",
    }
}

/// Sends `sig` to the command's process group: the command and what it started.
fn signal(group: Option<Pid>, sig: Signal) {
    if let Some(group) = group {
        let _ = rustix::process::kill_process_group(group, sig);
    }
}

/// Waits for the command, forwarding signals to its process group `group`, and stops it as
/// `--on-lost` says if the lock is lost. With `term`, a renewal falling behind so far that the
/// lock has at most the kill grace (and at most a third of its validity) left sends SIGTERM then,
/// and the loss, when it comes, SIGKILL: the command is gone when the lock expires, where a
/// SIGTERM at the loss and a SIGKILL a grace later let it run on while another holder could
/// take the lock. Run from a terminal's foreground, a command stopped from it (Ctrl-Z)
/// suspends distlock too (see [`Foreground::suspend`]). Returns its status and the loss, if any.
async fn supervise(
    out: &Out,
    guard: &Guard,
    child: &mut Child,
    group: Option<Pid>,
    job: Option<&mut Job>,
    signals: &mut Forwarded,
    args: &Supervised,
) -> (std::io::Result<std::process::ExitStatus>, Option<LossReason>) {
    let mut lost = None;
    let pid = child.id().and_then(|p| Pid::from_raw(p as i32));
    let (mut children, mut continued, terminal, pid, group_id) = match (job, pid, group) {
        (Some(Job { terminal, children, continued }), Some(p), Some(g)) => {
            (Some(children), Some(continued), Some(&*terminal), p, g)
        }
        _ => (None, None, None, Pid::INIT, Pid::INIT),
    };
    // A stop before the listener was polled the first time is not missed either.
    let mut stopped = terminal.is_some() && stopped_from_the_terminal(pid);
    // A third of the validity the lock has now, just taken: its TTL, or on a backend whose
    // session keeps its locks (ZooKeeper, etcd's session mode) what the session has left.
    let ahead =
        args.kill_grace.min(guard.lease().valid_until().saturating_duration_since(Instant::now()) / 3);
    // SIGTERM sent ahead of an expiry that renewal did not keep off.
    let mut stopping = false;
    let status = 'run: loop {
        tokio::select! {
            // A loss is seen even when the command ends at the same moment.
            biased;
            reason = guard.lost(), if lost.is_none() => {
                lost = Some(reason);
                // The command is stopped before the loss is reported: a report that cannot be
                // written must not keep it running.
                let stop = match args.on_lost {
                    OnLost::Ignore => None,
                    // With `term`, its grace was what was left of the lock if it was warned.
                    OnLost::Term if !stopping => Some(Signal::TERM),
                    OnLost::Kill | OnLost::Term => Some(Signal::KILL),
                };
                if let Some(sig) = stop {
                    signal(group, sig);
                }
                report_loss(out, guard, reason, args.on_lost);
                match stop {
                    // The loss event says `"on_lost":"ignore"`.
                    None if out.json => {}
                    None => say_err!("distlock: --on-lost ignore: the command keeps running without the lock"),
                    Some(Signal::TERM) => {
                        let grace = tokio::time::sleep(loss_grace(guard, reason, args.kill_grace));
                        tokio::pin!(grace);
                        // Signals sent to distlock meanwhile are forwarded at once.
                        loop {
                            tokio::select! {
                                status = child.wait() => break 'run status,
                                _ = &mut grace => {
                                    signal(group, Signal::KILL);
                                    break;
                                }
                                sig = signals.recv() => signal(group, sig),
                            }
                        }
                    }
                    Some(_) => {}
                }
            }
            _ = guard.expiring(ahead), if lost.is_none() && !stopping && args.on_lost == OnLost::Term => {
                stopping = true;
                signal(group, Signal::TERM);
                out.say(
                    format_args!(
                        "lock '{}' not renewed; it expires within {ahead:?}: stopping the command (SIGTERM now, SIGKILL when it expires)",
                        guard.key()
                    ),
                    "expiring",
                    json!({ "key": guard.key(), "within_ms": ahead.as_millis() as u64, "signal": "SIGTERM" }),
                );
            }
            Some(()) = next(&mut children), if !stopped => stopped = stopped_from_the_terminal(pid),
            _ = std::future::ready(()), if stopped => {
                stopped = false;
                if let Some(t) = terminal {
                    t.suspend(group_id);
                }
            }
            Some(()) = next(&mut continued) => {
                if let Some(t) = terminal {
                    t.resumed(group_id);
                }
            }
            status = child.wait() => break status,
            sig = signals.recv() => signal(group, sig),
        }
    };
    (status, lost)
}

/// How long a command sent SIGTERM for a loss `reason` has before SIGKILL: the kill grace, but
/// no longer than the lock may still be valid on the server (a renewal refused for good, say
/// by a revoked permission, leaves the lock there until it expires, when another holder can
/// take it; a job continued after a suspension past its TTL has nothing left). A lock that
/// renewal found taken away (`NotHeld`) is already free: its command gets the whole grace.
fn loss_grace(guard: &Guard, reason: LossReason, kill_grace: Duration) -> Duration {
    if reason == LossReason::NotHeld {
        return kill_grace;
    }
    kill_grace.min(guard.lease().valid_until().saturating_duration_since(Instant::now()))
}

fn report_loss(out: &Out, guard: &Guard, reason: LossReason, on_lost: OnLost) {
    out.say(
        format_args!("lock '{}' lost ({reason})", guard.key()),
        "lost",
        json!({ "key": guard.key(), "reason": reason.to_string(), "on_lost": format!("{on_lost:?}").to_lowercase() }),
    );
}

/// Releases the lock and reports how the run ended; the exit code is the command's, or 70
/// when the lock was lost (the command stopped for it, or the release found it gone).
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
        say_err!("distlock: release failed ({e}); the lock expires with its TTL");
    }
    if let (Err(e), false) = (&status, out.json) {
        say_err!("distlock: waiting for the command failed: {e}");
    }
    // A loss no renewal saw yet (the lock expired, or was released by force, shortly before
    // the command ended): the command's end may have run without the lock.
    let found_lost = lost.is_none() && matches!(released, Ok(ReleaseOutcome::NotHeld));
    if found_lost && !out.json {
        say_err!(
            "distlock: lock '{key}' was no longer held when the command ended (it expired or was released by force); the command's end may have run without it"
        );
    }
    let code = match (&status, lost.is_some() || found_lost, on_lost) {
        (_, true, OnLost::Term | OnLost::Kill) => exit::LOST,
        (Ok(s), _, _) => exit::for_status(*s),
        (Err(_), _, _) => exit::BACKEND,
    };
    if out.json {
        let fields = json!({
            "key": key,
            "exit_code": code,
            "command_status": status.as_ref().ok().and_then(|s| s.code()),
            "lost": lost.map(|r| r.to_string()).or(found_lost.then(|| "not held at release".to_owned())),
            "released": match &released {
                Ok(o) => json!(*o == ReleaseOutcome::Released),
                Err(e) => json!({ "error": e.to_string() }),
            },
        });
        out.event("finished", fields);
    }
    ExitCode::from(code)
}
