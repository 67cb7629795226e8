//! Webhook delivery: every durable transition (except the `pending` record written when an
//! alert fires) is POSTed as JSON, in history order, to the global receiver, to the receiver of
//! the patient's care team *at delivery time* (authorization follows the patient; a patient
//! without a team goes to the global receiver only), and — for escalations — to the escalation
//! receiver. Retries back off
//! exponentially; the position reached is kept in `alerts/webhook.offset`, so a restart
//! re-sends at most the transition in flight (receivers de-duplicate on
//! `fingerprint` + `seq`).
//!
//! The body carries our fields and, beside them, an Adaptive Card (`type: message`,
//! `attachments`) that a Microsoft Teams workflow or a Power Automate "When an HTTP request is
//! received" trigger can post as it is.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::engine::AlertEngine;
use crate::history::{Event, Transition};

/// Where transitions go.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// Receives every transition.
    pub webhook_url: Option<String>,
    /// Per care team.
    pub team_webhooks: BTreeMap<String, String>,
    /// Receives escalations (the second contact).
    pub escalation_url: Option<String>,
    /// Attempts per delivery before giving up on it.
    pub attempts: u32,
    /// First retry delay (doubles, capped at 60 s).
    pub backoff: Duration,
}

/// Delivery counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Deliveries that succeeded.
    pub delivered: AtomicU64,
    /// Failed attempts.
    pub failed_attempts: AtomicU64,
    /// Deliveries given up.
    pub dropped: AtomicU64,
}

use crate::iso;

/// The JSON body for one transition.
pub fn payload(t: &Transition) -> Value {
    let status = t.status.as_str();
    let headline = format!(
        "[{}] {} — {} ({})",
        t.severity.as_str().to_uppercase(),
        t.title,
        t.event.as_str(),
        status
    );
    let mut facts = vec![
        json!({"title": "Patient", "value": t.patient_id}),
        json!({"title": "Since", "value": iso(t.episode_start_us)}),
        json!({"title": "Status", "value": status}),
    ];
    if let Some(team) = &t.care_team {
        facts.push(json!({"title": "Care team", "value": team}));
    }
    if t.escalation_level > 0 {
        facts.push(json!({"title": "Escalation", "value": t.escalation_level.to_string()}));
    }
    json!({
        "version": "1",
        "fingerprint": t.alert_id,
        "alert_id": t.alert_id,
        "seq": t.seq,
        "event": t.event.as_str(),
        "status": status,
        "rule": t.rule,
        "title": t.title,
        "severity": t.severity.as_str(),
        "patient_id": t.patient_id,
        "care_team": t.care_team,
        "message": t.message,
        "value": t.value,
        "episode_start": iso(t.episode_start_us),
        "episode_end": iso(t.episode_end_us),
        "escalation_level": t.escalation_level,
        "acknowledged_by": t.acknowledged_by,
        "previous_care_team": t.previous_care_team,
        "at": iso(t.at_us),
        "text": format!("{headline}: {}", t.message),
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": headline, "weight": "Bolder", "wrap": true},
                    {"type": "TextBlock", "text": t.message, "wrap": true},
                    {"type": "FactSet", "facts": facts}
                ]
            }
        }]
    })
}

/// The body for live feeds (SSE, MQTT): [`payload`] without the Teams card.
pub fn feed_payload(t: &Transition) -> Value {
    let mut v = payload(t);
    if let Some(o) = v.as_object_mut() {
        o.remove("attachments");
        o.remove("type");
    }
    v
}

/// The transition as it is routed now: `care_team` is the patient's team at delivery (which
/// differs from the stored one only when the patient moved after it was written).
pub fn routed(t: &Arc<Transition>, team: Option<String>) -> Arc<Transition> {
    if t.care_team == team {
        return t.clone();
    }
    let mut r = (**t).clone();
    r.care_team = team;
    Arc::new(r)
}

/// The MQTT message of a transition: `carewatch/alerts/{team}` for the patient's care team now
/// and the [`feed_payload`]. None for a patient without a team (`unassigned` is not a team:
/// such alerts reach admins through the API and the global webhook only), for `pending`
/// records, and for a team name that cannot be a topic level (`+`, `#`, NUL).
pub fn mqtt_message(engine: &AlertEngine, t: &Arc<Transition>) -> Option<(String, String)> {
    if t.event == Event::Pending {
        return None;
    }
    let team = engine.team_of(&t.patient_id)?;
    if team.contains(['+', '#', '\0']) {
        tracing::debug!("care team name is not a topic level; alert not published on MQTT");
        return None;
    }
    let t = routed(t, Some(team.clone()));
    Some((
        format!("carewatch/alerts/{team}"),
        feed_payload(&t).to_string(),
    ))
}

/// Receivers of one transition.
fn receivers(routes: &Routes, t: &Transition) -> Vec<String> {
    if t.event == Event::Pending {
        return Vec::new();
    }
    let mut v: Vec<String> = Vec::new();
    v.extend(routes.webhook_url.clone());
    if let Some(u) = t
        .care_team
        .as_ref()
        .and_then(|c| routes.team_webhooks.get(c))
    {
        v.push(u.clone());
    }
    if t.event == Event::Escalated
        && let Some(u) = &routes.escalation_url
    {
        v.push(u.clone());
    }
    v.sort();
    v.dedup();
    v
}

fn read_offset(p: &PathBuf) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_offset(p: &PathBuf, n: u64) {
    let tmp = p.with_extension("tmp");
    if std::fs::write(&tmp, n.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, p);
    }
}

/// Delivers transitions until `shutdown`.
pub async fn run(
    engine: AlertEngine,
    routes: Routes,
    counters: Arc<Counters>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let history = engine.history().clone();
    if routes.webhook_url.is_none()
        && routes.team_webhooks.is_empty()
        && routes.escalation_url.is_none()
    {
        return;
    }
    let offset_file = history.path().with_file_name("webhook.offset");
    let mut next = read_offset(&offset_file);
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client");
            return;
        }
    };
    loop {
        let batch = history.since(next);
        if batch.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = engine.written().notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        for t in batch {
            let t = routed(&t, engine.team_of(&t.patient_id));
            for url in receivers(&routes, &t) {
                let body = payload(&t);
                let mut delay = routes.backoff;
                let mut ok = false;
                for attempt in 1..=routes.attempts.max(1) {
                    let r = client.post(&url).json(&body).send().await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            ok = true;
                            break;
                        }
                        Ok(r) => {
                            tracing::warn!(
                                status = r.status().as_u16(),
                                attempt,
                                "webhook refused an alert"
                            )
                        }
                        Err(e) => {
                            tracing::warn!(error = %e.without_url(), attempt, "webhook delivery failed")
                        }
                    }
                    counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if attempt == routes.attempts.max(1) {
                        break;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
                if ok {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(seq = t.seq, "webhook delivery given up");
                }
            }
            next = t.seq + 1;
            write_offset(&offset_file, next);
        }
    }
}
