//! The FHIR read side (issue 14) through a real `carewatch serve` and curl:
//! `Observation/$lastn`, the search parameters `category`, `_lastUpdated`, `_sort`,
//! `_summary=count` and `device`, Patient and Device reads from the registry, care-team scoping
//! of each, and `GET /fhir/metadata` listing exactly what is served. What is emitted is saved
//! into `$CAREWATCH_FHIR_OUT` and run through the external validator.

mod common;

use common::{Server, curl};
use serde_json::Value;

fn get(srv: &Server, token: &str, path: &str) -> (u16, Value) {
    let (s, b) = curl("GET", &format!("{}/fhir/{path}", srv.http), token, "");
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|a| a.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

fn code(o: &Value) -> &str {
    o["code"]["coding"][0]["code"].as_str().unwrap_or("")
}

/// Saves what we emit for the external validator and runs it now.
fn validate(name: &str, v: &Value) {
    common::validate_fhir("read-side", name, v);
}

fn post(srv: &Server, secret: &str, body: &str) {
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), secret, body);
    assert_eq!(s, 202, "{b}");
}

/// alice (team north) wears w1: three heart rates, two blood pressures, an SpO2 and steps;
/// bob (team south) wears w2: one heart rate.
fn world(srv: &Server) -> (String, String) {
    let w1 = srv.register("w1", "alice");
    let w2 = srv.register("w2", "bob");
    for (p, t) in [("alice", "north"), ("bob", "south")] {
        let (s, b) = curl(
            "PUT",
            &format!("{}/v1/patients/{p}/care-team", srv.http),
            srv.admin(),
            &format!(r#"{{"team":"{t}"}}"#),
        );
        assert_eq!(s, 204, "{b}");
    }
    post(
        srv,
        &w1,
        r#"[{"time":"2024-05-01T08:00:00Z","heart_rate":70,"blood_pressure":{"systolic":120,"diastolic":80}},
            {"time":"2024-05-01T09:00:00Z","heart_rate":75,"spo2":96,"steps":420},
            {"time":"2024-05-01T10:00:00Z","heart_rate":80,"blood_pressure":{"systolic":130,"diastolic":85}}]"#,
    );
    post(
        srv,
        &w2,
        r#"{"time":"2024-05-01T10:30:00Z","heart_rate":99}"#,
    );
    (w1, w2)
}

#[test]
fn lastn_answers_the_latest_observation_per_code() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let (w1, _) = world(&srv);
    let analyst = srv.token("analyst", None);
    let (s, b) = get(&srv, &analyst, "Observation/$lastn?patient=Patient/alice");
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["type"], "searchset");
    let latest = entries(&b);
    let mut codes: Vec<&str> = latest.iter().map(code).collect();
    codes.sort_unstable();
    assert_eq!(codes, ["2708-6", "55423-8", "85354-9", "8867-4"], "{b}");
    let by = |c: &str| latest.iter().find(|o| code(o) == c).cloned();
    let hr = by("8867-4").expect("hr");
    assert_eq!(hr["valueQuantity"]["value"], 80);
    assert_eq!(hr["effectiveDateTime"], "2024-05-01T10:00:00Z");
    let bp = by("85354-9").expect("bp");
    assert_eq!(bp["component"][0]["valueQuantity"]["value"], 130);
    assert_eq!(bp["component"][1]["valueQuantity"]["value"], 85);
    assert!(hr["meta"]["lastUpdated"].is_string(), "{hr}");
    validate("lastn", &b);
    // max=2 per code, newest first; code narrows it; bob is not in alice's answer.
    let (_, two) = get(
        &srv,
        &analyst,
        "Observation/$lastn?patient=alice&code=8867-4&max=2",
    );
    let values: Vec<Value> = entries(&two)
        .iter()
        .map(|o| o["valueQuantity"]["value"].clone())
        .collect();
    assert_eq!(values, [80, 75].map(Value::from));
    let (_, bps) = get(
        &srv,
        &analyst,
        "Observation/$lastn?patient=alice&code=85354-9&max=5",
    );
    assert_eq!(
        entries(&bps).len(),
        2,
        "two blood pressures, each one Observation"
    );
    // Refusals: no patient, a bad max, an unknown parameter.
    for bad in [
        "Observation/$lastn",
        "Observation/$lastn?patient=alice&max=0",
        "Observation/$lastn?patient=alice&foo=1",
    ] {
        let (s, b) = get(&srv, &analyst, bad);
        assert_eq!(s, 400, "{bad}");
        assert_eq!(b["resourceType"], "OperationOutcome");
    }
    // Care-team scoping: north sees alice, south sees nothing of her; devices cannot read.
    let north = srv.token("care_manager", Some("north"));
    let south = srv.token("care_manager", Some("south"));
    assert_eq!(
        entries(&get(&srv, &north, "Observation/$lastn?patient=alice").1).len(),
        4
    );
    let (s, none) = get(&srv, &south, "Observation/$lastn?patient=alice");
    assert_eq!((s, entries(&none).len()), (200, 0));
    assert_eq!(get(&srv, &w1, "Observation/$lastn?patient=alice").0, 403);
    assert_eq!(srv.stop(), 0);
}

