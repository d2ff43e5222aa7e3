//! The Grafana dashboard, proven against a real Prometheus: Debian's `prometheus` scrapes
//! `distlock run --metrics-addr` processes while jobs contend (acquired, timed out, released,
//! expired, lost), then every PromQL query of `dashboards/grafana-distlock.json` runs through
//! Prometheus's HTTP API and must return series with the expected labels and plausible values.
//! A query that returns nothing is a failure, not a skip.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use conformance_tests::fixtures::{find_binary, free_port, temp_dir, ServerProcess, ServerSpec};
use serde_json::Value;

/// Kills the child on drop (no stray distlock processes).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn distlock(url: &str, metrics_port: Option<u16>, log: &std::path::Path) -> Command {
    let mut c = Command::cargo_bin("distlock").expect("binary");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log");
    c.env("DISTLOCK_URL", url).env_remove("DISTLOCK_DIR").stdout(Stdio::null()).stderr(log);
    if let Some(p) = metrics_port {
        c.args(["--metrics-addr", &format!("127.0.0.1:{p}"), "--metrics-linger", "60s"]);
    }
    c
}

/// GET on loopback, the body as JSON.
fn get_json(port: u16, path_and_query: &str) -> Option<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let body = raw.split_once("\r\n\r\n")?.1;
    // Prometheus may answer chunked: take the JSON object inside.
    let start = body.find('{')?;
    let end = body.rfind('}')?;
    serde_json::from_str(&body[start..=end]).ok()
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The result vector of an instant query.
fn query(prom: u16, q: &str) -> Vec<Value> {
    get_json(prom, &format!("/api/v1/query?query={}", encode(q)))
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

/// The dashboard's PromQL queries, with Grafana's variables filled in as Grafana would.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards/grafana-distlock.json");
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("dashboard JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let q = expr.replace("$__rate_interval", "1m").replace("$backend", ".*");
                out.push((p["title"].as_str().unwrap_or("?").to_owned(), q));
            }
        }
    }
    out
}

