//! FHIR read-back: `GET /fhir/Observation/{id}`, answering with an Observation rebuilt from
//! the stored rows (a blood pressure with both components); `GET /fhir/metadata`, the
//! CapabilityStatement (public, like the SMART discovery document: it names no data); and the
//! helpers the other FHIR reads share (the one authorization path, [`scope`], the bounded
//! query, OperationOutcomes). Searches and `$lastn` are in [`crate::fhir_search`], Patient
//! and Device reads in [`crate::fhir_registry`].
//!
//! Who sees what: analysts and admins everything; a care manager only the patients of their
//! care team; devices nothing.

use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::DataType;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::{DataFrame, col, lit};
use serde_json::{Value, json};

use carewatch_store::registry::{Principal, Role};
use carewatch_transform::Reading;
use carewatch_transform::catalogue;
use carewatch_transform::schema::readings_from_batch;

use crate::http::SqlState;

/// Registers `observation_id(device_id, code, effective_time)` with a session: the FHIR id of
/// a row (pass `coalesce(panel_code, code)` as the code so both BP rows give one id).
pub fn register_udfs(ctx: &datafusion::prelude::SessionContext) {
    let f = create_udf(
        "observation_id",
        vec![
            DataType::Utf8,
            DataType::Utf8,
            DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("UTC".into())),
        ],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let dev = arrays[0].as_any().downcast_ref::<StringArray>();
            let code = arrays[1].as_any().downcast_ref::<StringArray>();
            let t = arrays[2]
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>();
            let (Some(dev), Some(code), Some(t)) = (dev, code, t) else {
                return Err(datafusion::error::DataFusionError::Plan(
                    "observation_id(text, text, timestamp)".into(),
                ));
            };
            let out: StringArray = (0..dev.len())
                .map(|i| {
                    (!dev.is_null(i) && !code.is_null(i) && !t.is_null(i)).then(|| {
                        carewatch_transform::observation_id(dev.value(i), code.value(i), t.value(i))
                    })
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    );
    ctx.register_udf(f);
}

pub(crate) fn outcome(status: StatusCode, code: &str, msg: &str) -> Response {
    let body = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": msg}]});
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/fhir+json"),
    );
    r
}

pub(crate) fn caller(
    auth: Result<carewatch_auth::Caller, carewatch_auth::AuthError>,
) -> Result<Principal, Response> {
    let c = auth.map_err(|e| {
        outcome(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            "login",
            e.message(),
        )
    })?;
    c.reader()
        .cloned()
        .map_err(|e| outcome(StatusCode::FORBIDDEN, "forbidden", e.message()))
}

/// A caller who may read FHIR — [`caller`] as an extractor, the one authorization path every
/// FHIR handler takes; a refusal answers as an OperationOutcome.
#[derive(Debug)]
pub struct Reader(
    /// The caller.
    pub Principal,
);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Reader {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        let auth = carewatch_auth::Caller::from_request_parts(parts, state).await;
        caller(auth).map(Reader)
    }
}

/// Restricts a frame to what the caller may see.
pub(crate) fn scope(s: &SqlState, p: &Principal, df: DataFrame) -> Result<DataFrame, Response> {
    match p.role {
        Role::Analyst | Role::Admin => Ok(df),
        Role::CareManager => {
            // Their teams' patients and their live break-glass grants (auth::access).
            let patients: Vec<_> = carewatch_auth::access::patients_in_scope(&s.registry, p)
                .unwrap_or_default()
                .into_iter()
                .map(lit)
                .collect();
            if patients.is_empty() {
                return df.filter(lit(false)).map_err(|_| internal());
            }
            df.filter(col("patient_id").in_list(patients, false))
                .map_err(|_| internal())
        }
        Role::Device => Err(outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            "devices cannot read",
        )),
    }
}

/// Runs a FHIR read under the same time limit as SQL: past it the plan is dropped (its
/// operators stop) and the caller gets an error.
pub(crate) async fn collect_bounded(
    s: &SqlState,
    df: DataFrame,
) -> Option<Vec<arrow_array::RecordBatch>> {
    collect_within(&s.engine, df).await
}

