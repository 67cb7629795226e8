//! SQL end to end: a reading acknowledged over HTTP is visible to `/v1/sql` and `carewatch sql`
//! at once; JSON, CSV and Arrow answers; roles.

mod common;

use std::process::Command;

use common::*;

#[test]
fn acknowledged_readings_are_queryable_at_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let secret = srv.register("w1", "alice");
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/readings", srv.http),
        &secret,
        r#"[{"time":"2024-05-01T08:00:00+02:00","heart_rate":72,"spo2":97},{"time":"2024-05-01T08:00:01+02:00","heart_rate":74}]"#,
    );
    assert_eq!(s, 202, "{b}");
    let analyst = srv.token("analyst", None);
    let q = "SELECT patient_id, code, value, unit FROM observations ORDER BY effective_time, code";
    let (s, b) = curl("POST", &format!("{}/v1/sql", srv.http), &analyst, q);
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    assert_eq!(
        v,
        serde_json::json!([
            {"patient_id": "alice", "code": "2708-6", "value": 97.0, "unit": "%"},
            {"patient_id": "alice", "code": "8867-4", "value": 72.0, "unit": "/min"},
            {"patient_id": "alice", "code": "8867-4", "value": 74.0, "unit": "/min"}
        ])
    );
    // CSV by Accept.
    let out = Command::new("curl")
        .args([
            "-s",
            "-H",
            &format!("Authorization: Bearer {analyst}"),
            "-H",
            "Accept: text/csv",
            "--data-binary",
        ])
        .arg("SELECT code, count(*) AS n FROM observations GROUP BY code ORDER BY code")
        .arg(format!("{}/v1/sql", srv.http))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "code,n\n2708-6,1\n8867-4,2\n"
    );
    // The CLI against the server (Arrow IPC over HTTP) and directly on the data directory.
    let out = Command::new(BIN)
        .args([
            "sql",
            "--server",
            &srv.http,
            "--token",
            &analyst,
            "--format",
            "csv",
            "SELECT count(*) AS n FROM observations",
        ])
        .output()
        .expect("sql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n3\n");
    let out = Command::new(BIN)
        .args([
            "sql",
            "--data-dir",
            srv.dir.to_str().expect("utf8"),
            "--format",
            "json",
            "SELECT count(*) AS n FROM observations",
        ])
        .output()
        .expect("sql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"[{"n":3}]"#);
    // Devices and writes are refused; a bad query is a 400 without internals.
    let (s, _) = curl("POST", &format!("{}/v1/sql", srv.http), &secret, "SELECT 1");
    assert_eq!(s, 403);
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/sql", srv.http),
        &analyst,
        "DROP TABLE observations",
    );
    assert!(s == 403 || s == 400, "{s} {b}");
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/sql", srv.http),
        &analyst,
        "SELECT nope FROM observations",
    );
    assert_eq!(s, 400, "{b}");
    assert!(!b.contains(srv.dir.to_str().expect("utf8")), "{b}");
    assert_eq!(srv.stop(), 0);
}

