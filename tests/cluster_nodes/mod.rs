//! The failover test's cluster (tests/cluster_alerts.rs): real PostgreSQL, Garage and
//! Mosquitto, `carewatch serve` nodes on them, and what the test reads back — leases,
//! webhook deliveries, the table through `deltalake`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use carewatch_fixtures::garage::Garage;
use carewatch_fixtures::postgres::Postgres;

pub use crate::common::partitions_owned as owned;
use crate::common::{S3, Server, Webhook, curl, free_port, read_counts, write_config};
use crate::mosquitto::Mosquitto;

/// The engines one scenario runs on.
pub struct Engines {
    pub pg: Postgres,
    pub g: Garage,
    pub hook: Webhook,
    pub broker: Mosquitto,
    pub mqtt_port: u16,
}

pub fn node(e: &Engines, dir: &Path, name: &str, partitioned: bool) -> Server {
    let cfg = write_config(
        dir,
        &format!(
            "[store]\npersist_age_secs = 1\n[alerts]\ninterval_secs = 0.5\nwebhook_url = \"{}\"\n[mqtt]\nclient_id = \"carewatch-{name}\"\nshared_group = \"carewatch\"\n[cluster]\npartitioned_alerting = {partitioned}\n",
            e.hook.url
        ),
    );
    let store_url = format!("s3://{}/tables", e.g.bucket);
    let mqtt_url = format!("mqtt://127.0.0.1:{}", e.mqtt_port);
    Server::start_with_env(
        dir,
        &[
            "--config",
            &cfg,
            "--postgres-url",
            &e.pg.url,
            "--object-store-url",
            &store_url,
            "--mqtt-url",
            &mqtt_url,
        ],
        &e.g.env(),
    )
}

/// Publishes `n` single heart-rate readings of device `device` through the broker (QoS 1),
/// one a second from `from_ms`.
pub fn publish(port: u16, device: &str, from_ms: i64, n: i64) -> usize {
    for i in 0..n {
        let msg = format!(
            r#"{{"time":{},"heart_rate":{}}}"#,
            from_ms + i * 1000,
            60 + i % 30
        );
        let ok = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", &format!("devices/{device}/readings"), "-m", &msg])
            .status()
            .expect("mosquitto_pub")
            .success();
        assert!(ok, "the broker refused a message");
    }
    n as usize
}

/// Reads the table with `deltalake` until `done`: every read's (rows, distinct keys).
pub fn watch_table(g: &Garage, done: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<(i64, i64)>> {
    let (g, table) = (S3::of(g), format!("s3://{}/tables/observations", g.bucket));
    std::thread::spawn(move || {
        let mut reads = Vec::new();
        while !done.load(Ordering::SeqCst) {
            let r = read_counts(&g, &table);
            if r.0 >= 0 {
                reads.push(r);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        reads
    })
}

/// The node's lease name, from its start-up log line.
pub fn node_name(srv: &Server) -> String {
    let log = std::fs::read_to_string(&srv.stderr_log).expect("log");
    log.lines()
        .filter(|l| l.contains("holding alert partition leases"))
        .find_map(|l| {
            let at = l.find("node=")? + 5;
            Some(
                l[at..]
                    .chars()
                    .take_while(char::is_ascii_hexdigit)
                    .collect(),
            )
        })
        .expect("the node logs its lease name")
}

/// Partition → owner, of the unexpired leases.
pub fn owners(pg: &Postgres) -> BTreeMap<u16, String> {
    pg.psql("SELECT part, owner FROM carewatch_alert_leases WHERE expires_at > now() AND owner IS NOT NULL")
        .iter()
        .filter_map(|l| {
            let (p, o) = l.split_once('|')?;
            Some((p.parse().ok()?, o.to_owned()))
        })
        .collect()
}

/// NDJSON: heart rate every 10 s and steps 0 each minute, for `n` minutes from `start_ms`.
pub fn minutes(start_ms: i64, n: i64, hr: f64) -> String {
    let mut out = String::new();
    for m in 0..n {
        for k in 0..6 {
            let t = start_ms + m * 60_000 + k * 10_000;
            let steps = if k == 0 { ",\"steps\":0" } else { "" };
            out.push_str(&format!("{{\"time\":{t},\"heart_rate\":{hr}{steps}}}\n"));
        }
    }
    out
}

pub fn post(srv: &Server, secret: &str, body: &str) -> usize {
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), secret, body);
    assert_eq!(s, 202, "{b}");
    body.lines().count() * 2 - body.lines().filter(|l| !l.contains("steps")).count()
}

pub fn count(srv: &Server, token: &str) -> i64 {
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/sql", srv.http),
        token,
        "SELECT count(*) AS n FROM observations",
    );
    if s != 200 {
        return -1;
    }
    let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
    v[0]["n"].as_i64().unwrap_or(-1)
}

