//! Cost curves: how the cost of holding locks grows with their number (server requests per
//! second, client CPU, client memory per lock), and how hand-off grows with the waiters on one
//! key; each backend's points in a table, all backends in one chart rendered to SVG.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use crate::scenarios;
use crate::{Backend, Plan};

/// How long each waiter sweep point holds the lock before releasing.
const HOLD: Duration = Duration::from_millis(10);

fn round1(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 10.0).round() / 10.0)
    } else {
        Value::Null
    }
}

/// The curve's point for `n` held locks from this run's held-locks scenario, if it measured
/// `n` without an error.
fn measured_held(out: &Value, n: usize) -> Option<Value> {
    let row =
        out["held_locks"].as_array()?.iter().find(|r| r["locks"] == json!(n) && r["error"].is_null())?;
    Some(json!({
        "locks": n,
        "server_requests_per_s": row["server_requests_per_s"],
        "client_cpu_pct": row["client_cpu_pct"],
        "client_bytes_per_lock": row["client_bytes_per_lock_all"],
    }))
}

/// Sweeps held locks and waiters for `b`'s distlock contender; writes `out["curves"]`.
pub(crate) async fn measure(b: &Backend, plan: &Plan, tag: &str, out: &mut Value) -> Result<()> {
    // Waiters first: the largest held-locks point leaves the server busy deleting what it
    // held (a ZooKeeper server took seconds over 100,000 nodes), which would slow the hand-offs.
    let mut waiters = Vec::new();
    if let Some(ours) = b.factories.iter().find(|f| f.kind() == "distlock") {
        for &w in &plan.curve_waiters {
            eprintln!("[{}] curve: hand-off with {w} waiters", b.name);
            let s0 = scenarios::server_count(b.server_requests.as_ref()).await;
            let (cpu0, t0) = (scenarios::cpu_seconds(), Instant::now());
            let key = format!("{tag}/curve/ho/{w}");
            let got = scenarios::handoff(ours, w, HOLD, plan.curve_handoffs, &key).await?;
            let (cpu1, dt) = (scenarios::cpu_seconds(), t0.elapsed().as_secs_f64());
            let s1 = scenarios::server_count(b.server_requests.as_ref()).await;
            let Some((p50, p99)) = got else { continue };
            waiters.push(json!({
                "waiters": w,
                "hold_ms": HOLD.as_millis() as u64,
                "p50": p50,
                "p99": p99,
                "client_cpu_pct": round1((cpu1 - cpu0) / dt * 100.0),
                "server_requests_per_s": s0.zip(s1).map(|(a, z)| round1(z.saturating_sub(a) as f64 / dt)),
            }));
        }
    }
    let mut held = Vec::new();
    for &n in &plan.curve_held {
        // A point the held-locks scenario of this run measured already (with a longer window)
        // is taken from it rather than measured twice.
        if let Some(p) = measured_held(out, n) {
            held.push(p);
            continue;
        }
        eprintln!("[{}] curve: holding {n} locks", b.name);
        let backend = (b.ours)().await?;
        let got = scenarios::held_cost(
            backend,
            n,
            b.held_ttl,
            plan.curve_window,
            &format!("{tag}/curve/{n}"),
            b.server_requests.as_ref(),
            false,
        )
        .await;
        held.push(match got {
            Ok(c) => json!({
                "locks": n,
                "server_requests_per_s": c.server_per_s.map(round1),
                "client_cpu_pct": round1(c.cpu_pct),
                "client_bytes_per_lock": c.bytes_per_lock_all.round(),
            }),
            // Reported, not fatal: an emulator that cannot keep up loses locks.
            Err(e) => json!({ "locks": n, "error": format!("{e:#}") }),
        });
    }
    out["curves"] = json!({ "held": held, "waiters": waiters });
    Ok(())
}

/// The curves of every backend as markdown tables.
pub(crate) fn markdown(b: &Value, fmt: impl Fn(&Value) -> String) -> String {
    let mut md = String::new();
    let c = &b["curves"];
    if c.is_null() {
        return md;
    }
    md.push_str(
        "\nCost curve, held locks with auto-renewal (distlock; memory over all the locks, pools included):\n\n\
         | locks | server requests/s | client CPU % | client heap bytes/lock |\n|---|---|---|---|\n",
    );
    for r in c["held"].as_array().into_iter().flatten() {
        if let Some(e) = r["error"].as_str() {
            let _ = writeln!(md, "| {} | failed: {e} | | |", r["locks"]);
            continue;
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            r["locks"],
            fmt(&r["server_requests_per_s"]),
            fmt(&r["client_cpu_pct"]),
            fmt(&r["client_bytes_per_lock"])
        );
    }
    md.push_str(
        "\nCost curve, waiters on one key (distlock; each holder keeps the lock 10 ms):\n\n\
         | waiters | hand-off p50 (ms) | p99 (ms) | client CPU % | server requests/s |\n|---|---|---|---|---|\n",
    );
    for r in c["waiters"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            r["waiters"],
            fmt(&r["p50"]),
            fmt(&r["p99"]),
            fmt(&r["client_cpu_pct"]),
            fmt(&r["server_requests_per_s"])
        );
    }
    md
}

