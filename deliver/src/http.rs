//! `GET /v1/trace?device=…&since=…&until=…`: a device's messages and what became of each
//! ([`crate::trace`]). Admins see any device; a care manager a device whose current patient is
//! in their team (the shared `carewatch_auth` scope check) — for anyone else the device does
//! not exist (404, as an unknown one). Times are RFC 3339 with an offset; the default window is
//! the last 24 hours. Each trace is written to the audit trail.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use carewatch_query::QueryEngine;
use carewatch_store::registry::{Attribution, Registry, Role};

use crate::trace::{TraceQuery, trace};

/// What the trace endpoint needs.
#[derive(Debug, Clone)]
pub struct TraceState {
    /// The server's query engine (internal lane).
    pub engine: QueryEngine,
    /// The registry (scope).
    pub registry: Arc<Registry>,
    /// The data directory (delivery state, receipts, identity journal).
    pub data_dir: PathBuf,
}

/// The routes.
pub fn router(state: TraceState) -> Router {
    Router::new()
        .route("/v1/trace", get(get_trace))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    device: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

/// An RFC 3339 time with an offset, in UTC micros; the error names the parameter.
pub fn parse_time(v: &str, name: &str) -> Result<i64, String> {
    carewatch_transform::time::parse_str(v, name, carewatch_transform::ZonePolicy::Reject)
        .map(|t| t.utc_us)
        .map_err(|_| format!("{name} must be an RFC 3339 time with an offset"))
}

/// The window of a trace: `until` defaults to now, `since` to 24 hours before `until`.
pub fn window(since: Option<&str>, until: Option<&str>) -> Result<(i64, i64), String> {
    let until = match until {
        Some(u) => parse_time(u, "until")?,
        None => crate::now_us() + 1,
    };
    let since = match since {
        Some(s) => parse_time(s, "since")?,
        None => until - 24 * 3_600 * 1_000_000,
    };
    if since >= until {
        return Err("since must be before until".into());
    }
    Ok((since, until))
}

async fn get_trace(
    State(s): State<TraceState>,
    caller: carewatch_auth::Caller,
    q: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let p = caller.principal;
    if !matches!(p.role, Role::Admin | Role::CareManager) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this credential may not do that",
        );
    }
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "parameters are device, since and until",
        );
    };
    let Some(device) = q.device.filter(|d| !d.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "device is required");
    };
    let (since_us, until_us) = match window(q.since.as_deref(), q.until.as_deref()) {
        Ok(w) => w,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", &m),
    };
    let allowed = p.role == Role::Admin
        || match s.registry.attribute(&device, crate::now_us()) {
            Attribution::Patient(pt) => carewatch_auth::may_see_patient(&s.registry, &p, &pt),
            _ => false,
        };
    if !allowed {
        s.engine
            .audit()
            .record(&p, "trace", &format!("Device/{device}"), None, "not found");
        return error(StatusCode::NOT_FOUND, "not_found", "no such resource");
    }
    let t = TraceQuery {
        device: device.clone(),
        since_us,
        until_us,
    };
    match trace(&s.engine, &s.data_dir, &t).await {
        Ok(v) => {
            let n = v["messages"].as_array().map_or(0, Vec::len) as u64;
            s.engine
                .audit()
                .record(&p, "trace", &format!("Device/{device}"), Some(n), "ok");
            Json(v).into_response()
        }
        Err(m) => {
            tracing::error!(error = %m, "trace failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the trace could not be read; retry",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        let (s, u) = window(
            Some("2024-05-01T00:00:00Z"),
            Some("2024-05-02T00:00:00+00:00"),
        )
        .unwrap();
        assert_eq!(u - s, 86_400_000_000);
        assert!(
            window(Some("2024-05-01T00:00:00"), None)
                .unwrap_err()
                .contains("since")
        );
        assert!(window(Some("2024-05-02T00:00:00Z"), Some("2024-05-01T00:00:00Z")).is_err());
        let (s, u) = window(None, Some("2024-05-02T00:00:00Z")).unwrap();
        assert_eq!(u - s, 86_400_000_000);
    }
}
