//! FHIR searches over the stored readings: `GET /fhir/Observation?…` (the parameters of
//! [`carewatch_fhir::search`]: a `searchset` Bundle with paging links, or with
//! `_summary=count` the total only) and `GET /fhir/Observation/$lastn?patient=…` (the latest
//! Observation per patient and code, `max` of them). Every Observation carries
//! `meta.lastUpdated`, when carewatch received it.
//!
//! Who sees what is decided by [`crate::fhir_read::scope`], the one path every FHIR read takes.

use std::collections::HashMap;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use datafusion::functions::expr_fn::coalesce;
use datafusion::logical_expr::ExprFunctionExt;
use datafusion::prelude::{DataFrame, Expr, col, lit};
use serde_json::{Value, json};

use carewatch_fhir::search::{DateCmp, Filter, Search, SearchError, Sort};
use carewatch_store::registry::Principal;
use carewatch_transform::Reading;
use carewatch_transform::catalogue::VITALS;

use crate::fhir_read::{
    Reader, collect_bounded, fhir_json, internal, outcome, received_readings, scope,
};
use crate::http::SqlState;

/// `2024-05-01T08:00:00.000000Z`-style instant for `meta.lastUpdated`.
fn instant(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

fn ts(at: i64) -> Expr {
    lit(datafusion::common::ScalarValue::TimestampMicrosecond(
        Some(at),
        Some("UTC".into()),
    ))
}

fn compare(c: Expr, cmp: DateCmp, at: i64) -> Expr {
    match cmp {
        DateCmp::Ge => c.gt_eq(ts(at)),
        DateCmp::Gt => c.gt(ts(at)),
        DateCmp::Le => c.lt_eq(ts(at)),
        DateCmp::Lt => c.lt(ts(at)),
        DateCmp::Eq => c.eq(ts(at)),
    }
}

/// The DataFusion predicate of one search filter.
fn filter_expr(f: &Filter) -> Expr {
    match f {
        Filter::Patient(id) => col("patient_id").eq(lit(id.clone())),
        Filter::Codes(codes) => {
            let codes: Vec<_> = codes.iter().map(|c| lit(c.clone())).collect();
            col("code")
                .in_list(codes.clone(), false)
                .or(col("panel_code").in_list(codes, false))
        }
        Filter::Category(cats) => {
            let codes: Vec<_> = VITALS
                .iter()
                .filter(|v| cats.iter().any(|c| c == v.category.code()))
                .map(|v| lit(v.code))
                .collect();
            if codes.is_empty() {
                lit(false)
            } else {
                col("code").in_list(codes, false)
            }
        }
        Filter::Device(id) => col("device_id").eq(lit(id.clone())),
        Filter::Date(cmp, at) => compare(col("effective_time"), *cmp, *at),
        Filter::LastUpdated(cmp, at) => compare(col("received_time"), *cmp, *at),
    }
}

/// A refused search as the OperationOutcome FHIR clients expect.
pub(crate) fn bad_search(e: &SearchError) -> Response {
    let code = match e {
        SearchError::NotSupported(_) => "not-supported",
        _ => "invalid",
    };
    outcome(StatusCode::BAD_REQUEST, code, &e.to_string())
}

/// The `observations` rows the search selects that the caller may see.
async fn selected(s: &SqlState, p: &Principal, search: &Search) -> Result<DataFrame, Response> {
    let ctx = s.engine.context();
    let mut df = ctx.table("observations").await.map_err(|_| internal())?;
    for f in &search.filters {
        df = df.filter(filter_expr(f)).map_err(|_| internal())?;
    }
    scope(s, p, df)
}

/// The FHIR base URL as the client reached it.
pub(crate) fn base_url(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .map(|h| format!("http://{h}/fhir"))
}

/// Searchset entries for the rows (grouped into Observations, first appearance first), each
/// with `meta.lastUpdated` (the latest receipt of its rows).
fn entries(rows: &[(Reading, i64)], base: Option<&str>, skip: usize, take: usize) -> Vec<Value> {
    let mut received: HashMap<String, i64> = HashMap::new();
    for (r, at) in rows {
        let e = received.entry(r.observation_id()).or_insert(*at);
        *e = (*e).max(*at);
    }
    let readings: Vec<Reading> = rows.iter().map(|(r, _)| r.clone()).collect();
    let mut out = Vec::new();
    for g in carewatch_fhir::group(&readings)
        .iter()
        .skip(skip)
        .take(take)
    {
        let Ok(mut o) = carewatch_fhir::observation_json(g, None) else {
            continue;
        };
        let id = o["id"].as_str().unwrap_or_default().to_owned();
        if let Some(at) = received.get(&id) {
            if !o["meta"].is_object() {
                o["meta"] = json!({});
            }
            o["meta"]["lastUpdated"] = json!(instant(*at));
        }
        let full_url = match base {
            Some(b) => format!("{b}/Observation/{id}"),
            None => format!("urn:carewatch:Observation/{id}"),
        };
        out.push(json!({"fullUrl": full_url, "resource": o, "search": {"mode": "match"}}));
    }
    out
}

fn audit(s: &SqlState, p: &Principal, what: &str, search: &Search, n: usize) {
    let q = search
        .params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    s.engine
        .audit()
        .record(p, "fhir-read", &format!("{what}?{q}"), Some(n as u64), "ok");
}

/// The number of Observations (not rows) the search matches.
async fn total(s: &SqlState, df: DataFrame) -> Result<usize, Response> {
    use datafusion::functions_aggregate::expr_fn::count;
    let key = coalesce(vec![col("panel_code"), col("code")]);
    let df = df
        .aggregate(vec![col("device_id"), key, col("effective_time")], vec![])
        .and_then(|d| d.aggregate(vec![], vec![count(lit(1)).alias("n")]))
        .map_err(|_| internal())?;
    let batches = collect_bounded(s, df).await.ok_or_else(internal)?;
    let n = batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
        })
        .map_or(0, |a| a.value(0));
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Rows of one Observation stay adjacent in this order.
fn order(sort: Sort) -> Vec<datafusion::logical_expr::SortExpr> {
    let key = coalesce(vec![col("panel_code"), col("code")]);
    let (first, asc) = match sort {
        Sort::Date => (col("effective_time"), true),
        Sort::DateDesc => (col("effective_time"), false),
        Sort::LastUpdated => (col("received_time"), true),
        Sort::LastUpdatedDesc => (col("received_time"), false),
    };
    vec![
        first.sort(asc, false),
        col("effective_time").sort(asc, false),
        col("device_id").sort(true, false),
        key.sort(true, false),
        col("code").sort(true, false),
    ]
}

