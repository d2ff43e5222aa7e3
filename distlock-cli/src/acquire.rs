//! `distlock acquire`: take a lock and keep it past the process, until its TTL runs out or
//! `distlock release`.

use std::process::ExitCode;

use distlock::{Error, LockClient};
use serde_json::json;

use crate::output::Out;
use crate::take::Take;

/// `acquire --lock NAME [--ttl 30s] [--wait 0s]`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    take: Take,
}

/// Takes the lock, prints its owner token and fencing token, and leaves it held.
pub(crate) async fn exec(out: &Out, locks: &LockClient, args: &Args) -> ExitCode {
    let take = &args.take;
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
    let guard = match out.waiting(&format!("waiting for lock '{name}'"), fut).await {
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
