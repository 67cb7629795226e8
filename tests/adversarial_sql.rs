//! Adversarial SQL against the real binary with real clients (psql, psycopg, curl): nothing
//! but read-only queries passes the gate on any wire, no wire can change the shared session,
//! runaway queries stop and free the CPU, errors carry no data, and the Postgres wire speaks TLS.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// psql with several commands in one session; returns (success, stdout, stderr).
fn psql(pg: &str, token: &str, cmds: &[&str]) -> (bool, String, String) {
    psql_conn(&pg_conninfo(pg, ""), token, cmds)
}

fn pg_conninfo(pg: &str, extra: &str) -> String {
    let (host, port) = pg.rsplit_once(':').expect("addr");
    format!("host={host} port={port} user=analyst dbname=carewatch connect_timeout=10 {extra}")
}

fn psql_conn(conninfo: &str, token: &str, cmds: &[&str]) -> (bool, String, String) {
    let mut c = Command::new("psql");
    c.args([conninfo, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
    for q in cmds {
        c.args(["-c", q]);
    }
    let out = c
        .env("PGPASSWORD", token)
        .output()
        .expect("psql installed (scripts/setup-test-deps.sh)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn sql_http(srv: &Server, token: &str, q: &str) -> (u16, String) {
    let body = serde_json::json!({ "sql": q }).to_string();
    curl("POST", &format!("{}/v1/sql", srv.http), token, &body)
}

fn ingest(srv: &Server, device: &str, patient: &str, n: i64) {
    let secret = srv.register(device, patient);
    let body: String = (0..n)
        .map(|i| {
            format!(
                "{{\"time\":{},\"heart_rate\":{}}}\n",
                1_714_550_400_000_i64 + i * 60_000,
                60 + i % 40
            )
        })
        .collect();
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
    assert_eq!(s, 202, "{b}");
}

/// The audit lines of analysts, as admin: (statement, tables, outcome).
fn audit_lines(srv: &Server) -> Vec<(String, String, String)> {
    let (s, b) = sql_http(
        srv,
        srv.admin(),
        "SELECT statement, tables, outcome FROM audit_log WHERE role = 'analyst' ORDER BY time",
    );
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or("").to_owned();
            (f("statement"), f("tables"), f("outcome"))
        })
        .collect()
}

#[test]
fn statements_that_write_files_are_refused_on_every_wire() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let pg = srv.pg_ready();
    let analyst = srv.token("analyst", None);
    let registry = srv.dir.join("registry.log");
    let before = std::fs::read(&registry).expect("registry");
    let out = tmp.path().join("attack");
    std::fs::create_dir_all(&out).expect("dir");
    let p = |n: &str| out.join(n).to_str().expect("utf8").to_owned();
    let reg = registry.to_str().expect("utf8");
    let attacks = [
        format!("EXPLAIN ANALYZE COPY (SELECT 1) TO '{}'", p("a.csv")),
        format!("EXPLAIN ANALYZE COPY (SELECT 'x' AS token) TO '{reg}' STORED AS JSON"),
        format!("EXPLAIN COPY (SELECT 1) TO '{}'", p("b.csv")),
        format!("COPY (SELECT 1) TO '{}'", p("c.csv")),
        format!(
            "COPY (WITH t AS (SELECT 1 AS a) SELECT * FROM (SELECT a FROM t) s) TO '{}'",
            p("d.csv")
        ),
        format!(
            "EXPLAIN ANALYZE COPY (SELECT * FROM observations WHERE value IN (SELECT 1)) TO '{}'",
            p("e.csv")
        ),
        format!(
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{}'",
            p("f/")
        ),
        format!(
            "EXPLAIN CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{}'",
            p("g/")
        ),
        "WITH t AS (SELECT 1 AS a) INSERT INTO observations SELECT * FROM observations".into(),
        "PREPARE p AS SELECT 1".into(),
        format!(
            "DECLARE c CURSOR FOR SELECT 1; COPY (SELECT 1) TO '{}'",
            p("h.csv")
        ),
    ];
    for a in &attacks {
        let (ok, _, err) = psql(&pg, &analyst, &[a]);
        assert!(!ok, "psql accepted: {a}");
        assert!(
            err.contains("read-only")
                || err.contains("not supported")
                || err.contains("syntax error"),
            "{a}: {err}"
        );
        let (s, b) = sql_http(&srv, &analyst, a);
        assert!(s == 403 || s == 400, "HTTP accepted {a}: {s} {b}");
    }
    // psycopg's extended protocol (parse/bind/execute with a parameter) too.
    let (host, port) = pg.rsplit_once(':').expect("addr");
    let script = r#"
import sys, psycopg
host, port, token, path = sys.argv[1:5]
with psycopg.connect(host=host, port=port, user="analyst", password=token, dbname="carewatch", autocommit=True) as c:
    for q in ["EXPLAIN ANALYZE COPY (SELECT %s) TO '" + path + "'", "COPY (SELECT %s) TO '" + path + "'"]:
        try:
            c.execute(q, ("1",))
            print("ACCEPTED", q)
        except psycopg.Error as e:
            print("refused", e.sqlstate)
"#;
    let o = Command::new(python())
        .args(["-c", script, host, port, &analyst, &p("i.csv")])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!text.contains("ACCEPTED"), "{text}");
    assert_eq!(text.matches("refused").count(), 2, "{text}");
    // Nothing was written.
    assert_eq!(
        std::fs::read_dir(&out).expect("dir").count(),
        0,
        "a file was written"
    );
    // The log only ever grows by appended lines (last uses may be written meanwhile).
    assert!(
        std::fs::read(&registry)
            .expect("registry")
            .starts_with(&before),
        "registry.log was overwritten"
    );
    // Plain queries, EXPLAIN and EXPLAIN ANALYZE of queries still work.
    let (ok, o, err) = psql(
        &pg,
        &analyst,
        &["EXPLAIN ANALYZE WITH t AS (SELECT 1 AS a) SELECT * FROM t"],
    );
    assert!(ok && !o.is_empty(), "{err}");
    assert_eq!(srv.stop(), 0);
}

