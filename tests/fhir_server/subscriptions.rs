//! What the FHIR subscription tests share: the Backport IG names, a `carewatch serve` with the
//! fever rule, a Subscription body, reading notifications and `$status` parameters.

#![allow(dead_code)] // each test file uses part of it

use serde_json::{Value, json};

use crate::common::{Server, Webhook, curl, write_config};

pub const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";
pub const ALERT_TOPIC: &str = "urn:carewatch:SubscriptionTopic:alert-transition";

pub fn get(http: &str, token: &str, path: &str) -> (u16, Value) {
    let (s, b) = curl("GET", &format!("{http}/fhir/{path}"), token, "");
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

/// Saves what we emit for the external validator and runs it now.
pub fn validate(name: &str, v: &Value) {
    crate::common::validate_fhir("subscriptions", name, v);
}

pub fn param<'a>(status: &'a Value, name: &str) -> Vec<&'a Value> {
    status["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == name)
        .collect()
}

/// (type, events-since-subscription-start, event numbers) of a notification Bundle.
pub fn shape(b: &Value) -> (String, u64, Vec<u64>) {
    let st = &b["entry"][0]["resource"];
    let n = |v: &Value| v.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
    let numbers = param(st, "notification-event")
        .iter()
        .map(|e| n(&e["part"][0]["valueString"]))
        .collect();
    (
        param(st, "type")[0]["valueCode"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        n(&param(st, "events-since-subscription-start")[0]["valueString"]),
        numbers,
    )
}

pub fn fever(http: &str, secret: &str, minute: u32) {
    let body = format!(r#"{{"time":"2024-05-01T08:{minute:02}:00Z","body_temperature":39.2}}"#);
    let (s, b) = curl("POST", &format!("{http}/v1/readings"), secret, &body);
    assert_eq!(s, 202, "{b}");
}

pub fn subscription(endpoint: &str, filter: &str) -> String {
    json!({
        "resourceType": "Subscription",
        "meta": {"profile": [format!("{BACKPORT}/backport-subscription")]},
        "status": "requested",
        "reason": "alerts of the north team",
        "criteria": ALERT_TOPIC,
        "_criteria": {"extension": [{"url": format!("{BACKPORT}/backport-filter-criteria"), "valueString": filter}]},
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BACKPORT}/backport-payload-content"), "valueCode": "full-resource"}]},
            "extension": [{"url": format!("{BACKPORT}/backport-heartbeat-period"), "valueUnsignedInt": 2}]
        }
    })
    .to_string()
}

/// `carewatch serve` with the shipped fever rule only (a temperature of 38 °C or more fires at
/// once), evaluated every 0.2 s.
pub fn start(dir: &std::path::Path) -> Server {
    start_with(dir, "")
}

/// [`start`] with more configuration (TOML appended to the `[alerts]` table's file).
pub fn start_with(dir: &std::path::Path, more: &str) -> Server {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).expect("rules dir");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/alert/rules/fever.toml"),
        rules.join("fever.toml"),
    )
    .expect("fever rule");
    let cfg = write_config(dir, &format!("[alerts]\ninterval_secs = 0.2\n{more}"));
    Server::start(
        dir,
        &[
            "--config",
            &cfg,
            "--rules-dir",
            rules.to_str().expect("utf8"),
        ],
    )
}

pub fn notifications(hook: &Webhook) -> Vec<Value> {
    hook.all()
        .into_iter()
        .filter(|v| v["type"] == "history")
        .collect()
}

pub fn events_seen(hook: &Webhook) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    for b in notifications(hook) {
        let (kind, _, numbers) = shape(&b);
        if kind == "event-notification" {
            // A notification may carry several events (a new alert's `pending` and `firing`
            // go out together); entry k + 1 is the focus of the k-th event.
            for (k, n) in numbers.into_iter().enumerate() {
                out.push((n, b["entry"][k + 1]["resource"].clone()));
            }
        }
    }
    out
}

/// Puts `patient` in care team `team` (as an admin).
pub fn set_team(srv: &Server, patient: &str, team: &str) {
    let (s, b) = curl(
        "PUT",
        &format!("{}/v1/patients/{patient}/care-team", srv.http),
        srv.admin(),
        &format!(r#"{{"team":"{team}"}}"#),
    );
    assert_eq!(s, 204, "{b}");
}

/// The id of `patient`'s newest alert, as carewatch serves it at /fhir/Communication, once
/// there is one.
pub fn alert_of(srv: &Server, patient: &str) -> String {
    let mut id = String::new();
    crate::common::wait_until("the alert", std::time::Duration::from_secs(60), || {
        let (_, b) = get(
            &srv.http,
            srv.admin(),
            &format!("Communication?patient={patient}"),
        );
        id = b["entry"][0]["resource"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        !id.is_empty()
    });
    id
}

/// Acts on an alert as an admin: `POST /v1/alerts/{path}`.
pub fn act(srv: &Server, path: &str, body: &str) {
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/alerts/{path}", srv.http),
        srv.admin(),
        body,
    );
    assert!(s == 200 || s == 204, "{path}: {s} {b}");
}
