//! `distlock release`: release a lock taken with `acquire`, by its owner token.

use std::process::ExitCode;
use std::time::Duration;

use distlock::{Error, LockClient, Mode, OwnerToken, ReleaseOutcome};
use serde_json::json;

use crate::exit;
use crate::output::Out;

/// `release --lock NAME [--lock NAME…] [--permits N | --read | --write] --owner TOKEN`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The lock's name (every name of a multi-key lock).
    #[arg(long = "lock", required = true)]
    locks: Vec<String>,
    /// The owner token `acquire` printed.
    #[arg(long)]
    owner: String,
    /// A permit of the semaphore NAME with N permits.
    #[arg(long, conflicts_with_all = ["read", "write"])]
    permits: Option<u32>,
    /// The read side of the read-write lock NAME.
    #[arg(long, conflicts_with = "write")]
    read: bool,
    /// The write side of the read-write lock NAME.
    #[arg(long)]
    write: bool,
}

impl Args {
    fn mode(&self) -> Mode {
        match (self.permits, self.read, self.write) {
            (Some(limit), _, _) => Mode::Permit { limit },
            (None, true, _) => Mode::Read,
            (None, false, true) => Mode::Write,
            _ => Mode::Exclusive,
        }
    }
}

/// Releases the grant(s) of that owner; exit code 1 when one was no longer held. Every name
/// is tried even when one fails (the others stay released); the first error decides the exit
/// code then. With `--json`, one object: for one name `{"key":…,"released":…}` (or the
/// error's object), for several `{"released":…,"keys":[…]}` with each name's outcome or error.
pub(crate) async fn exec(out: &Out, locks: &LockClient, args: &Args) -> ExitCode {
    let Some(owner) = OwnerToken::parse_hex(&args.owner) else {
        return out.fail(&Error::InvalidConfig(format!(
            "--owner '{}' is not an owner token (32 hex digits, as `acquire` prints)",
            args.owner
        )));
    };
    // Every name is checked before anything is released.
    let mut leases = Vec::new();
    for name in &args.locks {
        match locks.lease_from_parts(name, owner, distlock::FencingToken::new(0), Duration::from_secs(1)) {
            Ok(l) => leases.push(l.with_mode(args.mode())),
            Err(e) => return out.fail(&e),
        }
    }
    let (mut all_released, mut failed) = (true, None);
    // With --json and several names, one object for them all: each name's outcome or error.
    let several = out.json && leases.len() > 1;
    let mut each = Vec::new();
    for lease in &leases {
        let released = match locks.release_lease(lease).await {
            Ok(outcome) => outcome == ReleaseOutcome::Released,
            Err(e) => {
                if several {
                    let mut fields = crate::output::error_fields(&e);
                    fields["key"] = json!(lease.key().full());
                    each.push(fields);
                } else if !out.json {
                    say_err!("distlock: releasing '{}' failed: {e}", lease.key());
                }
                failed.get_or_insert(e);
                continue;
            }
        };
        all_released &= released;
        if several {
            each.push(json!({ "key": lease.key().full(), "released": released }));
        } else if out.json {
            say_out!("{}", json!({ "key": lease.key().full(), "released": released }));
        } else if released {
            say_out!("released '{}'", lease.key());
        } else {
            say_out!("'{}' was not held by that owner (it expired or another owner has it)", lease.key());
        }
    }
    if several {
        say_out!("{}", json!({ "released": all_released && failed.is_none(), "keys": each }));
        return ExitCode::from(match &failed {
            Some(e) => exit::for_error(e),
            None if all_released => 0,
            None => exit::NOT_HELD,
        });
    }
    match failed {
        Some(e) => out.fail(&e),
        None if all_released => ExitCode::SUCCESS,
        None => ExitCode::from(exit::NOT_HELD),
    }
}
