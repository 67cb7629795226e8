//! `GET /v1/alerts`, `POST /v1/alerts/{id}/ack`, `GET /v1/alerts/stream` (SSE). A care manager
//! sees only their care team's patients; admins and analysts see all.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use carewatch_auth::{AuthError, Caller};
use carewatch_store::registry::{Principal, Registry, Role};

use crate::engine::{Action, ActionError, AlertEngine, Current};
use crate::history::Status;
use crate::iso;
use crate::rules::Level;

/// State for the alert routes.
#[derive(Debug, Clone)]
pub struct AlertState {
    /// The engine.
    pub engine: AlertEngine,
    /// For bearer tokens.
    pub registry: Arc<Registry>,
}

/// The router.
pub fn router(state: AlertState) -> Router {
    Router::new()
        .route("/v1/alerts", get(list))
        .route("/v1/alerts/stream", get(stream))
        .route("/v1/alerts/{id}/ack", post(ack))
        .route("/v1/alerts/{id}/{action}", post(action))
        .with_state(state)
}

/// A JSON error body `{"error", "message"}` with a status.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

/// The caller (from the shared `carewatch-auth` extractor): admins, analysts and care managers;
/// devices are refused.
pub fn reader(c: Result<Caller, AuthError>) -> Result<Principal, Response> {
    let c = c.map_err(IntoResponse::into_response)?;
    c.reader().cloned().map_err(IntoResponse::into_response)
}

/// The JSON shape of an alert in the API.
pub fn alert_json(a: &Current) -> serde_json::Value {
    json!({
        "alert_id": a.alert_id,
        "fingerprint": a.alert_id,
        "rule": a.rule,
        "title": a.title,
        "severity": a.severity.as_str(),
        "level": a.level.as_str(),
        "patient_id": a.patient_id,
        "care_team": a.care_team,
        "status": a.status.as_str(),
        "episode_start": iso(a.episode_start_us),
        "episode_end": iso(a.episode_end_us),
        "value": a.value,
        "message": a.message,
        "escalation_level": a.escalation_level,
        "acknowledged_by": a.acknowledged_by,
        "assignee": a.assignee,
        "snoozed_until": a.snoozed_until_us.map(iso),
        "held": a.held,
        "held_until": a.held_until_us.map(iso),
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    patient: Option<String>,
    rule: Option<String>,
    level: Option<String>,
}

async fn list(
    State(state): State<AlertState>,
    auth: Result<Caller, AuthError>,
    Query(q): Query<ListQuery>,
) -> Response {
    let who = match reader(auth) {
        Ok(p) => p,
        Err(r) => return r,
    };
    // `open` (default): pending, firing, acknowledged, snoozed; `all`; or one status.
    let want: Vec<Status> = match q.status.as_deref().unwrap_or("open") {
        "open" => vec![
            Status::Pending,
            Status::Firing,
            Status::Acknowledged,
            Status::Snoozed,
        ],
        "all" => vec![
            Status::Pending,
            Status::Firing,
            Status::Acknowledged,
            Status::Snoozed,
            Status::Resolved,
        ],
        s => match Status::parse(s) {
            Some(s) => vec![s],
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "status is open, all, pending, firing, acknowledged, snoozed or resolved",
                );
            }
        },
    };
    let level = match q.level.as_deref().map(Level::parse) {
        None => None,
        Some(Some(l)) => Some(l),
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "level is urgent, warning or info",
            );
        }
    };
    let mut all = state.engine.current(&who);
    if want.contains(&Status::Pending) {
        all.extend(state.engine.pending(&who));
    }
    let items: Vec<_> = all
        .iter()
        .filter(|a| want.contains(&a.status))
        .filter(|a| q.patient.as_deref().is_none_or(|p| p == a.patient_id))
        .filter(|a| q.rule.as_deref().is_none_or(|r| r == a.rule))
        .filter(|a| level.is_none_or(|l| l == a.level))
        .map(alert_json)
        .collect();
    axum::Json(json!({"alerts": items})).into_response()
}

