//! `--metrics-addr`: lock-core's metrics in the Prometheus text format, served by the
//! exporter's own HTTP listener.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

/// Histogram buckets (seconds) for acquire latency and hold time: 100 µs to 10 min, so the
/// dashboard's `histogram_quantile` works.
pub(crate) const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0,
];

/// Installs the Prometheus recorder and its HTTP listener on `addr` (bound before this
/// returns, on the current tokio runtime).
///
/// # Errors
/// When the address cannot be bound or a recorder is already installed.
pub(crate) fn serve(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&BUCKETS)
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| e.to_string())
}
