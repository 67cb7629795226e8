//! Identity from FHIR (issue 14): the registry written with FHIR resources (admin only).
//!
//! - `POST /fhir/Device`, `PUT /fhir/Device/{id}`: a Device whose identifier (the one of
//!   `[fhir.identity] device_identifier_system`, or its only identifier when none is set) is the
//!   device id and whose `patient` is `Patient/{patient id}` enrols the device for that patient
//!   (as `POST /v1/devices` does, same registry call). POST never moves a device (409 if it is
//!   assigned to another patient); PUT does (the previous patient keeps what came before). A new
//!   or moved device gets a new secret, shown once in the `X-Carewatch-Device-Secret` header.
//!   `status` `inactive` or `entered-in-error` revokes the device.
//! - `POST /fhir/CareTeam`, `PUT /fhir/CareTeam/{id}`: `subject` (`Patient/{id}`) joins the team
//!   named by `name` (what `PUT /v1/patients/{id}/care-team` does).
//! - `POST /fhir/Patient`, `PUT /fhir/Patient/{id}`: checked and acknowledged; carewatch keeps no
//!   demographics — the Patient's id is what Device.patient and CareTeam.subject name.
//!
//! Nothing is guessed: a Device with several identifiers and no configured system, a reference
//! that is not `Patient/{id}`, or a missing element is refused (422 with an OperationOutcome
//! naming the element, never its value).

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{Value, json};

use carewatch_store::registry::{EnrolError, Enrolled, Enrolment, Role, valid_id, valid_team};

use crate::http::{ApiError, Caller, HttpState};

/// The header that carries a new device secret (once).
pub const SECRET_HEADER: &str = "x-carewatch-device-secret";

/// How Device resources name their device (`[fhir.identity]`).
#[derive(Debug, Clone, Default)]
pub struct IdentityModel {
    /// The Device.identifier system whose value is the device id; `None`: a Device must carry
    /// exactly one identifier.
    pub device_identifier_system: Option<String>,
}

impl IdentityModel {
    /// The device id a Device resource names, or which element is wrong.
    pub fn device_id(&self, d: &Value) -> Result<String, String> {
        let ids = d
            .get("identifier")
            .and_then(Value::as_array)
            .ok_or("Device.identifier is required: its value is the device id")?;
        let chosen: Vec<&Value> = match &self.device_identifier_system {
            Some(sys) => ids
                .iter()
                .filter(|i| i.get("system").and_then(Value::as_str) == Some(sys))
                .collect(),
            None => ids.iter().collect(),
        };
        let one = match chosen.as_slice() {
            [one] => *one,
            [] => return Err("Device.identifier has no identifier of the configured system (fhir.identity.device_identifier_system)".into()),
            _ if self.device_identifier_system.is_some() => {
                return Err("Device.identifier has several identifiers of the configured system".into());
            }
            _ => return Err("Device.identifier has several identifiers: set fhir.identity.device_identifier_system to say which one is the device id".into()),
        };
        let v = one
            .get("value")
            .and_then(Value::as_str)
            .ok_or("Device.identifier.value is required")?;
        if !valid_id(v) {
            return Err("Device.identifier.value must be 1 to 256 characters, without control characters or surrounding spaces".into());
        }
        Ok(v.to_owned())
    }
}

/// The patient id of a `Patient/{id}` reference (relative, or absolute ending so).
pub fn patient_ref(r: Option<&Value>, element: &str) -> Result<String, String> {
    let s = r
        .and_then(|r| r.get("reference"))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{element}.reference is required (Patient/{{id}})"))?;
    let tail = s.rsplit_once("Patient/").map(|(_, t)| t);
    match tail {
        Some(id) if valid_id(id) && !id.contains('/') => Ok(id.to_owned()),
        _ => Err(format!("{element}.reference must be Patient/{{id}}")),
    }
}

/// The (patient id, team name) a `CareTeam` names: `subject` is `Patient/{id}`, `name` the
/// team — or which element is wrong. (Its `status` is the caller's to judge.)
pub fn care_team_member(v: &Value) -> Result<(String, String), String> {
    let patient = patient_ref(v.get("subject"), "CareTeam.subject")?;
    let team = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or("CareTeam.name is required: it is the care team's name")?;
    if !valid_team(team) {
        return Err("CareTeam.name must not be empty or `unassigned`".into());
    }
    Ok((patient, team.to_owned()))
}

/// State of the identity routes.
#[derive(Debug, Clone)]
pub struct IdentityState {
    /// The HTTP edge's state (pipeline, registry).
    pub http: HttpState,
    /// How Devices name their device.
    pub model: IdentityModel,
}

