//! Identity from FHIR (issue 14), registry mode, with real clients against a real
//! `carewatch serve`: `Patient`, `Device` and `CareTeam` resources written with curl enrol the
//! device for the patient (its secret shown once, in a header) and put the patient in the team;
//! the device's readings are then accepted and scoped to that team; nothing is guessed (a
//! Device with two identifiers and no configured system is refused). Lookup mode without a FHIR
//! destination stops `serve` at start with a message naming it. (Lookup mode and the trace:
//! tests/fhir_lookup.rs.)

mod common;
#[path = "fhir_server/sql.rs"]
mod sql;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, curl, note_id, wait_until, write_config};
use serde_json::{Value, json};
use sql::{patient_ids, sql};

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

fn device(id: &str, patient: &str) -> Value {
    json!({
        "resourceType": "Device",
        "identifier": [{"system": "urn:example:serial", "value": id}],
        "status": "active",
        "patient": {"reference": format!("Patient/{patient}")}
    })
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

#[test]
fn lookup_without_a_destination_stops_serve_naming_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = write_config(tmp.path(), "[fhir.identity]\nmode = \"lookup\"\n");
    let err = common::serve_refuses(tmp.path(), &cfg);
    assert!(err.contains("[fhir.destination]"), "{err}");
}
