//! Alerts as FHIR `Communication`s: `GET /fhir/Communication/{alert id}` and
//! `GET /fhir/Communication?patient=&status=&sent=&_lastUpdated=&_count=&_offset=`, built from
//! the `alerts` table (the alert history, one row per transition): each alert as its latest
//! transition left it ([`carewatch_fhir::communication`]), with the Observations that carried
//! its worst value in the episode as `reasonReference`.
//!
//! Who sees what: [`crate::fhir_read::scope`], the path every FHIR read takes (a care manager
//! sees the alerts of the patients of their care team now).

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMicrosecondType, UInt64Type};
use arrow_array::{Array, RecordBatch};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use datafusion::logical_expr::ExprFunctionExt;
use datafusion::prelude::{DataFrame, Expr, col, lit};
use serde_json::{Value, json};

use carewatch_fhir::communication::{Alert, alert_statuses, communication};
use carewatch_fhir::search::{DateCmp, encode, pairs};
use carewatch_store::registry::Principal;

use crate::fhir_read::{
    Reader, collect_bounded, collect_within, fhir_json, internal, outcome, scope,
};
use crate::fhir_search::base_url;
use crate::http::SqlState;

/// A parsed Communication search.
#[derive(Debug, Default)]
struct Query {
    filters: Vec<Expr>,
    echo: Vec<(String, String)>,
    count: usize,
    offset: usize,
}

fn ts(at: i64) -> Expr {
    lit(datafusion::common::ScalarValue::TimestampMicrosecond(
        Some(at),
        Some("UTC".into()),
    ))
}

fn date(c: &str, v: &str) -> Result<Expr, String> {
    let (cmp, at) = carewatch_fhir::search::prefixed_date(v).ok_or_else(|| {
        "dates must be FHIR dateTimes with an optional ge/gt/le/lt prefix".to_owned()
    })?;
    let c = col(c);
    Ok(match cmp {
        DateCmp::Ge => c.gt_eq(ts(at)),
        DateCmp::Gt => c.gt(ts(at)),
        DateCmp::Le => c.lt_eq(ts(at)),
        DateCmp::Lt => c.lt(ts(at)),
        DateCmp::Eq => c.eq(ts(at)),
    })
}

fn parse(raw: Option<&str>) -> Result<Query, (&'static str, String)> {
    let mut q = Query {
        count: carewatch_fhir::search::DEFAULT_COUNT,
        ..Query::default()
    };
    for (k, v) in pairs(raw.unwrap_or_default()) {
        let f = match k.as_str() {
            "patient" | "subject" => {
                col("patient_id").eq(lit(v.rsplit('/').next().unwrap_or(&v).to_owned()))
            }
            "status" => {
                let s: Vec<Expr> = v
                    .split(',')
                    .flat_map(|c| alert_statuses(c).iter().map(|s| lit(*s)))
                    .collect();
                if s.is_empty() {
                    lit(false)
                } else {
                    col("status").in_list(s, false)
                }
            }
            "sent" | "date" => date("episode_start", &v).map_err(|e| ("invalid", e))?,
            "_lastUpdated" => date("at", &v).map_err(|e| ("invalid", e))?,
            "_count" => {
                q.count = v.parse().unwrap_or(q.count).clamp(1, 1000);
                continue;
            }
            "_offset" => {
                q.offset = v.parse().unwrap_or(0);
                continue;
            }
            _ => {
                return Err((
                    "not-supported",
                    format!("search parameter {k:?} is not supported"),
                ));
            }
        };
        q.filters.push(f);
        q.echo.push((k, v));
    }
    Ok(q)
}

