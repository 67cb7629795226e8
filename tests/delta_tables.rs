//! Delta Lake tables at the edge (issue 13): readings in over HTTP, persisted by a running
//! `carewatch serve`; the `deltalake` Python package and Polars read `<data-dir>/observations`
//! and `<data-dir>/dead_letters` in place, beside the running server, and get exactly the rows
//! carewatch's own SQL (`POST /v1/sql`) returns.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// (patient, device, code, value, effective µs) for observations; (reason, message, "", 0,
/// received µs) for dead letters.
type Key = (String, String, String, f64, i64);

fn keys_of(rows: &[serde_json::Value], cols: [&str; 5]) -> Vec<Key> {
    let s = |r: &serde_json::Value, c: &str| r[c].as_str().unwrap_or_default().to_owned();
    let mut out: Vec<Key> = rows
        .iter()
        .map(|r| {
            (
                s(r, cols[0]),
                s(r, cols[1]),
                s(r, cols[2]),
                r[cols[3]].as_f64().unwrap_or(0.0),
                r[cols[4]].as_i64().expect("time"),
            )
        })
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    out
}

fn sql(srv: &Server, q: &str) -> Vec<serde_json::Value> {
    let (s, b) = curl("POST", &format!("{}/v1/sql", srv.http), srv.admin(), q);
    assert_eq!(s, 200, "{b}");
    serde_json::from_str(&b).expect("json rows")
}

/// Rows of a Delta table as JSON objects, read by `deltalake` and by Polars.
const READ: &str = r#"
import json, sys, deltalake, polars as pl
root, cols = sys.argv[1], sys.argv[2].split(",")
t = deltalake.DeltaTable(root).to_pyarrow_table(columns=cols)
rows = [dict(zip(cols, r)) for r in zip(*(
    (t[c].cast("int64") if str(t[c].type).startswith("timestamp") else t[c]).to_pylist() for c in cols))]
df = pl.read_delta(root).select(cols)
prow = [dict(zip(cols, r)) for r in zip(*(
    (df[c].dt.epoch("us") if df.schema[c] == pl.Datetime("us", "UTC") else df[c]).to_list() for c in cols))]
print(json.dumps({"deltalake": rows, "polars": prow}))
"#;

fn read_delta(
    table: &std::path::Path,
    cols: &str,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let out = Command::new(python())
        .args(["-c", READ])
        .arg(table)
        .arg(cols)
        .output()
        .expect("python venv (scripts/setup-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    (list("deltalake"), list("polars"))
}

#[test]
fn python_deltalake_and_polars_get_exactly_the_rows_carewatch_sql_returns() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = write_config(tmp.path(), "[store]\npersist_age_secs = 1\n");
    let srv = Server::start(tmp.path(), &["--config", &cfg]);
    let secret = srv.register("dl-w1", "dl-alice");
    // 150 readings ten minutes apart: they span two UTC days (two date partitions).
    let body: String = (0..150)
        .map(|i| {
            format!(
                "{{\"time\":{},\"heart_rate\":{}}}\n",
                1_714_600_800_000_i64 + i * 600_000,
                60 + i % 40
            )
        })
        .collect();
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
    assert_eq!(s, 202, "{b}");
    // Items that cannot be readings: dead letters.
    let bad = "[{\"time\":\"soon\",\"heart_rate\":70},{\"heart_rate\":\"high\"}]";
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, bad);
    assert!(s == 202 || s == 422, "{s} {b}");
    wait_until(
        "the buffer to be persisted",
        Duration::from_secs(60),
        || {
            let st = srv.stats();
            st["buffered_rows"] == 0 && st["files"].as_u64().unwrap_or(0) >= 3
        },
    );

    let data = srv.dir.clone();
    let ours = sql(
        &srv,
        "SELECT patient_id, device_id, code, value, CAST(effective_time AS BIGINT) AS t FROM observations",
    );
    assert_eq!(ours.len(), 150);
    let cols = ["patient_id", "device_id", "code", "value", "effective_time"];
    let (delta, polars) = read_delta(&data.join("observations"), &cols.join(","));
    let ours = keys_of(&ours, ["patient_id", "device_id", "code", "value", "t"]);
    assert_eq!(keys_of(&delta, cols), ours, "deltalake");
    assert_eq!(keys_of(&polars, cols), ours, "polars");

    let ours = sql(
        &srv,
        "SELECT reason, message, '' AS x, 0.0 AS y, CAST(received_time AS BIGINT) AS t FROM dead_letters",
    );
    assert!(ours.len() >= 2, "{ours:?}");
    let ours = keys_of(&ours, ["reason", "message", "x", "y", "t"]);
    let (delta, polars) = read_delta(&data.join("dead_letters"), "reason,message,received_time");
    let cols = ["reason", "message", "-", "-", "received_time"];
    assert_eq!(keys_of(&delta, cols), ours, "deltalake");
    assert_eq!(keys_of(&polars, cols), ours, "polars");
    assert!(data.join("observations/_delta_log").is_dir());
    assert_eq!(srv.stop(), 0);
}