/// `GET /fhir/Observation?…`
pub async fn search(
    State(s): State<SqlState>,
    headers: HeaderMap,
    Reader(p): Reader,
    RawQuery(raw): RawQuery,
) -> Response {
    let search = match carewatch_fhir::search::parse(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return bad_search(&e),
    };
    match answer(&s, &p, &search, base_url(&headers)).await {
        Ok(v) => fhir_json(StatusCode::OK, v),
        Err(r) => r,
    }
}

async fn answer(
    s: &SqlState,
    p: &Principal,
    search: &Search,
    base: Option<String>,
) -> Result<Value, Response> {
    let df = selected(s, p, search).await?;
    if search.count_only {
        let n = total(s, df).await?;
        audit(s, p, "Observation", search, n);
        return Ok(json!({"resourceType": "Bundle", "type": "searchset", "total": n}));
    }
    let df = df
        .sort(order(search.sort))
        .and_then(|d| d.limit(0, Some(search.fetch_rows())))
        .map_err(|_| internal())?;
    let batches = collect_bounded(s, df).await.ok_or_else(internal)?;
    let rows = received_readings(&batches);
    let (count, offset) = (search.count, search.offset);
    let page = entries(&rows, base.as_deref(), offset, count.saturating_add(1));
    let more = page.len() > count;
    let page: Vec<Value> = page.into_iter().take(count).collect();
    audit(s, p, "Observation", search, page.len());
    let url = |off: usize| {
        format!(
            "{}/Observation?{}",
            base.clone().unwrap_or_default(),
            search.link_query(off)
        )
    };
    let mut links = vec![json!({"relation": "self", "url": url(offset)})];
    if more {
        links.push(json!({"relation": "next", "url": url(search.next_offset())}));
    }
    if offset > 0 {
        links.push(json!({"relation": "previous", "url": url(offset.saturating_sub(count))}));
    }
    Ok(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": page.len(),
        "link": links,
        "entry": page,
    }))
}

