//! `distlock migrate-tokens`: carry fencing counters from one backend to another before a
//! cut-over, so the first grant on the new backend is fenced above every grant on the old one.

use std::process::ExitCode;

use distlock::migration::migrate_tokens;
use serde_json::json;

use crate::output::Out;

/// `migrate-tokens --from OLD_URL --to NEW_URL [--prefix P] [--dry-run]`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The backend being left.
    #[arg(long)]
    from: String,
    /// The backend being moved to.
    #[arg(long)]
    to: String,
    /// Only keys under this prefix, under the URLs' `namespace=` if they name one (default: all).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Show what would be raised, change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Raises the new backend's counters (never lowering one); prints one line per key.
pub(crate) async fn exec(out: &Out, args: &Args) -> ExitCode {
    let (old, new) = match (distlock::connect(&args.from).await, distlock::connect(&args.to).await) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(e), _) | (_, Err(e)) => return out.fail(&e),
    };
    // The prefix is under the URLs' namespace, as every name is.
    if let Err(e) = distlock::migration::same_namespace(&old, &new) {
        return out.fail(&e);
    }
    let moves = match migrate_tokens(
        old.backend().as_ref(),
        new.backend().as_ref(),
        &old.full_prefix(&args.prefix),
        args.dry_run,
    )
    .await
    {
        Ok(m) => m,
        Err(e) => return out.fail(&e),
    };
    if out.json {
        let v: Vec<_> = moves
            .iter()
            .map(|m| json!({ "key": m.key, "mode": crate::holder::mode_name(m.mode), "old": m.old.get(), "new": m.new.map(|t| t.get()) }))
            .collect();
        say_out!("{}", json!({ "dry_run": args.dry_run, "keys": v }));
    } else {
        for m in &moves {
            match m.new {
                Some(n) => say_out!(
                    "'{}' ({}): old token {}, new counter {n}",
                    m.key,
                    crate::holder::mode_name(m.mode),
                    m.old
                ),
                None => say_out!(
                    "'{}' ({}): old token {} (dry run: nothing raised)",
                    m.key,
                    crate::holder::mode_name(m.mode),
                    m.old
                ),
            }
        }
        say_out!("{} key(s){}", moves.len(), if args.dry_run { ", dry run" } else { " carried over" });
    }
    ExitCode::SUCCESS
}
