//! The registry API (admin only): devices, care teams, credentials with a lifecycle, stats.
//!
//! `GET /v1/tokens` lists credentials (id, role, subject, created, expires, last used, revoked)
//! and never a secret; `DELETE /v1/tokens/{id}` revokes one, which every wire refuses from then
//! on and every open session of it (SSE, Postgres, MQTT) closes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use carewatch_store::registry::{CredentialInfo, Registry, Role};

use crate::http::{ApiError, Caller, HttpState};

pub(crate) fn iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub(crate) fn parse_time(t: &str, field: &str) -> Result<i64, ApiError> {
    carewatch_transform::time::parse_str(t, field, carewatch_transform::ZonePolicy::Reject)
        .map(|t| t.utc_us)
        .map_err(|r| ApiError::BadRequest(r.message))
}

/// Runs a registry change (a file rewrite with fsyncs) on the blocking pool, never on an async
/// worker.
pub(crate) async fn blocking<T: Send + 'static>(
    s: &HttpState,
    f: impl FnOnce(&Registry) -> carewatch_store::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let r = s.pipeline.registry.clone();
    tokio::task::spawn_blocking(move || f(&r))
        .await
        .map_err(|_| ApiError::Unavailable)?
        .map_err(ApiError::from)
}

fn body<T: serde::de::DeserializeOwned>(b: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(b).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))
}

pub(crate) async fn revoke_device(
    State(s): State<HttpState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    match blocking(&s, move |r| r.revoke_device(&id)).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::NotFound),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CareTeam {
    team: String,
}

pub(crate) async fn care_team(
    State(s): State<HttpState>,
    caller: Caller,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    let t: CareTeam = body(&b)?;
    blocking(&s, move |r| r.set_care_team(&id, &t.team)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    role: String,
    subject: Option<String>,
    /// Lifetime in seconds from now.
    expires_in_secs: Option<u64>,
    /// Or an absolute expiry (RFC 3339 with offset).
    expires: Option<String>,
}

/// The JSON shape of a credential in the API (never the secret).
pub fn token_json(t: &CredentialInfo) -> Value {
    json!({
        "id": t.id,
        "role": t.role.as_str(),
        "subject": t.subject,
        "created": iso(t.created_us),
        "expires": t.expires_us.map(iso),
        "last_used": t.last_used_us.map(iso),
        "revoked": t.revoked_us.map(iso),
    })
}

fn expiry(t: &NewToken) -> Result<Option<i64>, ApiError> {
    match (t.expires_in_secs, t.expires.as_deref()) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "give expires_in_secs or expires, not both".into(),
        )),
        (Some(secs), None) => {
            let secs = i64::try_from(secs)
                .ok()
                .filter(|s| *s > 0 && *s < 100 * 366 * 86_400)
                .ok_or_else(|| ApiError::BadRequest("expires_in_secs out of range".into()))?;
            Ok(Some(
                chrono::Utc::now().timestamp_micros() + secs * 1_000_000,
            ))
        }
        (None, Some(t)) => parse_time(t, "expires").map(Some),
        (None, None) => Ok(None),
    }
}

pub(crate) async fn create_token(
    State(s): State<HttpState>,
    caller: Caller,
    b: Bytes,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let t: NewToken = body(&b)?;
    let role = Role::parse(&t.role)
        .ok_or_else(|| ApiError::BadRequest(format!("unknown role {:?}", t.role)))?;
    if role == Role::Device {
        return Err(ApiError::BadRequest(
            "device credentials come from POST /v1/devices".into(),
        ));
    }
    let expires = expiry(&t)?;
    let subject = t.subject;
    let (token, info) =
        blocking(&s, move |r| r.create_token_expiring(role, subject, expires)).await?;
    let mut out = token_json(&info);
    out["token"] = Value::String(token);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

pub(crate) async fn list_tokens(
    State(s): State<HttpState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let all: Vec<Value> = s
        .pipeline
        .registry
        .tokens()
        .iter()
        .map(token_json)
        .collect();
    Ok(Json(json!({"tokens": all})).into_response())
}

pub(crate) async fn revoke_token(
    State(s): State<HttpState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&[Role::Admin])?;
    match blocking(&s, move |r| r.revoke_token(&id)).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::NotFound),
        Err(e) => Err(e),
    }
}

pub(crate) async fn stats(
    State(s): State<HttpState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let st = s.pipeline.store.stats();
    Ok(Json(json!({
        "rows_appended": st.rows_appended,
        "dead_letters_appended": st.dead_appended,
        "buffered_rows": st.buffered_rows,
        "files": st.files,
        "commits": st.commits,
        "persists": st.persists,
        "compactions": st.compactions,
        "wal_replayed_frames": st.replayed_frames,
    }))
    .into_response())
}
