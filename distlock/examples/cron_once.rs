//! Run a cron job once across machines.
//!
//! Every machine's cron starts this at the same minute; the first to take the lock runs the
//! job, the others see it held and exit quietly. The TTL covers the job plus clock skew
//! between machines' crons, and auto-renewal keeps a long job covered.
//!
//! ```text
//! DISTLOCK_URL=redis://10.0.0.5:6379 cargo run -p distlock --example cron_once
//! cargo run -p distlock --example cron_once    # default: the single-host file backend
//! ```

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> distlock::Result<()> {
    let url = std::env::var("DISTLOCK_URL").unwrap_or_else(|_| "file://".into());
    let locks = distlock::connect(&url).await?;
    let Some(guard) =
        locks.lock("cron/nightly-report").ttl(Duration::from_secs(120)).auto_renew().try_acquire().await?
    else {
        println!("another machine runs tonight's report; nothing to do");
        return Ok(());
    };
    println!("running the report with fencing token {}", guard.fencing_token());
    // The job: pass guard.fencing_token() with every write it makes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    guard.release().await?;
    println!("done");
    Ok(())
}
