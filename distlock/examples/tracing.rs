//! Follow locks through your service's traces: distlock runs acquire, the held guard, renewal,
//! extend and release in `tracing` spans (backend, key, fencing token, outcome), and reports a
//! loss as an event in the guard's span. Any `tracing` subscriber collects them; this one prints
//! each span when it closes.
//!
//! ```text
//! cargo run -p distlock --example tracing
//! DISTLOCK_URL=redis://127.0.0.1:6379 cargo run -p distlock --example tracing --features redis
//! ```

use std::time::Duration;

use tracing_subscriber::fmt::format::FmtSpan;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "distlock=debug,lock_core=debug".into()),
        )
        .with_span_events(FmtSpan::CLOSE)
        .with_target(false)
        .init();
    let url = std::env::var("DISTLOCK_URL").unwrap_or_else(|_| "mem://".into());
    let locks = distlock::connect(&url).await?;
    let guard = locks.lock("reports/daily").ttl(Duration::from_millis(600)).auto_renew().acquire().await?;
    tokio::time::sleep(Duration::from_millis(500)).await; // one renewal
    guard.release().await?;
    // A lease that runs out without renewal: the loss is an event in the guard's span.
    let short = locks.lock("reports/hourly").ttl(Duration::from_millis(50)).acquire().await?;
    let reason = short.lost().await;
    tracing::info!(%reason, "the example saw the loss");
    Ok(())
}
