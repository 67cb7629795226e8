//! Care teams from the FHIR destination in identity lookup mode (issue 14): against a real
//! `carewatch serve` and the validating FHIR server (tests/fhir_server/receiver.py), a patient
//! whose device was found by lookup is placed in the team its active CareTeam names (of the
//! configured category), so the team's care managers see it and others do not; a CareTeam
//! renamed on the server moves the patient; two active CareTeams naming different teams choose
//! nothing until one ends. The settings are refused outside lookup mode.

mod common;
#[path = "fhir_server/receiver.rs"]
mod receiver;
#[path = "fhir_server/sql.rs"]
mod sql;

use std::time::Duration;

use common::{Server, curl, note_id, wait_until, write_config};
use receiver::Receiver;
use serde_json::{Value, json};
use sql::patient_ids;

const SERIAL: &str = "urn:example:serial";
const RPM: &str = "urn:example:team-kind|rpm";

fn device(id: &str, serial: &str, patient: &str) -> Value {
    json!({"resourceType": "Device", "id": id,
           "identifier": [{"system": SERIAL, "value": serial}],
           "patient": {"reference": format!("Patient/{patient}")}})
}

fn care_team(id: &str, name: &str, patient: &str, kind: &str, status: &str) -> Value {
    json!({"resourceType": "CareTeam", "id": id, "status": status, "name": name,
           "category": [{"coding": [{"system": "urn:example:team-kind", "code": kind}]}],
           "subject": {"reference": format!("Patient/{patient}")}})
}

fn sees(srv: &Server, token: &str, patient: &str) -> bool {
    patient_ids(srv, token).iter().any(|p| p == patient)
}

fn enrolled(srv: &Server, patient: &str) -> bool {
    let (s, b) = curl(
        "GET",
        &format!("{}/v1/devices?patient={patient}", srv.http),
        srv.admin(),
        "",
    );
    s == 200 && b.contains("lt-dev-")
}

fn searches(fhir: &Receiver) -> u64 {
    fhir.get("/_stats")["careteam_searches"]
        .as_u64()
        .expect("n")
}

/// Waits for two more CareTeam searches: every enrolled patient has been asked again since.
fn two_more_searches(fhir: &Receiver) {
    let before = searches(fhir);
    wait_until(
        "two more CareTeam searches",
        Duration::from_secs(30),
        || searches(fhir) >= before + 2,
    );
}

#[test]
fn lookup_mode_takes_care_teams_from_the_fhir_servers_care_team_resources() {
    let tmp = tempfile::tempdir().expect("tmp");
    for id in [
        "lt-dev-1",
        "lt-dev-2",
        "lt-pat-1",
        "lt-pat-2",
        "ward-lt",
        "ward-lt-night",
        "ward-lt-other",
        "billing-lt",
    ] {
        note_id("id", id);
    }
    let fhir = Receiver::start(&[]);
    let cfg = write_config(
        tmp.path(),
        &format!(
            "[fhir.destination]\nurl = \"{}\"\ninterval_secs = 0.2\nmax_backoff_secs = 0.5\n\
             [fhir.identity]\nmode = \"lookup\"\ndevice_identifier_system = \"{SERIAL}\"\n\
             recheck_secs = 0.3\ncare_team_recheck_secs = 0.3\ncare_team_category = \"{RPM}\"\n",
            fhir.url
        ),
    );
    // The hospital's FHIR server: two devices and their patients' care teams. Patient 1 has one
    // RPM team (and a billing team, another category); patient 2 has two active RPM teams.
    fhir.put("/Device/srv-1", &device("srv-1", "lt-dev-1", "lt-pat-1"));
    fhir.put("/Device/srv-2", &device("srv-2", "lt-dev-2", "lt-pat-2"));
    let ward = care_team("ct-1", "ward-lt", "lt-pat-1", "rpm", "active");
    fhir.put("/CareTeam/ct-1", &ward);
    let billing = care_team("ct-9", "billing-lt", "lt-pat-1", "billing", "active");
    fhir.put("/CareTeam/ct-9", &billing);
    fhir.put(
        "/CareTeam/ct-2a",
        &care_team("ct-2a", "ward-lt", "lt-pat-2", "rpm", "active"),
    );
    let other = care_team("ct-2b", "ward-lt-other", "lt-pat-2", "rpm", "active");
    fhir.put("/CareTeam/ct-2b", &other);

    let srv = Server::start(tmp.path(), &["--config", &cfg]);
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/readings", srv.http),
        srv.admin(),
        r#"[{"device_id":"lt-dev-1","time":"2024-05-01T08:00:00Z","heart_rate":71},
            {"device_id":"lt-dev-2","time":"2024-05-01T08:00:00Z","heart_rate":81}]"#,
    );
    assert_eq!(s, 422, "unknown devices are dead letters first: {b}");

    // Found by lookup; patient 1 joins the one RPM team its CareTeam names.
    let ward_lt = srv.token("care_manager", Some("ward-lt"));
    let night = srv.token("care_manager", Some("ward-lt-night"));
    let other_team = srv.token("care_manager", Some("ward-lt-other"));
    let billing_team = srv.token("care_manager", Some("billing-lt"));
    wait_until(
        "the RPM team sees its patient",
        Duration::from_secs(30),
        || sees(&srv, &ward_lt, "lt-pat-1"),
    );
    assert!(!sees(&srv, &billing_team, "lt-pat-1"), "another category");
    // Patient 2: two active RPM teams with different names -> none chosen.
    wait_until("both devices enrolled", Duration::from_secs(30), || {
        enrolled(&srv, "lt-pat-2")
    });
    two_more_searches(&fhir);
    assert!(!sees(&srv, &ward_lt, "lt-pat-2"), "ambiguous: not chosen");
    assert!(
        !sees(&srv, &other_team, "lt-pat-2"),
        "ambiguous: not chosen"
    );
    assert!(
        sees(&srv, srv.admin(), "lt-pat-2"),
        "admins see every patient"
    );

    // The CareTeam is renamed on the server: the patient moves to the new team.
    let mut renamed = ward.clone();
    renamed["name"] = json!("ward-lt-night");
    fhir.put("/CareTeam/ct-1", &renamed);
    wait_until(
        "the renamed team sees the patient",
        Duration::from_secs(30),
        || sees(&srv, &night, "lt-pat-1"),
    );
    assert!(!sees(&srv, &ward_lt, "lt-pat-1"), "the old team no longer");

    // One of patient 2's teams ends: the other one is the patient's team.
    let mut ended = other.clone();
    ended["status"] = json!("inactive");
    fhir.put("/CareTeam/ct-2b", &ended);
    wait_until(
        "the remaining team sees patient 2",
        Duration::from_secs(30),
        || sees(&srv, &ward_lt, "lt-pat-2"),
    );
    assert!(!sees(&srv, &other_team, "lt-pat-2"));
    assert_eq!(srv.stop(), 0);
}

#[test]
fn care_team_lookup_settings_outside_lookup_mode_stop_serve_naming_them() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = write_config(
        tmp.path(),
        "[fhir.identity]\nmode = \"registry\"\ncare_team_recheck_secs = 5\n",
    );
    let err = common::serve_refuses(tmp.path(), &cfg);
    assert!(
        err.contains("care_team") && err.contains("lookup"),
        "names the setting: {err}"
    );
}
