//! What FHIR subscriptions hear: every alert transition as its `Communication` (the alert
//! topic), and each stored batch's latest vital-sign reading per patient and code as its
//! `Observation` (the vital-sign topic). Both run on their own tasks; the store's append
//! observer only hands the summary over (never blocks ingest), and nothing is looked up when
//! no subscription is on the topic.

use carewatch_alert::history::Transition;
use carewatch_fhir::communication::{Alert, communication};
use carewatch_fhir::subscription::{ALERT_TOPIC, OBSERVATION_TOPIC};
use carewatch_query::subscriptions::{Published, Subscriptions};
use carewatch_transform::catalogue::{Category, by_code};
use tokio_util::sync::CancellationToken;

/// The alert as the FHIR read side shows it (without the triggering Observations, which
/// `GET /fhir/Communication/{id}` looks up). No title: the `alerts` table the read side builds
/// from has none, and a Communication must be the same wherever it is seen (served, notified,
/// delivered) — `about.display` is the rule id.
fn alert(t: &Transition) -> Alert {
    // `level` is read through serde so this does not depend on when it was added.
    let level = serde_json::to_value(t)
        .ok()
        .and_then(|v| v.get("level").and_then(|l| l.as_str()).map(str::to_owned));
    Alert {
        id: t.alert_id.clone(),
        seq: t.seq,
        updated_us: t.at_us,
        rule: t.rule.clone(),
        title: None,
        severity: t.severity.as_str().to_owned(),
        level,
        patient: t.patient_id.clone(),
        care_team: t.care_team.clone(),
        status: t.status.as_str().to_owned(),
        start_us: t.episode_start_us,
        message: t.message.clone(),
        observations: Vec::new(),
    }
}

/// The alert history as the FHIR destination's source of alert transitions.
pub struct HistoryAlerts(pub std::sync::Arc<carewatch_alert::history::History>);

impl carewatch_deliver::alerts::AlertSource for HistoryAlerts {
    fn since(&self, seq: u64, max: usize) -> Vec<carewatch_query::fhir_communication::Found> {
        self.0
            .since(seq)
            .iter()
            .take(max)
            .map(|t| (alert(t), t.episode_end_us, t.value))
            .collect()
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

/// Starts both feeds.
pub fn spawn(
    subs: Subscriptions,
    alerts: &carewatch_alert::AlertEngine,
    store: &carewatch_store::Store,
    engine: carewatch_query::QueryEngine,
    registry: std::sync::Arc<carewatch_store::registry::Registry>,
    shutdown: CancellationToken,
) {
    let mut rx = alerts.subscribe();
    let (s, sd) = (subs.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let t = tokio::select! {
                () = sd.cancelled() => return,
                t = rx.recv() => t,
            };
            match t {
                Ok(t) => {
                    let a = alert(&t);
                    s.publish(Published {
                        topic: ALERT_TOPIC,
                        patient: a.patient.clone(),
                        care_team: a.care_team.clone(),
                        code: None,
                        focus: format!("Communication/{}", a.id),
                        resource: communication(&a),
                        timestamp: carewatch_fhir::communication::instant(t.at_us),
                    });
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "fhir subscriptions: alert feed lagged");
                }
                Err(_) => return,
            }
        }
    });
    let (tx, mut readings) = tokio::sync::mpsc::channel::<(String, &'static str, i64)>(4096);
    let wanted = subs.clone();
    store.observe_appends(std::sync::Arc::new(
        move |sum: &carewatch_store::AppendSummary| {
            if !wanted.wants(OBSERVATION_TOPIC) {
                return;
            }
            // One event per Observation: the two halves of a blood pressure are one.
            let mut seen = std::collections::HashSet::new();
            for (patient, code, at, _) in &sum.latest {
                let Some(v) = by_code(code).filter(|v| v.category == Category::VitalSigns) else {
                    continue;
                };
                if seen.insert((patient, v.panel.unwrap_or(v.code), *at))
                    && tx.try_send((patient.clone(), v.code, *at)).is_err()
                {
                    tracing::warn!("fhir subscriptions: observation feed behind, one dropped");
                }
            }
        },
    ));
    tokio::spawn(async move {
        loop {
            let (patient, code, at) = tokio::select! {
                () = shutdown.cancelled() => return,
                r = readings.recv() => match r { Some(r) => r, None => return },
            };
            let Some((id, o)) =
                carewatch_query::fhir_search::observation_at(&engine, &patient, code, at).await
            else {
                continue;
            };
            subs.publish(Published {
                topic: OBSERVATION_TOPIC,
                care_team: registry.care_team(&patient),
                patient,
                code: Some(code.to_owned()),
                focus: format!("Observation/{id}"),
                resource: o,
                timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            });
        }
    });
}
