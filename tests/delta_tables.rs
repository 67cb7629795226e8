//! Delta Lake tables at the edge (issue 13): readings in over HTTP, persisted by a running
//! `carewatch serve`; the `deltalake` Python package and Polars read `<data-dir>/observations`
//! and `<data-dir>/dead_letters` in place, beside the running server, and get exactly the rows
//! carewatch's own SQL (`POST /v1/sql`) returns; `<data-dir>/alerts` holds the alert
//! history's transitions, each once.

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

/// Posts a body temperature of 39.5 °C now (the shipped fever rule fires on it).
fn fever(srv: &Server, device: &str, patient: &str) {
    let secret = srv.register(device, patient);
    let body = format!(
        r#"{{"time":"{}","body_temperature":39.5}}"#,
        chrono::Utc::now().to_rfc3339()
    );
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
    assert_eq!(s, 202, "{b}");
}

/// The `alerts` table's transitions as keys: (alert, status, event, -, seq).
fn transitions(srv: &Server) -> Vec<Key> {
    let rows = sql(srv, "SELECT alert_id, status, event, seq FROM alerts");
    keys_of(&rows, ["alert_id", "status", "event", "-", "seq"])
}

/// The `alerts` Delta table's rows as deltalake and Polars read them (empty before
/// the first export creates it).
fn exported(dir: &std::path::Path) -> (Vec<Key>, Vec<Key>) {
    let table = dir.join("alerts");
    if !table.join("_delta_log").is_dir() {
        return (Vec::new(), Vec::new());
    }
    let (d, p) = read_delta(&table, "alert_id,status,event,seq");
    let cols = ["alert_id", "status", "event", "-", "seq"];
    (keys_of(&d, cols), keys_of(&p, cols))
}

/// Checks what deltalake and Polars read of the `alerts` Delta table: every transition of `want` is
/// in it, each row is a transition of the `alerts` table (read after it), and no `seq` twice.
fn exported_once(srv: &Server, want: &[Key]) {
    let (delta, polars) = exported(&srv.dir);
    let now = transitions(srv);
    for (reader, rows) in [("deltalake", &delta), ("polars", &polars)] {
        let mut seqs: Vec<i64> = rows.iter().map(|k| k.4).collect();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(
            seqs.len(),
            rows.len(),
            "{reader}: a transition twice: {rows:?}"
        );
        for k in want {
            assert!(rows.contains(k), "{reader}: {k:?} missing from {rows:?}");
        }
        for k in rows {
            assert!(
                now.contains(k),
                "{reader}: {k:?} is not in the alerts table {now:?}"
            );
        }
    }
}

/// The alert history is a Delta table too (issue 13): `<data-dir>/alerts` holds every
/// transition of the `alerts` table once — firing, then acknowledged — as the `deltalake`
/// package and Polars read it in place, and after a restart the export continues where the
/// table stops instead of writing the earlier transitions again.
#[test]
fn the_alert_history_is_a_delta_table_with_each_transition_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = write_config(tmp.path(), "[alerts]\ninterval_secs = 0.3\n");
    let srv = Server::start(tmp.path(), &["--config", &cfg]);
    fever(&srv, "ah-d1", "ah-p1");
    fever(&srv, "ah-d2", "ah-p2");
    wait_until("two alerts firing", Duration::from_secs(30), || {
        transitions(&srv).iter().filter(|k| k.1 == "firing").count() >= 2
    });
    let id = transitions(&srv)[0].0.clone();
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/alerts/{id}/ack", srv.http),
        srv.admin(),
        "",
    );
    assert!(s == 200 || s == 204, "{s} {b}");
    let ours = transitions(&srv);
    assert!(ours.iter().any(|k| k.1 == "acknowledged"), "{ours:?}");
    let dir = srv.dir.clone();
    wait_until(
        "the alerts Delta table to hold every transition",
        Duration::from_secs(40),
        || exported(&dir).0.len() >= ours.len(),
    );
    exported_once(&srv, &ours);
    let admin = srv.admin().to_owned();
    assert_eq!(srv.stop(), 0);

    let mut srv = Server::start(tmp.path(), &["--config", &cfg]);
    srv.admin = Some(admin);
    fever(&srv, "ah-d3", "ah-p3");
    wait_until("the third alert", Duration::from_secs(30), || {
        transitions(&srv)
            .iter()
            .any(|k| k.1 == "firing" && k.4 as usize >= ours.len())
    });
    let ours = transitions(&srv);
    wait_until(
        "the new transitions in the alerts Delta table",
        Duration::from_secs(40),
        || exported(&dir).0.len() >= ours.len(),
    );
    // Another export interval: still each transition once.
    std::thread::sleep(Duration::from_secs(11));
    exported_once(&srv, &ours);
    assert_eq!(srv.stop(), 0);
}
