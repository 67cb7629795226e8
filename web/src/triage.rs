//! The triage feed behind the dashboard's list: `GET /v1/triage` answers the caller's patients
//! in order of need — the level of their open alerts (urgent, warning, info; a snoozed alert
//! does not rank while it sleeps), then the NEWS2 score of their latest vitals ([`crate::news2`]),
//! then the time since their last reading (longest first; never seen first of all) — each with
//! its vitals, its open alerts (with the vitals each alert's rule reads), and its devices (last
//! seen, silent, battery when the device reports one). `GET /v1/patients/{id}/timeline` answers
//! every transition of the patient's alerts, newest first: who did what, notes, reasons.
//!
//! The patients are the ones every feed shows ([`crate::visible_patients`]): a care manager's
//! care teams and break-glass grants, through the one authorization path.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use carewatch_alert::history::Status;
use carewatch_auth::{AuthError, Caller};
use carewatch_store::registry::{DeviceFilter, DeviceView};
use carewatch_transform::catalogue;

use crate::{WebState, audit, caller, iso, may_see, news2, visible_patients};

const MINUTE_US: i64 = 60_000_000;
/// A vital older than this does not count towards NEWS2 (a day).
const NEWS2_MAX_AGE_US: i64 = 24 * 60 * MINUTE_US;
/// Silent after this long without data unless the `device_silent` rule says otherwise.
const DEFAULT_SILENT_MINUTES: i64 = 60;
/// At most this many transitions in a timeline.
const TIMELINE_MAX: usize = 500;
/// Codes of a device's battery charge, if a device reports one (MDC_ATTR_VAL_BATT_CHARGE).
const BATTERY_CODES: [&str; 1] = ["67996"];

/// An alert's level as a rank (urgent 3, warning 2, info 1): its `level`, or one derived from
/// its severity when the alert has none.
pub(crate) fn level_rank(alert: &Value) -> u8 {
    let level = alert["level"]
        .as_str()
        .unwrap_or(match alert["severity"].as_str() {
            Some("critical" | "high") => "urgent",
            Some("warning") => "warning",
            _ => "info",
        });
    match level {
        "urgent" => 3,
        "warning" => 2,
        _ => 1,
    }
}

fn level_name(rank: u8) -> Option<&'static str> {
    match rank {
        3 => Some("urgent"),
        2 => Some("warning"),
        1 => Some("info"),
        _ => None,
    }
}

/// The catalogue codes a rule's SQL reads (a fever rule: body temperature).
fn rule_codes(s: &WebState) -> HashMap<String, Vec<&'static str>> {
    s.alerts
        .rules()
        .iter()
        .map(|r| {
            let codes = catalogue::VITALS
                .iter()
                .filter(|v| r.sql.contains(&format!("'{}'", v.code)))
                .map(|v| v.code)
                .collect();
            (r.id.clone(), codes)
        })
        .collect()
}

/// How long without data makes a patient's devices silent (the `device_silent` rule's
/// `for_minutes` for that patient).
fn silent_after_us(s: &WebState, patient: &str) -> i64 {
    let rules = s.alerts.rules();
    let minutes = rules
        .iter()
        .find(|r| r.id == "device_silent")
        .and_then(|r| match r.params_for(Some(patient)).get("for_minutes") {
            Some(carewatch_alert::rules::Param::Int(m)) => Some(*m),
            Some(carewatch_alert::rules::Param::Float(m)) => Some(*m as i64),
            _ => None,
        })
        .unwrap_or(DEFAULT_SILENT_MINUTES);
    minutes.max(1) * MINUTE_US
}