/// The routes.
pub fn router(state: IdentityState) -> Router {
    Router::new()
        .route("/fhir/Device", post(write_device))
        .route("/fhir/Device/{id}", put(write_device))
        .route("/fhir/CareTeam", post(write_care_team))
        .route("/fhir/CareTeam/{id}", put(write_care_team))
        .route("/fhir/Patient", post(write_patient))
        .route("/fhir/Patient/{id}", put(write_patient))
        .with_state(state)
}

fn outcome(status: StatusCode, code: &str, text: &str) -> Response {
    fhir(
        status,
        json!({"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": code, "diagnostics": text}]}),
    )
}

fn fhir(status: StatusCode, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    r
}

/// The body as a resource of `kind`, whose `id` (if any) equals the path's.
fn resource(b: &Bytes, kind: &str, path_id: Option<&str>) -> Result<Value, Response> {
    let v: Value = serde_json::from_slice(b)
        .map_err(|_| outcome(StatusCode::BAD_REQUEST, "structure", "the body is not JSON"))?;
    if v.get("resourceType").and_then(Value::as_str) != Some(kind) {
        return Err(outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("expected a {kind} resource"),
        ));
    }
    if let Some(p) = path_id
        && v.get("id").and_then(Value::as_str).is_some_and(|i| i != p)
    {
        return Err(outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("{kind}.id differs from the id in the URL"),
        ));
    }
    Ok(v)
}

fn unprocessable(m: &str) -> Response {
    outcome(StatusCode::UNPROCESSABLE_ENTITY, "required", m)
}

/// `POST /fhir/{Type}` (no id) and `PUT /fhir/{Type}/{id}`: admins only, then the
/// resource's own write.
async fn write_device(
    State(s): State<IdentityState>,
    caller: Caller,
    id: Option<Path<String>>,
    b: Bytes,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    Ok(device(s, b, id.map(|Path(i)| i)).await)
}

async fn write_care_team(
    State(s): State<IdentityState>,
    caller: Caller,
    id: Option<Path<String>>,
    b: Bytes,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    Ok(care_team(s, b, id.map(|Path(i)| i)).await)
}

async fn write_patient(
    caller: Caller,
    id: Option<Path<String>>,
    b: Bytes,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    Ok(patient(b, id.map(|Path(i)| i)))
}

/// The Device a registry entry is, as answered.
fn device_resource(device: &str, patient: &str, active: bool, given: &Value) -> Value {
    json!({
        "resourceType": "Device",
        "id": device,
        "identifier": given.get("identifier").cloned().unwrap_or(Value::Null),
        "status": if active { "active" } else { "inactive" },
        "patient": {"reference": format!("Patient/{patient}")},
    })
}

/// A Device written: its device id, patient id, and whether it retires the device.
struct DeviceWrite {
    device: String,
    patient: String,
    retire: bool,
    resource: Value,
}

/// Reads and checks a Device body (the answer to send back when it is wrong).
fn read_device(
    model: &IdentityModel,
    b: &Bytes,
    path_id: Option<&str>,
) -> Result<DeviceWrite, Response> {
    let v = resource(b, "Device", path_id)?;
    let dev = model.device_id(&v).map_err(|m| unprocessable(&m))?;
    if path_id.is_some_and(|p| p != dev) {
        return Err(outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the id in the URL must be the device id (Device.identifier.value)",
        ));
    }
    let patient = patient_ref(v.get("patient"), "Device.patient").map_err(|m| unprocessable(&m))?;
    let status = v.get("status").and_then(Value::as_str).unwrap_or("active");
    if !matches!(
        status,
        "active" | "inactive" | "entered-in-error" | "unknown"
    ) {
        return Err(outcome(
            StatusCode::BAD_REQUEST,
            "value",
            "Device.status must be active, inactive, entered-in-error or unknown",
        ));
    }
    Ok(DeviceWrite {
        device: dev,
        patient,
        retire: matches!(status, "inactive" | "entered-in-error"),
        resource: v,
    })
}

