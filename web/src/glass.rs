//! Break-glass routes: `POST /v1/break-glass` `{"patient_id", "reason", "minutes"?}` opens one
//! patient outside the caller's care teams for a while (a person signed in through the identity
//! provider, care managers only; the reason and the grant go to the audit trail);
//! `GET /v1/break-glass` lists the live grants — all for admins, those on their teams' patients
//! for care managers, so a team sees who broke the glass into their patients and why; each new
//! grant is also a `break_glass` event on the live stream (`GET /v1/stream`) of the patient's
//! team and of admins, and a webhook notice to the team's lead when its escalation chain names
//! one (`[alerts.escalation.<team>] lead`).

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use carewatch_alert::http::error;
use carewatch_auth::glass::{Grant, MAX_MINUTES, MIN_REASON};
use carewatch_auth::{AuthError, Caller};
use carewatch_store::registry::Role;

use crate::WebState;

#[derive(Debug, Deserialize)]
pub(crate) struct Request {
    patient_id: String,
    reason: String,
    minutes: Option<u32>,
}

pub(crate) fn grant_json(g: &Grant) -> serde_json::Value {
    json!({
        "person": g.sub,
        "name": g.name,
        "patient_id": g.patient,
        "reason": g.reason,
        "granted": crate::iso(g.at_us),
        "until": crate::iso(g.until_us),
    })
}

/// Checks the request: the (patient, reason, minutes), or what is wrong with it.
fn validate(r: Request) -> Result<(String, String, u32), &'static str> {
    let patient = r.patient_id.trim().to_owned();
    if patient.is_empty() || patient.len() > 128 {
        return Err("patient_id must be 1 to 128 characters");
    }
    let reason = r.reason.trim().to_owned();
    if reason.chars().count() < MIN_REASON || reason.len() > 1000 {
        return Err("a reason of at least 10 characters (at most 1000) is required");
    }
    let minutes = r.minutes.unwrap_or(60);
    if !(1..=MAX_MINUTES).contains(&minutes) {
        return Err("minutes must be between 1 and 240");
    }
    Ok((patient, reason, minutes))
}

/// `POST /v1/break-glass`
pub(crate) async fn open(
    State(s): State<WebState>,
    auth: Result<Caller, AuthError>,
    body: Result<axum::Json<Request>, JsonRejection>,
) -> Response {
    let c = match auth {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let who = c.principal.clone();
    if matches!(who.role, Role::Admin | Role::Analyst) {
        return error(
            StatusCode::BAD_REQUEST,
            "not_needed",
            "admins and analysts see every patient",
        );
    }
    let Some(person) = who.person.clone().filter(|_| who.role == Role::CareManager) else {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "break-glass access needs a care manager signed in through the identity provider",
        );
    };
    let Ok(axum::Json(req)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "expected {\"patient_id\", \"reason\", \"minutes\"?}",
        );
    };
    let (patient, reason, minutes) = match validate(req) {
        Ok(x) => x,
        Err(why) => return error(StatusCode::BAD_REQUEST, "invalid", why),
    };
    if carewatch_auth::may_see_patient(&s.registry, &who, &patient) {
        return axum::Json(json!({"patient_id": patient, "needed": false})).into_response();
    }
    let known = s.registry.care_team(&patient).is_some() || s.latest.has(&patient);
    if !known {
        return error(StatusCode::NOT_FOUND, "not_found", "no such patient");
    }
    let at_us = chrono::Utc::now().timestamp_micros();
    let g = Grant {
        sub: person.sub,
        name: person.name,
        patient: patient.clone(),
        reason: reason.clone(),
        at_us,
        until_us: at_us + i64::from(minutes) * 60_000_000,
    };
    c.auth.break_glass().grant(g.clone());
    let mut what = format!("break-glass patient={patient} minutes={minutes} reason={reason}");
    if let Some(lead) = tell_lead(&s, &g) {
        what.push_str(&format!(" lead={lead}"));
    }
    s.query
        .audit()
        .record(&who, "break-glass", &what, None, "granted");
    tracing::warn!(principal = %who.id, minutes, "break-glass access granted");
    (StatusCode::CREATED, axum::Json(grant_json(&g))).into_response()
}

/// Tells the lead of the patient's care team (`[alerts.escalation.<team>] lead`), through the
/// webhook notifier; the lead's name, when there is one.
fn tell_lead(s: &WebState, g: &Grant) -> Option<String> {
    let team = s.registry.care_team(&g.patient)?;
    let lead = s.alerts.team_lead(&team)?;
    let mut body = grant_json(g);
    body["event"] = json!("break_glass");
    body["care_team"] = json!(team);
    body["lead"] = json!(lead.person);
    body["text"] = json!(format!(
        "Break-glass: {} opened a patient of care team {team} until {}: {}",
        g.name,
        crate::iso(g.until_us),
        g.reason
    ));
    carewatch_alert::notify::notify_lead(&lead, &body);
    Some(lead.person)
}

/// `GET /v1/break-glass`
pub(crate) async fn list(State(s): State<WebState>, auth: Result<Caller, AuthError>) -> Response {
    let (who, auth) = match auth {
        Ok(c) => (c.principal, c.auth),
        Err(e) => return e.into_response(),
    };
    let glass = auth.break_glass();
    let now = chrono::Utc::now().timestamp_micros();
    let grants = match who.role {
        Role::Admin => glass.live(now, |_| true),
        Role::CareManager => glass.live(now, |p| told(&s, &who, p)),
        _ => {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "for admins and care managers",
            );
        }
    };
    let v: Vec<_> = grants.iter().map(grant_json).collect();
    axum::Json(json!({"grants": v})).into_response()
}

/// Whether `who` hears of a grant on `patient`: admins, and the patient's team.
pub(crate) fn told(
    s: &WebState,
    who: &carewatch_store::registry::Principal,
    patient: &str,
) -> bool {
    who.role == Role::Admin
        || s.registry
            .care_team(patient)
            .is_some_and(|t| carewatch_auth::in_team(who, &t))
}