#[test]
fn no_wire_can_change_the_shared_session() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let pg = srv.pg_ready();
    ingest(&srv, "w1", "alice", 50);
    let analyst = srv.token("analyst", None);
    let group = "SELECT code, count(*) AS n FROM observations GROUP BY code";
    for set in [
        "SET datafusion.runtime.memory_limit = '1K'",
        "SET datafusion.execution.batch_size = 1",
        "SET datafusion.sql_parser.dialect = 'MySQL'",
        "SET datafusion.catalog.information_schema = false",
        "SET statement_timeout = 0",
        "SET statement_timeout = '999h'",
        "RESET ALL",
    ] {
        let (ok, _, err) = psql(&pg, &analyst, &[set, group]);
        assert!(!ok, "accepted: {set}");
        assert!(
            err.contains("not allowed") || err.contains("cannot") || err.contains("read-only"),
            "{set}: {err}"
        );
        let (s, b) = sql_http(&srv, &analyst, set);
        assert!(s == 403 || s == 400, "HTTP accepted {set}: {s} {b}");
    }
    // Another session, HTTP SQL and GROUP BY are unaffected.
    let (ok, out, err) = psql(&pg, &analyst, &[group]);
    assert!(ok, "{err}");
    assert_eq!(out, "8867-4|50");
    let (s, b) = sql_http(&srv, &analyst, group);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains(r#""n":50"#), "{b}");
    // Allowed client settings work, per connection.
    let (ok, out, err) = psql(
        &pg,
        &analyst,
        &[
            "SET application_name = 'probe'",
            "SET extra_float_digits = 3",
            "SET statement_timeout = '5s'",
            "SHOW statement_timeout",
            "SHOW application_name",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "SET\nSET\nSET\n5000ms\nprobe");
    let (ok, out, _) = psql(&pg, &analyst, &["SHOW application_name"]);
    assert!(ok);
    assert_ne!(out, "probe", "settings are per connection");
    // The MySQL-dialect trick: under the fixed PostgreSQL dialect the text is a literal; it
    // reads nothing, and the audit line says so. A real read of audit_log is refused, and the
    // audit line names it.
    let trick = r"SELECT 'x\'' AS a, statement FROM audit_log -- '";
    let (ok, out, err) = psql(&pg, &analyst, &[trick]);
    assert!(ok, "{err}");
    assert!(!out.contains("SELECT"), "audit rows leaked: {out}");
    for q in [
        "WITH t AS (SELECT * FROM audit_log) SELECT count(*) FROM t",
        "SELECT count(*) FROM observations WHERE code IN (SELECT statement FROM audit_log)",
        "EXPLAIN ANALYZE SELECT * FROM carewatch.public.audit_log",
    ] {
        let (ok, _, err) = psql(&pg, &analyst, &[q]);
        assert!(!ok && err.contains("permission denied"), "{q}: {err}");
        let (s, _) = sql_http(&srv, &analyst, q);
        assert_eq!(s, 403, "{q}");
    }
    let lines = audit_lines(&srv);
    assert!(
        lines.iter().any(
            |(s, t, o)| s.contains("WITH t AS (SELECT * FROM audit_log)")
                && t == "audit_log"
                && o.starts_with("refused")
        ),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(s, t, o)| s.contains("GROUP BY") && t == "observations" && o == "ok"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(s, t, o)| s.starts_with("SELECT 'x") && t.is_empty() && o == "ok"),
        "{lines:?}"
    );
    assert_eq!(srv.stop(), 0);
}