fn psql(pg: &str, token: &str, sql: &str) -> (bool, String, String) {
    let (host, port) = pg.rsplit_once(':').expect("addr");
    let out = Command::new("psql")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-U",
            "analyst",
            "-d",
            "carewatch",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", token)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql installed (scripts/setup-test-deps.sh)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn psql_over_the_postgres_wire() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let pg = srv.pg_ready();
    let secret = srv.register("w1", "alice");
    let body: String = (0..30)
        .map(|i| {
            format!(
                "{{\"time\":{},\"heart_rate\":{}}}\n",
                1_714_550_400_000_i64 + i * 60_000,
                90 + i
            )
        })
        .collect();
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
    assert_eq!(s, 202, "{b}");
    let analyst = srv.token("analyst", None);

    // Filters, aggregates and a window function, as an analyst would write them.
    let (ok, out, err) = psql(
        &pg,
        &analyst,
        "SELECT count(*), min(value), max(value) FROM observations WHERE patient_id = 'alice' AND code = '8867-4'",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "30|90.0|119.0");
    let (ok, out, err) = psql(
        &pg,
        &analyst,
        "SELECT count(*) FROM (SELECT value - lag(value) OVER (ORDER BY effective_time) AS d FROM observations) t WHERE d = 1",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "29");
    // DuckDB's form of several exact quantiles in one aggregate (query/src/quantile.rs).
    let (ok, out, err) = psql(
        &pg,
        &analyst,
        "SELECT round(q[1], 2), q[2], round(q[3], 2) FROM (SELECT quantile_cont(value, [0.05, 0.5, 0.95]) AS q FROM observations WHERE patient_id = 'alice') t",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "91.45|104.5|117.55");
    // \d lists the tables.
    let (ok, out, err) = psql(&pg, &analyst, "\\d");
    assert!(ok, "{err}");
    for t in ["observations", "dead_letters", "devices", "care_teams"] {
        assert!(out.contains(t), "\\d lacks {t}: {out}");
    }
    // Writes are refused; a device or a wrong token cannot log in.
    let (ok, _, err) = psql(&pg, &analyst, "CREATE TABLE x AS SELECT 1");
    assert!(!ok && err.contains("read-only"), "{err}");
    let (ok, _, err) = psql(&pg, &analyst, "COPY observations TO '/tmp/leak.csv'");
    assert!(!ok, "{err}");
    let (ok, _, err) = psql(&pg, &secret, "SELECT 1");
    assert!(!ok && err.to_lowercase().contains("password"), "{err}");
    let (ok, _, _) = psql(&pg, "cw_wrong", "SELECT 1");
    assert!(!ok);
    assert_eq!(srv.stop(), 0);
}

