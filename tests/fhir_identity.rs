//! Identity from FHIR (issue 14), with real clients against a real `carewatch serve`:
//!
//! - registry mode: `Patient`, `Device` and `CareTeam` resources written with curl enrol the
//!   device for the patient (its secret shown once, in a header) and put the patient in the
//!   team; the device's readings are then accepted and scoped to that team; nothing is guessed
//!   (a Device with two identifiers and no configured system is refused);
//! - lookup mode (MedTech's Lookup mode): readings of a device nobody enrolled are dead letters
//!   `unknown_device`; once the Device appears on the FHIR server (tests/fhir_server/receiver.py,
//!   which validates it), those dead letters become stored readings exactly once — across a
//!   restart too — and are delivered, without anything being re-sent;
//! - lookup mode without a FHIR destination stops `serve` at start with a message naming it.

mod common;
#[path = "fhir_server/receiver.rs"]
mod receiver;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, curl, note_id, wait_until, write_config};
use receiver::Receiver;
use serde_json::{Value, json};

/// Runs curl and returns (status, headers in lower case, body).
fn curl_h(method: &str, url: &str, token: &str, body: &str) -> (u16, String, String) {
    let auth = format!("Authorization: Bearer {token}");
    let out = Command::new("curl")
        .args(["-s", "-S", "-D", "-", "-X", method, "-H", &auth])
        .args([
            "-H",
            "Content-Type: application/fhir+json",
            "--data-binary",
            body,
            url,
        ])
        .stdout(Stdio::piped())
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_owned())
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(|v| v.trim().to_owned())
}

fn sql(srv: &Server, q: &str) -> Vec<Value> {
    let (s, body) = curl("POST", &format!("{}/v1/sql", srv.http), srv.admin(), q);
    assert_eq!(s, 200, "{body}");
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .flat_map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Array(a)) => a,
            Ok(v) => vec![v],
            Err(_) => vec![],
        })
        .collect()
}

fn count(srv: &Server, q: &str) -> i64 {
    sql(srv, q)
        .first()
        .and_then(|r| r["n"].as_i64())
        .unwrap_or(-1)
}

fn device(id: &str, patient: &str) -> Value {
    json!({
        "resourceType": "Device",
        "identifier": [{"system": "urn:example:serial", "value": id}],
        "status": "active",
        "patient": {"reference": format!("Patient/{patient}")}
    })
}