/// CPU time (utime + stime, clock ticks) of a process.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based) -> 11, 12 here.
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

/// Asserts the server's CPU is (nearly) idle: under half a second of CPU over 2 s.
fn assert_idle(srv: &Server, what: &str) {
    std::thread::sleep(Duration::from_millis(500));
    let a = cpu_ticks(srv.child.id());
    std::thread::sleep(Duration::from_secs(2));
    let b = cpu_ticks(srv.child.id());
    assert!(
        b - a < 50,
        "{what}: server still busy ({} ticks in 2 s)",
        b - a
    );
}

const RUNAWAY: &str = "SELECT max(value % 7) FROM range(1000000000000)";

#[test]
fn runaway_queries_stop_at_their_limit_and_free_the_cpu() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("carewatch.toml");
    std::fs::write(
        &cfg,
        "[query]\ntimeout_secs = 5\nmax_rows = 1000\nanalyst_concurrency = 1\n",
    )
    .expect("config");
    let srv = Server::start(tmp.path(), &["--config", cfg.to_str().expect("utf8")]);
    let pg = srv.pg_ready();
    let analyst = srv.token("analyst", None);
    // psql: the time limit covers streaming; the CPU goes idle afterwards.
    let t = Instant::now();
    let (ok, _, err) = psql(&pg, &analyst, &[RUNAWAY]);
    assert!(!ok && err.contains("timeout"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_idle(&srv, "after a psql timeout");
    // HTTP reports a timeout as a timeout.
    let (s, b) = sql_http(&srv, &analyst, RUNAWAY);
    assert_eq!(s, 504, "{b}");
    assert!(b.contains("\"timeout\""), "{b}");
    assert_idle(&srv, "after an HTTP timeout");
    // A lowered statement_timeout applies.
    let t = Instant::now();
    let (ok, _, err) = psql(&pg, &analyst, &["SET statement_timeout = '1s'", RUNAWAY]);
    assert!(!ok && err.contains("timeout"), "{err}");
    assert!(
        t.elapsed() < Duration::from_millis(4000),
        "{:?}",
        t.elapsed()
    );
    // A client killed mid-query leaves no work behind.
    let (host, port) = pg.rsplit_once(':').expect("addr");
    let mut child = Command::new("psql")
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
            "-c",
            RUNAWAY,
        ])
        .env("PGPASSWORD", &analyst)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    std::thread::sleep(Duration::from_millis(1000));
    let _ = child.kill();
    let _ = child.wait();
    // Measured from 1.5 s to 3.5 s after the start: idle before the 5 s limit, so the server
    // noticed the client went away.
    assert_idle(&srv, "after the client was killed");
    // The same over HTTP: curl gives up after 1 s; the server stops the query then.
    let o = Command::new("curl")
        .args(["-s", "--max-time", "1", "-H"])
        .arg(format!("Authorization: Bearer {analyst}"))
        .args(["--data-binary", RUNAWAY])
        .arg(format!("{}/v1/sql", srv.http))
        .output()
        .expect("curl");
    assert!(!o.status.success(), "curl should have given up");
    assert_idle(&srv, "after the HTTP client went away");
    // Per-role concurrency: a second analyst query while one runs is refused (429 on HTTP).
    let runaway = {
        let (http, a) = (srv.http.clone(), analyst.clone());
        std::thread::spawn(move || {
            let body = serde_json::json!({ "sql": RUNAWAY }).to_string();
            curl("POST", &format!("{http}/v1/sql"), &a, &body)
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let (s, b) = sql_http(&srv, &analyst, "SELECT 1");
    assert_eq!(s, 429, "{b}");
    let (ok, _, err) = psql(&pg, &analyst, &["SELECT 1"]);
    assert!(!ok && err.contains("too many concurrent queries"), "{err}");
    let (s, _) = sql_http(&srv, srv.admin(), "SELECT 1");
    assert_eq!(s, 200, "admins have their own lane");
    assert_eq!(runaway.join().expect("thread").0, 504);
    // The row cap: larger answers are refused, not silently cut.
    let (s, b) = sql_http(&srv, &analyst, "SELECT * FROM range(1000)");
    assert_eq!(s, 200, "{b}");
    let (ok, _, err) = psql(&pg, &analyst, &["SELECT * FROM range(5000)"]);
    assert!(!ok && err.contains("row limit"), "{err}");
    // A Postgres cancel request (psycopg's conn.cancel()) stops the query.
    let script = r#"
import sys, time, threading, psycopg
host, port, token, q = sys.argv[1:5]
with psycopg.connect(host=host, port=port, user="analyst", password=token, dbname="carewatch", autocommit=True) as c:
    threading.Timer(0.5, c.cancel).start()
    t = time.time()
    try:
        c.execute(q)
        print("finished")
    except psycopg.errors.QueryCanceled as e:
        print("cancelled %.2f" % (time.time() - t))
"#;
    let o = Command::new(python())
        .args(["-c", script, host, port, &analyst, RUNAWAY])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let secs: f64 = text
        .strip_prefix("cancelled ")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("not cancelled: {text}"));
    assert!(secs < 2.0, "cancel took {secs} s");
    assert_idle(&srv, "after a cancel request");
    assert_eq!(srv.stop(), 0);
}

#[test]
fn errors_carry_no_data_values() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let pg = srv.pg_ready();
    let patient = "pt-zq7731";
    ingest(&srv, "w9", patient, 3);
    let analyst = srv.token("analyst", None);
    for q in [
        "SELECT CAST(patient_id AS INT) FROM observations",
        "SELECT patient_id::bigint + 1 FROM observations",
        "SELECT to_timestamp(patient_id) FROM observations",
    ] {
        let (ok, _, err) = psql(&pg, &analyst, &[q]);
        assert!(!ok, "{q}");
        assert!(
            !err.contains(patient),
            "psql error leaks the patient id: {err}"
        );
        let (s, b) = sql_http(&srv, &analyst, q);
        assert_ne!(s, 200, "{q}");
        assert!(!b.contains(patient), "HTTP error leaks the patient id: {b}");
    }
    let (ok, _, err) = psql(&pg, &analyst, &["SELECT * FROM nope"]);
    assert!(
        !ok && !err.contains(srv.dir.to_str().expect("utf8")),
        "{err}"
    );
    let log = std::fs::read_to_string(&srv.stderr_log).expect("log");
    assert!(
        !log.contains(patient),
        "server log leaks the patient id:\n{log}"
    );
    assert!(
        !log.contains("Cannot cast"),
        "server log has DataFusion's text:\n{log}"
    );
    assert_eq!(srv.stop(), 0);
}