/// Each alert's latest transition, as the caller may see it.
async fn latest(s: &SqlState, p: &Principal) -> Result<DataFrame, Response> {
    use datafusion::functions_window::expr_fn::row_number;
    let df = s
        .engine
        .context()
        .table("alerts")
        .await
        .map_err(|_| internal())?;
    let df = scope(s, p, df)?;
    let rn = row_number()
        .partition_by(vec![col("alert_id")])
        .order_by(vec![col("seq").sort(false, false)])
        .build()
        .map_err(|_| internal())?;
    df.window(vec![rn.alias("latest_rank")])
        .and_then(|d| d.filter(col("latest_rank").eq(lit(1u64))))
        .map_err(|_| internal())
}

fn strings<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a arrow_array::StringArray> {
    b.column_by_name(name)?.as_string_opt::<i32>()
}

fn alerts(batches: &[RecordBatch]) -> Vec<Found> {
    let mut out = Vec::new();
    for b in batches {
        let (Some(id), Some(rule), Some(sev), Some(pat), Some(team), Some(st), Some(msg)) = (
            strings(b, "alert_id"),
            strings(b, "rule"),
            strings(b, "severity"),
            strings(b, "patient_id"),
            strings(b, "care_team"),
            strings(b, "status"),
            strings(b, "message"),
        ) else {
            continue;
        };
        let level = strings(b, "level");
        let t = |n: &str| {
            b.column_by_name(n)
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        };
        let (Some(at), Some(start), Some(end)) = (t("at"), t("episode_start"), t("episode_end"))
        else {
            continue;
        };
        let (Some(seq), Some(value)) = (
            b.column_by_name("seq")
                .and_then(|c| c.as_primitive_opt::<UInt64Type>()),
            b.column_by_name("value")
                .and_then(|c| c.as_primitive_opt::<Float64Type>()),
        ) else {
            continue;
        };
        for i in 0..b.num_rows() {
            let a = Alert {
                id: id.value(i).to_owned(),
                seq: seq.value(i),
                updated_us: at.value(i),
                rule: rule.value(i).to_owned(),
                title: None,
                severity: sev.value(i).to_owned(),
                level: level
                    .filter(|l| !l.is_null(i))
                    .map(|l| l.value(i).to_owned()),
                patient: pat.value(i).to_owned(),
                care_team: (!team.is_null(i)).then(|| team.value(i).to_owned()),
                status: st.value(i).to_owned(),
                start_us: start.value(i),
                message: msg.value(i).to_owned(),
                observations: Vec::new(),
            };
            out.push((a, end.value(i), (!value.is_null(i)).then(|| value.value(i))));
        }
    }
    out
}

/// An alert with what finding its triggering Observations takes: the episode's end (UTC µs)
/// and its worst value.
pub type Found = (Alert, i64, Option<f64>);

async fn reasons(s: &SqlState, found: &mut [Found]) -> Result<(), Response> {
    triggering(&s.engine, found).await.ok_or_else(internal)
}

/// Fills in each alert's triggering Observations: the patient's readings in the episode that
/// carry the alert's worst value (at most three per alert). `None` when the query failed or
/// passed the query time limit. Shared by the read side and the FHIR destination.
pub async fn triggering(engine: &crate::QueryEngine, found: &mut [Found]) -> Option<()> {
    let conds: Vec<Expr> = found
        .iter()
        .filter_map(|(a, end, v)| {
            let v = (*v)?;
            Some(
                col("patient_id")
                    .eq(lit(a.patient.clone()))
                    .and(col("effective_time").gt_eq(ts(a.start_us)))
                    .and(col("effective_time").lt_eq(ts(*end)))
                    .and(col("value").eq(lit(v))),
            )
        })
        .collect();
    let Some(any) = conds.into_iter().reduce(Expr::or) else {
        return Some(());
    };
    let df = engine
        .context()
        .table("observations")
        .await
        .and_then(|d| d.filter(any))
        .and_then(|d| d.sort(vec![col("effective_time").sort(true, false)]))
        .and_then(|d| d.limit(0, Some(found.len().saturating_mul(3).saturating_add(64))))
        .ok()?;
    let batches = collect_within(engine, df).await?;
    let rows = crate::fhir_read::readings(&batches);
    for (a, end, v) in found.iter_mut() {
        for r in &rows {
            let hit = r.patient_id.as_deref() == Some(a.patient.as_str())
                && (a.start_us..=*end).contains(&r.effective_us)
                && Some(r.value) == *v;
            let id = r.observation_id();
            if hit && a.observations.len() < 3 && !a.observations.contains(&id) {
                a.observations.push(id);
            }
        }
    }
    Some(())
}

