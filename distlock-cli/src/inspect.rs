//! `distlock inspect`: who holds a lock (or a semaphore's permits, a read-write lock's
//! readers and writer, an election's leader), with each holder's metadata.

use std::process::ExitCode;

use distlock::{LockClient, Mode};
use serde_json::json;

use crate::holder;
use crate::output::Out;

/// `inspect --lock NAME [--permits N | --rw | --election]`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The lock's name.
    #[arg(long)]
    lock: String,
    /// Show the permits held of the semaphore NAME with N permits.
    #[arg(long, conflicts_with_all = ["rw", "election"])]
    permits: Option<u32>,
    /// Show the readers and the writer of the read-write lock NAME.
    #[arg(long, conflicts_with = "election")]
    rw: bool,
    /// Show the leader of the election NAME.
    #[arg(long)]
    election: bool,
}

/// Prints the holders (fencing token, owner, time left, mode, metadata), or that it is free.
pub(crate) async fn exec(out: &Out, locks: &LockClient, args: &Args) -> ExitCode {
    let name = args.lock.as_str();
    let mode = match (args.permits, args.rw, args.election) {
        (Some(limit), _, _) => Mode::Permit { limit },
        (None, true, _) => Mode::Read,
        (None, false, true) => Mode::Leader,
        _ => Mode::Exclusive,
    };
    let holders = match locks.holders(name, mode).await {
        Ok(h) => h,
        Err(e) => return out.fail(&e),
    };
    let key = locks.key(name).map(|k| k.full().to_owned()).unwrap_or_else(|_| name.to_owned());
    if out.json {
        let list: Vec<_> = holders.iter().map(|i| holder::to_json(&key, i)).collect();
        let mut v = match holders.first() {
            Some(first) if mode == Mode::Exclusive => holder::to_json(&key, first),
            _ => json!({ "key": key }),
        };
        v["held"] = json!(!holders.is_empty());
        v["holders"] = json!(list);
        say_out!("{v}");
    } else if holders.is_empty() {
        say_out!("'{key}' is free");
    } else {
        for i in &holders {
            say_out!("{}", holder::to_text(&key, i));
        }
    }
    ExitCode::SUCCESS
}