/// Per patient: the distinct alerts raised (`firing` fingerprints) and the seqs each came with.
pub fn raised(hook: &Webhook) -> BTreeMap<String, BTreeMap<String, BTreeSet<u64>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<u64>>> = BTreeMap::new();
    for v in hook.all().iter().filter(|v| v["event"] == "firing") {
        let p = v["patient_id"].as_str().unwrap_or_default().to_owned();
        let f = v["fingerprint"].as_str().unwrap_or_default().to_owned();
        let seq = v["seq"].as_u64().unwrap_or(u64::MAX);
        out.entry(p).or_default().entry(f).or_default().insert(seq);
    }
    out
}

pub fn engines(tmp: &Path) -> Engines {
    let mqtt_port = free_port();
    let broker = Mosquitto::start(tmp, mqtt_port);
    Engines {
        pg: Postgres::start(),
        g: Garage::start(),
        hook: Webhook::start(0),
        broker,
        mqtt_port,
    }
}

/// Rows and distinct natural keys (device, code, effective time) of the Delta table at an
/// s3:// URL, read by Polars (`pl.read_delta`), the second outside reader the issue names.
const POLARS: &str = r#"
import json, os, sys, polars as pl
url, endpoint, key, secret, region = sys.argv[1:6]
opts = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": region, "AWS_ALLOW_HTTP": "true", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
if url.endswith("/alerts"):
    df = pl.read_delta(url, storage_options=opts, columns=["alert_id", "event", "seq"])
    print(json.dumps({"seqs": df["seq"].to_list(),
                      "firing": df.filter(pl.col("event") == "firing")["alert_id"].to_list()}), flush=True)
else:
    df = pl.read_delta(url, storage_options=opts, columns=["device_id", "code", "effective_time"])
    print(json.dumps({"rows": df.height, "keys": df.unique().height}), flush=True)
os._exit(0)
"#;

/// [`POLARS`] on Garage `g` for the table at `table_url`; `None` when the read failed.
fn polars_read(g: &Garage, table_url: &str) -> Option<serde_json::Value> {
    let s = S3::of(g);
    let out = std::process::Command::new(crate::common::python())
        .args([
            "-c",
            POLARS,
            table_url,
            &s.endpoint,
            &s.key_id,
            &s.secret,
            &s.region,
        ])
        .output()
        .expect("python venv (scripts/setup-test-deps.sh)");
    if !out.status.success() {
        eprintln!(
            "polars read failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("json"))
}

/// Rows and distinct natural keys of `observations` as Polars reads them, `(-1, -1)` when the
/// read failed.
pub fn polars_counts(g: &Garage, table_url: &str) -> (i64, i64) {
    let Some(v) = polars_read(g, table_url) else {
        return (-1, -1);
    };
    (
        v["rows"].as_i64().unwrap_or(-1),
        v["keys"].as_i64().unwrap_or(-1),
    )
}

/// The `alerts` Delta table on Garage as Polars reads it: every row's `seq`, and the alerts
/// of its `firing` rows (empty before the first export).
pub fn alert_history(g: &Garage) -> (Vec<i64>, Vec<String>) {
    let url = format!("s3://{}/tables/alerts", g.bucket);
    let Some(v) = polars_read(g, &url) else {
        return (Vec::new(), Vec::new());
    };
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    (
        list("seqs")
            .iter()
            .filter_map(serde_json::Value::as_i64)
            .collect(),
        list("firing")
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
    )
}
