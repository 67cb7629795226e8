//! Webhook delivery: every durable transition (except the `pending` record written when an
//! alert fires) is POSTed as JSON, in history order, to the global receiver, to the receiver of
//! the patient's care team *at delivery time* (authorization follows the patient; a patient
//! without a team goes to the global receiver only), and — for escalations — to the escalation
//! receiver. Each receiver (URL) has its own task and its own durable position
//! (`alerts/webhook.<kind>-<hash>.offset`, seeded from the old shared `alerts/webhook.offset`),
//! so a dead receiver never delays another; see [`deliver`]. A restart re-sends at most the
//! transition in flight (receivers de-duplicate on `fingerprint` + `seq`). In a cluster (a
//! shared history) one node delivers at a time — the owner of partition 0 — from positions
//! kept in PostgreSQL; when it dies the next owner continues from there.
//!
//! The body carries our fields and, beside them, an Adaptive Card (`type: message`,
//! `attachments`) that a Microsoft Teams workflow or a Power Automate "When an HTTP request is
//! received" trigger can post as it is.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::engine::AlertEngine;
use crate::history::{Event, Transition};

use std::collections::BTreeMap;

mod deliver;
mod gauges;
mod notice;
mod positions;

pub use notice::notify_lead;

pub use gauges::{Counters, ReceiverKind};

/// Where transitions go.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// Receives every transition.
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 secret of the global receiver.
    pub webhook_secret: Option<String>,
    /// Per care team.
    pub team_webhooks: BTreeMap<String, String>,
    /// HMAC-SHA256 secrets of the care-team receivers, by team.
    pub team_webhook_secrets: BTreeMap<String, String>,
    /// Receives escalations (the second contact) and failing-receiver notices.
    pub escalation_url: Option<String>,
    /// HMAC-SHA256 secret of the escalation receiver.
    pub escalation_secret: Option<String>,
    /// Attempts after which a transition of a *resolved* alert is given up (an open alert's
    /// transitions are retried for as long as it takes).
    pub attempts: u32,
    /// First retry delay (doubles, capped at `backoff_cap`).
    pub backoff: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// A receiver failing continuously for longer than this is reported to the escalation
    /// receiver (once per failure stretch) and on `/metrics`.
    pub failure_escalate_after: Duration,
    /// Escalation chains by care team: each step's receivers get the alert from its step on.
    pub chains: Arc<crate::chain::Chains>,
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
    let mut v = json!({
        "version": "1",
        "fingerprint": t.alert_id,
        "alert_id": t.alert_id,
        "seq": t.seq,
        "event": t.event.as_str(),
        "status": status,
        "rule": t.rule,
        "title": t.title,
        "severity": t.severity.as_str(),
        "level": t.level.as_str(),
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
    });
    // What people did (the care-manager actions), on every transition that has it.
    v["assignee"] = json!(t.assignee);
    v["snoozed_until"] = json!(t.snoozed_until_us.map(iso));
    v["note"] = json!(t.note);
    v["reason"] = json!(t.reason);
    v["actor"] = json!(t.actor);
    v["notified"] = json!(t.notified);
    v["held"] = json!(t.held);
    v["held_until"] = json!(t.held_until_us.map(iso));
    v
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
/// and the [`feed_payload`]. None for a held alert's transitions (see
/// [`crate::engine::Current::held`]), for a patient without a team (`unassigned` is not a team:
/// such alerts reach admins through the API and the global webhook only), for `pending`
/// records, and for a team name that cannot be a topic level (`+`, `#`, NUL).
pub fn mqtt_message(engine: &AlertEngine, t: &Arc<Transition>) -> Option<(String, String)> {
    if t.event == Event::Pending || t.held.is_some() {
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

/// Delivers transitions until `shutdown`: one task per receiver (dropping this future stops
/// them all).
pub async fn run(
    engine: AlertEngine,
    routes: Routes,
    counters: Arc<Counters>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let receivers = deliver::receivers(&routes);
    if receivers.is_empty() {
        return;
    }
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
    let history = engine.history().clone();
    let shared = history.is_shared();
    let (path, rs, end) = (history.path().to_owned(), receivers.clone(), history.len());
    let starts = if shared {
        vec![0; receivers.len()]
    } else {
        tokio::task::spawn_blocking(move || positions::start_positions(&path, &rs, end as u64))
            .await
            .unwrap_or_default()
    };
    let escalation = receivers.iter().find(|r| r.escalation).cloned();
    let mut tasks = tokio::task::JoinSet::new();
    for (r, start) in receivers.into_iter().zip(starts) {
        let ctx = deliver::Ctx {
            engine: engine.clone(),
            routes: routes.clone(),
            counters: counters.clone(),
            client: client.clone(),
            escalation: escalation.clone(),
            gauge: counters.gauge(r.kind),
            shutdown: shutdown.clone(),
        };
        if shared {
            tasks.spawn(deliver::shared_receiver_loop(ctx, r));
        } else {
            tasks.spawn(deliver::receiver_loop(ctx, r, start));
        }
    }
    while tasks.join_next().await.is_some() {}
}