fn patient_ids(srv: &Server, token: &str) -> Vec<String> {
    let (s, b) = curl("GET", &format!("{}/v1/patients", srv.http), token, "");
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).expect("json");
    v["patients"]
        .as_array()
        .expect("patients")
        .iter()
        .filter_map(|p| p["patient_id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn fhir_device_patient_and_care_team_enrol_a_device_whose_readings_reach_the_team() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    for id in ["fi-dev-1", "fi-pat-1", "fi-pat-2", "ward-fi", "ward-other"] {
        note_id("id", id);
    }
    let fhir = |m: &str, path: &str, body: &Value| {
        curl_h(
            m,
            &format!("{}{path}", srv.http),
            srv.admin(),
            &body.to_string(),
        )
    };
    let (s, _, b) = fhir(
        "PUT",
        "/fhir/Patient/fi-pat-1",
        &json!({"resourceType": "Patient", "id": "fi-pat-1", "active": true}),
    );
    assert_eq!(s, 200, "{b}");
    let (s, head, b) = fhir("POST", "/fhir/Device", &device("fi-dev-1", "fi-pat-1"));
    assert_eq!(s, 201, "{b}");
    let secret = header(&head, "x-carewatch-device-secret").expect("the new device's secret");
    note_id("token", &secret);
    assert_eq!(
        header(&head, "location").as_deref(),
        Some("device/fi-dev-1")
    );
    let v: Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["id"], "fi-dev-1");
    assert_eq!(v["patient"]["reference"], "Patient/fi-pat-1");
    let (s, _, b) = fhir(
        "POST",
        "/fhir/CareTeam",
        &json!({"resourceType": "CareTeam", "status": "active", "name": "ward-fi",
                "subject": {"reference": "Patient/fi-pat-1"}}),
    );
    assert_eq!(s, 201, "{b}");

    // The device's readings are accepted and belong to the patient, in the team's view only.
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/readings", srv.http),
        &secret,
        r#"{"time":"2024-05-01T08:00:00Z","heart_rate":74}"#,
    );
    assert_eq!(s, 202, "{b}");
    let rows = sql(
        &srv,
        "SELECT patient_id FROM observations WHERE device_id = 'fi-dev-1'",
    );
    assert_eq!(rows, vec![json!({"patient_id": "fi-pat-1"})]);
    let team = srv.token("care_manager", Some("ward-fi"));
    let other = srv.token("care_manager", Some("ward-other"));
    wait_until("the team sees its patient", Duration::from_secs(10), || {
        patient_ids(&srv, &team).contains(&"fi-pat-1".to_owned())
    });
    assert!(!patient_ids(&srv, &other).contains(&"fi-pat-1".to_owned()));

    // Sent again: nothing changes and no secret. Another patient: POST refuses, PUT moves it
    // (a new secret; the old one stops working).
    let (s, head, _) = fhir("POST", "/fhir/Device", &device("fi-dev-1", "fi-pat-1"));
    assert_eq!(s, 200);
    assert!(header(&head, "x-carewatch-device-secret").is_none());
    let (s, _, b) = fhir("POST", "/fhir/Device", &device("fi-dev-1", "fi-pat-2"));
    assert_eq!(s, 409, "{b}");
    assert!(
        !b.contains("fi-dev-1") && !b.contains("fi-pat"),
        "no ids in errors: {b}"
    );
    let (s, head, b) = fhir(
        "PUT",
        "/fhir/Device/fi-dev-1",
        &device("fi-dev-1", "fi-pat-2"),
    );
    assert_eq!(s, 200, "{b}");
    let moved = header(&head, "x-carewatch-device-secret").expect("a new secret");
    note_id("token", &moved);
    let (s, _) = curl(
        "POST",
        &format!("{}/v1/readings", srv.http),
        &secret,
        r#"{"time":"2024-05-01T08:05:00Z","heart_rate":75}"#,
    );
    assert_eq!(s, 401, "the old secret is revoked");

    // Nothing is guessed: two identifiers and no configured system; a reference to a Group.
    let mut two = device("fi-dev-9", "fi-pat-1");
    two["identifier"]
        .as_array_mut()
        .expect("identifiers")
        .push(json!({"system": "urn:example:mac", "value": "00:11"}));
    let (s, _, b) = fhir("POST", "/fhir/Device", &two);
    assert_eq!(s, 422, "{b}");
    assert!(
        b.contains("device_identifier_system") && !b.contains("fi-dev-9"),
        "{b}"
    );
    let mut group = device("fi-dev-9", "x");
    group["patient"] = json!({"reference": "Group/g1"});
    let (s, _, b) = fhir("POST", "/fhir/Device", &group);
    assert_eq!(s, 422, "{b}");
    assert!(b.contains("Device.patient"), "{b}");
    let (s, _, b) = fhir("POST", "/fhir/Device", &json!({"resourceType": "Patient"}));
    assert_eq!(s, 400, "{b}");
    // Only admins write the registry.
    let (s, _, _) = curl_h(
        "POST",
        &format!("{}/fhir/Device", srv.http),
        &team,
        &device("fi-dev-8", "fi-pat-1").to_string(),
    );
    assert_eq!(s, 403);
    assert_eq!(srv.stop(), 0);
}

fn lookup_config(dir: &std::path::Path, url: &str) -> String {
    write_config(
        dir,
        &format!(
            "[fhir.destination]\nurl = \"{url}\"\ninterval_secs = 0.2\nmax_backoff_secs = 0.5\n\
             [fhir.identity]\nmode = \"lookup\"\ndevice_identifier_system = \"urn:example:serial\"\nrecheck_secs = 0.3\n"
        ),
    )
}

fn post_admin(srv: &Server, body: &str) -> Value {
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/readings", srv.http),
        srv.admin(),
        body,
    );
    assert_eq!(s, 422, "all rejected: {b}");
    serde_json::from_str(&b).expect("json")
}

fn device_searches(fhir: &Receiver) -> u64 {
    fhir.get("/_stats")["device_searches"].as_u64().expect("n")
}