/// One line of a chart: a backend's points.
struct Series {
    color: &'static str,
    points: Vec<(f64, f64)>,
}

const COLORS: [&str; 6] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

/// Where `v` falls between `lo` and `hi` (log10 when `log`), from 0 to 1.
fn scale(v: f64, lo: f64, hi: f64, log: bool) -> f64 {
    let (v, lo, hi) = if log { (v.max(lo).log10(), lo.log10(), hi.log10()) } else { (v, lo, hi) };
    if hi > lo {
        ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
    } else {
        0.5
    }
}

/// Ticks for an axis: powers of ten on a log axis, five steps on a linear one.
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if log {
        let (a, z) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (a..=z).map(|e| 10f64.powi(e)).filter(|t| *t >= lo * 0.999 && *t <= hi * 1.001).collect()
    } else {
        (0..=4).map(|i| lo + (hi - lo) * f64::from(i) / 4.0).collect()
    }
}

fn label(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", (v / 1000.0).round())
    } else if v >= 1.0 || v == 0.0 {
        format!("{}", (v * 10.0).round() / 10.0)
    } else {
        format!("{v}")
    }
}

/// One panel at (`x`, `y`) of size `w`×`h`.
#[allow(clippy::too_many_arguments)]
fn panel(
    svg: &mut String,
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    title: &str,
    xlabel: &str,
    series: &[Series],
    ylog: bool,
) {
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).collect();
    let _ =
        writeln!(svg, r#"<text x="{}" y="{}" font-size="13" font-weight="bold">{title}</text>"#, x, y - 8.0);
    if pts.is_empty() {
        let _ =
            writeln!(svg, r#"<text x="{}" y="{}" font-size="12">no points</text>"#, x + 10.0, y + h / 2.0);
        return;
    }
    let (mut x_lo, mut x_hi) = (f64::MAX, f64::MIN);
    let (mut y_lo, mut y_hi) = (f64::MAX, f64::MIN);
    for (px, py) in &pts {
        x_lo = x_lo.min(*px);
        x_hi = x_hi.max(*px);
        y_lo = y_lo.min(*py);
        y_hi = y_hi.max(*py);
    }
    if ylog {
        // Zeros (a session backend's renewals cost no request) sit on the floor.
        y_lo =
            10f64.powf(pts.iter().map(|p| p.1).filter(|v| *v > 0.0).fold(f64::MAX, f64::min).log10().floor());
        if !y_lo.is_finite() || y_lo <= 0.0 {
            y_lo = 0.1;
        }
        y_hi = 10f64.powf(y_hi.max(y_lo * 10.0).log10().ceil());
    } else {
        y_lo = 0.0;
        y_hi = (y_hi * 1.1).max(1.0);
    }
    let x_log = x_hi / x_lo.max(1e-9) >= 10.0;
    let sx = |vx: f64| x + scale(vx, x_lo, x_hi, x_log) * w;
    let sy = |vy: f64| y + h - scale(vy, y_lo, y_hi, ylog) * h;
    let _ = writeln!(svg, r##"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="#999"/>"##);
    for t in ticks(x_lo, x_hi, x_log) {
        let tx = sx(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{tx}" y1="{y}" x2="{tx}" y2="{}" stroke="#eee"/><text x="{tx}" y="{}" font-size="10" text-anchor="middle">{}</text>"##,
            y + h,
            y + h + 13.0,
            label(t)
        );
    }
    for t in ticks(y_lo, y_hi, ylog) {
        let ty = sy(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{ty}" x2="{}" y2="{ty}" stroke="#eee"/><text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>"##,
            x + w,
            x - 4.0,
            ty + 3.0,
            label(t)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{xlabel}</text>"#,
        x + w / 2.0,
        y + h + 28.0
    );
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let path: Vec<String> =
            s.points.iter().map(|(vx, vy)| format!("{:.1},{:.1}", sx(*vx), sy(*vy))).collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            path.join(" "),
            s.color
        );
        for (vx, vy) in &s.points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                sx(*vx),
                sy(*vy),
                s.color
            );
        }
    }
}

