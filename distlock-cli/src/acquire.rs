//! `distlock acquire`: take a lock and keep it past the process, until its TTL runs out or
//! `distlock release`.

use std::process::ExitCode;

use distlock::{Error, LockClient};
use serde_json::json;

use crate::exit;
use crate::output::Out;
use crate::take::Take;

/// `acquire --lock NAME [--lock NAME…] [--permits N | --read | --write] [--ttl 30s] [--wait 0s]`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    take: Take,
}

/// Takes the lock, prints its owner token and fencing token(s), and leaves it held.
pub(crate) async fn exec(out: &Out, locks: &LockClient, args: &Args) -> ExitCode {
    let take = &args.take;
    if locks.backend_name() == "memory" {
        // The in-process store ends with this process, and the lock with it.
        return out.fail(&Error::Unsupported {
            backend: locks.backend_name(),
            capability: "keeping a lock after the process that took it exits (the memory store \
                         lives in this process); use a server's URL or file://, or `distlock run`"
                .into(),
        });
    }
    if locks.capabilities().session_leases {
        // A session lease ends with this process: the lock would not outlive the command.
        return out.fail(&Error::Unsupported {
            backend: locks.backend_name(),
            capability: "keeping a lock after the process that took it exits (its lease is that \
                         process's session); use a per-lock lease (for etcd: ?lease=per-lock) or `distlock run`"
                .into(),
        });
    }
    // A signal while waiting withdraws the attempt (its grant or place in a queue is undone)
    // instead of killing distlock with it in flight, which left it to its TTL.
    let mut signals = match crate::run::Forwarded::install(out) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let fut = take.acquire(locks, false);
    let what = format!("waiting for lock '{}'", take.label());
    let taken = match crate::run::wait_or_signal(out, &what, &mut signals, fut).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return out.fail(&e),
        Err(code) => return code,
    };
    // Detached only once the owner token is out: a lock whose owner nobody could read would
    // be left to its TTL.
    let lease = taken.guard.lease();
    let mode = match (take.permits, take.read, take.write) {
        (Some(n), _, _) => format!(" --permits {n}"),
        (None, true, _) => " --read".to_owned(),
        (None, false, true) => " --write".to_owned(),
        _ => String::new(),
    };
    let names: Vec<String> = take.locks.iter().map(|n| format!("--lock {n}")).collect();
    let written = if out.json {
        let v = json!({
            "key": lease.key().full(),
            "owner": lease.owner().to_string(),
            "fencing_token": lease.fencing_token().get(),
            "fencing_tokens": crate::take::tokens_json(&taken.tokens),
            "mode": crate::holder::mode_name(lease.mode()),
            "ttl_ms": lease.ttl().as_millis() as u64,
            "valid_for_ms": lease.remaining().as_millis() as u64,
            "backend": locks.backend_name(),
        });
        crate::output::write_out(format_args!("{v}"))
    } else {
        let tokens: Vec<String> = taken.tokens.iter().map(|(k, t)| format!("{k}={t}")).collect();
        crate::output::write_out(format_args!(
            "acquired '{}' on {}: fencing token {} ({}), owner {}, valid for {:.1}s (release with: distlock release {}{mode} --owner {})",
            take.label(),
            locks.backend_name(),
            lease.fencing_token(),
            tokens.join(", "),
            lease.owner(),
            lease.remaining().as_secs_f64(),
            names.join(" "),
            lease.owner()
        ))
    };
    if !written {
        let released = taken.guard.release().await;
        say_err!(
            "distlock: cannot write the owner token to standard output; {}",
            if released.is_ok() { "the lock was released" } else { "the lock expires with its TTL" }
        );
        return ExitCode::from(exit::OUTPUT);
    }
    drop(taken.guard.detach());
    ExitCode::SUCCESS
}