async fn device(s: IdentityState, b: Bytes, path_id: Option<String>) -> Response {
    let DeviceWrite {
        device: dev,
        patient,
        retire,
        resource: v,
    } = match read_device(&s.model, &b, path_id.as_deref()) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let e = Enrolment {
        device_id: dev.clone(),
        patient_id: patient.clone(),
        valid_from_us: None,
        valid_to_us: None,
        reassign: path_id.is_some(),
    };
    let r = s.http.pipeline.registry.clone();
    let done = tokio::task::spawn_blocking(move || {
        let out = r.enrol(std::slice::from_ref(&e))?;
        let revoked = retire && r.revoke_device(&e.device_id)?;
        Ok::<_, carewatch_store::Error>((out, revoked))
    })
    .await;
    let (mut out, _) = match done {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(_) => return ApiError::Unavailable.into_response(),
    };
    let body = device_resource(&dev, &patient, !retire, &v);
    let (code, secret) = match out.pop() {
        Some(Ok(Enrolled::New(t))) => (StatusCode::CREATED, Some(t)),
        Some(Ok(Enrolled::Reassigned(t))) => (StatusCode::OK, Some(t)),
        Some(Ok(Enrolled::Unchanged)) => (StatusCode::OK, None),
        Some(Err(EnrolError::AssignedElsewhere)) => {
            return outcome(
                StatusCode::CONFLICT,
                "conflict",
                "the device is assigned to another patient; PUT /fhir/Device/{id} moves it",
            );
        }
        Some(Err(EnrolError::Revoked)) => {
            return outcome(
                StatusCode::CONFLICT,
                "conflict",
                "the device is revoked; PUT /fhir/Device/{id} re-issues it",
            );
        }
        Some(Err(e)) => return unprocessable(&e.to_string()),
        None => return ApiError::Unavailable.into_response(),
    };
    let mut resp = fhir(code, body);
    let h = resp.headers_mut();
    if let Ok(l) = HeaderValue::from_str(&format!("Device/{dev}")) {
        h.insert(header::LOCATION, l);
    }
    if let Some(t) = secret.filter(|_| !retire)
        && let Ok(t) = HeaderValue::from_str(&t)
    {
        h.insert(SECRET_HEADER, t);
    }
    resp
}

async fn care_team(s: IdentityState, b: Bytes, path_id: Option<String>) -> Response {
    let v = match resource(&b, "CareTeam", path_id.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (patient, team) = match care_team_member(&v) {
        Ok(pt) => pt,
        Err(m) => return unprocessable(&m),
    };
    let team = team.as_str();
    if matches!(
        v.get("status").and_then(Value::as_str),
        Some("inactive" | "entered-in-error")
    ) {
        return outcome(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not-supported",
            "a patient leaves a care team by joining another one (an active CareTeam)",
        );
    }
    let before = s.http.pipeline.registry.care_team(&patient);
    let (p, t) = (patient.clone(), team.to_owned());
    let r = s.http.pipeline.registry.clone();
    match tokio::task::spawn_blocking(move || r.set_care_team(&p, &t)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(_) => return ApiError::Unavailable.into_response(),
    }
    let mut body = v.clone();
    if let Some(o) = body.as_object_mut() {
        o.insert(
            "id".into(),
            json!(path_id.unwrap_or_else(|| team.to_owned())),
        );
        o.insert("status".into(), json!("active"));
    }
    let code = if before.is_none() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    fhir(code, body)
}

fn patient(b: Bytes, path_id: Option<String>) -> Response {
    let b_is_post = path_id.is_none();
    let v = match resource(&b, "Patient", path_id.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(id) = path_id.or_else(|| v.get("id").and_then(Value::as_str).map(str::to_owned))
    else {
        return unprocessable(
            "Patient.id is required: it is the patient id Device.patient and CareTeam.subject name",
        );
    };
    if !valid_id(&id) {
        return unprocessable(
            "Patient.id must be 1 to 256 characters, without control characters or surrounding spaces",
        );
    }
    // Only the id is kept (as the target of Device.patient and CareTeam.subject): carewatch
    // stores no demographics.
    let created = if b_is_post {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    fhir(
        created,
        json!({"resourceType": "Patient", "id": id, "active": v.get("active").cloned().unwrap_or(json!(true))}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_never_guessed() {
        let any = IdentityModel::default();
        let sys = IdentityModel {
            device_identifier_system: Some("urn:dev".into()),
        };
        let one = json!({"identifier": [{"system": "urn:dev", "value": "d1"}]});
        let two = json!({"identifier": [{"system": "urn:x", "value": "x"}, {"system": "urn:dev", "value": "d1"}]});
        assert_eq!(any.device_id(&one).unwrap(), "d1");
        assert!(any.device_id(&two).unwrap_err().contains("several"));
        assert_eq!(sys.device_id(&two).unwrap(), "d1");
        assert!(
            sys.device_id(&json!({"identifier": [{"value": "d"}]}))
                .is_err()
        );
        assert!(any.device_id(&json!({})).unwrap_err().contains("required"));
        assert!(
            any.device_id(&json!({"identifier": [{"value": " d"}]}))
                .is_err()
        );
    }

    #[test]
    fn patient_references() {
        let r = |s: &str| patient_ref(Some(&json!({"reference": s})), "Device.patient");
        assert_eq!(r("Patient/p1").unwrap(), "p1");
        assert_eq!(r("https://fhir.example/r4/Patient/p1").unwrap(), "p1");
        assert!(r("Group/g").is_err());
        assert!(r("Patient/p1/_history/2").is_err());
        assert!(patient_ref(None, "Device.patient").is_err());
    }
}