/// The caller's open alerts by patient, each with the vitals its rule reads.
fn open_alerts(
    s: &WebState,
    who: &carewatch_store::registry::Principal,
) -> BTreeMap<String, Vec<Value>> {
    let codes = rule_codes(s);
    let mut open: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for a in s.alerts.current(who) {
        if a.status == Status::Resolved {
            continue;
        }
        let mut j = carewatch_alert::http::alert_json(&a);
        j["vitals"] = json!(codes.get(&a.rule).cloned().unwrap_or_default());
        j["level"] = json!(level_name(level_rank(&j)));
        open.entry(a.patient_id.clone()).or_default().push(j);
    }
    for v in open.values_mut() {
        v.sort_by_key(|a| std::cmp::Reverse((level_rank(a), a["status"] == "firing")));
    }
    open
}

fn device_json(d: &DeviceView, now: i64, silent_us: i64, battery: Option<(f64, i64)>) -> Value {
    json!({
        "device_id": d.device_id,
        "last_seen": d.last_seen_us.map(iso),
        "silent": d.last_seen_us.is_none_or(|t| now - t >= silent_us),
        "battery": battery.map(|(v, t)| json!({"percent": v, "time": iso(t)})),
    })
}

/// One patient's row.
fn row(
    s: &WebState,
    patient: &str,
    alerts: Vec<Value>,
    devices: &[DeviceView],
    now: i64,
) -> (Value, Need) {
    let latest = s.latest.patient(patient);
    let mut vitals = serde_json::Map::new();
    let mut last_us: Option<i64> = None;
    for (code, v) in &latest {
        let Some(vital) = catalogue::by_code(code) else {
            continue;
        };
        last_us = last_us.max(Some(v.time_us));
        vitals.insert(
            vital.key.to_owned(),
            json!({"code": code, "value": v.value, "unit": vital.unit, "time": iso(v.time_us), "spark": v.spark()}),
        );
    }
    let fresh = |code: &str| {
        latest
            .get(code)
            .filter(|v| now - v.time_us <= NEWS2_MAX_AGE_US)
            .map(|v| v.value)
    };
    let score = news2::score(fresh);
    let battery = BATTERY_CODES
        .iter()
        .find_map(|c| latest.get(c).map(|v| (v.value, v.time_us)));
    let silent_us = silent_after_us(s, patient);
    let rank = alerts
        .iter()
        .filter(|a| a["status"] != "snoozed" && a["status"] != "pending")
        .map(level_rank)
        .max()
        .unwrap_or(0);
    let since = last_us.map_or(i64::MAX, |t| (now - t).max(0));
    let v = json!({
        "patient_id": patient,
        "care_team": s.registry.care_team(patient),
        "level": level_name(rank),
        "news2": score,
        "last_data": last_us.map(iso),
        "minutes_since_data": last_us.map(|t| (now - t).max(0) / MINUTE_US),
        "silent": last_us.is_none_or(|t| now - t >= silent_us),
        "vitals": vitals,
        "open_alerts": alerts,
        "devices": devices.iter().map(|d| device_json(d, now, silent_us, battery)).collect::<Vec<_>>(),
    });
    let key = (
        rank,
        score.as_ref().map_or(-1, |n| i64::from(n.score)),
        since,
    );
    (v, key)
}

/// A patient's need: the rank of their highest ranking open alert (0: none), their NEWS2 score
/// (-1: none), µs since their last reading (`i64::MAX`: never).
pub(crate) type Need = (u8, i64, i64);

/// Need order: alert level, then NEWS2, then silence, each highest first; then by patient id.
pub(crate) fn by_need(a: (&str, Need), b: (&str, Need)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0))
}

