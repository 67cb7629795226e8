//! `POST /fhir/Subscription` (a topic-based rest-hook subscription, Backport IG R4 form),
//! `GET /fhir/Subscription?status=` (the ones the caller may see), `GET` and `DELETE
//! /fhir/Subscription/{id}`, `GET /fhir/Subscription/{id}/$status` and
//! `GET /fhir/Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber=`, so a client
//! that missed notifications (the numbers jump) fetches what it missed — as long as they are
//! kept ([`crate::subscriptions::Retention`]; a pruned number answers an OperationOutcome).
//!
//! Who may do what: readers (analysts, admins, care managers) subscribe; a care manager only
//! to their own team's patients (a filter naming another team's patient or another team is
//! refused), and every event is offered only when the owner may see its patient
//! ([`carewatch_auth::may_see_patient`], as every FHIR read). A subscription is visible to its
//! owner, to admins and analysts, and to care managers of the owner's team; to anyone else it
//! does not exist. Its owner, admins and care managers of the owner's team may delete it (an
//! analyst only their own).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use carewatch_fhir::subscription::{self, Kind, Status, notification, status_parameters};
use carewatch_store::registry::{Principal, Registry, Role};

use crate::fhir_read::{Reader, fhir_json, outcome};
use crate::fhir_search::base_url;
use crate::subscriptions::{Stored, Sub, Subscriptions};

/// State of the subscription endpoints.
#[derive(Debug, Clone)]
pub struct SubState {
    /// The subscriptions.
    pub subs: Subscriptions,
    /// For the care-team checks.
    pub registry: std::sync::Arc<Registry>,
}

/// The router for `/fhir/Subscription…`.
pub fn router(state: SubState) -> Router {
    Router::new()
        .route(
            "/fhir/Subscription",
            axum::routing::post(create).get(search),
        )
        .route(
            "/fhir/Subscription/{id}",
            axum::routing::get(read).delete(remove),
        )
        .route(
            "/fhir/Subscription/{id}/$status",
            axum::routing::get(status),
        )
        .route(
            "/fhir/Subscription/{id}/$events",
            axum::routing::get(events),
        )
        .with_state(state)
}

/// The most events one `$events` answer carries.
pub const MAX_EVENTS: u64 = 100;

fn shares_team(p: &Principal, owner: &Principal) -> bool {
    carewatch_auth::teams(owner)
        .iter()
        .any(|t| carewatch_auth::in_team(p, t))
}

fn visible(p: &Principal, st: &Stored) -> bool {
    carewatch_auth::sees_all_patients(p) || p.id == st.owner.id || shares_team(p, &st.owner)
}

fn stored(sub: &Sub) -> Stored {
    sub.stored.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The subscription `id` when the caller may see it (else 404, as for none).
fn found(s: &SubState, p: &Principal, id: &str) -> Result<std::sync::Arc<Sub>, Response> {
    s.subs
        .get(id)
        .filter(|sub| visible(p, &stored(sub)))
        .ok_or_else(|| outcome(StatusCode::NOT_FOUND, "not-found", "no such Subscription"))
}

/// The SubscriptionStatus fields of a subscription with `n` events so far.
fn status_of(st: &Stored, n: u64) -> Status<'_> {
    Status {
        base: &st.base,
        id: &st.id,
        topic: &st.spec.topic,
        status: &st.status,
        events_since_start: n,
        content: st.spec.content,
    }
}

/// A care manager's filters must stay inside their teams.
fn allowed(registry: &Registry, p: &Principal, spec: &subscription::Spec) -> bool {
    if p.role != Role::CareManager {
        return true;
    }
    spec.filters.iter().all(|(k, v)| match k.as_str() {
        "patient" => carewatch_auth::may_see_patient(registry, p, v),
        "care-team" => carewatch_auth::in_team(p, v),
        _ => true,
    })
}

async fn create(
    State(s): State<SubState>,
    headers: HeaderMap,
    Reader(p): Reader,
    body: Bytes,
) -> Response {
    let spec = match serde_json::from_slice::<Value>(&body)
        .map_err(|_| "the body must be JSON".to_owned())
        .and_then(|v| subscription::parse(&v))
    {
        Ok(spec) => spec,
        Err(e) => return outcome(StatusCode::BAD_REQUEST, "invalid", &e),
    };
    if !allowed(&s.registry, &p, &spec) {
        return outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a care manager subscribes to their own care team's patients only",
        );
    }
    let base = base_url(&headers).unwrap_or_else(|| "http://localhost/fhir".into());
    match s.subs.create(spec, p, base.clone()).await {
        Ok(sub) => {
            let st = sub.stored.lock().unwrap_or_else(|e| e.into_inner()).clone();
            tracing::info!("fhir subscription created");
            let mut r = fhir_json(
                StatusCode::CREATED,
                subscription::resource(&st.id, &st.spec, &st.status),
            );
            if let Ok(v) = header::HeaderValue::from_str(&format!("{base}/Subscription/{}", st.id))
            {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "fhir subscription could not be kept");
            outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the subscription could not be kept",
            )
        }
    }
}