#[test]
fn fhir_search_and_read_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let secret = srv.register("w1", "alice");
    let body = r#"[{"time":"2024-05-01T08:00:00+02:00","heart_rate":72,"blood_pressure":{"systolic":121,"diastolic":79}},
                   {"time":"2024-05-01T09:00:00+02:00","heart_rate":75,"spo2":96},
                   {"time":"2024-05-02T09:00:00+02:00","heart_rate":70}]"#;
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, body);
    assert_eq!(s, 202, "{b}");
    let token = |role: &str, subject: Option<&str>| srv.token(role, subject);
    let analyst = token("analyst", None);
    let north = token("care_manager", Some("north"));
    let south = token("care_manager", Some("south"));
    let (s, _) = curl(
        "PUT",
        &format!("{}/v1/patients/alice/care-team", srv.http),
        srv.admin(),
        r#"{"team":"north"}"#,
    );
    assert_eq!(s, 204);

    let get = |tok: &str, q: &str| {
        let (s, b) = curl("GET", &format!("{}/fhir/Observation{q}", srv.http), tok, "");
        (
            s,
            serde_json::from_str::<serde_json::Value>(&b).unwrap_or(serde_json::Value::Null),
        )
    };
    let (s, all) = get(&analyst, "?patient=Patient/alice");
    assert_eq!(s, 200);
    assert_eq!(all["type"], "searchset");
    let entries = all["entry"].as_array().expect("entries");
    assert_eq!(
        entries.len(),
        5,
        "HR, BP (one Observation, two components), HR, SpO2, HR"
    );
    let bp = entries
        .iter()
        .find(|e| e["resource"]["code"]["coding"][0]["code"] == "85354-9")
        .expect("bp");
    assert_eq!(
        bp["resource"]["component"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        bp["resource"]["effectiveDateTime"], "2024-05-01T08:00:00+02:00",
        "the sender's offset is kept"
    );
    // Filters and paging.
    let (_, day) = get(
        &analyst,
        "?patient=alice&code=8867-4&date=ge2024-05-02T00:00:00Z",
    );
    assert_eq!(day["entry"].as_array().map(Vec::len), Some(1));
    let (_, p1) = get(&analyst, "?patient=alice&_count=2");
    assert_eq!(p1["entry"].as_array().map(Vec::len), Some(2));
    let next = p1["link"]
        .as_array()
        .expect("links")
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("next link");
    assert!(next["url"].as_str().unwrap_or("").contains("_offset=2"));
    // Read by id.
    let id = bp["resource"]["id"].as_str().expect("id");
    let (s, one) = get(&analyst, &format!("/{id}"));
    assert_eq!(s, 200);
    assert_eq!(one["id"], id);
    let (s, _) = get(&analyst, "/00000000000000000000000000000000");
    assert_eq!(s, 404);
    // Care managers see their team's patients only; devices see nothing.
    assert_eq!(
        get(&north, "?patient=alice").1["entry"]
            .as_array()
            .map(Vec::len),
        Some(5)
    );
    assert_eq!(
        get(&south, "?patient=alice").1["entry"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(get(&south, &format!("/{id}")).0, 404);
    assert_eq!(get(&secret, "?patient=alice").0, 403);
    // The external validator checks these in scripts/test.sh.
    if let Some(dir) = std::env::var_os("CAREWATCH_FHIR_OUT") {
        std::fs::write(
            std::path::Path::new(&dir).join("search-bundle.json"),
            all.to_string(),
        )
        .expect("write");
        std::fs::write(
            std::path::Path::new(&dir).join("read-bp.json"),
            one.to_string(),
        )
        .expect("write");
    }
    assert_eq!(srv.stop(), 0);
}

#[test]
fn audit_trail_records_every_access_and_only_admins_read_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let pg = srv.pg_ready();
    let secret = srv.register("w1", "alice");
    let (s, _) = curl(
        "POST",
        &format!("{}/v1/readings", srv.http),
        &secret,
        r#"{"time":"2024-05-01T08:00:00Z","heart_rate":70}"#,
    );
    assert_eq!(s, 202);
    let analyst = srv.token("analyst", None);
    let (s, _) = curl(
        "POST",
        &format!("{}/v1/sql", srv.http),
        &analyst,
        "SELECT * FROM observations",
    );
    assert_eq!(s, 200);
    let (s, _) = curl(
        "GET",
        &format!("{}/fhir/Observation?patient=alice", srv.http),
        &analyst,
        "",
    );
    assert_eq!(s, 200);
    let (ok, _, err) = psql(&pg, &analyst, "SELECT count(*) FROM observations");
    assert!(ok, "{err}");
    // Analysts cannot read the audit log, over either wire.
    let (s, _) = curl(
        "POST",
        &format!("{}/v1/sql", srv.http),
        &analyst,
        "SELECT * FROM audit_log",
    );
    assert_eq!(s, 403);
    let (ok, _, err) = psql(&pg, &analyst, "SELECT * FROM audit_log");
    assert!(!ok && err.contains("permission denied"), "{err}");
    // The admin sees who did what, through which channel, with row counts.
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/sql", srv.http),
        srv.admin(),
        "SELECT channel, role, statement, rows, outcome FROM audit_log ORDER BY time",
    );
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    let rows = v.as_array().expect("rows");
    let has = |channel: &str, stmt: &str, n: Option<u64>, outcome: &str| {
        rows.iter().any(|r| {
            r["channel"] == channel
                && r["role"] == "analyst"
                && r["statement"].as_str().is_some_and(|s| s.contains(stmt))
                && (n.is_none() || r["rows"].as_u64() == n)
                && r["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with(outcome))
        })
    };
    assert!(
        has("http-sql", "SELECT * FROM observations", Some(1), "ok"),
        "{rows:?}"
    );
    assert!(has("fhir-read", "patient=alice", Some(1), "ok"), "{rows:?}");
    assert!(
        has("pgwire", "SELECT count(*) FROM observations", None, "ok"),
        "{rows:?}"
    );
    assert!(has("http-sql", "audit_log", None, "refused"), "{rows:?}");
    assert!(has("pgwire", "audit_log", None, "refused"), "{rows:?}");
    assert_eq!(srv.stop(), 0);
}

/// psycopg (with a server-side prepared statement) against the Postgres wire, and DuckDB on the
/// same Parquet files giving the same answers as carewatch for a set of analyst queries.
#[test]
fn psycopg_prepared_statements_and_duckdb_agree_with_carewatch() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let pg = srv.pg_ready();
    // Two patients, an hour of 1-minute heart rate with a run above 100, some SpO2.
    for (dev, pat, base) in [("w1", "alice", 80), ("w2", "bob", 95)] {
        let secret = srv.register(dev, pat);
        let body: String = (0..60)
            .map(|i| {
                let hr = if (20..35).contains(&i) {
                    base + 30
                } else {
                    base + i % 7
                };
                let spo2 = if i % 10 == 0 {
                    format!(",\"spo2\":{}", 94 + i % 5)
                } else {
                    String::new()
                };
                format!(
                    "{{\"time\":{},\"heart_rate\":{hr}{spo2}}}\n",
                    1_714_550_400_000_i64 + i * 60_000
                )
            })
            .collect();
        let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
        assert_eq!(s, 202, "{b}");
    }
    let analyst = srv.token("analyst", None);
    let (host, port) = pg.rsplit_once(':').expect("addr");
    let script = r#"
import sys, psycopg
host, port, token = sys.argv[1], sys.argv[2], sys.argv[3]
with psycopg.connect(host=host, port=port, user="analyst", password=token, dbname="carewatch") as c:
    cur = c.cursor()
    cur.execute("SELECT count(*) FROM observations WHERE patient_id = %s AND value > %s", ("alice", 100), prepare=True)
    a = cur.fetchone()[0]
    cur.execute("SELECT count(*) FROM observations WHERE patient_id = %s AND value > %s", ("bob", 100), prepare=True)
    b = cur.fetchone()[0]
    print(a, b)
"#;
    let out = Command::new(python())
        .args(["-c", script, host, port, &analyst])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "15 20",
        "bob also peaks at 101 on five minutes"
    );
    let dir = srv.dir.clone();
    assert_eq!(srv.stop(), 0); // persists the buffer: everything is in Parquet now

    let queries = [
        "SELECT patient_id, code, count(*) AS n, round(avg(value), 3) AS mean FROM observations GROUP BY 1, 2 ORDER BY 1, 2",
        "SELECT patient_id, max(value) AS peak FROM observations WHERE code = '8867-4' GROUP BY 1 ORDER BY 1",
        // Gaps and islands: runs of consecutive minutes with heart rate above 100.
        "SELECT patient_id, min(t) AS start, max(t) AS stop, count(*) AS minutes FROM (
            SELECT patient_id, effective_time AS t,
                   row_number() OVER (PARTITION BY patient_id ORDER BY effective_time)
                 - row_number() OVER (PARTITION BY patient_id, value > 100 ORDER BY effective_time) AS grp,
                   value > 100 AS high
            FROM observations WHERE code = '8867-4') s
         WHERE high GROUP BY patient_id, grp ORDER BY 1, 2",
    ];
    for q in queries {
        let out = Command::new(BIN)
            .args([
                "sql",
                "--data-dir",
                dir.to_str().expect("utf8"),
                "--format",
                "csv",
                q,
            ])
            .output()
            .expect("sql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = String::from_utf8_lossy(&out.stdout).to_string();
        let duck = r#"
import sys, duckdb, csv, io
root, q = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute(f"CREATE VIEW observations AS SELECT * FROM read_parquet('{root}/observations/date=*/*.parquet')")
con.execute("SET TimeZone='UTC'")
rel = con.execute(q)
cols = [d[0] for d in rel.description]
buf = io.StringIO(); w = csv.writer(buf, lineterminator="\n"); w.writerow(cols)
for r in rel.fetchall():
    w.writerow([x.strftime('%Y-%m-%dT%H:%M:%SZ') if hasattr(x, 'strftime') else (repr(float(x)) if isinstance(x, float) else x) for x in r])
print(buf.getvalue(), end="")
"#;
        let out = Command::new(python())
            .args(["-c", duck, dir.to_str().expect("utf8"), q])
            .output()
            .expect("duckdb");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = String::from_utf8_lossy(&out.stdout).to_string();
        let norm = |s: &str| {
            s.lines()
                .map(|l| l.replace(".0,", ",").trim_end_matches(".0").to_owned())
                .collect::<Vec<_>>()
        };
        assert!(
            ours.lines().count() >= 3,
            "query returned too little: {ours}"
        );
        assert_eq!(norm(&ours), norm(&theirs), "query: {q}");
    }
}
