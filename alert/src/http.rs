//! `GET /v1/alerts`, `POST /v1/alerts/{id}/ack`, `GET /v1/alerts/stream` (SSE). A care manager
//! sees only their care team's patients; admins and analysts see all.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use carewatch_store::registry::{Principal, Registry, Role};

use crate::engine::{AckError, AlertEngine, Current};
use crate::history::Status;
use crate::iso;

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

/// The caller behind a bearer token: admins, analysts and care managers (devices are refused).
pub fn reader(registry: &Registry, headers: &HeaderMap) -> Result<Principal, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or_else(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer token is required",
            )
        })?;
    let p = registry.authenticate(token.trim()).ok_or_else(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown or revoked token",
        )
    })?;
    if p.role == Role::Device {
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "devices cannot read alerts or patient feeds",
        ));
    }
    Ok(p)
}

fn caller(state: &AlertState, headers: &HeaderMap) -> Result<Principal, Response> {
    reader(&state.registry, headers)
}

/// The JSON shape of an alert in the API.
pub fn alert_json(a: &Current) -> serde_json::Value {
    json!({
        "alert_id": a.alert_id,
        "fingerprint": a.alert_id,
        "rule": a.rule,
        "title": a.title,
        "severity": a.severity.as_str(),
        "patient_id": a.patient_id,
        "care_team": a.care_team,
        "status": a.status.as_str(),
        "episode_start": iso(a.episode_start_us),
        "episode_end": iso(a.episode_end_us),
        "value": a.value,
        "message": a.message,
        "escalation_level": a.escalation_level,
        "acknowledged_by": a.acknowledged_by,
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    patient: Option<String>,
    rule: Option<String>,
}

async fn list(
    State(state): State<AlertState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let who = match caller(&state, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    // `open` (default): pending, firing, acknowledged; `all`; or one status.
    let want: Vec<Status> = match q.status.as_deref().unwrap_or("open") {
        "open" => vec![Status::Pending, Status::Firing, Status::Acknowledged],
        "all" => vec![
            Status::Pending,
            Status::Firing,
            Status::Acknowledged,
            Status::Resolved,
        ],
        s => match Status::parse(s) {
            Some(s) => vec![s],
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "status is open, all, pending, firing, acknowledged or resolved",
                );
            }
        },
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
        .map(alert_json)
        .collect();
    axum::Json(json!({"alerts": items})).into_response()
}

async fn ack(
    State(state): State<AlertState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let who = match caller(&state, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !matches!(who.role, Role::Admin | Role::CareManager) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only care managers acknowledge alerts",
        );
    }
    let engine = state.engine.clone();
    let r = tokio::task::spawn_blocking(move || engine.acknowledge(&id, &who)).await;
    match r {
        Ok(Ok(a)) => axum::Json(alert_json(&a)).into_response(),
        Ok(Err(AckError::NotFound)) => error(StatusCode::NOT_FOUND, "not_found", "no such alert"),
        Ok(Err(AckError::Resolved)) => error(
            StatusCode::CONFLICT,
            "resolved",
            "the alert is already resolved",
        ),
        Ok(Err(AckError::Io)) | Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "could not record the acknowledgement",
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

/// Alert transitions the caller may see, as SSE `alert` events.
pub fn alert_events(
    engine: &AlertEngine,
    who: Principal,
) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> + Send + use<> {
    broadcast_stream(engine.subscribe()).filter_map(move |t| {
        let ok = match who.role {
            Role::Admin | Role::Analyst => true,
            _ => who.subject.is_some() && who.subject == t.care_team,
        };
        async move {
            ok.then(|| {
                let body = crate::notify::feed_payload(&t).to_string();
                Ok(SseEvent::default().event("alert").data(body))
            })
        }
    })
}

async fn stream(State(state): State<AlertState>, headers: HeaderMap) -> Response {
    let who = match caller(&state, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    Sse::new(alert_events(&state.engine, who))
        .keep_alive(KeepAlive::default())
        .into_response()
}
