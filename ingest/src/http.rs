//! HTTP write API and registry API (axum).
//!
//! Errors map to statuses in one place ([`ApiError`]); responses never carry internals.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{Value, json};

use carewatch_store::registry::{Principal, Role};
use carewatch_transform::{Format, Reason, Rejection, Source};

use crate::pipeline::{Ingested, Origin, Pipeline};
use crate::{admin, fleet};

/// Everything the HTTP edge needs.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The ingest pipeline (store, registry, templates).
    pub pipeline: Arc<Pipeline>,
}

/// API errors, each with one status.
#[derive(Debug)]
pub enum ApiError {
    /// No or bad credential (or too many failed logins).
    Auth(carewatch_auth::AuthError),
    /// No or bad credential.
    Unauthorized,
    /// Credential lacks the role.
    Forbidden,
    /// Bad request body.
    BadRequest(String),
    /// Not found.
    NotFound,
    /// One message is larger than the store takes in one piece: split it.
    TooLarge,
    /// Store busy: retry.
    Busy,
    /// Storage failure: nothing was acknowledged.
    Unavailable,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, msg) = match self {
            ApiError::Auth(e) => return e.into_response(),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid bearer token".to_owned(),
            ),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "this credential may not do that".to_owned(),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the message is larger than can be stored at once; send it in smaller batches"
                    .to_owned(),
            ),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such resource".to_owned(),
            ),
            ApiError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "storage is catching up; retry shortly".to_owned(),
            ),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "storage failed; nothing was stored, retry".to_owned(),
            ),
        };
        let mut r = (status, Json(json!({"error": code, "message": msg}))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<carewatch_store::Error> for ApiError {
    fn from(e: carewatch_store::Error) -> Self {
        match e {
            carewatch_store::Error::Busy => ApiError::Busy,
            carewatch_store::Error::Config(m) => ApiError::BadRequest(m),
            carewatch_store::Error::TooLarge(_) => ApiError::TooLarge,
            other => {
                tracing::error!(error = %other, "storage error on ingest");
                ApiError::Unavailable
            }
        }
    }
}

/// The authenticated caller (the shared extractor of `carewatch-auth`, with this API's errors).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        carewatch_auth::Caller::from_request_parts(parts, state)
            .await
            .map(|c| Caller(c.principal))
            .map_err(ApiError::Auth)
    }
}

impl Caller {
    pub(crate) fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.0.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// The origin for a write: a device writes as itself; an admin may write for any device.
    fn origin(&self, format: Option<Format>) -> Result<Origin, ApiError> {
        match self.0.role {
            Role::Device => Ok(Origin {
                source: Some(Source::Http),
                device: self.0.subject.clone(),
                format,
            }),
            Role::Admin => Ok(Origin {
                source: Some(Source::Http),
                device: None,
                format,
            }),
            _ => Err(ApiError::Forbidden),
        }
    }
}

/// The router for writes, registry and health. `max_bytes` bounds request bodies.
pub fn router(state: HttpState) -> Router {
    let max = state.pipeline.max_bytes;
    Router::new()
        .route(
            "/healthz",
            get(|State(s): State<HttpState>| async move {
                match s.pipeline.store.healthy() {
                    Ok(()) => (StatusCode::OK, "ok"),
                    Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store writer stopped"),
                }
            }),
        )
        .route("/v1/readings", post(readings))
        .route("/fhir/Observation", post(fhir_observation))
        .route("/fhir", post(fhir_bundle))
        .route(
            "/v1/devices",
            post(fleet::post_devices).get(fleet::get_devices),
        )
        .route("/v1/devices/{id}", delete(admin::revoke_device))
        .route("/v1/patients/{id}/care-team", put(admin::care_team))
        .route(
            "/v1/tokens",
            post(admin::create_token).get(admin::list_tokens),
        )
        .route("/v1/tokens/{id}", delete(admin::revoke_token))
        .route("/v1/stats", get(admin::stats))
        .layer(DefaultBodyLimit::max(max))
        .with_state(state)
}

fn rejections_json(rs: &[Rejection]) -> Vec<Value> {
    rs.iter()
        .map(|r| json!({"index": r.index, "reason": r.reason.code(), "message": r.message}))
        .collect()
}

