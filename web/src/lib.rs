//! `carewatch-web`: what people and monitoring look at.
//!
//! - [`latest`]: the in-memory latest-value cache (fed after each durable append).
//! - feeds: `GET /v1/patients` (the caller's patients, latest vitals, sparklines, open alerts —
//!   from memory, no Parquet scan), `GET /v1/patients/{id}/vitals` ([`series`]: bucketed
//!   min/max/avg from SQL), `GET /v1/stream` (SSE of vitals and alert changes).
//! - [`triage`]: `GET /v1/triage` (patients in order of need, with [`news2`] scores and device
//!   status) and `GET /v1/patients/{id}/timeline` (who did what with the patient's alerts).
//! - the dashboard at `/` (static HTML, CSS and our own small script; charts are SVG drawn in
//!   the page from the feeds — no third-party code). With an identity provider configured,
//!   people sign in through it (`carewatch_auth::signin`, a session cookie and a CSRF token);
//!   otherwise by pasting a care-manager token.
//! - [`metrics`]: `/metrics` in Prometheus text format, `/readyz`.
//!
//! A care manager sees only their care teams' patients, in every feed, chart and stream — and a
//! patient they opened by break-glass access ([`glass`]) while that lasts.

mod glass;
pub mod latest;
pub mod metrics;
pub mod news2;
mod series;
mod triage;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;

use arrow_array::{Float64Array, Int64Array, StringArray};
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde_json::{Value, json};

use carewatch_alert::AlertEngine;
use carewatch_alert::history::Status;
use carewatch_auth::{AuthError, Caller};
use carewatch_query::QueryEngine;
use carewatch_store::registry::{Principal, Registry, Role};
use carewatch_store::{AppendSummary, Store};
use carewatch_transform::catalogue;

pub use latest::LatestCache;

/// State for the web routes.
#[derive(Clone)]
pub struct WebState {
    /// The store (metrics).
    pub store: Store,
    /// Tokens, care teams, devices.
    pub registry: Arc<Registry>,
    /// SQL for the vitals series.
    pub query: QueryEngine,
    /// Alerts.
    pub alerts: AlertEngine,
    /// Latest values.
    pub latest: Arc<LatestCache>,
    /// Appends, for the SSE stream.
    pub updates: tokio::sync::broadcast::Sender<Arc<AppendSummary>>,
    /// Webhook counters (metrics).
    pub webhooks: Arc<carewatch_alert::notify::Counters>,
    /// `/metrics` needs an admin or analyst credential (config `[auth] metrics_require_token`).
    pub metrics_require_token: bool,
    /// More metric families written by other parts (the FHIR destination), appended to
    /// `/metrics` in Prometheus text format.
    pub extra_metrics: Vec<ExtraMetrics>,
    /// More conditions of readiness (cluster mode: in touch with PostgreSQL): each answers
    /// why the node is not ready, or `None`.
    pub ready_checks: Vec<ReadyCheck>,
}

/// A condition of `/readyz`: why the node is not ready (a fixed phrase, never an id), or `None`.
pub type ReadyCheck = Arc<dyn Fn() -> Option<&'static str> + Send + Sync>;

/// A writer of metric families in Prometheus text format (labels without ids).
pub type ExtraMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

impl std::fmt::Debug for WebState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebState").finish_non_exhaustive()
    }
}

impl WebState {
    /// Subscribes the latest-value cache to the store's appends and warms it from the last
    /// day of observations.
    pub async fn wire(
        store: Store,
        registry: Arc<Registry>,
        query: QueryEngine,
        alerts: AlertEngine,
        webhooks: Arc<carewatch_alert::notify::Counters>,
    ) -> WebState {
        let (latest, updates) = LatestCache::new();
        let l = latest.clone();
        store.observe_appends(Arc::new(move |s: &AppendSummary| l.apply(s)));
        let since = chrono::Utc::now().timestamp_micros() - 86_400_000_000;
        let sql = format!(
            "SELECT patient_id, code, CAST(date_bin(INTERVAL '60 seconds', effective_time) AS BIGINT) AS m, \
             avg(value) AS v, CAST(max(effective_time) AS BIGINT) AS t \
             FROM observations WHERE effective_time >= to_timestamp_micros({since}) AND patient_id IS NOT NULL \
             GROUP BY 1, 2, 3 ORDER BY 3"
        );
        match query.collect(&sql).await {
            Ok(batches) => {
                for b in batches {
                    let cols = (
                        b.column(0).as_any().downcast_ref::<StringArray>(),
                        b.column(1).as_any().downcast_ref::<StringArray>(),
                        b.column(3).as_any().downcast_ref::<Float64Array>(),
                        b.column(4).as_any().downcast_ref::<Int64Array>(),
                    );
                    let (Some(p), Some(c), Some(v), Some(t)) = cols else {
                        continue;
                    };
                    for i in 0..b.num_rows() {
                        if let Some(vital) = catalogue::by_code(c.value(i)) {
                            latest.seed(p.value(i), vital.code, t.value(i), v.value(i));
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "warming the latest-value cache failed"),
        }
        WebState {
            store,
            registry,
            query,
            alerts,
            latest,
            updates,
            webhooks,
            metrics_require_token: false,
            extra_metrics: Vec::new(),
            ready_checks: Vec::new(),
        }
    }
}

/// The router: feeds, dashboard, metrics.
pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/app.js", get(script))
        .route("/view.js", get(view_script))
        .route("/app.css", get(style))
        .route("/v1/patients", get(patients))
        .route("/v1/patients/{id}/vitals", get(series::vitals))
        .route("/v1/patients/{id}/timeline", get(triage::timeline))
        .route("/v1/triage", get(triage::triage))
        .route("/v1/stream", get(stream))
        .route("/v1/break-glass", get(glass::list).post(glass::open))
        .route("/metrics", get(metrics::metrics))
        .route("/readyz", get(metrics::ready))
        .merge(carewatch_auth::signin::routes())
        .with_state(state)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("../static/index.html"))
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/app.js"),
    )
        .into_response()
}

