//! The FHIR destination (issue 14) against a FHIR server that validates everything it receives
//! (tests/fhir_server/receiver.py: fhir.resources 6.4 strict R4 models and the official R4
//! JSON schema; conditional update by identifier as R4 specifies it; its own search API).
//!
//! - readings in → Observations on the server, read back through the server's search, equal to
//!   what carewatch serves at /fhir/Observation; a refused resource becomes a dead letter with
//!   the server's OperationOutcome and the rest are delivered; a failing server is retried;
//! - the same readings sent again → updates, no new resources;
//! - carewatch SIGKILLed mid-delivery → after the restart nothing is missing or duplicated.

mod common;
#[path = "fhir_server/receiver.rs"]
mod receiver;
#[path = "fhir_server/sql.rs"]
mod sql;

use std::process::Command;
use std::time::Duration;

use common::{Server, curl, wait_until};
use receiver::Receiver;
use serde_json::{Value, json};
use sql::sql;

const SYSTEM: &str = "urn:carewatch:observation";

/// The server's copies of one Observation, by carewatch's identifier.
fn by_identifier(fhir: &Receiver, id: &str) -> Vec<Value> {
    fhir.search(&format!("/Observation?identifier={SYSTEM}%7C{id}"))
}

fn config(dir: &std::path::Path, url: &str, batch: usize) -> String {
    let p = dir.join("carewatch.toml");
    std::fs::write(
        &p,
        format!(
            "[fhir.destination]\nurl = \"{url}\"\nbatch_size = {batch}\ninterval_secs = 0.2\nmax_backoff_secs = 0.5\n"
        ),
    )
    .expect("config");
    p.to_str().expect("utf8").to_owned()
}

fn post(srv: &Server, secret: &str, body: &str) {
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), secret, body);
    assert_eq!(s, 202, "{b}");
}

/// carewatch's own Observations (GET /fhir/Observation), by id.
fn ours(srv: &Server) -> Vec<Value> {
    let (s, body) = curl(
        "GET",
        &format!("{}/fhir/Observation?_count=1000", srv.http),
        srv.admin(),
        "",
    );
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["resource"].clone())
        .collect()
}

/// What the server holds, without what a server adds (id, versionId) and our identifier.
fn comparable(mut v: Value) -> Value {
    let o = v.as_object_mut().expect("object");
    o.remove("id");
    o.remove("identifier");
    if let Some(m) = o.get_mut("meta").and_then(Value::as_object_mut) {
        m.remove("versionId");
        m.remove("lastUpdated");
        if m.is_empty() {
            o.remove("meta");
        }
    }
    v
}

