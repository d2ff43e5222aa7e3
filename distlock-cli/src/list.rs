//! `distlock list`: every lock (and semaphore permit, reader, writer, leader) held under a
//! prefix, with its metadata, fencing token and time left.

use std::process::ExitCode;

use distlock::LockClient;
use serde_json::json;

use crate::holder;
use crate::output::Out;

/// `list [--prefix P]`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Only names under this prefix (default: all of the client's namespace).
    #[arg(long, default_value = "")]
    prefix: String,
}

/// Prints one line (or one JSON object in a list) per holder.
pub(crate) async fn exec(out: &Out, locks: &LockClient, args: &Args) -> ExitCode {
    let listed = match locks.list(&args.prefix).await {
        Ok(l) => l,
        Err(e) => return out.fail(&e),
    };
    if out.json {
        let v: Vec<_> = listed.iter().map(|(k, i)| holder::to_json(k, i)).collect();
        say_out!("{}", json!(v));
    } else if listed.is_empty() {
        say_out!("no locks held under '{}'", args.prefix);
    } else {
        for (k, i) in &listed {
            say_out!("{}", holder::to_text(k, i));
        }
    }
    ExitCode::SUCCESS
}
