//! `distlock inspect`: who holds a lock.

use std::process::ExitCode;

use distlock::LockClient;
use serde_json::json;

use crate::output::Out;

/// `inspect --lock NAME`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The lock's name.
    #[arg(long)]
    lock: String,
}

/// Prints who holds the lock (fencing token, owner, time left), or that it is free.
pub(crate) async fn exec(out: &Out, locks: &LockClient, args: &Args) -> ExitCode {
    let name = args.lock.as_str();
    let info = match locks.inspect(name).await {
        Ok(i) => i,
        Err(e) => return out.fail(&e),
    };
    let key = locks.key(name).map(|k| k.full().to_owned()).unwrap_or_else(|_| name.to_owned());
    if out.json {
        let v = match &info {
            Some(i) => json!({
                "key": key,
                "held": true,
                "fencing_token": i.fencing_token.map(|f| f.get()),
                "owner": i.owner.map(|o| o.to_string()),
                "remaining_ttl_ms": i.remaining_ttl.map(|d| d.as_millis() as u64),
            }),
            None => json!({ "key": key, "held": false }),
        };
        println!("{v}");
    } else {
        match info {
            Some(i) => println!(
                "'{key}' is held: fencing token {}, owner {}, {} left",
                i.fencing_token.map_or("unknown (foreign holder)".to_owned(), |f| f.to_string()),
                i.owner.map_or("unknown".to_owned(), |o| o.to_string()),
                i.remaining_ttl.map_or("unknown time".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
            ),
            None => println!("'{key}' is free"),
        }
    }
    ExitCode::SUCCESS
}
