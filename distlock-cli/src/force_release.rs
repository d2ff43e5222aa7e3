//! `distlock force-release`: an operator's release of whoever holds a lock.
//!
//! Safe because of fencing: the holder's next write with its old token is rejected by a fenced
//! resource, and its guard reports the loss at its next renewal. The release is logged to
//! stderr with the holder it removed. It frees the exclusive lock of the name only (not a
//! semaphore's permits, a read-write lock's grants or an election's leader).

use std::process::ExitCode;
use std::time::Duration;

use distlock::{Error, LockClient, ReleaseOutcome};
use serde_json::json;

use crate::exit;
use crate::holder;
use crate::output::Out;

/// `force-release --lock NAME`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The lock's name.
    #[arg(long)]
    lock: String,
}

/// Releases the current holder's grant; exit code 1 when the lock was free, 64 when its
/// holder is a foreign client whose owner token cannot be read.
pub(crate) async fn exec(out: &Out, locks: &LockClient, args: &Args) -> ExitCode {
    let name = args.lock.as_str();
    let info = match locks.inspect(name).await {
        Ok(i) => i,
        Err(e) => return out.fail(&e),
    };
    let key = locks.key(name).map(|k| k.full().to_owned()).unwrap_or_else(|_| name.to_owned());
    let Some(info) = info else {
        report(out, &key, false, "the lock was free");
        return ExitCode::from(exit::NOT_HELD);
    };
    let Some(owner) = info.owner else {
        return out.fail(&Error::Unsupported {
            backend: locks.backend_name(),
            capability: "force-releasing a lock whose holder wrote no owner token (a foreign client)".into(),
        });
    };
    let token = info.fencing_token.unwrap_or(distlock::FencingToken::new(0));
    let lease = match locks.lease_from_parts(name, owner, token, Duration::from_secs(1)) {
        Ok(l) => l,
        Err(e) => return out.fail(&e),
    };
    say_err!("distlock: force-releasing {}", holder::to_text(&key, &info));
    match locks.release_lease(&lease).await {
        Ok(ReleaseOutcome::Released) => {
            report(out, &key, true, "released; the holder's next fenced write is rejected");
            ExitCode::SUCCESS
        }
        Ok(ReleaseOutcome::NotHeld) => {
            report(out, &key, false, "the holder let go (or expired) meanwhile");
            ExitCode::from(exit::NOT_HELD)
        }
        Err(e) => out.fail(&e),
    }
}

fn report(out: &Out, key: &str, released: bool, what: &str) {
    if out.json {
        say_out!("{}", json!({ "key": key, "released": released, "detail": what }));
    } else {
        say_out!("'{key}': {what}");
    }
}
