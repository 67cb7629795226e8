//! Alerts delivered as FHIR `Communication`s: every alert transition updates the alert's
//! Communication on the destination, through the same loop, Bundles, retries, dead letters and
//! status as Observations (`run`).
//!
//! The resource is the one carewatch serves at `GET /fhir/Communication/{alert id}`
//! ([`carewatch_fhir::communication`], one code path) without its server-local `id` and `meta`,
//! written with a conditional update by its identifier, `PUT
//! Communication?identifier=urn:carewatch:alert|{alert id}`, so each alert is one resource on
//! the server whose status follows the alert (preparation → in-progress → on-hold →
//! completed). The triggering Observations are referenced by the business identifier they are
//! delivered with (the server gives them its own ids). The position is the alert history's
//! (`seq`): transitions are taken in history order, and of several transitions of one alert in
//! a cycle only the latest is sent (an update replaces the resource), so each alert's
//! Communication moves forward only.

use std::sync::Arc;

use serde_json::{Value, json};

use carewatch_fhir::communication::{ALERT_SYSTEM, Alert, communication};
use carewatch_query::fhir_communication::Found;

use crate::bundle::{Entry, conditional_url};

/// Where alert transitions come from: the alert history, in its order (positions 0, 1, …).
pub trait AlertSource: Send + Sync {
    /// At most `max` transitions from history position `seq` on, each as the alert it leaves
    /// (with the episode's end and worst value, for the triggering Observations).
    fn since(&self, seq: u64, max: usize) -> Vec<Found>;
    /// How many transitions the history holds.
    fn len(&self) -> u64;
}

/// A shared alert source.
pub type Alerts = Arc<dyn AlertSource>;

/// The latest state of each alert among `changes` (in history order), ordered by that latest
/// transition.
pub fn latest(changes: Vec<Found>) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    for c in changes {
        out.retain(|(a, ..)| a.id != c.0.id);
        out.push(c);
    }
    out
}

/// The Communication the destination receives for an alert.
pub fn entry(a: &Alert, observation_system: &str) -> Entry {
    let mut c = communication(a);
    if let Some(o) = c.as_object_mut() {
        o.remove("id");
        o.remove("meta");
    }
    if !a.observations.is_empty() {
        c["reasonReference"] = Value::Array(
            a.observations
                .iter()
                .map(|id| {
                    json!({"type": "Observation",
                           "identifier": {"system": observation_system, "value": id}})
                })
                .collect(),
        );
    }
    Entry {
        id: a.id.clone(),
        resource_type: "Communication",
        device_id: String::new(),
        resource: c,
        url: conditional_url("Communication", ALERT_SYSTEM, &a.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: &str, status: &str, seq: u64) -> Found {
        let a = Alert {
            id: id.into(),
            seq,
            updated_us: 1_714_550_400_000_000,
            rule: "tachycardia".into(),
            title: None,
            severity: "high".into(),
            level: None,
            patient: "alice".into(),
            care_team: Some("north".into()),
            status: status.into(),
            start_us: 1_714_550_400_000_000,
            message: "HR 130".into(),
            observations: vec!["0123456789abcdef0123456789abcdef".into()],
        };
        (a, 1_714_550_460_000_000, Some(130.0))
    }

    #[test]
    fn one_entry_per_alert_its_latest_state_by_identifier() {
        let got = latest(vec![
            alert("a1", "pending", 0),
            alert("a2", "firing", 1),
            alert("a1", "firing", 2),
            alert("a1", "resolved", 3),
        ]);
        let ids: Vec<_> = got
            .iter()
            .map(|(a, ..)| (a.id.as_str(), a.status.as_str()))
            .collect();
        assert_eq!(ids, [("a2", "firing"), ("a1", "resolved")]);
        let e = entry(&got[1].0, "urn:carewatch:observation");
        assert_eq!(
            e.url,
            "Communication?identifier=urn%3Acarewatch%3Aalert%7Ca1"
        );
        let c = &e.resource;
        assert!(c.get("id").is_none() && c.get("meta").is_none());
        assert_eq!(c["status"], "completed");
        assert_eq!(c["identifier"][0]["system"], ALERT_SYSTEM);
        assert_eq!(
            c["reasonReference"][0]["identifier"]["system"],
            "urn:carewatch:observation"
        );
    }
}