async fn read(State(s): State<SubState>, Reader(p): Reader, Path(id): Path<String>) -> Response {
    let sub = match found(&s, &p, &id) {
        Ok(sub) => sub,
        Err(r) => return r,
    };
    let (st, _) = sub.status_line();
    fhir_json(
        StatusCode::OK,
        subscription::resource(&st.id, &st.spec, &st.status),
    )
}

/// `DELETE /fhir/Subscription/{id}`: no more notifications; 204.
async fn remove(State(s): State<SubState>, Reader(p): Reader, Path(id): Path<String>) -> Response {
    let sub = match found(&s, &p, &id) {
        Ok(sub) => sub,
        Err(r) => return r,
    };
    let st = stored(&sub);
    let may = p.id == st.owner.id
        || p.role == Role::Admin
        || (p.role == Role::CareManager && shares_team(&p, &st.owner));
    if !may {
        return outcome(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only its owner, an admin or the owner's care team may delete a subscription",
        );
    }
    match s.subs.delete(&id).await {
        Ok(_) => {
            tracing::info!("fhir subscription deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "fhir subscription could not be deleted");
            outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                "the subscription could not be deleted",
            )
        }
    }
}

/// `GET /fhir/Subscription?status=…`: the subscriptions the caller may see.
async fn search(
    State(s): State<SubState>,
    headers: HeaderMap,
    Reader(p): Reader,
    RawQuery(raw): RawQuery,
) -> Response {
    let mut statuses: Option<Vec<String>> = None;
    for (k, v) in carewatch_fhir::search::pairs(raw.as_deref().unwrap_or_default()) {
        if k != "status" {
            return outcome(
                StatusCode::BAD_REQUEST,
                "not-supported",
                &format!("search parameter {k:?} is not supported"),
            );
        }
        statuses
            .get_or_insert_with(Vec::new)
            .extend(v.split(',').map(str::to_owned));
    }
    let base = base_url(&headers).unwrap_or_default();
    let entries: Vec<Value> = s
        .subs
        .all()
        .iter()
        .map(|sub| stored(sub))
        .filter(|st| visible(&p, st))
        .filter(|st| statuses.as_ref().is_none_or(|w| w.contains(&st.status)))
        .map(|st| {
            json!({
                "fullUrl": format!("{base}/Subscription/{}", st.id),
                "resource": subscription::resource(&st.id, &st.spec, &st.status),
                "search": {"mode": "match"}
            })
        })
        .collect();
    fhir_json(
        StatusCode::OK,
        json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries}),
    )
}

async fn status(State(s): State<SubState>, Reader(p): Reader, Path(id): Path<String>) -> Response {
    let sub = match found(&s, &p, &id) {
        Ok(sub) => sub,
        Err(r) => return r,
    };
    let (st, n) = sub.status_line();
    let mut p = status_parameters(&status_of(&st, n), Kind::QueryStatus, &[]);
    p["id"] = json!(format!("{}-status", st.id));
    fhir_json(
        StatusCode::OK,
        json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 1,
            "entry": [{"fullUrl": format!("urn:uuid:{}", uuid_of(&st.id)), "resource": p, "search": {"mode": "match"}}]
        }),
    )
}

fn uuid_of(hex32: &str) -> String {
    let h = format!("{hex32:0<32}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn number(raw: &[(String, String)], name: &str) -> Result<Option<u64>, Response> {
    match raw.iter().find(|(k, _)| k == name) {
        None => Ok(None),
        Some((_, v)) => v.parse::<u64>().map(Some).map_err(|_| {
            outcome(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("{name} must be an event number"),
            )
        }),
    }
}

async fn events(
    State(s): State<SubState>,
    Reader(p): Reader,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let sub = match found(&s, &p, &id) {
        Ok(sub) => sub,
        Err(r) => return r,
    };
    let q = carewatch_fhir::search::pairs(raw.as_deref().unwrap_or_default());
    if let Some((k, _)) = q
        .iter()
        .find(|(k, _)| k != "eventsSinceNumber" && k != "eventsUntilNumber")
    {
        return outcome(
            StatusCode::BAD_REQUEST,
            "not-supported",
            &format!("parameter {k:?} is not supported"),
        );
    }
    let (since, until) = match (
        number(&q, "eventsSinceNumber"),
        number(&q, "eventsUntilNumber"),
    ) {
        (Ok(a), Ok(b)) => (a.unwrap_or(1), b.unwrap_or(u64::MAX)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    if let Some(first) = sub.first_kept().filter(|f| since < *f && since <= until) {
        let keep = s.subs.retention();
        return outcome(
            StatusCode::GONE,
            "not-found",
            &format!(
                "events before number {first} are no longer kept (a subscription keeps its latest {} events, none older than {} hours); ask from eventsSinceNumber={first}",
                keep.max_events,
                keep.max_age.as_secs() / 3600
            ),
        );
    }
    let (st, n) = sub.status_line();
    let picked: Vec<_> = sub
        .events
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|e| e.number >= since && e.number <= until)
        .take(MAX_EVENTS as usize)
        .cloned()
        .collect();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let uuid = uuid_of(&crate::subscriptions::new_id());
    fhir_json(
        StatusCode::OK,
        notification(&status_of(&st, n), Kind::QueryEvent, &picked, &uuid, &now),
    )
}