/// `GET /fhir/Observation/$lastn?patient=…[&code=…][&category=…][&max=n]`: per patient and
/// code (a blood pressure is one code, its panel), the `max` latest Observations, newest first.
pub async fn lastn(
    State(s): State<SqlState>,
    headers: HeaderMap,
    Reader(p): Reader,
    RawQuery(raw): RawQuery,
) -> Response {
    let (search, max) = match carewatch_fhir::search::parse_lastn(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return bad_search(&e),
    };
    match latest(&s, &p, &search, max, base_url(&headers)).await {
        Ok(v) => fhir_json(StatusCode::OK, v),
        Err(r) => r,
    }
}

async fn latest(
    s: &SqlState,
    p: &Principal,
    search: &Search,
    max: usize,
    base: Option<String>,
) -> Result<Value, Response> {
    use datafusion::functions_window::expr_fn::dense_rank;
    let df = selected(s, p, search).await?;
    let key = coalesce(vec![col("panel_code"), col("code")]);
    // One rank per Observation: the two rows of a blood pressure share (time, device).
    let rank = dense_rank()
        .partition_by(vec![col("patient_id"), key.clone()])
        .order_by(vec![
            col("effective_time").sort(false, false),
            col("device_id").sort(true, false),
        ])
        .build()
        .map_err(|_| internal())?;
    let df = df
        .window(vec![rank.alias("lastn_rank")])
        .and_then(|d| d.filter(col("lastn_rank").lt_eq(lit(max as u64))))
        .and_then(|d| {
            d.sort(vec![
                col("patient_id").sort(true, false),
                key.sort(true, false),
                col("effective_time").sort(false, false),
                col("device_id").sort(true, false),
                col("code").sort(true, false),
            ])
        })
        .map_err(|_| internal())?;
    let batches = collect_bounded(s, df).await.ok_or_else(internal)?;
    let rows = received_readings(&batches);
    let page = entries(&rows, base.as_deref(), 0, usize::MAX);
    audit(s, p, "Observation/$lastn", search, page.len());
    let self_url = format!(
        "{}/Observation/$lastn?{}&max={max}",
        base.unwrap_or_default(),
        search.link_query(0)
    );
    Ok(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": page.len(),
        "link": [{"relation": "self", "url": self_url}],
        "entry": page,
    }))
}

/// The Observation of `patient`'s reading of `code` at `at_us` (a blood-pressure component
/// gives the whole panel), for subscription notifications: its id and FHIR JSON.
pub async fn observation_at(
    engine: &crate::QueryEngine,
    patient: &str,
    code: &str,
    at_us: i64,
) -> Option<(String, Value)> {
    let df = engine
        .context()
        .table("observations")
        .await
        .ok()?
        .filter(
            col("patient_id")
                .eq(lit(patient.to_owned()))
                .and(col("effective_time").eq(ts(at_us))),
        )
        .ok()?;
    let batches = df.collect().await.ok()?;
    let rows = received_readings(&batches);
    let readings: Vec<Reading> = rows.into_iter().map(|(r, _)| r).collect();
    let groups = carewatch_fhir::group(&readings);
    let g = groups
        .iter()
        .find(|g| g.iter().any(|r| r.vital.code == code))?;
    let o = carewatch_fhir::observation_json(g, None).ok()?;
    Some((o["id"].as_str()?.to_owned(), o))
}