/// Waits until Prometheus has scraped the process serving `port`.
fn wait_up(prom: u16, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let q = format!("up{{instance=\"127.0.0.1:{port}\"}} == 1");
    while query(prom, &q).is_empty() {
        assert!(Instant::now() < deadline, "Prometheus never scraped 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `q` with every `rate(SELECTOR[1m])` replaced by `SELECTOR`.
fn without_rate(q: &str) -> String {
    let mut out = q.to_owned();
    while let Some(start) = out.find("rate(") {
        let Some(end) = out[start..].find("[1m])").map(|e| start + e) else { break };
        out = format!("{}{}{}", &out[..start], &out[start + "rate(".len()..end], &out[end + "[1m])".len()..]);
    }
    out
}

/// Four different free loopback ports (two calls of `free_port` may return the same one).
fn distinct_ports() -> [u16; 4] {
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < 4 {
        let p = free_port().expect("port");
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    [ports[0], ports[1], ports[2], ports[3]]
}

#[test]
fn every_dashboard_query_returns_plausible_series_from_a_real_prometheus() {
    let prometheus = find_binary("prometheus", &["/usr/bin"], "apt-get install prometheus", "prometheus")
        .expect("prometheus");
    let dir = temp_dir("distlock-dashboard-").expect("dir");
    let url = format!("file://{}?sync=false", dir.path().join("locks").display());
    let [h, c1, c2, prom] = distinct_ports();
    let log = dir.path().join("distlock.log");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: distlock\n    static_configs:\n      - targets: ['127.0.0.1:{h}', '127.0.0.1:{c1}', '127.0.0.1:{c2}']\n"
        ),
    )
    .expect("config");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let spec = ServerSpec {
        name: "prometheus".into(),
        program: prometheus,
        args: vec![
            format!("--config.file={}", dir.path().join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prom}"),
        ],
        env: vec![],
        ready_port: prom,
        ready_timeout: Duration::from_secs(60),
    };
    let _prometheus = rt.block_on(ServerProcess::start(spec, dir.path())).expect("prometheus starts");

    // Every series starts at zero (the CLI registers them), but a counter only "increases" in
    // Prometheus once a scrape has seen it before the event: each process is seen up before
    // the event the test wants from it.
    // The holder: renews every 2 s TTL/3; keeps running when its lock is taken away.
    let _holder = Proc(
        distlock(&url, Some(h), &log)
            .args(["run", "--lock", "job", "--ttl", "2s", "--on-lost", "ignore", "--", "sleep", "15"])
            .spawn()
            .expect("holder"),
    );
    wait_up(prom, h);
    // A contender that times out (and lingers so the timeout is scraped).
    let _contender = Proc(
        distlock(&url, Some(c1), &log)
            .args(["run", "--lock", "job", "--wait", "3s", "--", "true"])
            .spawn()
            .expect("contender"),
    );
    wait_up(prom, c1);
    std::thread::sleep(Duration::from_secs(3));
    // An operator takes the lock away: the holder's next renewal finds it gone (lost), and its
    // release at the end finds it already gone (expired).
    let out =
        distlock(&url, None, &log).args(["force-release", "--lock", "job"]).status().expect("force-release");
    assert!(out.success(), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    // A job that gets the lock, holds it a while and releases it.
    let _next = Proc(
        distlock(&url, Some(c2), &log)
            .args(["run", "--lock", "job", "--wait", "10s", "--", "sleep", "2"])
            .spawn()
            .expect("next job"),
    );
    // Every process lingers 60 s after its command, so its last outcomes stay live series while
    // the queries below run (a process that has exited leaves stale series, which an instant
    // query no longer returns). The holder's `expired` release shows its command finished
    // despite the loss (--on-lost ignore).
    // Wait until Prometheus has seen every outcome, then run the dashboard's queries.
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = [
        ("distlock_acquire_total", "outcome", "acquired"),
        ("distlock_acquire_total", "outcome", "timed_out"),
        ("distlock_release_total", "outcome", "released"),
        ("distlock_release_total", "outcome", "expired"),
        ("distlock_lost_total", "reason", "not_held"),
        ("distlock_renewals_total", "outcome", "ok"),
    ];
    for (metric, label, value) in want {
        let q = format!("{metric}{{{label}=\"{value}\"}} > 0");
        while query(prom, &q).is_empty() {
            assert!(
                Instant::now() < deadline,
                "Prometheus never scraped {q}; its targets: {:?}; the processes said:\n{}",
                get_json(prom, "/api/v1/targets").map(|t| t["data"]["activeTargets"].clone()),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let queries = dashboard_queries();
    assert!(queries.len() >= 8, "the dashboard has {} queries", queries.len());
    for (title, q) in &queries {
        let result = query(prom, q);
        assert!(!result.is_empty(), "panel '{title}': `{q}` returned nothing");
        for series in &result {
            assert_eq!(series["metric"]["backend"], "file", "panel '{title}': {series}");
            let v: f64 = series["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
            // A quantile of a rate is NaN while no bucket has grown within the window: each
            // process here acquires once, before its first scrape (a long-lived service's
            // buckets grow). Its value is checked below over the buckets themselves.
            if !(q.contains("histogram_quantile") && v.is_nan()) {
                assert!(v.is_finite() && v >= 0.0, "panel '{title}': `{q}` gave {v} ({series})");
            }
        }
    }
    let outcomes = |q: &str, label: &str| -> Vec<String> {
        query(prom, q).iter().filter_map(|s| s["metric"][label].as_str().map(str::to_owned)).collect()
    };
    let acquires = outcomes("sum by (outcome) (increase(distlock_acquire_total[1m]))", "outcome");
    assert!(acquires.contains(&"acquired".into()) && acquires.contains(&"timed_out".into()), "{acquires:?}");
    // The expired-vs-released panel moves when a job overruns its lease.
    let releases = outcomes("sum by (outcome) (increase(distlock_release_total[1m]))", "outcome");
    assert!(releases.contains(&"expired".into()) && releases.contains(&"released".into()), "{releases:?}");
    let lost = query(prom, "sum(increase(distlock_lost_total[1m]))");
    let lost: f64 =
        lost.first().and_then(|s| s["value"][1].as_str()).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    assert!(lost > 0.0, "the lost-locks panel did not move after a forced release");
    // Latency and hold-time quantiles are plausible: positive and well under a minute, taken
    // over the buckets' values (the panel's query with `rate(x[1m])` replaced by `x`).
    for (title, q) in queries.iter().filter(|(_, q)| q.contains("histogram_quantile")) {
        let q = &without_rate(q);
        let result = query(prom, q);
        assert!(!result.is_empty(), "panel '{title}': `{q}` returned nothing");
        for series in result {
            let v: f64 = series["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
            assert!(v > 0.0 && v < 60.0, "panel '{title}': `{q}` gave {v}");
        }
    }
}
