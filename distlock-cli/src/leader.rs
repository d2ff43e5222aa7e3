//! `distlock leader`: who leads an election, once or as it changes.

use std::process::ExitCode;

use distlock::{Leader, LockClient};
use futures::StreamExt;
use serde_json::json;

use crate::holder;
use crate::output::Out;

/// `leader --name NAME [--watch]`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The election's name.
    #[arg(long)]
    name: String,
    /// Keep printing the leader as it changes (one line, or JSON object, per change) until
    /// interrupted; a lost connection ends it with exit code 69.
    #[arg(long)]
    watch: bool,
}

/// Prints the leader (value, term, holder) or that the election is vacant.
pub(crate) async fn exec(out: &Out, locks: &LockClient, args: &Args) -> ExitCode {
    let election = locks.election(&args.name);
    let key = locks.key(&args.name).map(|k| k.full().to_owned()).unwrap_or_else(|_| args.name.clone());
    if !args.watch {
        return match election.leader().await {
            Ok(l) => {
                show(out, &key, l.as_ref());
                ExitCode::SUCCESS
            }
            Err(e) => out.fail(&e),
        };
    }
    let mut changes = match election.observe().await {
        Ok(s) => s,
        Err(e) => return out.fail(&e),
    };
    while let Some(change) = changes.next().await {
        match change {
            Ok(l) => show(out, &key, l.as_ref()),
            Err(e) => return out.fail(&e),
        }
    }
    ExitCode::SUCCESS
}

fn show(out: &Out, key: &str, leader: Option<&Leader>) {
    match (leader, out.json) {
        (Some(l), true) => {
            let mut v = holder::to_json(key, &l.info);
            v["leader"] = json!(l.value);
            v["term"] = json!(l.term.map(|t| t.get()));
            say_out!("{v}");
        }
        (None, true) => say_out!("{}", json!({ "key": key, "leader": null })),
        (Some(l), false) => say_out!(
            "'{key}' is led by {:?} (term {}); {}",
            l.value.as_deref().unwrap_or(""),
            l.term.map_or("unknown".to_owned(), |t| t.to_string()),
            holder::to_text(key, &l.info)
        ),
        (None, false) => say_out!("'{key}' has no leader"),
    }
}