#[test]
fn postgres_wire_speaks_tls() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (cert, key) = self_signed_cert(tmp.path());
    let (c, k) = (cert.as_str(), key.as_str());
    let srv = Server::start(tmp.path(), &["--tls-cert", c, "--tls-key", k]);
    let pg = srv.pg_ready();
    let analyst = srv.token("analyst", None);
    let port = pg.rsplit_once(':').map(|x| x.1).expect("port");
    let conninfo = format!(
        "host=localhost port={port} user=analyst dbname=carewatch connect_timeout=10 sslmode=verify-full sslrootcert={c}"
    );
    let (ok, out, err) = psql_conn(&conninfo, &analyst, &["SELECT 40 + 2"]);
    assert!(ok, "{err}");
    assert_eq!(out, "42");
    let (ok, out, err) = psql_conn(
        &format!("{} sslmode=require", pg_conninfo(&pg, "")),
        &analyst,
        &["SELECT 1"],
    );
    assert!(ok && out == "1", "{err}");
    assert_eq!(srv.stop(), 0);
}

#[test]
fn revoking_a_credential_closes_its_postgres_session() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let pg = srv.pg_ready();
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/tokens", srv.http),
        srv.admin(),
        r#"{"role":"analyst"}"#,
    );
    assert_eq!(s, 201, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    let (id, token) = (
        v["id"].as_str().expect("id"),
        v["token"].as_str().expect("token"),
    );
    let (host, port) = pg.rsplit_once(':').expect("addr");
    let script = r#"
import sys, time, urllib.request, psycopg
host, port, token, http, cid, admin = sys.argv[1:7]
c = psycopg.connect(host=host, port=port, user="analyst", password=token, dbname="carewatch", autocommit=True)
print("before", c.execute("SELECT 1").fetchone()[0])
req = urllib.request.Request(http + "/v1/tokens/" + cid, method="DELETE", headers={"Authorization": "Bearer " + admin})
urllib.request.urlopen(req)
time.sleep(1.5)
try:
    c.execute("SELECT 1")
    print("still open")
except psycopg.Error as e:
    print("closed")
try:
    psycopg.connect(host=host, port=port, user="analyst", password=token, dbname="carewatch")
    print("login accepted")
except psycopg.Error:
    print("login refused")
"#;
    let o = Command::new(python())
        .args(["-c", script, host, port, token, &srv.http, id, srv.admin()])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(text.trim(), "before 1\nclosed\nlogin refused");
    assert_eq!(srv.stop(), 0);
}