async fn ack(
    State(state): State<AlertState>,
    auth: Result<Caller, AuthError>,
    Path(id): Path<String>,
) -> Response {
    act(state, auth, id, Ok(Action::Acknowledge)).await
}

/// `POST /v1/alerts/{id}/{assign|note|snooze|resolve}` with its JSON body.
async fn action(
    State(state): State<AlertState>,
    auth: Result<Caller, AuthError>,
    Path((id, verb)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    act(state, auth, id, parse_action(&verb, &body)).await
}

#[derive(Debug, Default, Deserialize)]
struct ActionBody {
    to: Option<String>,
    text: Option<String>,
    minutes: Option<u32>,
    reason: Option<String>,
}

/// The action a verb and its body ask for, or the error response.
fn parse_action(verb: &str, body: &[u8]) -> Result<Action, Response> {
    let b: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(body).map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "the body is not the JSON object this action takes",
            )
        })?
    };
    let missing = |what: &str| {
        error(
            StatusCode::BAD_REQUEST,
            "missing_field",
            &format!("this action needs `{what}`"),
        )
    };
    match verb {
        "assign" => Ok(Action::Assign(b.to)),
        "note" => b.text.map(Action::Note).ok_or_else(|| missing("text")),
        "snooze" => b
            .minutes
            .map(Action::Snooze)
            .ok_or_else(|| missing("minutes")),
        "resolve" => b
            .reason
            .map(Action::Resolve)
            .ok_or_else(|| missing("reason")),
        _ => Err(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such action: ack, assign, note, snooze or resolve",
        )),
    }
}

/// Runs an action for the caller (admins and care managers) and answers the alert after it.
async fn act(
    state: AlertState,
    auth: Result<Caller, AuthError>,
    id: String,
    action: Result<Action, Response>,
) -> Response {
    let who = match reader(auth) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !matches!(who.role, Role::Admin | Role::CareManager) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only care managers act on alerts",
        );
    }
    let action = match action {
        Ok(a) => a,
        Err(r) => return r,
    };
    let engine = state.engine.clone();
    let r = tokio::task::spawn_blocking(move || engine.act(&id, &who, &action)).await;
    match r {
        Ok(Ok(a)) => axum::Json(alert_json(&a)).into_response(),
        Ok(Err(ActionError::NotFound)) => {
            error(StatusCode::NOT_FOUND, "not_found", "no such alert")
        }
        Ok(Err(ActionError::Resolved)) => error(
            StatusCode::CONFLICT,
            "resolved",
            "the alert is already resolved",
        ),
        Ok(Err(ActionError::Invalid(why))) => error(StatusCode::BAD_REQUEST, "invalid", why),
        Ok(Err(ActionError::Io)) | Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "could not record the action",
        ),
    }
}

/// A broadcast receiver as a stream; a lagging subscriber skips what it missed.
pub fn broadcast_stream<T: Clone + Send + 'static>(
    rx: tokio::sync::broadcast::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(t) => return Some((t, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    })
}

/// Alert transitions the caller may see, as SSE `alert` events. Who may see one is decided by
/// the patient's care team when it is delivered (authorization follows the patient), and the
/// event carries that team.
pub fn alert_events(
    engine: &AlertEngine,
    who: Principal,
) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> + Send + use<> {
    let engine = engine.clone();
    broadcast_stream(engine.subscribe()).filter_map(move |t| {
        let team = engine.team_of(&t.patient_id);
        let ok = crate::engine::may_see(&who, team.as_deref());
        async move {
            ok.then(|| {
                let t = crate::notify::routed(&t, team);
                let body = crate::notify::feed_payload(&t).to_string();
                Ok(SseEvent::default().event("alert").data(body))
            })
        }
    })
}

/// The stream ends when the caller's credential stops working (revoked, expired).
async fn stream(State(state): State<AlertState>, auth: Result<Caller, AuthError>) -> Response {
    let caller = match auth {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let who = match reader(Ok(caller.clone())) {
        Ok(p) => p,
        Err(r) => return r,
    };
    Sse::new(caller.bound(alert_events(&state.engine, who)))
        .keep_alive(KeepAlive::default())
        .into_response()
}