/// The chart of every backend's curves, as an SVG document.
pub(crate) fn svg(report: &Value) -> String {
    let backends: Vec<&Value> =
        report["backends"].as_array().into_iter().flatten().filter(|b| !b["curves"].is_null()).collect();
    let series = |rows: &str, xk: &str, yk: &str| -> Vec<Series> {
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| Series {
                color: COLORS[i % COLORS.len()],
                points: b["curves"][rows]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| Some((r[xk].as_f64()?, r[yk].as_f64()?)))
                    .collect(),
            })
            .collect()
    };
    let (w, h) = (360.0, 220.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{}" font-family="sans-serif">"#,
        2.0 * (h + 80.0) + 40.0 + 20.0 * backends.len() as f64
    );
    s.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    let _ = writeln!(
        s,
        r#"<text x="20" y="22" font-size="15" font-weight="bold">distlock cost curves ({} run)</text>"#,
        report["mode"].as_str().unwrap_or("")
    );
    let row1 = 60.0;
    let row2 = row1 + h + 80.0;
    panel(
        &mut s,
        70.0,
        row1,
        w,
        h,
        "server requests/s while holding (renewals)",
        "held locks",
        &series("held", "locks", "server_requests_per_s"),
        true,
    );
    panel(
        &mut s,
        510.0,
        row1,
        w,
        h,
        "client heap bytes per held lock",
        "held locks",
        &series("held", "locks", "client_bytes_per_lock"),
        false,
    );
    panel(
        &mut s,
        70.0,
        row2,
        w,
        h,
        "client CPU % while holding",
        "held locks",
        &series("held", "locks", "client_cpu_pct"),
        false,
    );
    panel(
        &mut s,
        510.0,
        row2,
        w,
        h,
        "hand-off p50 (ms)",
        "waiters on one key",
        &series("waiters", "waiters", "p50"),
        true,
    );
    let legend = row2 + h + 50.0;
    for (i, b) in backends.iter().enumerate() {
        let ly = legend + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="70" y="{}" width="14" height="4" fill="{}"/><text x="92" y="{}" font-size="12">{}</text>"#,
            ly - 4.0,
            COLORS[i % COLORS.len()],
            ly,
            b["backend"].as_str().unwrap_or("?")
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Value {
        json!({
            "mode": "quick",
            "backends": [
                {"backend": "A", "curves": {
                    "held": [{"locks": 100, "server_requests_per_s": 0.0, "client_cpu_pct": 1.0, "client_bytes_per_lock": 900.0},
                             {"locks": 10000, "server_requests_per_s": 10.1, "client_cpu_pct": 6.0, "client_bytes_per_lock": 950.0}],
                    "waiters": [{"waiters": 1, "p50": 0.5, "p99": 1.0, "client_cpu_pct": 3.0, "server_requests_per_s": null},
                                {"waiters": 256, "p50": 1.5, "p99": 9.0, "client_cpu_pct": 30.0, "server_requests_per_s": 500.0}]}},
                {"backend": "B", "curves": {
                    "held": [{"locks": 100, "error": "lost"}],
                    "waiters": []}},
                {"backend": "C (not measured)"}
            ]
        })
    }

    /// Every measured backend gets a line and a legend entry; a failed point and a backend
    /// without curves draw nothing and break nothing.
    #[test]
    fn the_chart_has_a_line_per_backend_with_points() {
        let svg = svg(&report());
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        // A's four panels each draw one line; B has no points.
        assert_eq!(svg.matches("<polyline").count(), 4, "{svg}");
        assert!(svg.contains(">A</text>") && svg.contains(">B</text>"));
        assert!(!svg.contains("C (not measured)"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn the_tables_show_each_point_and_failures() {
        let fmt = |v: &Value| v.to_string();
        let r = report();
        let md = markdown(&r["backends"][0], fmt);
        assert!(md.contains("| 10000 | 10.1 | 6.0 | 950.0 |"), "{md}");
        assert!(md.contains("| 256 | 1.5 | 9.0 | 30.0 | 500.0 |"), "{md}");
        let md = markdown(&r["backends"][1], fmt);
        assert!(md.contains("| 100 | failed: lost | | |"), "{md}");
        assert!(markdown(&r["backends"][2], fmt).is_empty());
    }
}