fn audit(s: &SqlState, p: &Principal, what: &str, n: usize) {
    s.engine
        .audit()
        .record(p, "fhir-read", what, Some(n as u64), "ok");
}

/// `GET /fhir/Communication/{id}`
pub async fn read(
    State(s): State<SqlState>,
    Reader(p): Reader,
    Path(id): Path<String>,
) -> Response {
    let found = async {
        let df = latest(&s, &p)
            .await?
            .filter(col("alert_id").eq(lit(id.clone())))
            .map_err(|_| internal())?;
        let batches = collect_bounded(&s, df).await.ok_or_else(internal)?;
        let mut found = alerts(&batches);
        reasons(&s, &mut found).await?;
        Ok::<_, Response>(found)
    }
    .await;
    let found = match found {
        Ok(f) => f,
        Err(r) => return r,
    };
    audit(&s, &p, &format!("Communication/{id}"), found.len());
    match found.first() {
        Some((a, ..)) => fhir_json(StatusCode::OK, communication(a)),
        None => outcome(StatusCode::NOT_FOUND, "not-found", "no such Communication"),
    }
}

/// `GET /fhir/Communication?…`: newest episode first.
pub async fn search(
    State(s): State<SqlState>,
    headers: HeaderMap,
    Reader(p): Reader,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = match parse(raw.as_deref()) {
        Ok(q) => q,
        Err((code, msg)) => return outcome(StatusCode::BAD_REQUEST, code, &msg),
    };
    match page(&s, &p, &q, base_url(&headers)).await {
        Ok(v) => fhir_json(StatusCode::OK, v),
        Err(r) => r,
    }
}

async fn page(
    s: &SqlState,
    p: &Principal,
    q: &Query,
    base: Option<String>,
) -> Result<Value, Response> {
    let mut df = latest(s, p).await?;
    for f in &q.filters {
        df = df.filter(f.clone()).map_err(|_| internal())?;
    }
    let df = df
        .sort(vec![
            col("episode_start").sort(false, false),
            col("alert_id").sort(true, false),
        ])
        .and_then(|d| d.limit(q.offset, Some(q.count.saturating_add(1))))
        .map_err(|_| internal())?;
    let batches = collect_bounded(s, df).await.ok_or_else(internal)?;
    let mut found = alerts(&batches);
    let more = found.len() > q.count;
    found.truncate(q.count);
    reasons(s, &mut found).await?;
    let raw: Vec<String> = q.echo.iter().map(|(k, v)| format!("{k}={v}")).collect();
    audit(
        s,
        p,
        &format!("Communication?{}", raw.join("&")),
        found.len(),
    );
    let base = base.unwrap_or_default();
    let link = |off: usize| {
        let mut qs: Vec<String> = q
            .echo
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        qs.push(format!("_count={}&_offset={off}", q.count));
        format!("{base}/Communication?{}", qs.join("&"))
    };
    let mut links = vec![json!({"relation": "self", "url": link(q.offset)})];
    if more {
        links.push(json!({"relation": "next", "url": link(q.offset.saturating_add(q.count))}));
    }
    if q.offset > 0 {
        links.push(json!({"relation": "previous", "url": link(q.offset.saturating_sub(q.count))}));
    }
    let entries: Vec<Value> = found
        .iter()
        .map(|(a, ..)| {
            json!({
                "fullUrl": format!("{base}/Communication/{}", a.id),
                "resource": communication(a),
                "search": {"mode": "match"}
            })
        })
        .collect();
    Ok(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "link": links,
        "entry": entries
    }))
}