#[test]
fn search_by_category_last_updated_sort_summary_and_device() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let (w1, _) = world(&srv);
    let analyst = srv.token("analyst", None);
    let (_, act) = get(
        &srv,
        &analyst,
        "Observation?patient=alice&category=activity",
    );
    assert_eq!(
        entries(&act).iter().map(code).collect::<Vec<_>>(),
        ["55423-8"]
    );
    let (_, vs) = get(
        &srv,
        &analyst,
        "Observation?patient=alice&category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
    );
    assert_eq!(entries(&vs).len(), 6, "3 HR, 2 BP, 1 SpO2: {vs}");
    // _summary=count: the number of Observations (a BP is one), no entries.
    let (s, n) = get(&srv, &analyst, "Observation?patient=alice&_summary=count");
    assert_eq!(s, 200);
    assert_eq!(n["total"], 7, "{n}");
    assert!(n.get("entry").is_none());
    let (_, n) = get(
        &srv,
        &analyst,
        "Observation?_summary=count&device=Device/w2",
    );
    assert_eq!(n["total"], 1);
    // _sort=-date: newest first.
    let (_, desc) = get(
        &srv,
        &analyst,
        "Observation?patient=alice&code=8867-4&_sort=-date",
    );
    let hr: Vec<Value> = entries(&desc)
        .iter()
        .map(|o| o["valueQuantity"]["value"].clone())
        .collect();
    assert_eq!(hr, [80, 75, 70].map(Value::from));
    // _lastUpdated: what arrived after a moment finds only the later message.
    let cut = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(20));
    post(
        &srv,
        &w1,
        r#"{"time":"2024-04-30T23:00:00Z","heart_rate":66}"#,
    );
    let q = format!(
        "Observation?patient=alice&_lastUpdated=gt{}",
        cut.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    let (s, late) = get(&srv, &analyst, &q.replace('+', "%2B"));
    assert_eq!(s, 200, "{late}");
    let late = entries(&late);
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0]["valueQuantity"]["value"], 66);
    let (_, recent) = get(
        &srv,
        &analyst,
        "Observation?patient=alice&_sort=-_lastUpdated&_count=1",
    );
    assert_eq!(entries(&recent)[0]["valueQuantity"]["value"], 66);
    validate("search-sorted", &desc);
    // Bad values are specific 400s.
    for (q, what) in [
        ("_sort=value", "_sort"),
        ("_summary=text", "_summary"),
        ("_lastUpdated=soon", "_lastUpdated"),
        ("status=final", "status"),
    ] {
        let (s, b) = get(&srv, &analyst, &format!("Observation?{q}"));
        assert_eq!(s, 400, "{q}");
        assert!(
            b["issue"][0]["diagnostics"]
                .as_str()
                .unwrap_or("")
                .contains(what),
            "{b}"
        );
    }
    // A care manager's count covers their team only.
    let south = srv.token("care_manager", Some("south"));
    assert_eq!(
        get(&srv, &south, "Observation?_summary=count").1["total"],
        1
    );
    assert_eq!(srv.stop(), 0);
}

