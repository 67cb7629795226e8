//! The fleet API (admin only): `POST /v1/devices` with one registration (today's semantics:
//! registering a known device re-assigns it and rotates its secret) or many (a JSON array, or
//! NDJSON with `Content-Type: application/x-ndjson`: one result per item, idempotent), and
//! `GET /v1/devices` with filters and paging.
//!
//! Per-item results name the item's index and device id and, for a refused item, a stable
//! code and a message; never a patient id. A secret is in the answer that created it, never
//! again: a re-sent item answers `unchanged` without one.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use carewatch_store::registry::{
    DeviceFilter, DeviceView, EnrolError, Enrolled, Enrolment, Role, valid_id,
};

use crate::admin::{blocking, iso};
use crate::http::{ApiError, Caller, HttpState};

/// Most items one request may carry.
pub const MAX_ITEMS: usize = 10_000;
/// Most devices one page may list.
pub const MAX_PAGE: usize = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    device_id: String,
    patient_id: String,
    valid_from: Option<String>,
    valid_to: Option<String>,
    #[serde(default)]
    reassign: bool,
}

/// An RFC 3339 time with an offset, in UTC micros; the error names the field.
fn time(t: &str, field: &str) -> Result<i64, String> {
    carewatch_transform::time::parse_str(t, field, carewatch_transform::ZonePolicy::Reject)
        .map(|t| t.utc_us)
        .map_err(|r| r.message)
}

impl NewDevice {
    fn enrolment(self) -> Result<Enrolment, String> {
        let t = |v: Option<&str>, f| v.map(|t| time(t, f)).transpose();
        let from = t(self.valid_from.as_deref(), "valid_from")?;
        let to = t(self.valid_to.as_deref(), "valid_to")?;
        Ok(Enrolment {
            device_id: self.device_id,
            patient_id: self.patient_id,
            valid_from_us: from,
            valid_to_us: to,
            reassign: self.reassign,
        })
    }
}

/// What is wrong with an item's shape, without echoing its values (a patient id sent as a
/// number must not come back in an error).
fn shape_error(e: serde_json::Error) -> String {
    let m = e.to_string();
    if m.starts_with("unknown field") || m.starts_with("missing field") {
        format!("invalid item: {m}")
    } else {
        "invalid item: device_id and patient_id must be strings, valid_from and valid_to RFC 3339 times with an offset, reassign true or false".into()
    }
}

/// One item as sent: its device id if it has one, and the enrolment or why it is unreadable.
pub type Item = (Option<String>, Result<Enrolment, String>);

/// Reads one registration (the JSON shape of `POST /v1/devices`).
pub fn item(v: Value) -> Item {
    let device = v
        .get("device_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let e = serde_json::from_value::<NewDevice>(v)
        .map_err(shape_error)
        .and_then(NewDevice::enrolment);
    (device, e)
}

/// The items of a batch body: a JSON array, or NDJSON (one object per non-empty line).
fn items(b: &Bytes, ndjson: bool) -> Result<Vec<Item>, ApiError> {
    let out: Vec<Item> = if ndjson {
        b.split(|c| *c == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| match serde_json::from_slice::<Value>(l) {
                Ok(v) => item(v),
                Err(e) => (None, Err(format!("invalid JSON line: {e}"))),
            })
            .collect()
    } else {
        serde_json::from_slice::<Vec<Value>>(b)
            .map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?
            .into_iter()
            .map(item)
            .collect()
    };
    if out.len() > MAX_ITEMS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_ITEMS} devices per request; split the batch"
        )));
    }
    Ok(out)
}

fn is_ndjson(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"))
}

pub(crate) async fn post_devices(
    State(s): State<HttpState>,
    caller: Caller,
    headers: HeaderMap,
    b: Bytes,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let ndjson = is_ndjson(&headers);
    let first = b.iter().find(|c| !c.is_ascii_whitespace()).copied();
    if !ndjson && first != Some(b'[') {
        return register_one(s, b).await;
    }
    // Parsing a batch of thousands of items is CPU work: off the async workers too.
    let r = s.pipeline.registry.clone();
    let (code, body) = tokio::task::spawn_blocking(move || {
        let items = items(&b, ndjson)?;
        enrol(&r, items).map_err(ApiError::from)
    })
    .await
    .map_err(|_| ApiError::Unavailable)??;
    Ok((code, Json(body)).into_response())
}

/// Enrols the readable items (one sync for all) and answers one result per item, as
/// `POST /v1/devices` does: the status and the JSON body. The error means nothing was written.
pub fn enrol(
    r: &carewatch_store::registry::Registry,
    items: Vec<Item>,
) -> carewatch_store::Result<(StatusCode, Value)> {
    let (good, idx): (Vec<Enrolment>, Vec<usize>) = items
        .iter()
        .enumerate()
        .filter_map(|(i, (_, e))| e.as_ref().ok().map(|e| (e.clone(), i)))
        .unzip();
    let done = r.enrol(&good)?;
    let mut decided = vec![None; items.len()];
    for (i, r) in idx.into_iter().zip(done) {
        decided[i] = Some(r);
    }
    Ok(batch_answer(items, decided))
}

