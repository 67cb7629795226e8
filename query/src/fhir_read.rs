//! FHIR read-back: `GET /fhir/Observation/{id}` and
//! `GET /fhir/Observation?patient=&code=&date=ge…&date=lt…&_count=&_offset=`, answering with
//! Observations rebuilt from the stored rows (a blood pressure with both components) and a
//! `searchset` Bundle with paging links.
//!
//! Who sees what: analysts and admins everything; a care manager only the patients of their
//! care team; devices nothing.

use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::DataType;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::{DataFrame, col, lit};
use serde_json::{Value, json};

use carewatch_store::registry::{Principal, Role};
use carewatch_transform::catalogue;
use carewatch_transform::schema::readings_from_batch;
use carewatch_transform::{Reading, ZonePolicy};

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

fn outcome(status: StatusCode, code: &str, msg: &str) -> Response {
    let body = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": msg}]});
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/fhir+json"),
    );
    r
}

fn caller(
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

/// Restricts a frame to what the caller may see.
fn scope(s: &SqlState, p: &Principal, df: DataFrame) -> Result<DataFrame, Response> {
    match p.role {
        Role::Analyst | Role::Admin => Ok(df),
        Role::CareManager => {
            let patients: Vec<_> = s
                .registry
                .care_teams()
                .into_iter()
                .filter(|(_, t)| carewatch_auth::in_team(p, t))
                .map(|(p, _)| lit(p))
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
async fn collect_bounded(s: &SqlState, df: DataFrame) -> Option<Vec<arrow_array::RecordBatch>> {
    match tokio::time::timeout(s.engine.limits().timeout, df.collect()).await {
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

fn internal() -> Response {
    outcome(
        StatusCode::INTERNAL_SERVER_ERROR,
        "exception",
        "search failed",
    )
}

fn readings(batches: &[RecordBatch]) -> Vec<Reading> {
    let mut out = Vec::new();
    for b in batches {
        let Ok(rows) = readings_from_batch(b) else {
            continue;
        };
        for r in rows {
            let Some(vital) = catalogue::by_code(&r.code).filter(|v| v.code == r.code) else {
                continue;
            };
            out.push(Reading {
                device_id: r.device_id,
                patient_id: r.patient_id,
                vital,
                value: r.value,
                effective_us: r.effective_us,
                effective_end_us: r.effective_end_us,
                offset_min: r.tz_offset_min,
                extra: r.extra,
            });
        }
    }
    out
}

fn fhir_json(status: StatusCode, v: Value) -> Response {
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
    auth: Result<carewatch_auth::Caller, carewatch_auth::AuthError>,
    Path(id): Path<String>,
) -> Response {
    let p = match caller(auth) {
        Ok(p) => p,
        Err(r) => return r,
    };
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

fn params(raw: Option<String>) -> Vec<(String, String)> {
    raw.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /fhir/Observation?…`
pub async fn search(
    State(s): State<SqlState>,
    headers: HeaderMap,
    auth: Result<carewatch_auth::Caller, carewatch_auth::AuthError>,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = match caller(auth) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ps = params(raw);
    let ctx = s.engine.context();
    let Ok(mut df) = ctx.table("observations").await else {
        return internal();
    };
    let mut count: usize = 50;
    let mut offset: usize = 0;
    let mut echo: Vec<String> = Vec::new();
    for (k, v) in &ps {
        let filtered = match k.as_str() {
            "patient" | "subject" => {
                let id = v.rsplit('/').next().unwrap_or(v).to_owned();
                df.filter(col("patient_id").eq(lit(id)))
            }
            "code" => {
                let codes: Vec<_> = v
                    .split(',')
                    .map(|c| lit(c.rsplit('|').next().unwrap_or(c).to_owned()))
                    .collect();
                df.filter(
                    col("code")
                        .in_list(codes.clone(), false)
                        .or(col("panel_code").in_list(codes, false)),
                )
            }
            "device" => {
                df.filter(col("device_id").eq(lit(v.rsplit('/').next().unwrap_or(v).to_owned())))
            }
            "date" => {
                let (op, t) = match v.get(..2) {
                    Some(pre @ ("ge" | "gt" | "le" | "lt" | "eq")) => (pre, &v[2..]),
                    _ => ("eq", v.as_str()),
                };
                let Ok(at) = carewatch_transform::time::parse_str(t, "date", ZonePolicy::utc())
                else {
                    return outcome(
                        StatusCode::BAD_REQUEST,
                        "invalid",
                        "date must be a FHIR dateTime with an optional ge/gt/le/lt prefix",
                    );
                };
                let ts = lit(datafusion::common::ScalarValue::TimestampMicrosecond(
                    Some(at.utc_us),
                    Some("UTC".into()),
                ));
                let c = col("effective_time");
                df.filter(match op {
                    "ge" => c.gt_eq(ts),
                    "gt" => c.gt(ts),
                    "le" => c.lt_eq(ts),
                    "lt" => c.lt(ts),
                    _ => c.eq(ts),
                })
            }
            "_count" => {
                count = v.parse().unwrap_or(50).clamp(1, 1000);
                continue;
            }
            "_offset" => {
                offset = v.parse().unwrap_or(0);
                continue;
            }
            _ => {
                return outcome(
                    StatusCode::BAD_REQUEST,
                    "not-supported",
                    &format!("search parameter {k:?} is not supported"),
                );
            }
        };
        echo.push(format!("{k}={v}"));
        df = match filtered {
            Ok(d) => d,
            Err(_) => return internal(),
        };
    }
    let df = match scope(&s, &p, df) {
        Ok(df) => df,
        Err(r) => return r,
    };
    // Rows of one Observation are adjacent in this order; fetch enough rows for the page.
    let key = datafusion::functions::expr_fn::coalesce(vec![col("panel_code"), col("code")]);
    let df = df
        .sort(vec![
            col("effective_time").sort(true, false),
            col("device_id").sort(true, false),
            key.sort(true, false),
            col("code").sort(true, false),
        ])
        .and_then(|d| d.limit(0, Some((offset + count + 1) * 2)));
    let Ok(df) = df else { return internal() };
    let Some(batches) = collect_bounded(&s, df).await else {
        return internal();
    };
    let rows = readings(&batches);
    let groups = carewatch_fhir::group(&rows);
    let more = groups.len() > offset + count;
    s.engine.audit().record(
        &p,
        "fhir-read",
        &format!(
            "Observation?{}",
            ps.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        ),
        Some(groups.len().saturating_sub(offset).min(count) as u64),
        "ok",
    );
    let page: Vec<Reading> = groups
        .iter()
        .skip(offset)
        .take(count)
        .flat_map(|g| g.iter().map(|r| (*r).clone()))
        .collect();
    let base = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("http://{h}/fhir"));
    let Ok(mut bundle) = carewatch_fhir::bundle_json_at(&page, "searchset", base.as_deref()) else {
        return internal();
    };
    let q = echo.join("&");
    let url = |off: usize| {
        format!(
            "{}/Observation?{q}{}_count={count}&_offset={off}",
            base.clone().unwrap_or_default(),
            if q.is_empty() { "" } else { "&" }
        )
    };
    let mut links = vec![json!({"relation": "self", "url": url(offset)})];
    if more {
        links.push(json!({"relation": "next", "url": url(offset + count)}));
    }
    if offset > 0 {
        links.push(json!({"relation": "previous", "url": url(offset.saturating_sub(count))}));
    }
    bundle["link"] = Value::Array(links);
    fhir_json(StatusCode::OK, bundle)
}