/// `GET /v1/triage`
pub(crate) async fn triage(State(s): State<WebState>, auth: Result<Caller, AuthError>) -> Response {
    let who = match caller(auth) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let now = chrono::Utc::now().timestamp_micros();
    let mut open = open_alerts(&s, &who);
    let patients = visible_patients(&s, &who);
    let mut devices: HashMap<String, Vec<DeviceView>> = HashMap::new();
    let filter = DeviceFilter {
        limit: usize::MAX,
        revoked: Some(false),
        ..DeviceFilter::default()
    };
    for d in s.registry.list_devices(&filter).0 {
        if let Some(p) = d.patient_id.clone().filter(|p| patients.contains(p)) {
            devices.entry(p).or_default().push(d);
        }
    }
    let mut rows: Vec<(Value, Need)> = patients
        .iter()
        .map(|p| {
            let alerts = open.remove(p).unwrap_or_default();
            let devs = devices.remove(p).unwrap_or_default();
            row(&s, p, alerts, &devs, now)
        })
        .collect();
    rows.sort_by(|(a, ka), (b, kb)| {
        by_need(
            (a["patient_id"].as_str().unwrap_or_default(), *ka),
            (b["patient_id"].as_str().unwrap_or_default(), *kb),
        )
    });
    let out: Vec<Value> = rows.into_iter().map(|(v, _)| v).collect();
    audit(&s, &who, "GET /v1/triage", out.len());
    let name = match &who.person {
        Some(p) => p.name.clone(),
        None => format!(
            "{} token{}",
            who.role.as_str().replace('_', " "),
            who.subject
                .as_deref()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default()
        ),
    };
    let you = json!({"name": name, "actor": who.actor()});
    axum::Json(json!({"generated": iso(now), "you": you, "patients": out})).into_response()
}

/// `GET /v1/patients/{id}/timeline`
pub(crate) async fn timeline(
    State(s): State<WebState>,
    auth: Result<Caller, AuthError>,
    Path(id): Path<String>,
) -> Response {
    let who = match caller(auth) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !may_see(&s, &who, &id) {
        return carewatch_alert::http::error(StatusCode::NOT_FOUND, "not_found", "no such patient");
    }
    let rows = s.alerts.history().since(0);
    let items: Vec<Value> = rows
        .iter()
        .rev()
        .filter(|t| t.patient_id == id)
        .take(TIMELINE_MAX)
        .map(|t| {
            json!({
                "seq": t.seq,
                "at": iso(t.at_us),
                "alert_id": t.alert_id,
                "rule": t.rule,
                "title": t.title,
                "event": t.event.as_str(),
                "status": t.status.as_str(),
                "actor": t.actor,
                "note": t.note,
                "reason": t.reason,
                "assignee": t.assignee,
                "snoozed_until": t.snoozed_until_us.map(iso),
                "value": t.value,
                "notified": t.notified,
            })
        })
        .collect();
    audit(
        &s,
        &who,
        &format!("GET /v1/patients/{id}/timeline"),
        items.len(),
    );
    axum::Json(json!({"patient_id": id, "events": items})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_orders_level_then_news2_then_silence_then_id() {
        const NEVER: i64 = i64::MAX;
        let min = |m: i64| m * MINUTE_US;
        let mut v = vec![
            ("calm", (0, 0, min(2))),
            ("never", (0, -1, NEVER)),
            ("quiet", (0, 0, min(50))),
            ("news", (0, 4, min(2))),
            ("info-alert", (1, 0, min(1))),
            ("urgent", (3, 1, min(1))),
            ("warning-high-news", (2, 9, min(1))),
            ("warning", (2, 2, min(3))),
            ("b-twin", (0, 0, min(2))),
            ("no-news-silent", (0, -1, min(300))),
        ];
        v.sort_by(|a, b| by_need(*a, *b));
        let order: Vec<&str> = v.iter().map(|x| x.0).collect();
        assert_eq!(
            order,
            [
                "urgent",
                "warning-high-news",
                "warning",
                "info-alert",
                "news",
                "quiet",
                "b-twin",
                "calm",
                "never",
                "no-news-silent",
            ]
        );
    }

    #[test]
    fn an_alert_without_a_level_ranks_by_its_severity() {
        let rank = |v: Value| level_rank(&v);
        assert_eq!(rank(json!({"level": "urgent", "severity": "info"})), 3);
        assert_eq!(rank(json!({"severity": "critical"})), 3);
        assert_eq!(rank(json!({"severity": "high"})), 3);
        assert_eq!(rank(json!({"severity": "warning"})), 2);
        assert_eq!(rank(json!({"severity": "info"})), 1);
        assert_eq!(level_name(0), None);
    }
}
