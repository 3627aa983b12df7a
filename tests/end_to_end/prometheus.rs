//! The shipped Prometheus configuration, alert rules and Grafana dashboard against
//! the real thing: `promtool` accepts them, and a real Prometheus server scraping
//! a running engine returns data for every dashboard query and every alert's
//! expression (a panel whose query returns nothing is a broken panel).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::crash::feed;
use crate::support::*;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (Debian's prometheus package; deploy/setup.sh installs it)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_scrape_config_and_the_alert_rules() {
    let dir = deploy().join("prometheus");
    promtool(&[
        "check",
        "config",
        dir.join("prometheus.yml").to_str().unwrap(),
    ]);
    promtool(&["check", "rules", dir.join("alerts.yml").to_str().unwrap()]);
}

/// The PromQL of every dashboard panel.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(deploy().join("grafana/rapport-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let queries: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(queries.len() >= 8, "{queries:?}");
    queries
}

/// The parts of every alert expression, without their thresholds: what must
/// return data for the alert to be able to fire at all.
fn alert_queries() -> Vec<String> {
    let text = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(expr) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        let mut rest = expr.trim().to_owned();
        // Split `a and b` / `a and on (x) b` into their sides.
        let mut sides = Vec::new();
        while let Some(i) = rest.find(" and ") {
            sides.push(rest[..i].to_owned());
            rest = rest[i + 5..].trim_start().to_owned();
            if let Some(after) = rest.strip_prefix("on (") {
                rest = after[after.find(')').unwrap() + 1..]
                    .trim_start()
                    .to_owned();
            }
        }
        sides.push(rest);
        for side in sides {
            let base = match side.rfind([' ']) {
                Some(i) if side[i + 1..].parse::<f64>().is_ok() => {
                    let head = side[..i].trim_end();
                    head.trim_end_matches(['>', '<', '=', '!'])
                        .trim_end()
                        .to_owned()
                }
                _ => side,
            };
            out.push(base);
        }
    }
    assert!(out.len() >= 6, "{out:?}");
    for base in [
        "rapport_ready",
        "increase(rapport_rewinds_total[15m])",
        "increase(rapport_restored_records_total[10m])",
        "sum by (instance) (rapport_consumer_lag_records)",
    ] {
        assert!(out.iter().any(|q| q == base), "{base} in {out:#?}");
    }
    out
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The number of series Prometheus returns for `query` (None if it errs).
fn series(prometheus: &str, query: &str) -> Option<usize> {
    let mut s = TcpStream::connect(prometheus).ok()?;
    write!(
        s,
        "GET /api/v1/query?query={} HTTP/1.1\r\nHost: {prometheus}\r\nConnection: close\r\n\r\n",
        encode(query)
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    (v["status"] == "success").then(|| v["data"]["result"].as_array().map_or(0, Vec::len))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_real_prometheus_scraping_the_engine_has_data_for_every_panel_and_alert() {
    let _serial = heavy();
    let topics = Topics::new("prometheus", 2);
    let dir = tempfile::tempdir().unwrap();
    let group = unique("prometheus");
    feed(&topics.input, 20_000, 2_000, 81);
    let mut cfg = topics.config(&dir.path().join("state"), &group);
    cfg.engine.instance_id = "scraped".into();
    cfg.kafka
        .consumer
        .insert("statistics.interval.ms".into(), "500".into());
    let engine_addr = format!("127.0.0.1:{}", free_port());
    cfg.http.listen = engine_addr.clone();
    let mut engine = Instance::spawn(&cfg, dir.path(), "engine");
    engine.wait_ready(2);

    // The shipped rules, and a scrape of this engine every second.
    std::fs::copy(
        deploy().join("prometheus/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\nscrape_configs:\n  - job_name: rapport\n    static_configs:\n      - targets: [\"{engine_addr}\"]\n"
        ),
    )
    .unwrap();
    let prometheus = format!("127.0.0.1:{}", free_port());
    let _server = Server(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prometheus}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's prometheus package; deploy/setup.sh installs it)"),
    );
    let queries: Vec<String> = dashboard_queries()
        .into_iter()
        .chain(alert_queries())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        engine.assert_running();
        let empty: Vec<&String> = queries
            .iter()
            .filter(|q| series(&prometheus, q).unwrap_or(0) == 0)
            .collect();
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no data from Prometheus for: {empty:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The engine's own numbers arrived: it processed the input.
    assert_eq!(
        series(&prometheus, "rapport_events_total > 0"),
        Some(1),
        "events counted for the one input topic"
    );
    engine.terminate();
}