/// [`collect_bounded`] for callers without a request (the FHIR destination).
pub(crate) async fn collect_within(
    engine: &crate::QueryEngine,
    df: DataFrame,
) -> Option<Vec<arrow_array::RecordBatch>> {
    match tokio::time::timeout(engine.limits().timeout, df.collect()).await {
        Ok(Ok(b)) => Some(b),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "FHIR read failed");
            None
        }
        Err(_) => {
            tracing::info!("FHIR read stopped at the query time limit");
            None
        }
    }
}

pub(crate) fn internal() -> Response {
    outcome(
        StatusCode::INTERNAL_SERVER_ERROR,
        "exception",
        "search failed",
    )
}

pub(crate) fn readings(batches: &[RecordBatch]) -> Vec<Reading> {
    received_readings(batches)
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

/// The rows as readings, each with when it was received (UTC µs).
pub(crate) fn received_readings(batches: &[RecordBatch]) -> Vec<(Reading, i64)> {
    let mut out = Vec::new();
    for b in batches {
        let Ok(rows) = readings_from_batch(b) else {
            continue;
        };
        for r in rows {
            let Some(vital) = catalogue::by_code(&r.code).filter(|v| v.code == r.code) else {
                continue;
            };
            let reading = Reading {
                device_id: r.device_id,
                patient_id: r.patient_id,
                vital,
                value: r.value,
                effective_us: r.effective_us,
                effective_end_us: r.effective_end_us,
                offset_min: r.tz_offset_min,
                extra: r.extra,
            };
            out.push((reading, r.received_us));
        }
    }
    out
}

pub(crate) fn fhir_json(status: StatusCode, v: Value) -> Response {
    let mut r = (status, axum::Json(v)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/fhir+json"),
    );
    r
}

/// `GET /fhir/Observation/{id}`
pub async fn read(
    State(s): State<SqlState>,
    Reader(p): Reader,
    Path(id): Path<String>,
) -> Response {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return outcome(StatusCode::NOT_FOUND, "not-found", "no such Observation");
    }
    let ctx = s.engine.context();
    let Ok(df) = ctx.table("observations").await else {
        return internal();
    };
    let key = datafusion::functions::expr_fn::coalesce(vec![col("panel_code"), col("code")]);
    let Some(udf) = ctx
        .state()
        .scalar_functions()
        .get("observation_id")
        .cloned()
    else {
        return internal();
    };
    let df = df.filter(
        udf.call(vec![col("device_id"), key, col("effective_time")])
            .eq(lit(id.clone())),
    );
    let df = match df.map_err(|_| internal()).and_then(|df| scope(&s, &p, df)) {
        Ok(df) => df,
        Err(r) => return r,
    };
    let Some(batches) = collect_bounded(&s, df).await else {
        return internal();
    };
    let rows = readings(&batches);
    let groups = carewatch_fhir::group(&rows);
    s.engine.audit().record(
        &p,
        "fhir-read",
        &format!("Observation/{id}"),
        Some(groups.len() as u64),
        "ok",
    );
    match groups.first() {
        None => outcome(StatusCode::NOT_FOUND, "not-found", "no such Observation"),
        Some(g) => match carewatch_fhir::observation_json(g, None) {
            Ok(v) => fhir_json(StatusCode::OK, v),
            Err(_) => internal(),
        },
    }
}

/// When this process started, the CapabilityStatement's `date` (what it describes cannot
/// change while it runs).
static STARTED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
});

/// `GET /fhir/metadata`: the CapabilityStatement (no credential needed).
pub async fn metadata(
    headers: HeaderMap,
    auth: Option<axum::Extension<carewatch_auth::Authenticator>>,
) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    let smart = auth.is_some_and(|a| a.oidc().is_some());
    fhir_json(
        StatusCode::OK,
        carewatch_fhir::capability::capability_statement(
            &format!("http://{host}/fhir"),
            env!("CARGO_PKG_VERSION"),
            &STARTED,
            smart,
        ),
    )
}