#[test]
fn patient_and_device_reads_from_the_registry() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let (w1, _) = world(&srv);
    let analyst = srv.token("analyst", None);
    let (s, p) = get(&srv, &analyst, "Patient/alice");
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        (p["resourceType"].as_str(), p["id"].as_str()),
        (Some("Patient"), Some("alice"))
    );
    assert_eq!(p["meta"]["tag"][0]["code"], "north");
    validate("patient", &p);
    let (s, d) = get(&srv, &analyst, "Device/w1");
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["patient"]["reference"], "Patient/alice");
    assert_eq!(d["status"], "active");
    validate("device", &d);
    assert_eq!(get(&srv, &analyst, "Patient/nobody").0, 404);
    assert_eq!(
        get(&srv, &analyst, "Device/nothing").1["resourceType"],
        "OperationOutcome"
    );
    // Scoping: north reads alice and her device; south gets "not found" for both.
    let north = srv.token("care_manager", Some("north"));
    let south = srv.token("care_manager", Some("south"));
    assert_eq!(get(&srv, &north, "Patient/alice").0, 200);
    assert_eq!(get(&srv, &north, "Device/w1").0, 200);
    assert_eq!(get(&srv, &south, "Patient/alice").0, 404);
    assert_eq!(get(&srv, &south, "Device/w1").0, 404);
    assert_eq!(get(&srv, &south, "Patient/bob").0, 200);
    assert_eq!(get(&srv, &w1, "Patient/alice").0, 403);
    assert_eq!(get(&srv, "", "Patient/alice").0, 401);
    // A revoked device reads as inactive.
    let (s, _) = curl(
        "DELETE",
        &format!("{}/v1/devices/w2", srv.http),
        srv.admin(),
        "",
    );
    assert!(s == 200 || s == 204, "{s}");
    assert_eq!(get(&srv, &analyst, "Device/w2").1["status"], "inactive");
    assert_eq!(srv.stop(), 0);
}

/// Every interaction and search parameter the CapabilityStatement lists is served, and a
/// resource, parameter or operation it does not list is refused.
#[test]
fn metadata_lists_exactly_what_is_served() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    world(&srv);
    let admin = srv.admin().to_owned();
    // Public, like SMART discovery: it names no data.
    let (s, c) = get(&srv, "", "metadata");
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["resourceType"], "CapabilityStatement");
    assert_eq!(c["fhirVersion"], "4.0.1");
    validate("capability-statement", &c);
    let resources = c["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .clone();
    // What each read is tried with: an id that exists, or (alerts and subscriptions are made in
    // tests/fhir_subscriptions.rs) one that does not, answered by the FHIR route with a
    // not-found OperationOutcome rather than by the router.
    let sample = |ty: &str| match ty {
        "Observation" => {
            entries(&get(&srv, &admin, "Observation?patient=alice&_count=1").1)[0]["id"]
                .as_str()
                .expect("id")
                .to_owned()
        }
        "Patient" => "alice".to_owned(),
        "Device" => "w1".to_owned(),
        "Communication" | "Subscription" => "0123456789abcdef".to_owned(),
        other => panic!("listed but this test does not know how to read a {other}"),
    };
    let served = |ty: &str, path: &str| {
        let (s, b) = get(&srv, &admin, path);
        let not_found = s == 404 && b["resourceType"] == "OperationOutcome";
        assert!(
            s == 200 || (not_found && matches!(ty, "Communication" | "Subscription")),
            "{path}: {s} {b}"
        );
    };
    let mut types = Vec::new();
    for r in &resources {
        let ty = r["type"].as_str().expect("type");
        types.push(ty.to_owned());
        for i in r["interaction"].as_array().expect("interactions") {
            match i["code"].as_str().expect("code") {
                "read" => served(ty, &format!("{ty}/{}", sample(ty))),
                "search-type" => served(ty, ty),
                // tests/serve_http.rs, tests/fhir_identity.rs, tests/fhir_subscriptions.rs,
                // tests/fhir_subscription_manage.rs
                "create" | "update" | "delete" => {}
                other => panic!("{ty} lists {other}, which this test does not check"),
            }
        }
        for p in r["searchParam"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().expect("name");
            let v = if p["type"] == "date" {
                "ge2024-01-01T00:00:00Z"
            } else {
                "x"
            };
            let (s, b) = get(&srv, &admin, &format!("{ty}?{name}={v}"));
            assert_eq!(s, 200, "{ty}?{name}: {b}");
        }
        for op in r["operation"].as_array().into_iter().flatten() {
            let name = op["name"].as_str().expect("name");
            match ty {
                "Observation" => served(ty, &format!("{ty}/${name}?patient=alice")),
                _ => served(ty, &format!("{ty}/{}/${name}", sample(ty))),
            }
        }
    }
    assert_eq!(
        types,
        [
            "Observation",
            "Patient",
            "Device",
            "CareTeam",
            "Communication",
            "Subscription"
        ]
    );
    assert_eq!(get(&srv, &admin, "Observation?identifier=x").0, 400);
    assert!(matches!(get(&srv, &admin, "Encounter/x").0, 404 | 405));
    assert!(matches!(
        get(&srv, &admin, "Observation/$stats?patient=alice").0,
        404 | 400
    ));
    assert_eq!(srv.stop(), 0);
}
