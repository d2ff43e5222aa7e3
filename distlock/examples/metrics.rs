//! Expose distlock's metrics to Prometheus from a library user's service.
//!
//! lock-core records through the `metrics` facade: install a Prometheus recorder once at
//! start-up and serve its text on a `/metrics` endpoint. This example lets the exporter serve
//! it with its own HTTP listener (feature `http-listener`) on a loopback port (in a service
//! with a web framework, `install_recorder()` instead and put `handle.render()` behind your
//! `/metrics` route), takes and releases a lock, then scrapes itself once and prints the
//! `distlock_*` series.
//!
//! ```text
//! cargo run -p distlock --example metrics
//! DISTLOCK_URL=redis://127.0.0.1:6379 cargo run -p distlock --example metrics --features redis
//! ```

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Once per process, before any lock is taken. Buckets (seconds) make the histograms
    // usable by `histogram_quantile` and by the Grafana dashboard in `dashboards/`.
    // The exporter's listener serves /metrics; here on a loopback port the kernel picks (a
    // service would use a fixed one, e.g. 0.0.0.0:9464).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0])?
        .install()?;

    // Use locks as usual: every acquire, release, renewal and loss is counted.
    let url = std::env::var("DISTLOCK_URL").unwrap_or_else(|_| "mem://".into());
    let locks = distlock::connect(&url).await?;
    let guard = locks.lock("reports/daily").ttl(Duration::from_secs(10)).acquire().await?;
    guard.release().await?;

    // What Prometheus would scrape.
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut response = String::new();
    sock.read_to_string(&mut response).await?;
    println!("scraped http://{addr}/metrics:");
    for line in response.lines().filter(|l| l.starts_with("distlock_")) {
        println!("  {line}");
    }
    if !response.contains("distlock_acquire_total") {
        return Err("no distlock_acquire_total series in the scrape".into());
    }
    Ok(())
}