#[test]
fn lookup_mode_stores_dead_lettered_readings_once_their_device_appears_on_the_fhir_server() {
    let tmp = tempfile::tempdir().expect("tmp");
    for id in [
        "lk-dev-1",
        "lk-dev-2",
        "lk-pat-1",
        "lk-pat-2",
        "srv-dev-1",
        "srv-dev-2",
    ] {
        note_id("id", id);
    }
    let fhir = Receiver::start(&[]);
    let cfg = lookup_config(tmp.path(), &fhir.url);
    let srv = Server::start(tmp.path(), &["--config", &cfg]);
    let v = post_admin(
        &srv,
        r#"[{"device_id":"lk-dev-1","time":"2024-05-01T08:00:00Z","heart_rate":71},
            {"device_id":"lk-dev-1","time":"2024-05-01T08:01:00Z","heart_rate":72,"spo2":97}]"#,
    );
    let reasons: Vec<&str> = v["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| r["reason"].as_str().expect("reason"))
        .collect();
    assert_eq!(reasons, ["unknown_device"; 3]);
    post_admin(
        &srv,
        r#"{"device_id":"lk-dev-1","time":"2024-05-01T08:02:00Z","heart_rate":73}"#,
    );
    let dead = "SELECT count(*) AS n FROM dead_letters WHERE device_id = 'lk-dev-1' AND reason = 'unknown_device'";
    assert_eq!(count(&srv, dead), 4);
    // Looked up and not found: still dead letters, nothing stored, nothing guessed.
    let before = device_searches(&fhir);
    wait_until("two more lookups", Duration::from_secs(30), || {
        device_searches(&fhir) >= before + 2
    });
    let stored = "SELECT count(*) AS n FROM observations WHERE device_id = 'lk-dev-1'";
    assert_eq!(count(&srv, stored), 0);

    // The Device appears on the FHIR server: the readings are stored for its patient, once,
    // and delivered; nobody re-sent anything.
    fhir.put(
        "/Device/srv-dev-1",
        &json!({"id": "srv-dev-1", "resourceType": "Device",
                "identifier": [{"system": "urn:example:mac", "value": "00:aa"},
                               {"system": "urn:example:serial", "value": "lk-dev-1"}],
                "patient": {"reference": "Patient/lk-pat-1"}}),
    );
    wait_until(
        "the dead letters are stored",
        Duration::from_secs(30),
        || count(&srv, stored) == 4,
    );
    let rows = sql(
        &srv,
        "SELECT DISTINCT patient_id FROM observations WHERE device_id = 'lk-dev-1'",
    );
    assert_eq!(rows, vec![json!({"patient_id": "lk-pat-1"})]);
    wait_until("the server holds them", Duration::from_secs(30), || {
        fhir.search("/Observation?patient=lk-pat-1").len() == 4
    });
    let (s, b) = curl(
        "GET",
        &format!("{}/v1/devices?patient=lk-pat-1", srv.http),
        srv.admin(),
        "",
    );
    assert_eq!(s, 200);
    assert!(b.contains("lk-dev-1"), "enrolled from the lookup: {b}");
    // Later readings of the device are accepted at once.
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/readings", srv.http),
        srv.admin(),
        r#"{"device_id":"lk-dev-1","time":"2024-05-01T08:03:00Z","heart_rate":70}"#,
    );
    assert_eq!(s, 202, "{b}");

    wait_until(
        "the later reading is delivered",
        Duration::from_secs(30),
        || fhir.search("/Observation?patient=lk-pat-1").len() == 5,
    );

    // The trace: received -> rejected (unknown_device) -> stored after the lookup -> delivered,
    // with the server's answer.
    let v = trace(&srv, srv.admin(), "lk-dev-1", 200);
    check_trace(&v);
    let (s, b) = curl(
        "PUT",
        &format!("{}/v1/patients/lk-pat-1/care-team", srv.http),
        srv.admin(),
        r#"{"team":"ward-lk"}"#,
    );
    assert_eq!(s, 204, "{b}");
    let team = srv.token("care_manager", Some("ward-lk"));
    let other = srv.token("care_manager", Some("ward-other"));
    check_trace(&trace(&srv, &team, "lk-dev-1", 200));
    trace(&srv, &other, "lk-dev-1", 404);
    let analyst = srv.token("analyst", None);
    trace(&srv, &analyst, "lk-dev-1", 403);

    // After a restart nothing is stored twice: a second device resolved after the restart
    // proves the lookup ran again over the first device's dead letters.
    let admin = srv.admin().to_owned();
    assert_eq!(srv.stop(), 0);
    let mut srv = Server::start(tmp.path(), &["--config", &cfg]);
    srv.admin = Some(admin);
    post_admin(
        &srv,
        r#"{"device_id":"lk-dev-2","time":"2024-05-01T09:00:00Z","heart_rate":66}"#,
    );
    fhir.put(
        "/Device/srv-dev-2",
        &json!({"id": "srv-dev-2", "resourceType": "Device",
                "identifier": [{"system": "urn:example:serial", "value": "lk-dev-2"}],
                "patient": {"reference": "Patient/lk-pat-2"}}),
    );
    wait_until(
        "the second device is resolved",
        Duration::from_secs(30),
        || {
            count(
                &srv,
                "SELECT count(*) AS n FROM observations WHERE device_id = 'lk-dev-2'",
            ) == 1
        },
    );
    assert_eq!(count(&srv, stored), 5, "4 resolved + 1 sent after");
    let journal =
        std::fs::read_to_string(srv.dir.join("fhir/identity-resolved.jsonl")).expect("journal");
    let lines: Vec<Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 3, "one line per resolved message: {journal}");
    assert_eq!(
        lines.iter().filter(|l| l["device"] == "lk-dev-1").count(),
        2
    );
    assert!(lines.iter().all(|l| l["via"] == "lookup"));
    let data = srv.dir.clone();
    assert_eq!(srv.stop(), 0);

    // Offline on the data directory, after the restart: the same journey.
    let out = Command::new(common::BIN)
        .args([
            "trace",
            "--device",
            "lk-dev-1",
            "--since",
            "2020-01-01T00:00:00Z",
        ])
        .args(["--format", "json", "--data-dir"])
        .arg(&data)
        .output()
        .expect("carewatch trace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_trace(&serde_json::from_slice(&out.stdout).expect("json"));
    let out = Command::new(common::BIN)
        .args([
            "trace",
            "--device",
            "lk-dev-1",
            "--since",
            "2020-01-01T00:00:00Z",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("carewatch trace");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rejected: unknown_device"), "{text}");
    assert!(text.contains("201 Created Observation/"), "{text}");
}

fn trace(srv: &Server, token: &str, device: &str, want: u16) -> Value {
    let (s, b) = curl(
        "GET",
        &format!(
            "{}/v1/trace?device={device}&since=2020-01-01T00:00:00Z",
            srv.http
        ),
        token,
        "",
    );
    assert_eq!(s, want, "{b}");
    if want != 200 {
        assert!(!b.contains(device), "no ids in errors: {b}");
        return Value::Null;
    }
    serde_json::from_str(&b).expect("json")
}

/// Three messages of lk-dev-1: two dead-lettered then stored after the lookup, one stored at
/// once; every Observation delivered with the server's answer.
fn check_trace(v: &Value) {
    let msgs = v["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 3, "{v:#}");
    let steps = |m: &Value| -> Vec<String> {
        m["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| s["step"].as_str().expect("step").to_owned())
            .collect()
    };
    assert_eq!(
        steps(&msgs[0]),
        [
            "received",
            "normalised",
            "rejected",
            "rejected",
            "rejected",
            "stored",
            "delivered",
            "delivered",
            "delivered"
        ],
        "{:#}",
        msgs[0]
    );
    assert_eq!(msgs[0]["outcome"], "rejected, then stored");
    let first = msgs[0]["steps"].as_array().expect("steps");
    assert_eq!(first[1]["readings"], 3);
    assert!(first[2..5].iter().all(|s| s["reason"] == "unknown_device"));
    assert_eq!(first[5]["observations"].as_array().expect("ids").len(), 3);
    assert!(
        first[5]["after"]
            .as_str()
            .expect("after")
            .contains("FHIR destination")
    );
    for d in &first[6..] {
        assert_eq!(d["response"]["status"], "201 Created", "{d}");
        assert!(
            d["response"]["location"]
                .as_str()
                .expect("location")
                .starts_with("Observation/")
        );
    }
    assert_eq!(
        steps(&msgs[1]),
        ["received", "normalised", "rejected", "stored", "delivered"]
    );
    assert_eq!(
        steps(&msgs[2]),
        ["received", "normalised", "stored", "delivered"]
    );
    assert_eq!(msgs[2]["outcome"], "stored");
}

#[test]
fn lookup_without_a_destination_stops_serve_naming_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = write_config(tmp.path(), "[fhir.identity]\nmode = \"lookup\"\n");
    let out = Command::new(common::BIN)
        .args(["serve", "--config", &cfg, "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(["--http-addr", "127.0.0.1:0", "--pg-addr", "127.0.0.1:0"])
        .args(["--mqtt-addr", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[fhir.destination]"), "{err}");
}