#[test]
fn readings_reach_the_fhir_server_once_equal_to_ours_and_refusals_are_dead_letters() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fhir = Receiver::start(&["--refuse-device", "fd-refused", "--fail-first", "1"]);
    let cfg = config(tmp.path(), &fhir.url, 3);
    let srv = Server::start(tmp.path(), &["--config", &cfg]);
    let a = srv.register("fd-a", "fp-a");
    let b = srv.register("fd-b", "fp-b");
    let refused = srv.register("fd-refused", "fp-c");
    let body = r#"[{"time":"2024-05-01T08:00:00+02:00","heart_rate":72,"blood_pressure":{"systolic":121,"diastolic":79}},
        {"time":"2024-05-01T08:01:00+02:00","heart_rate":75},
        {"time":"2024-05-01T08:02:00+02:00","heart_rate":77},
        {"time":"2024-05-01T08:03:00+02:00","spo2":97}]"#;
    post(&srv, &a, body);
    post(
        &srv,
        &b,
        r#"[{"time":"2024-05-01T09:00:00Z","heart_rate":61},{"time":"2024-05-01T09:05:00Z","body_temperature":37.1}]"#,
    );
    post(
        &srv,
        &refused,
        r#"{"time":"2024-05-01T10:00:00Z","heart_rate":88}"#,
    );
    // 5 of fd-a (the BP is one Observation), 2 of fd-b; fd-refused's one is refused.
    let expected = 7;
    wait_until(
        "the server holds every deliverable Observation",
        Duration::from_secs(60),
        || fhir.get("/_stats")["resources"] == expected,
    );
    wait_until(
        "the refusal is a dead letter",
        Duration::from_secs(30),
        || {
            !sql(
                &srv,
                "SELECT message FROM dead_letters WHERE reason = 'destination_rejected'",
            )
            .is_empty()
        },
    );
    // Equal to ours, read back through the server's own search API.
    let mine = ours(&srv);
    assert_eq!(
        mine.len(),
        8,
        "carewatch serves all 8, refused one included"
    );
    for o in &mine {
        let id = o["id"].as_str().expect("id");
        let held = by_identifier(&fhir, id);
        if o["device"]["reference"] == "Device/fd-refused" {
            assert!(held.is_empty());
            continue;
        }
        assert_eq!(held.len(), 1, "one resource per identifier");
        assert_eq!(comparable(held[0].clone()), comparable(o.clone()));
        assert_eq!(
            held[0]["identifier"][0],
            json!({"system": SYSTEM, "value": id})
        );
    }
    let bp: Vec<_> = mine
        .iter()
        .filter(|o| o["code"]["coding"][0]["code"] == "85354-9")
        .collect();
    assert_eq!(bp.len(), 1);
    assert_eq!(bp[0]["component"].as_array().map(Vec::len), Some(2));
    // The dead letter holds the server's OperationOutcome and the resource.
    let dl = sql(
        &srv,
        "SELECT device_id, source, message, CAST(raw AS VARCHAR) AS raw FROM dead_letters WHERE reason = 'destination_rejected'",
    );
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0]["device_id"], "fd-refused");
    assert_eq!(dl[0]["source"], "fhir-destination");
    let raw: Value = serde_json::from_str(dl[0]["raw"].as_str().expect("raw")).expect("raw json");
    assert_eq!(raw["status"], 422);
    assert_eq!(raw["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(raw["outcome"]["issue"][0]["code"], "business-rule");
    assert_eq!(
        raw["observation"]["device"]["reference"],
        "Device/fd-refused"
    );
    // The same readings again: updates of the same resources, nothing new.
    let before = fhir.get("/_stats");
    post(&srv, &a, body);
    wait_until("the resend is delivered", Duration::from_secs(60), || {
        fhir.get("/_stats")["updates"].as_u64() >= Some(before["updates"].as_u64().unwrap_or(0) + 5)
    });
    let after = fhir.get("/_stats");
    assert_eq!(after["resources"], expected);
    assert_eq!(after["creates"], before["creates"]);
    // Status and metrics.
    wait_until(
        "status says nothing is behind",
        Duration::from_secs(30),
        || {
            let out = Command::new(env!("CARGO_BIN_EXE_carewatch"))
                .args(["fhir", "status", "--format", "json", "--data-dir"])
                .arg(&srv.dir)
                .output()
                .expect("status");
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v[0]["behind"] == 0 && v[0]["delivered"].as_u64() >= Some(12) && v[0]["failed"] == 1
        },
    );
    let (_, m) = curl("GET", &format!("{}/metrics", srv.http), srv.admin(), "");
    let port = fhir.url.rsplit(':').next().unwrap_or_default();
    assert!(
        m.contains(&format!(
            "carewatch_fhir_destination_failed_total{{destination=\"127.0.0.1:{port}\"}} 1"
        )),
        "{m}"
    );
    assert!(m.contains("carewatch_fhir_destination_errors_total"), "{m}");
    assert_eq!(srv.stop(), 0);
}

#[test]
fn killed_mid_delivery_nothing_missing_nothing_duplicated() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fhir = Receiver::start(&["--delay-ms", "40"]);
    let cfg = config(tmp.path(), &fhir.url, 4);
    let mut srv = Server::start(tmp.path(), &["--config", &cfg]);
    let admin = srv.admin().to_owned();
    let secret = srv.register("fk-1", "fkp-1");
    let items: Vec<String> = (0..240)
        .map(|i| {
            format!(
                r#"{{"time":"2024-05-02T{:02}:{:02}:00Z","heart_rate":{}}}"#,
                i / 60,
                i % 60,
                60 + i % 40
            )
        })
        .collect();
    post(&srv, &secret, &format!("[{}]", items.join(",")));
    wait_until("delivery is under way", Duration::from_secs(60), || {
        fhir.get("/_stats")["resources"].as_u64() >= Some(8)
    });
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    let mid = fhir.get("/_stats")["resources"].as_u64().unwrap_or(0);
    assert!(mid < 240, "killed mid-delivery ({mid} delivered)");
    drop(srv);
    let mut srv = Server::start(tmp.path(), &["--config", &cfg]);
    srv.admin = Some(admin);
    wait_until(
        "every reading is on the server",
        Duration::from_secs(120),
        || fhir.get("/_stats")["resources"] == 240,
    );
    let mine = ours(&srv);
    assert_eq!(mine.len(), 240);
    for o in &mine {
        assert_eq!(by_identifier(&fhir, o["id"].as_str().expect("id")).len(), 1);
    }
    let s = fhir.get("/_stats");
    assert_eq!(s["creates"], 240, "no resource created twice: {s}");
    assert_eq!(srv.stop(), 0);
}

fn bp_half(patient: &str, systolic: Option<u32>, diastolic: Option<u32>) -> String {
    let comp = |code: &str, v: Option<u32>| match v {
        Some(v) => json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": v, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}),
        None => json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}]}}),
    };
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2024-05-01T12:00:00Z",
        "component": [comp("8480-6", systolic), comp("8462-4", diastolic)]})
    .to_string()
}

#[test]
fn blood_pressure_halves_from_two_messages_arrive_as_one_observation() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fhir = Receiver::start(&[]);
    let cfg = config(tmp.path(), &fhir.url, 10);
    let srv = Server::start(tmp.path(), &["--config", &cfg]);
    let secret = srv.register("fs-1", "fp-s");
    let send = |body: String| {
        let (s, b) = curl(
            "POST",
            &format!("{}/fhir/Observation", srv.http),
            &secret,
            &body,
        );
        assert_eq!(s, 201, "{b}");
    };
    send(bp_half("fp-s", Some(131), None));
    wait_until(
        "the systolic half is delivered",
        Duration::from_secs(60),
        || fhir.get("/_stats")["resources"] == 1,
    );
    send(bp_half("fp-s", None, Some(85)));
    wait_until(
        "the diastolic half is delivered",
        Duration::from_secs(60),
        || fhir.get("/_stats")["updates"] == 1,
    );
    let held = fhir.get("/Observation?patient=fp-s");
    assert_eq!(held["total"], 1);
    let c = &held["entry"][0]["resource"]["component"];
    assert_eq!(c[0]["valueQuantity"]["value"], 131, "{c}");
    assert_eq!(c[1]["valueQuantity"]["value"], 85, "{c}");
    assert_eq!(srv.stop(), 0);
}
