//! An alert as a FHIR R4 `Communication`: category `alert`, the patient as subject, the care
//! team as recipient, the rule as `about`, the triggering Observations as `reasonReference`,
//! priority from the alert's level (or its severity), status from where the alert is in its
//! life, `meta.versionId` the history position of its latest transition. Pure: the caller
//! gathers an [`Alert`] from the alert history.

use serde_json::{Value, json};

/// The communication-category code system.
pub const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/communication-category";
/// The identifier system of carewatch's alert ids.
pub const ALERT_SYSTEM: &str = "urn:carewatch:alert";
/// The identifier system of rule ids (the `about` reference).
pub const RULE_SYSTEM: &str = "urn:carewatch:rule";
/// The identifier system of care teams (the recipient).
pub const CARE_TEAM_SYSTEM: &str = "urn:carewatch:care-team";

/// The search parameters of `GET /fhir/Communication`: name, FHIR type, definition, doc.
pub const SEARCH_PARAMS: [(&str, &str, &str, &str); 6] = [
    (
        "patient",
        "reference",
        "http://hl7.org/fhir/SearchParameter/Communication-patient",
        "The patient the alert is about.",
    ),
    (
        "subject",
        "reference",
        "http://hl7.org/fhir/SearchParameter/Communication-subject",
        "Same as patient.",
    ),
    (
        "status",
        "token",
        "http://hl7.org/fhir/SearchParameter/Communication-status",
        "preparation (pending), in-progress (firing or acknowledged), on-hold (snoozed), completed (resolved); comma-separated.",
    ),
    (
        "sent",
        "date",
        "http://hl7.org/fhir/SearchParameter/Communication-sent",
        "When the alert's episode started, with an optional eq/ge/gt/le/lt prefix; repeatable.",
    ),
    (
        "date",
        "date",
        "http://hl7.org/fhir/SearchParameter/Communication-sent",
        "Same as sent.",
    ),
    (
        "_lastUpdated",
        "date",
        "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
        "The alert's latest transition, with an optional eq/ge/gt/le/lt prefix; repeatable.",
    ),
];

/// What a Communication says about one alert, as its latest transition left it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Alert id.
    pub id: String,
    /// History position of the latest transition.
    pub seq: u64,
    /// When the latest transition happened, UTC µs.
    pub updated_us: i64,
    /// Rule id.
    pub rule: String,
    /// Rule title, when known.
    pub title: Option<String>,
    /// `info`, `warning`, `high` or `critical`.
    pub severity: String,
    /// `urgent`, `warning` or `info`, when the alert has one.
    pub level: Option<String>,
    /// Patient.
    pub patient: String,
    /// The care team the alert belongs to.
    pub care_team: Option<String>,
    /// `pending`, `firing`, `acknowledged`, `snoozed` or `resolved`.
    pub status: String,
    /// Episode start, UTC µs.
    pub start_us: i64,
    /// The human message.
    pub message: String,
    /// The Observations that triggered it (ids).
    pub observations: Vec<String>,
}

/// The Communication status of an alert status (event-status value set).
pub fn status(alert_status: &str) -> &'static str {
    match alert_status {
        "pending" => "preparation",
        "firing" | "acknowledged" => "in-progress",
        "snoozed" => "on-hold",
        "resolved" => "completed",
        _ => "unknown",
    }
}

/// The alert statuses a Communication status stands for (for `status=` searches).
pub fn alert_statuses(communication_status: &str) -> &'static [&'static str] {
    match communication_status {
        "preparation" => &["pending"],
        "in-progress" => &["firing", "acknowledged"],
        "on-hold" => &["snoozed"],
        "completed" => &["resolved"],
        _ => &[],
    }
}

/// The request priority: from the level when there is one, else from the severity.
pub fn priority(level: Option<&str>, severity: &str) -> &'static str {
    match (level, severity) {
        (Some("urgent"), _) => "stat",
        (Some("warning"), _) => "urgent",
        (Some(_), _) => "routine",
        (None, "critical") => "stat",
        (None, "high") => "asap",
        (None, "warning") => "urgent",
        (None, _) => "routine",
    }
}

fn fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// RFC 3339 UTC (a FHIR instant).
pub fn instant(us: i64) -> String {
    carewatch_transform::time::format_rfc3339(us, None)
}

/// The Communication JSON of an alert.
pub fn communication(a: &Alert) -> Value {
    let mut c = json!({
        "resourceType": "Communication",
        "id": a.id,
        "meta": {"versionId": a.seq.to_string(), "lastUpdated": instant(a.updated_us)},
        "identifier": [{"system": ALERT_SYSTEM, "value": a.id}],
        "status": status(&a.status),
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "alert", "display": "Alert"}]}],
        "priority": priority(a.level.as_deref(), &a.severity),
        "subject": {"reference": format!("Patient/{}", a.patient)},
        "about": [{
            "identifier": {"system": RULE_SYSTEM, "value": a.rule},
            "display": a.title.clone().unwrap_or_else(|| a.rule.clone())
        }],
        "sent": instant(a.start_us),
        "payload": [{"contentString": a.message}]
    });
    if let Some(team) = &a.care_team {
        let mut r = json!({"type": "CareTeam", "identifier": {"system": CARE_TEAM_SYSTEM, "value": team}, "display": format!("Care team {team}")});
        if fhir_id(team) {
            r["reference"] = json!(format!("CareTeam/{team}"));
        }
        c["recipient"] = json!([r]);
    }
    if !a.observations.is_empty() {
        c["reasonReference"] = Value::Array(
            a.observations
                .iter()
                .map(|o| json!({"reference": format!("Observation/{o}")}))
                .collect(),
        );
    }
    if a.status == "snoozed" {
        c["statusReason"] = json!({"text": "snoozed"});
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            id: "a1b2".into(),
            seq: 7,
            updated_us: 1_714_550_400_500_000,
            rule: "tachycardia".into(),
            title: Some("Resting heart rate high".into()),
            severity: "high".into(),
            level: None,
            patient: "alice".into(),
            care_team: Some("north".into()),
            status: "firing".into(),
            start_us: 1_714_550_400_000_000,
            message: "HR 130".into(),
            observations: vec!["ab".into()],
        }
    }

    #[test]
    fn shape_status_and_priority() {
        let c = communication(&alert());
        assert_eq!(c["status"], "in-progress");
        assert_eq!(c["priority"], "asap");
        assert_eq!(c["meta"]["lastUpdated"], "2024-05-01T08:00:00.500Z");
        assert_eq!(c["sent"], "2024-05-01T08:00:00Z");
        assert_eq!(c["recipient"][0]["reference"], "CareTeam/north");
        assert_eq!(c["reasonReference"][0]["reference"], "Observation/ab");
        let mut a = alert();
        a.level = Some("urgent".into());
        a.status = "resolved".into();
        a.care_team = Some("north team".into());
        let c = communication(&a);
        assert_eq!(
            (c["priority"].as_str(), c["status"].as_str()),
            (Some("stat"), Some("completed"))
        );
        assert!(c["recipient"][0].get("reference").is_none());
        for s in ["pending", "firing", "acknowledged", "snoozed", "resolved"] {
            assert!(alert_statuses(status(s)).contains(&s), "{s}");
        }
        assert_eq!(priority(Some("info"), "critical"), "routine");
        assert_eq!(priority(None, "critical"), "stat");
        assert_eq!(priority(None, "warning"), "urgent");
    }
}