async fn readings(
    State(s): State<HttpState>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let origin = caller.origin(None)?;
    let Ingested {
        accepted,
        rejected,
        items,
    } = s.pipeline.ingest(&body, &origin).await?;
    let status = if accepted > 0 || items == 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((
        status,
        Json(json!({"accepted": accepted, "rejected": rejections_json(&rejected)})),
    )
        .into_response())
}

fn outcome(issues: &[Rejection]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(|r| json!({
            "severity": "error",
            "code": fhir_issue_code(r.reason),
            "details": {"coding": [{"system": "urn:carewatch:reason", "code": r.reason.code()}]},
            "diagnostics": r.message,
        })).collect::<Vec<_>>()
    })
}

fn fhir_issue_code(r: Reason) -> &'static str {
    match r {
        Reason::InvalidJson | Reason::InvalidUtf8 | Reason::TooDeep => "structure",
        Reason::TooLarge => "too-costly",
        Reason::MissingField => "required",
        Reason::WrongType
        | Reason::InvalidFhir
        | Reason::UnparseableTime
        | Reason::ZonelessTime => "value",
        Reason::UnknownVital | Reason::UnitNotConvertible => "code-invalid",
        Reason::OutOfRange => "business-rule",
        Reason::UnsupportedResource => "not-supported",
        Reason::UnknownDevice
        | Reason::RevokedDevice
        | Reason::UnassignedDevice
        | Reason::Unauthorized => "security",
        _ => "invalid",
    }
}

fn fhir_json(status: StatusCode, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    r
}

async fn fhir_observation(
    State(s): State<HttpState>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let origin = caller.origin(Some(Format::Fhir))?;
    let kind = serde_json::from_slice::<Value>(&body).ok().and_then(|v| {
        v.get("resourceType")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    if let Some(k) = kind.filter(|k| k != "Observation") {
        let r = Rejection::new(
            Reason::UnsupportedResource,
            format!("expected an Observation, got {k}"),
        );
        s.pipeline.refuse(&body, &origin, r.clone()).await?;
        return Ok(fhir_json(StatusCode::BAD_REQUEST, outcome(&[r])));
    }
    let res = s.pipeline.ingest(&body, &origin).await?;
    if res.rejected.is_empty() && res.accepted > 0 {
        return Ok(fhir_json(
            StatusCode::CREATED,
            json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational",
                   "diagnostics": format!("stored {} row(s)", res.accepted)}]}),
        ));
    }
    let status = if res.rejected.iter().any(|r| {
        matches!(
            r.reason,
            Reason::InvalidJson | Reason::InvalidUtf8 | Reason::TooDeep
        )
    }) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok(fhir_json(status, outcome(&res.rejected)))
}

async fn fhir_bundle(
    State(s): State<HttpState>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let origin = caller.origin(Some(Format::Fhir))?;
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let is_bundle = parsed
        .as_ref()
        .and_then(|v| v.get("resourceType"))
        .and_then(Value::as_str)
        == Some("Bundle");
    if !is_bundle {
        let r = Rejection::new(
            Reason::UnsupportedResource,
            "POST /fhir takes a Bundle of type batch or transaction",
        );
        s.pipeline.refuse(&body, &origin, r.clone()).await?;
        return Ok(fhir_json(StatusCode::BAD_REQUEST, outcome(&[r])));
    }
    let entries = parsed
        .as_ref()
        .and_then(|v| v.get("entry"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let res = s.pipeline.ingest(&body, &origin).await?;
    let mut out = Vec::with_capacity(entries);
    for i in 0..entries {
        let errs: Vec<Rejection> = res
            .rejected
            .iter()
            .filter(|r| r.index == Some(i))
            .cloned()
            .collect();
        out.push(if errs.is_empty() {
            json!({"response": {"status": "201 Created"}})
        } else {
            json!({"response": {"status": "422 Unprocessable Entity", "outcome": outcome(&errs)}})
        });
    }
    // A Bundle-level failure (not a batch, no entries) has no entry index.
    let whole: Vec<Rejection> = res
        .rejected
        .iter()
        .filter(|r| r.index.is_none())
        .cloned()
        .collect();
    if !whole.is_empty() {
        return Ok(fhir_json(StatusCode::BAD_REQUEST, outcome(&whole)));
    }
    Ok(fhir_json(
        StatusCode::OK,
        json!({"resourceType": "Bundle", "type": "batch-response", "entry": out}),
    ))
}