async fn view_script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/view.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/app.css"),
    )
        .into_response()
}

fn caller(auth: Result<Caller, AuthError>) -> Result<Principal, Response> {
    carewatch_alert::http::reader(auth)
}

/// The patients a caller may see: a care manager's team; everyone for admins and analysts.
fn visible_patients(s: &WebState, who: &Principal) -> BTreeSet<String> {
    let teams = s.registry.care_teams();
    match who.role {
        Role::CareManager => teams
            .into_iter()
            .filter(|(_, t)| carewatch_auth::in_team(who, t))
            .map(|(p, _)| p)
            .chain(
                carewatch_auth::access::break_glass_patients(who)
                    .iter()
                    .cloned(),
            )
            .collect(),
        _ => {
            let mut all: BTreeSet<String> = teams.into_iter().map(|(p, _)| p).collect();
            all.extend(s.latest.patients());
            for d in s.registry.devices() {
                all.extend(d.assignments.into_iter().map(|a| a.patient_id));
            }
            all
        }
    }
}

/// Records a dashboard read in the audit trail (who — the person, when signed in through the
/// identity provider — what, how many items).
fn audit(s: &WebState, who: &Principal, what: &str, rows: usize) {
    let rows = u64::try_from(rows).ok();
    s.query.audit().record(who, "dashboard", what, rows, "ok");
}

fn may_see(s: &WebState, who: &Principal, patient: &str) -> bool {
    carewatch_auth::may_see_patient(&s.registry, who, patient)
}

fn iso(us: i64) -> String {
    carewatch_alert::iso(us)
}

async fn patients(State(s): State<WebState>, auth: Result<Caller, AuthError>) -> Response {
    let who = match caller(auth) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut open: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for a in s.alerts.current(&who) {
        if matches!(a.status, Status::Firing | Status::Acknowledged) {
            open.entry(a.patient_id.clone())
                .or_default()
                .push(carewatch_alert::http::alert_json(&a));
        }
    }
    let mut out = Vec::new();
    for p in visible_patients(&s, &who) {
        let mut vitals = serde_json::Map::new();
        for (code, v) in s.latest.patient(&p) {
            let Some(vital) = catalogue::by_code(code) else {
                continue;
            };
            vitals.insert(
                vital.key.to_owned(),
                json!({"code": code, "value": v.value, "unit": vital.unit, "time": iso(v.time_us), "spark": v.spark()}),
            );
        }
        let alerts = open.remove(&p).unwrap_or_default();
        out.push(json!({
            "patient_id": p,
            "care_team": s.registry.care_team(&p),
            "vitals": vitals,
            "open_alerts": alerts,
        }));
    }
    // Patients with open alerts first, then by id.
    out.sort_by_key(|v| {
        (
            v["open_alerts"].as_array().is_none_or(|a| a.is_empty()),
            v["patient_id"].as_str().unwrap_or_default().to_owned(),
        )
    });
    audit(&s, &who, "GET /v1/patients", out.len());
    axum::Json(json!({"patients": out})).into_response()
}

async fn stream(State(s): State<WebState>, auth: Result<Caller, AuthError>) -> Response {
    let c = match auth {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let who = match c.reader() {
        Ok(p) => p.clone(),
        Err(e) => return e.into_response(),
    };
    audit(&s, &who, "GET /v1/stream", 0);
    let (gs, gwho) = (s.clone(), who.clone());
    let alerts = carewatch_alert::http::alert_events(&s.alerts, who.clone());
    let vitals = carewatch_alert::http::broadcast_stream(s.updates.subscribe()).filter_map(
        move |sum| {
            let items: Vec<Value> = sum
                .latest
                .iter()
                .filter(|(p, ..)| may_see(&s, &who, p))
                .filter_map(|(p, code, t, v)| {
                    catalogue::by_code(code).map(|vital| {
                        json!({"patient_id": p, "vital": vital.key, "code": code, "value": v, "time": iso(*t)})
                    })
                })
                .collect();
            async move {
                (!items.is_empty()).then(|| {
                    Ok::<_, Infallible>(
                        SseEvent::default()
                            .event("vitals")
                            .data(Value::Array(items).to_string()),
                    )
                })
            }
        },
    );
    let grants = carewatch_alert::http::broadcast_stream(c.auth.break_glass().subscribe())
        .filter_map(move |g| {
            let show = glass::told(&gs, &gwho, &g.patient);
            let data = glass::grant_json(&g).to_string();
            async move {
                show.then(|| {
                    Ok::<_, Infallible>(SseEvent::default().event("break_glass").data(data))
                })
            }
        });
    let events = futures::stream::select(futures::stream::select(vitals, alerts), grants);
    Sse::new(c.bound(events))
        .keep_alive(KeepAlive::default())
        .into_response()
}
