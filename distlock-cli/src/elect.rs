//! `distlock elect`: campaign in an election and run a command only while leader; stop it when
//! leadership is lost, as `run` does when a lock is lost.

use std::process::ExitCode;
use std::time::Duration;

use distlock::LockClient;

use crate::output::Out;
use crate::run::{announce, supervise_command, wait_or_signal, Forwarded, Supervised};
use crate::take::duration;

/// `elect --name NAME --value V [--ttl 30s] [--wait DURATION] [--on-lost …] -- CMD [ARGS...]`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The election's name.
    #[arg(long)]
    name: String,
    /// What this candidate advertises while leader (shown by `distlock leader`).
    #[arg(long)]
    value: String,
    /// Leadership TTL; a crashed leader is replaced within about this long (default: the
    /// URL's `ttl=`, else 30s).
    #[arg(long, value_parser = duration)]
    ttl: Option<Duration>,
    /// How long to campaign before giving up (default: until elected).
    #[arg(long, value_parser = duration)]
    wait: Option<Duration>,
    #[command(flatten)]
    command: Supervised,
}

/// Campaigns, then runs the command while leader; exit code as `run`'s (75 when not elected
/// within `--wait`).
pub(crate) async fn exec(out: &Out, locks: &LockClient, args: &Args) -> ExitCode {
    let mut election = locks.election(&args.name);
    if let Some(t) = args.ttl {
        election = election.ttl(t);
    }
    if let Some(w) = args.wait {
        election = election.wait(w);
    }
    let mut signals = match Forwarded::install(out) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let fut = election.campaign(args.value.clone());
    let what = format!("campaigning in '{}'", args.name);
    let guard = match wait_or_signal(out, &what, &mut signals, fut).await {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => return out.fail(&e),
        Err(code) => return code,
    };
    let tokens = vec![(guard.key().to_owned(), guard.fencing_token())];
    announce(out, locks, &guard, &tokens, "elected");
    supervise_command(out, guard, &tokens, &args.command, signals).await
}
