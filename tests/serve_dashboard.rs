//! The dashboard, feeds and metrics as users meet them: headless Chromium signs in as a care
//! manager, sees a simulated patient's chart and an injected alert, acknowledges it, and the
//! alert's state changes in `/v1/alerts`; care managers never see another team's patient in a
//! feed, chart or stream; `/metrics` parses with the Prometheus text-format parser and its
//! counters move as readings flow.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, curl, python, simulate, wait_until};

fn team(srv: &Server, patient: &str, team: &str) {
    let (s, b) = curl(
        "PUT",
        &format!("{}/v1/patients/{patient}/care-team", srv.http),
        srv.admin(),
        &format!(r#"{{"team":"{team}"}}"#),
    );
    assert!(s == 200 || s == 204, "{s} {b}");
}

#[test]
fn care_manager_signs_in_sees_chart_and_alert_and_acknowledges_in_chromium() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    team(&srv, "sim-pat-00000", "north");
    team(&srv, "sim-pat-00001", "north");
    team(&srv, "sim-pat-00002", "south");
    // A fever on patient 0 (still firing: no normal temperature after it).
    simulate(&srv, 3, 30, &["--episode", "fever:0@600+1200"]);
    let north = srv.token("care_manager", Some("north"));
    wait_until("the fever alert", Duration::from_secs(30), || {
        let (_, b) = curl("GET", &format!("{}/v1/alerts", srv.http), &north, "");
        b.contains("\"fever\"")
    });
    let artifacts = carewatch_fixtures::repo_dir().join("target/test-artifacts");
    let script = carewatch_fixtures::repo_dir().join("tests/dashboard/e2e.mjs");
    let out = Command::new("node")
        .arg(&script)
        .args([
            srv.http.as_str(),
            north.as_str(),
            artifacts.to_str().expect("utf8"),
            "sim-pat-00000",
            "sim-pat-00002",
        ])
        .stderr(Stdio::piped())
        .output()
        .expect("node (scripts/setup-test-deps.sh installs playwright-core)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    let id = v["alert_id"].as_str().expect("id");
    assert!(artifacts.join("dashboard-acknowledged.png").exists());
    // The click changed the alert's state for everyone.
    let (s, b) = curl(
        "GET",
        &format!("{}/v1/alerts?status=acknowledged", srv.http),
        srv.admin(),
        "",
    );
    assert_eq!(s, 200);
    let list: serde_json::Value = serde_json::from_str(&b).expect("json");
    let a = list["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| a["alert_id"] == id)
        .unwrap_or_else(|| panic!("{id} not acknowledged: {b}"));
    assert!(a["acknowledged_by"].is_string());
    assert_eq!(srv.stop(), 0);
}

#[test]
fn feeds_are_scoped_to_the_care_team_and_metrics_move() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    team(&srv, "sim-pat-00000", "north");
    team(&srv, "sim-pat-00001", "north");
    team(&srv, "sim-pat-00002", "south");
    let metric = |name: &str| -> f64 {
        let (s, body) = curl("GET", &format!("{}/metrics", srv.http), "", "");
        assert_eq!(s, 200);
        // The Prometheus project's own parser must accept the whole exposition.
        let mut child = Command::new(python())
            .args([
                "-c",
                "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
                 want = sys.argv[1]\ntotal = 0.0\n\
                 for f in p(sys.stdin.read()):\n    for s in f.samples:\n        if s.name == want: total += s.value\nprint(total)",
                name,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python");
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(body.as_bytes())
                .expect("write");
        }
        let out = child.wait_with_output().expect("parse");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("number")
    };
    assert_eq!(metric("carewatch_readings_stored_total"), 0.0);
    let (s, _) = curl("GET", &format!("{}/readyz", srv.http), "", "");
    assert!(s == 200 || s == 503);
    wait_until("readiness", Duration::from_secs(10), || {
        curl("GET", &format!("{}/readyz", srv.http), "", "").0 == 200
    });
    let north = srv.token("care_manager", Some("north"));
    // Open the stream before data flows.
    let sse = Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "6",
            "-H",
            &format!("Authorization: Bearer {north}"),
            &format!("{}/v1/stream", srv.http),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(500));
    simulate(&srv, 3, 10, &[]);
    let stored = metric("carewatch_readings_stored_total");
    assert!(stored > 1000.0, "{stored}");
    assert!(metric("carewatch_wal_commit_seconds_count") > 0.0);
    assert!(metric("carewatch_rule_runs_total") > 0.0);
    // The rules' minute bins: 3 patients' 10 minutes, at least one 32-byte slot a minute.
    wait_until("minute bins", Duration::from_secs(10), || {
        metric("carewatch_minute_bins_patients") == 3.0
    });
    assert!(metric("carewatch_minute_bins_bytes") >= 3.0 * 10.0 * 32.0);
    // The dashboard's latest-value cache: the 3 patients, a 600-byte sparkline ring per vital.
    assert_eq!(metric("carewatch_latest_patients"), 3.0);
    assert!(metric("carewatch_latest_bytes") >= 3.0 * 600.0);
    // The allocator's view (jemalloc, the binary's allocator): what it holds, within what is
    // resident.
    let (held, resident) = (
        metric("carewatch_allocator_allocated_bytes"),
        metric("carewatch_allocator_resident_bytes"),
    );
    assert!(held > 1e6 && resident >= held, "{held} {resident}");
    // A rejected reading moves the rejection counter (by reason, never by device).
    let (s, _) = curl(
        "POST",
        &format!("{}/v1/readings", srv.http),
        srv.admin(),
        r#"{"device_id":"nobody","time":"2024-05-01T08:00:00Z","heart_rate":70}"#,
    );
    assert!(s == 202 || s == 207 || s == 422, "{s}");
    assert!(metric("carewatch_readings_rejected_total") >= 1.0);
    let (_, body) = curl("GET", &format!("{}/metrics", srv.http), "", "");
    assert!(!body.contains("sim-pat") && !body.contains("sim-dev") && !body.contains("nobody"));

    // Feeds: the list, a chart, the stream — north never sees south's patient.
    let (s, b) = curl("GET", &format!("{}/v1/patients", srv.http), &north, "");
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    let ids: Vec<&str> = v["patients"]
        .as_array()
        .expect("patients")
        .iter()
        .map(|p| p["patient_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["sim-pat-00000", "sim-pat-00001"]);
    assert!(
        v["patients"][0]["vitals"]["heart_rate"]["value"].is_number(),
        "{b}"
    );
    let (s, _) = curl(
        "GET",
        &format!("{}/v1/patients/sim-pat-00002/vitals", srv.http),
        &north,
        "",
    );
    assert_eq!(s, 404);
    let (s, b) = curl(
        "GET",
        &format!(
            "{}/v1/patients/sim-pat-00000/vitals?code=heart_rate,spo2&bucket=5m",
            srv.http
        ),
        &north,
        "",
    );
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    let series = v["series"].as_array().expect("series");
    assert_eq!(series.len(), 2, "{b}");
    let pts = series[0]["points"].as_array().expect("points");
    assert!(pts.len() >= 2, "{b}");
    for p in pts {
        let (mn, av, mx) = (
            p["min"].as_f64().expect("min"),
            p["avg"].as_f64().expect("avg"),
            p["max"].as_f64().expect("max"),
        );
        assert!(mn <= av && av <= mx, "{p}");
    }
    let sse = sse.wait_with_output().expect("sse");
    let sse = String::from_utf8_lossy(&sse.stdout);
    assert!(sse.contains("event: vitals"), "{sse}");
    assert!(sse.contains("sim-pat-00000"));
    assert!(
        !sse.contains("sim-pat-00002"),
        "a south patient leaked into north's stream"
    );
    // The dashboard page itself is served by the binary.
    let (s, b) = curl("GET", &format!("{}/", srv.http), "", "");
    assert_eq!(s, 200);
    assert!(b.contains("/app.js"));
    assert_eq!(srv.stop(), 0);
}
