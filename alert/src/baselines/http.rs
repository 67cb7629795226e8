//! `GET /v1/patients/{id}/baselines[?day=YYYY-MM-DD]`: a patient's baselines on a day (today by
//! default) — learned value, rest minutes, override and the value rules use.
//! `PUT /v1/patients/{id}/baselines` `{"heart_rate": 62, "spo2": null}`: sets (a number) or
//! clears (`null`) the clinician's overrides. Readers who may see the patient may read; admins
//! and the patient's care managers may override.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use carewatch_auth::{AuthError, Caller};
use carewatch_store::registry::{Registry, Role};

use super::{Baselines, day_of, vital};
use crate::http::{error, reader};

/// State for the baseline routes.
#[derive(Debug, Clone)]
pub struct BaselineState {
    /// The baselines (the same the rules read).
    pub baselines: Baselines,
    /// For care-team scope.
    pub registry: Arc<Registry>,
}

/// The router.
pub fn router(state: BaselineState) -> Router {
    Router::new()
        .route("/v1/patients/{id}/baselines", get(show).put(set))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct DayQuery {
    day: Option<String>,
}

async fn show(
    State(s): State<BaselineState>,
    Path(patient): Path<String>,
    Query(q): Query<DayQuery>,
    auth: Result<Caller, AuthError>,
) -> Response {
    let who = match reader(auth) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !carewatch_auth::may_see_patient(&s.registry, &who, &patient) {
        return error(StatusCode::NOT_FOUND, "not_found", "no such patient");
    }
    let day = match q.day.as_deref() {
        None => day_of(chrono::Utc::now().timestamp_micros()),
        Some(d) => match chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d") {
            Ok(d) => d
                .and_hms_opt(0, 0, 0)
                .map_or(0, |t| t.and_utc().timestamp_micros()),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_day",
                    "day: use a date like 2016-04-12",
                );
            }
        },
    };
    body(&s, &patient, day).await
}

async fn body(s: &BaselineState, patient: &str, day: i64) -> Response {
    match s.baselines.for_patient(patient, day).await {
        Ok(rows) => {
            let cfg = s.baselines.config();
            axum::Json(json!({
                "patient_id": patient,
                "day": crate::iso(day)[..10].to_owned(),
                "window_days": cfg.window_days,
                "max_steps": cfg.max_steps,
                "baselines": rows.iter().map(|r| json!({
                    "vital": r.vital,
                    "code": r.code,
                    "baseline": r.baseline,
                    "learned": r.learned,
                    "override": r.override_value,
                    "rest_minutes": r.rest_minutes,
                    "source": r.source,
                })).collect::<Vec<_>>(),
            }))
            .into_response()
        }
        Err(e) => {
            tracing::debug!(error = %e, "baselines failed");
            tracing::warn!("computing baselines failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "baselines could not be computed; try again",
            )
        }
    }
}

async fn set(
    State(s): State<BaselineState>,
    Path(patient): Path<String>,
    auth: Result<Caller, AuthError>,
    body_bytes: axum::body::Bytes,
) -> Response {
    let who = match auth.and_then(|c| {
        c.require(
            &[Role::Admin, Role::CareManager],
            "only admins and care managers set baselines",
        )
        .cloned()
    }) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if !carewatch_auth::may_see_patient(&s.registry, &who, &patient) {
        return error(StatusCode::NOT_FOUND, "not_found", "no such patient");
    }
    let changes = match parse_changes(&body_bytes) {
        Ok(c) => c,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_baseline", &m),
    };
    for (code, v) in changes {
        if let Err(e) = s.baselines.set_override(&patient, code, v) {
            tracing::debug!(error = %e, "baseline override failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the override could not be saved",
            );
        }
    }
    body(&s, &patient, day_of(chrono::Utc::now().timestamp_micros())).await
}

/// `{"heart_rate": 62, "spo2": null}` → (code, value) pairs, each value within the vital's
/// plausible range.
fn parse_changes(bytes: &[u8]) -> Result<Vec<(&'static str, Option<f64>)>, String> {
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes)
        .map_err(|_| "the body must be a JSON object like {\"heart_rate\": 62}".to_owned())?;
    if v.is_empty() {
        return Err("name at least one vital: heart_rate, spo2, body_temperature".into());
    }
    let mut out = Vec::new();
    for (k, val) in v {
        let Some(vt) = vital(&k) else {
            return Err(format!(
                "{k:?} has no baseline; use heart_rate, spo2 or body_temperature"
            ));
        };
        let x = match val {
            serde_json::Value::Null => None,
            serde_json::Value::Number(n) => Some(n.as_f64().unwrap_or(f64::NAN)),
            _ => return Err(format!("{k}: a number, or null to clear the override")),
        };
        if let Some(x) = x {
            let range = carewatch_transform::catalogue::by_code(vt.code)
                .map_or((f64::MIN, f64::MAX), |c| c.range);
            if !x.is_finite() || x < range.0 || x > range.1 {
                return Err(format!(
                    "{k}: {x} is outside the plausible range {}..{}",
                    range.0, range.1
                ));
            }
        }
        out.push((vt.code, x));
    }
    Ok(out)
}
