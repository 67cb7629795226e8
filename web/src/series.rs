//! `GET /v1/patients/{id}/vitals?code=&from=&to=&bucket=`: a patient's vitals as bucketed
//! min/max/avg series (every vital the patient has unless `code` narrows it), with the alerts
//! whose episodes overlap the range.

use std::collections::BTreeMap;

use arrow_array::{Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, TimeUnit};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use carewatch_alert::http::error;
use carewatch_auth::{AuthError, Caller};
use carewatch_transform::catalogue;

use crate::{WebState, audit, caller, iso, may_see};

#[derive(Debug, Deserialize)]
pub(crate) struct VitalsQuery {
    code: Option<String>,
    from: Option<String>,
    to: Option<String>,
    bucket: Option<String>,
}

fn parse_time(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_micros())
}

fn parse_bucket(s: &str) -> Option<i64> {
    let s = s.trim();
    let (n, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        (i, 'd') => (&s[..i], 86_400),
        _ => (s, 1),
    };
    n.parse::<i64>()
        .ok()
        .map(|n| n * mult)
        .filter(|b| (1..=86_400).contains(b))
}

pub(crate) async fn vitals(
    State(s): State<WebState>,
    auth: Result<Caller, AuthError>,
    Path(id): Path<String>,
    Query(q): Query<VitalsQuery>,
) -> Response {
    let who = match caller(auth) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !may_see(&s, &who, &id) {
        return error(StatusCode::NOT_FOUND, "not_found", "no such patient");
    }
    let now = chrono::Utc::now().timestamp_micros();
    let to = match q.to.as_deref().map(parse_time) {
        None => now,
        Some(Some(t)) => t,
        Some(None) => return error(StatusCode::BAD_REQUEST, "invalid", "to must be RFC 3339"),
    };
    let from = match q.from.as_deref().map(parse_time) {
        None => to - 6 * 3_600_000_000,
        Some(Some(t)) => t,
        Some(None) => return error(StatusCode::BAD_REQUEST, "invalid", "from must be RFC 3339"),
    };
    if to <= from || to - from > 31 * 86_400_000_000 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "from must be before to, at most 31 days apart",
        );
    }
    let bucket = match q.bucket.as_deref().map(parse_bucket) {
        None => ((to - from) / 1_000_000 / 360).clamp(1, 86_400),
        Some(Some(b)) => b,
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "bucket is a duration like 30s, 1m, 15m, 1h",
            );
        }
    };
    if (to - from) / 1_000_000 / bucket > 20_000 {
        return error(StatusCode::BAD_REQUEST, "invalid", "too many buckets");
    }
    let mut codes: Vec<&'static str> = Vec::new();
    for c in q
        .code
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|c| !c.is_empty())
    {
        match catalogue::by_code(c).or_else(|| catalogue::by_key(c)) {
            Some(v) => codes.push(v.code),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "code must be LOINC codes or vital names from the catalogue",
                );
            }
        }
    }
    // Every interpolated value is checked above: the patient id is quoted, codes come from the
    // catalogue, times and bucket are integers.
    let code_filter = if codes.is_empty() {
        String::new()
    } else {
        format!(
            " AND code IN ({})",
            codes
                .iter()
                .map(|c| format!("'{c}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let sql = format!(
        "SELECT code, date_bin(INTERVAL '{bucket} seconds', effective_time) AS t, min(value) AS min, \
         max(value) AS max, avg(value) AS avg, count(*) AS n FROM observations \
         WHERE patient_id = '{}' AND effective_time >= to_timestamp_micros({from}) \
         AND effective_time < to_timestamp_micros({to}){code_filter} GROUP BY 1, 2 ORDER BY 1, 2",
        id.replace('\'', "''")
    );
    let batches = match s.query.collect(&sql).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "vitals query failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the vitals query failed",
            );
        }
    };
    let mut series: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for b in batches {
        let ts = arrow_cast::cast(
            b.column(1),
            &DataType::Timestamp(TimeUnit::Microsecond, None),
        );
        let (Ok(ts), Some(code), Some(mn), Some(mx), Some(av), Some(n)) = (
            ts,
            b.column(0).as_any().downcast_ref::<StringArray>(),
            b.column(2).as_any().downcast_ref::<Float64Array>(),
            b.column(3).as_any().downcast_ref::<Float64Array>(),
            b.column(4).as_any().downcast_ref::<Float64Array>(),
            b.column(5).as_any().downcast_ref::<Int64Array>(),
        ) else {
            continue;
        };
        let Some(ts) = ts.as_any().downcast_ref::<TimestampMicrosecondArray>() else {
            continue;
        };
        for i in 0..b.num_rows() {
            if ts.is_null(i) {
                continue;
            }
            series
                .entry(code.value(i).to_owned())
                .or_default()
                .push(json!({
                    "t": iso(ts.value(i)),
                    "min": mn.value(i),
                    "max": mx.value(i),
                    "avg": (av.value(i) * 100.0).round() / 100.0,
                    "n": n.value(i),
                }));
        }
    }
    let series: Vec<Value> = series
        .into_iter()
        .map(|(code, points)| {
            let v = catalogue::by_code(&code);
            json!({"code": code, "key": v.map(|v| v.key), "unit": v.map(|v| v.unit), "points": points})
        })
        .collect();
    let alerts: Vec<Value> = s
        .alerts
        .current(&who)
        .iter()
        .filter(|a| a.patient_id == id && a.episode_end_us >= from && a.episode_start_us < to)
        .map(carewatch_alert::http::alert_json)
        .collect();
    let points = series
        .iter()
        .map(|v| v["points"].as_array().map_or(0, Vec::len))
        .sum();
    audit(&s, &who, &format!("GET /v1/patients/{id}/vitals"), points);
    axum::Json(json!({
        "patient_id": id,
        "from": iso(from),
        "to": iso(to),
        "bucket_seconds": bucket,
        "series": series,
        "alerts": alerts,
    }))
    .into_response()
}
