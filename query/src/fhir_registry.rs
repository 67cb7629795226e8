//! `GET /fhir/Patient/{id}` and `GET /fhir/Device/{id}`: what the registry holds, as FHIR.
//!
//! A patient exists for FHIR when the registry knows them: a device was ever assigned to them
//! or they have a care team. A device exists when it is registered; it is `inactive` once
//! revoked, and names the patient it is assigned to now.
//!
//! Who sees what: [`carewatch_auth::may_see_patient`] (a care manager only their team's
//! patients and those patients' current devices); anything else is "not found", exactly as
//! an id that does not exist, so a refusal tells nothing about other teams.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use carewatch_store::registry::{Attribution, Principal, Registry};

use crate::fhir_read::{Reader, fhir_json, outcome};
use crate::http::SqlState;

/// The identifier system of carewatch's patient ids.
pub const PATIENT_SYSTEM: &str = "urn:carewatch:patient-id";
/// The identifier system of carewatch's device ids.
pub const DEVICE_SYSTEM: &str = "urn:carewatch:device-id";
/// The tag system naming a patient's care team.
pub const CARE_TEAM_TAG: &str = "urn:carewatch:care-team";

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn not_found(what: &str) -> Response {
    outcome(
        StatusCode::NOT_FOUND,
        "not-found",
        &format!("no such {what}"),
    )
}

/// The Patient resource for `id`, if the registry knows the patient.
pub fn patient(registry: &Registry, id: &str) -> Option<Value> {
    let team = registry.care_team(id);
    let assigned = || {
        registry
            .devices()
            .iter()
            .any(|d| d.assignments.iter().any(|a| a.patient_id == id))
    };
    if team.is_none() && !assigned() {
        return None;
    }
    let mut p = json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": [{"system": PATIENT_SYSTEM, "value": id}],
        "active": true
    });
    if let Some(t) = team {
        p["meta"] = json!({"tag": [{"system": CARE_TEAM_TAG, "code": t}]});
    }
    Some(p)
}

/// The Device resource for `id` and the patient it is assigned to now, if it is registered.
pub fn device(registry: &Registry, id: &str) -> Option<(Value, Option<String>)> {
    let dev = registry.devices().into_iter().find(|d| d.device_id == id)?;
    let patient = match registry.attribute(id, now_us()) {
        Attribution::Patient(p) => Some(p),
        _ => None,
    };
    let mut d = json!({
        "resourceType": "Device",
        "id": id,
        "identifier": [{"system": DEVICE_SYSTEM, "value": id}],
        "status": if dev.revoked_us.is_some() { "inactive" } else { "active" }
    });
    if let Some(p) = &patient {
        d["patient"] = json!({"reference": format!("Patient/{p}")});
    }
    Some((d, patient))
}

fn audit(s: &SqlState, p: &Principal, what: &str, found: bool) {
    s.engine.audit().record(
        p,
        "fhir-read",
        what,
        Some(u64::from(found)),
        if found { "ok" } else { "not found" },
    );
}

/// `GET /fhir/Patient/{id}`
pub async fn read_patient(
    State(s): State<SqlState>,
    Reader(p): Reader,
    Path(id): Path<String>,
) -> Response {
    let found = carewatch_auth::may_see_patient(&s.registry, &p, &id)
        .then(|| patient(&s.registry, &id))
        .flatten();
    audit(&s, &p, &format!("Patient/{id}"), found.is_some());
    match found {
        Some(v) => fhir_json(StatusCode::OK, v),
        None => not_found("Patient"),
    }
}

/// `GET /fhir/Device/{id}`
pub async fn read_device(
    State(s): State<SqlState>,
    Reader(p): Reader,
    Path(id): Path<String>,
) -> Response {
    let found = device(&s.registry, &id).filter(|(_, patient)| {
        carewatch_auth::sees_all_patients(&p)
            || patient
                .as_deref()
                .is_some_and(|pt| carewatch_auth::may_see_patient(&s.registry, &p, pt))
    });
    audit(&s, &p, &format!("Device/{id}"), found.is_some());
    match found {
        Some((v, _)) => fhir_json(StatusCode::OK, v),
        None => not_found("Device"),
    }
}
