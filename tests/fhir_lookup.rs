//! Identity lookup mode (issue 14, MedTech's Lookup mode) and the per-message trace, with real
//! clients against a real `carewatch serve` and the validating FHIR server
//! (tests/fhir_server/receiver.py): readings of a device nobody enrolled are dead letters
//! `unknown_device`; once the Device appears on the FHIR server those dead letters become
//! stored readings exactly once — across a restart too — and are delivered, without anything
//! being re-sent; an ambiguous Device is never chosen. `GET /v1/trace` and `carewatch trace`
//! (offline, after the restart) show received -> rejected (unknown_device) -> stored ->
//! delivered with the server's answer, for admins and the patient's care team only.

mod common;
#[path = "fhir_server/receiver.rs"]
mod receiver;
#[path = "fhir_server/sql.rs"]
mod sql;

use std::process::Command;
use std::time::Duration;

use common::{Server, curl, note_id, wait_until, write_config};
use receiver::Receiver;
use serde_json::{Value, json};
use sql::{count, sql};

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

    // Two Devices on the server carry one device id: neither is chosen, the readings wait.
    // Both exist before the reading arrives (a lookup between the two PUTs would rightly find
    // exactly one and enrol it).
    for (id, patient) in [("srv-dev-3a", "lk-pat-1"), ("srv-dev-3b", "lk-pat-2")] {
        fhir.put(
            &format!("/Device/{id}"),
            &json!({"id": id, "resourceType": "Device",
                    "identifier": [{"system": "urn:example:serial", "value": "lk-dev-3"}],
                    "patient": {"reference": format!("Patient/{patient}")}}),
        );
    }
    post_admin(
        &srv,
        r#"{"device_id":"lk-dev-3","time":"2024-05-01T10:00:00Z","heart_rate":80}"#,
    );
    let before = device_searches(&fhir);
    wait_until("lk-dev-3 looked up twice", Duration::from_secs(30), || {
        device_searches(&fhir) >= before + 2
    });
    let three = "SELECT count(*) AS n FROM observations WHERE device_id = 'lk-dev-3'";
    assert_eq!(
        count(&srv, three),
        0,
        "an ambiguous Device is never guessed"
    );

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