fn batch_answer(
    items: Vec<Item>,
    decided: Vec<Option<Result<Enrolled, EnrolError>>>,
) -> (StatusCode, Value) {
    let mut counts = BTreeMap::from([
        ("enrolled", 0),
        ("reassigned", 0),
        ("unchanged", 0),
        ("rejected", 0),
    ]);
    let mut results = Vec::with_capacity(items.len());
    for (i, ((device, parsed), r)) in items.into_iter().zip(decided).enumerate() {
        let mut v = json!({"index": i, "device_id": device});
        let status = match r {
            Some(Ok(Enrolled::New(secret))) => {
                v["secret"] = secret.into();
                "enrolled"
            }
            Some(Ok(Enrolled::Reassigned(secret))) => {
                v["secret"] = secret.into();
                "reassigned"
            }
            Some(Ok(Enrolled::Unchanged)) => "unchanged",
            Some(Err(e)) => {
                v["error"] = e.code().into();
                v["message"] = e.to_string().into();
                "rejected"
            }
            None => {
                v["error"] = "invalid_item".into();
                v["message"] = parsed.err().unwrap_or_default().into();
                "rejected"
            }
        };
        v["status"] = status.into();
        *counts.entry(status).or_default() += 1;
        results.push(v);
    }
    let code = if counts["enrolled"] + counts["reassigned"] > 0 {
        StatusCode::CREATED
    } else if counts["rejected"] > 0 && counts["unchanged"] == 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let mut body = json!(counts);
    body["results"] = Value::Array(results);
    (code, body)
}

/// One registration, as before batches: 201 with the secret; a known device is re-assigned
/// (from `valid_from`, default now; until `valid_to` if given) and its secret rotated.
async fn register_one(s: HttpState, b: Bytes) -> Result<Response, ApiError> {
    let v: Value = serde_json::from_slice(&b)
        .map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))?;
    let d: NewDevice =
        serde_json::from_value(v).map_err(|e| ApiError::BadRequest(shape_error(e)))?;
    if d.reassign {
        return Err(ApiError::BadRequest(
            "reassign is for batches; a single registration always re-assigns".into(),
        ));
    }
    let e = d.enrolment().map_err(ApiError::BadRequest)?;
    if !valid_id(&e.device_id) || !valid_id(&e.patient_id) {
        return Err(ApiError::BadRequest(
            "device_id and patient_id must be 1 to 256 characters, without control characters or surrounding spaces".into(),
        ));
    }
    let device = e.device_id.clone();
    let secret = blocking(&s, move |r| {
        r.assign_device(&e.device_id, &e.patient_id, e.valid_from_us, e.valid_to_us)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"device_id": device, "secret": secret})),
    )
        .into_response())
}

fn flag(q: &BTreeMap<String, String>, k: &str) -> Result<Option<bool>, ApiError> {
    match q.get(k).map(String::as_str) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::BadRequest(format!("{k} must be true or false"))),
    }
}

fn filter(q: &BTreeMap<String, String>) -> Result<DeviceFilter, ApiError> {
    const KNOWN: [&str; 7] = [
        "limit",
        "after",
        "patient",
        "care_team",
        "last_seen_before",
        "never_seen",
        "revoked",
    ];
    if let Some(k) = q.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "unknown parameter {k:?}; known: {}",
            KNOWN.join(", ")
        )));
    }
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be 1 to {MAX_PAGE}")))?,
    };
    let before = q.get("last_seen_before");
    Ok(DeviceFilter {
        after: q.get("after").cloned(),
        limit,
        patient: q.get("patient").cloned(),
        care_team: q.get("care_team").cloned(),
        seen_before_us: before
            .map(|t| time(t, "last_seen_before"))
            .transpose()
            .map_err(ApiError::BadRequest)?,
        never_seen: flag(q, "never_seen")?,
        revoked: flag(q, "revoked")?,
    })
}

/// The JSON shape of a device in `GET /v1/devices`.
pub fn device_json(d: &DeviceView) -> Value {
    let assignments: Vec<Value> = d
        .assignments
        .iter()
        .map(|a| {
            json!({
                "patient_id": a.patient_id,
                "valid_from": iso(a.valid_from_us),
                "valid_to": a.valid_to_us.map(iso),
            })
        })
        .collect();
    json!({
        "device_id": d.device_id,
        "patient_id": d.patient_id,
        "care_team": d.care_team,
        "assignments": assignments,
        "revoked": d.revoked_us.map(iso),
        "last_seen": d.last_seen_us.map(iso),
    })
}

pub(crate) async fn get_devices(
    State(s): State<HttpState>,
    caller: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let f = filter(&q)?;
    let (page, next) = blocking(&s, move |r| Ok(r.list_devices(&f))).await?;
    let devices: Vec<Value> = page.iter().map(device_json).collect();
    Ok(Json(json!({"devices": devices, "next": next})).into_response())
}
