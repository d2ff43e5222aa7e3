//! Runs a command while holding a lock on distlock's embedded default, the single-host file
//! backend: the job runs once at a time across every process of this machine.
//!
//! ```text
//! cargo run -q -p lock-local --example run_locked -- [--ttl SECS] [--wait SECS] NAME -- CMD [ARGS...]
//! ```
//!
//! The lock is renewed while the command runs; its fencing token is in the command's
//! environment as `DISTLOCK_FENCING_TOKEN`. If the lock is lost the command is killed. Exit
//! status: the command's own; 75 when the lock could not be had in time; 70 when it was lost;
//! 64 for bad usage.

use std::process::ExitCode;
use std::time::Duration;

use lock_core::{Error, LockClient};
use lock_local::FileBackend;

const USAGE: &str = "usage: run_locked [--ttl SECS] [--wait SECS] NAME -- CMD [ARGS...]";

struct Args {
    name: String,
    ttl: Duration,
    wait: Duration,
    cmd: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut ttl, mut wait, mut name) = (Duration::from_secs(30), Duration::ZERO, None);
    let secs = |v: Option<String>, flag: &str| -> Result<Duration, String> {
        let v = v.ok_or(format!("{flag} needs a number of seconds"))?;
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
            .map(Duration::from_secs_f64)
            .ok_or(format!("{flag}: '{v}' is not a number of seconds"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--ttl" => ttl = secs(it.next(), "--ttl")?,
            "--wait" => wait = secs(it.next(), "--wait")?,
            "--" => break,
            _ if name.is_none() => name = Some(a),
            _ => return Err(format!("unexpected argument '{a}' (put the command after --)")),
        }
    }
    let cmd: Vec<String> = it.collect();
    let name = name.ok_or("missing the lock NAME")?;
    if cmd.is_empty() {
        return Err("missing the command after --".into());
    }
    Ok(Args { name, ttl, wait, cmd })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("run_locked: {e}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let backend = match FileBackend::open_default() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("run_locked: {e}");
            return ExitCode::from(70);
        }
    };
    let dir = backend.dir().display().to_string();
    let locks = LockClient::new(backend);
    let guard = match locks.lock(&args.name).ttl(args.ttl).wait(args.wait).auto_renew().acquire().await {
        Ok(g) => g,
        Err(e @ Error::Timeout { .. }) => {
            eprintln!("run_locked: {e}");
            return ExitCode::from(75);
        }
        Err(e) => {
            eprintln!("run_locked: {e}");
            return ExitCode::from(if matches!(e, Error::InvalidKey(_) | Error::InvalidTtl { .. }) {
                64
            } else {
                70
            });
        }
    };
    eprintln!("run_locked: holding '{}' (fencing token {}) in {dir}", args.name, guard.fencing_token());
    let mut child = match tokio::process::Command::new(&args.cmd[0])
        .args(&args.cmd[1..])
        .env("DISTLOCK_FENCING_TOKEN", guard.fencing_token().to_string())
        .env("DISTLOCK_LOCK", &args.name)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("run_locked: cannot start '{}': {e}", args.cmd[0]);
            let _ = guard.release().await;
            return ExitCode::from(127);
        }
    };
    let code = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => ExitCode::from(s.code().map_or(1, |c| c.clamp(0, 255) as u8)),
            Err(e) => {
                eprintln!("run_locked: waiting for the command failed: {e}");
                ExitCode::from(70)
            }
        },
        reason = guard.lost() => {
            eprintln!("run_locked: lock '{}' lost ({reason}); stopping the command", args.name);
            let _ = child.kill().await;
            ExitCode::from(70)
        }
    };
    if let Err(e) = guard.release().await {
        eprintln!("run_locked: release failed ({e}); the lock expires after its TTL");
    }
    code
}
