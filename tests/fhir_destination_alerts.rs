//! Alerts delivered to the FHIR destination (issue 14) as `Communication`s, against the
//! validating FHIR server of tests/fhir_server/receiver.py, read back through that server's own
//! search API:
//!
//! - an alert fires, is acknowledged, is resolved → the server holds one Communication for it
//!   (conditional update by `urn:carewatch:alert|{id}`), whose status follows (in-progress →
//!   completed), equal to what carewatch serves at /fhir/Communication, its triggering
//!   Observations referenced by the identifier they were delivered with; it validates;
//! - a Communication the server refuses becomes a dead letter holding the server's
//!   OperationOutcome and does not hold back the others; `carewatch fhir status` counts both.

mod common;
#[path = "fhir_server/receiver.rs"]
mod receiver;
#[path = "fhir_server/sql.rs"]
mod sql;
#[path = "fhir_server/subscriptions.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use common::{Server, curl, wait_until};
use receiver::Receiver;
use serde_json::Value;
use sql::sql;

/// `carewatch serve` with the shipped fever rule (38 °C or more fires at once), evaluated every
/// 0.2 s, delivering to `url`.
fn start(dir: &std::path::Path, url: &str) -> Server {
    support::start_with(
        dir,
        &format!(
            "\n[fhir.destination]\nurl = \"{url}\"\ninterval_secs = 0.2\nmax_backoff_secs = 0.5\n"
        ),
    )
}

/// The server's Communications about one alert, found by carewatch's identifier.
fn held(fhir: &Receiver, alert: &str) -> Vec<Value> {
    fhir.search(&format!(
        "/Communication?identifier=urn:carewatch:alert%7C{alert}"
    ))
}

/// What carewatch serves, without what only carewatch's own copy has (its id and version) and
/// the references the destination gets in another form.
fn comparable(mut v: Value) -> Value {
    let o = v.as_object_mut().expect("object");
    for k in ["id", "meta", "reasonReference"] {
        o.remove(k);
    }
    v
}

fn ours(srv: &Server, id: &str) -> Value {
    let (s, b) = curl(
        "GET",
        &format!("{}/fhir/Communication/{id}", srv.http),
        srv.admin(),
        "",
    );
    assert_eq!(s, 200, "{b}");
    serde_json::from_str(&b).expect("json")
}

#[test]
fn an_alerts_communication_on_the_server_follows_its_lifecycle() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fhir = Receiver::start(&["--refuse-alerts-of", "ap-refused"]);
    let srv = start(tmp.path(), &fhir.url);
    let w1 = srv.register("aw-1", "ap-1");
    let w2 = srv.register("aw-2", "ap-refused");
    support::fever(&srv.http, &w1, 0);
    let id = support::alert_of(&srv, "ap-1");
    wait_until(
        "the firing alert is on the server",
        Duration::from_secs(60),
        || held(&fhir, &id).first().map(|c| c["status"].clone()) == Some("in-progress".into()),
    );
    // As carewatch serves it; the triggering Observation by its delivered identifier.
    let c = held(&fhir, &id).remove(0);
    assert_eq!(comparable(c.clone()), comparable(ours(&srv, &id)));
    assert_eq!(c["subject"]["reference"], "Patient/ap-1");
    let reason = &c["reasonReference"][0]["identifier"];
    assert_eq!(reason["system"], "urn:carewatch:observation", "{c}");
    let obs_id = reason["value"].as_str().expect("observation identifier");
    wait_until(
        "the triggering Observation is on the server",
        Duration::from_secs(60),
        || {
            fhir.search(&format!(
                "/Observation?identifier=urn:carewatch:observation%7C{obs_id}"
            ))
            .len()
                == 1
        },
    );
    common::validate_fhir("destination", "communication-firing", &c);
    // Acknowledged: still in progress, the same resource updated.
    support::act(&srv, &format!("{id}/ack"), "");
    wait_until(
        "the acknowledgement is delivered",
        Duration::from_secs(60),
        || fhir.get("/_stats")["communication_updates"].as_u64() >= Some(1),
    );
    assert_eq!(held(&fhir, &id)[0]["status"], "in-progress");
    // Resolved: completed.
    support::act(
        &srv,
        &format!("{id}/resolve"),
        r#"{"reason":"condition_resolved"}"#,
    );
    wait_until("completed on the server", Duration::from_secs(60), || {
        held(&fhir, &id).first().map(|c| c["status"].clone()) == Some("completed".into())
    });
    let all = fhir.search("/Communication?patient=ap-1");
    assert_eq!(all.len(), 1, "one Communication per alert: {all:?}");
    assert_eq!(
        fhir.search("/Communication?patient=ap-1&status=completed")
            .len(),
        1
    );
    let done = all[0].clone();
    assert_eq!(comparable(done.clone()), comparable(ours(&srv, &id)));
    common::validate_fhir("destination", "communication-completed", &done);
    // A refused Communication: a dead letter with the server's OperationOutcome.
    support::fever(&srv.http, &w2, 0);
    wait_until(
        "the refusal is a dead letter",
        Duration::from_secs(60),
        || {
            !sql(
                &srv,
                "SELECT message FROM dead_letters WHERE reason = 'destination_rejected'",
            )
            .is_empty()
        },
    );
    let dl = sql(
        &srv,
        "SELECT device_id, source, message, CAST(raw AS VARCHAR) AS raw FROM dead_letters WHERE reason = 'destination_rejected'",
    );
    assert_eq!(dl[0]["device_id"], Value::Null, "{dl:?}");
    assert_eq!(dl[0]["source"], "fhir-destination");
    assert!(
        dl[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Communication")),
        "{dl:?}"
    );
    let raw: Value = serde_json::from_str(dl[0]["raw"].as_str().expect("raw")).expect("json");
    assert_eq!(raw["status"], 422);
    assert_eq!(raw["outcome"]["issue"][0]["code"], "business-rule");
    assert_eq!(
        raw["communication"]["subject"]["reference"],
        "Patient/ap-refused"
    );
    assert!(fhir.search("/Communication?patient=ap-refused").is_empty());
    // Status: every transition delivered or refused, both counted.
    wait_until("status counts the alerts", Duration::from_secs(30), || {
        let out = Command::new(env!("CARGO_BIN_EXE_carewatch"))
            .args(["fhir", "status", "--format", "json", "--data-dir"])
            .arg(&srv.dir)
            .output()
            .expect("status");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v[0]["alerts_behind"] == 0
            && v[0]["alerts_delivered"].as_u64() >= Some(3)
            && v[0]["alerts_failed"].as_u64() >= Some(1)
    });
    let (_, m) = curl("GET", &format!("{}/metrics", srv.http), srv.admin(), "");
    assert!(
        m.contains(
            "carewatch_fhir_destination_communications_failed_total{destination=\"127.0.0.1:"
        ),
        "{m}"
    );
    assert_eq!(srv.stop(), 0);
}
