//! `distlock release`: release a lock taken with `acquire`, by its owner token.

use std::process::ExitCode;
use std::time::Duration;

use distlock::{Error, LockClient, OwnerToken, ReleaseOutcome};
use serde_json::json;

use crate::exit;
use crate::output::Out;

/// `release --lock NAME --owner TOKEN`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The lock's name.
    #[arg(long)]
    lock: String,
    /// The owner token `acquire` printed.
    #[arg(long)]
    owner: String,
}

/// Releases the grant of that owner; exit code 1 when it was no longer held.
pub(crate) async fn exec(out: &Out, locks: &LockClient, args: &Args) -> ExitCode {
    let (name, owner) = (args.lock.as_str(), args.owner.as_str());
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
                ExitCode::from(exit::NOT_HELD)
            }
        }
        Err(e) => out.fail(&e),
    }
}
