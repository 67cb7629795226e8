//! The CapabilityStatement of carewatch's FHIR API (`GET /fhir/metadata`): exactly what is
//! served — Observation `read`, `search-type` with the parameters [`crate::search`] accepts,
//! `create` (`POST /fhir/Observation`, a device or FHIR client sending readings) and
//! `$lastn`; Patient and Device `read` (what the registry holds) and, with CareTeam, `create`
//! and `update` (the registry writes of `ingest::identity`); Communication (alerts) `read` and
//! `search-type`; Subscription `create`, `read`, `delete`, `search-type`, `$status` and
//! `$events` (Backport IG topics).
//! The search parameters listed here are tested against [`crate::search::parse`], and the
//! served routes against this list (tests/fhir_read.rs), so they cannot drift apart.

use serde_json::{Value, json};

/// The search parameters of `GET /fhir/Observation`: name, FHIR type, definition, what it does.
pub const SEARCH_PARAMS: [(&str, &str, &str, &str); 7] = [
    (
        "patient",
        "reference",
        "http://hl7.org/fhir/SearchParameter/clinical-patient",
        "The patient (`Patient/{id}` or `{id}`).",
    ),
    (
        "subject",
        "reference",
        "http://hl7.org/fhir/SearchParameter/Observation-subject",
        "Same as patient: carewatch's subjects are patients.",
    ),
    (
        "code",
        "token",
        "http://hl7.org/fhir/SearchParameter/clinical-code",
        "LOINC codes, comma-separated, each optionally `system|code`; a blood-pressure component code also finds the panel.",
    ),
    (
        "category",
        "token",
        "http://hl7.org/fhir/SearchParameter/Observation-category",
        "observation-category codes (vital-signs, activity, laboratory), comma-separated, each optionally `system|code`.",
    ),
    (
        "device",
        "reference",
        "http://hl7.org/fhir/SearchParameter/Observation-device",
        "The measuring device (`Device/{id}` or `{id}`).",
    ),
    (
        "date",
        "date",
        "http://hl7.org/fhir/SearchParameter/clinical-date",
        "Effective time with an optional eq/ge/gt/le/lt prefix; repeatable.",
    ),
    (
        "_lastUpdated",
        "date",
        "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
        "When carewatch received the reading (meta.lastUpdated), with an optional eq/ge/gt/le/lt prefix; repeatable.",
    ),
];

const OBSERVATION_SEARCH_DOC: &str = "Paged with _count (1-1000, default 50) and _offset; a searchset Bundle with self/next/previous links. _sort: date (default), -date, _lastUpdated, -_lastUpdated. _summary=count answers the total only.";

fn search_params(params: &[(&str, &str, &str, &str)]) -> Vec<Value> {
    params
        .iter()
        .map(|(name, ty, def, doc)| {
            json!({"name": name, "definition": def, "type": ty, "documentation": doc})
        })
        .collect()
}

/// A resource entry with carewatch's fixed answers to the versioning and conditional questions.
fn resource(ty: &str, interactions: Value) -> Value {
    json!({
        "type": ty,
        "profile": format!("http://hl7.org/fhir/StructureDefinition/{ty}"),
        "interaction": interactions,
        "versioning": "no-version",
        "readHistory": false,
        "updateCreate": false,
        "conditionalCreate": false,
        "conditionalUpdate": false,
        "conditionalDelete": "not-supported"
    })
}

fn observation() -> Value {
    let mut r = resource(
        "Observation",
        json!([
            {"code": "read"},
            {"code": "search-type", "documentation": OBSERVATION_SEARCH_DOC},
            {"code": "create", "documentation": "A device or FHIR client sends an Observation (or a Bundle of them to the base URL); it is normalised and stored like every reading."}
        ]),
    );
    r["supportedProfile"] = json!([
        "http://hl7.org/fhir/StructureDefinition/vitalsigns",
        "http://hl7.org/fhir/StructureDefinition/heartrate",
        "http://hl7.org/fhir/StructureDefinition/oxygensat",
        "http://hl7.org/fhir/StructureDefinition/bodytemp",
        "http://hl7.org/fhir/StructureDefinition/bodyweight",
        "http://hl7.org/fhir/StructureDefinition/resprate",
        "http://hl7.org/fhir/StructureDefinition/bp"
    ]);
    r["searchParam"] = Value::Array(search_params(&SEARCH_PARAMS));
    r["operation"] = json!([{
        "name": "lastn",
        "definition": "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
        "documentation": "GET /fhir/Observation/$lastn?patient=…: the latest Observation per code (max per code, default 1; code, category, date and _lastUpdated filter)."
    }]);
    r
}

/// Patient, Device and CareTeam: read from the registry (`query`), written into it by
/// `POST`/`PUT` (`ingest::identity`, which creates on a `PUT` of an unknown id).
fn registry_resource(ty: &str, read: Option<&str>, write: &str) -> Value {
    let mut interactions = Vec::new();
    if let Some(what) = read {
        interactions.push(json!({"code": "read", "documentation": what}));
    }
    interactions.push(json!({"code": "create", "documentation": write}));
    interactions.push(json!({"code": "update", "documentation": write}));
    let mut r = resource(ty, Value::Array(interactions));
    r["updateCreate"] = json!(true);
    r
}

fn communication() -> Value {
    let mut r = resource(
        "Communication",
        json!([
            {"code": "read", "documentation": "An alert as it stands (its latest transition): GET /fhir/Communication/{alert id}."},
            {"code": "search-type", "documentation": "Alerts, newest episode first, paged with _count and _offset."}
        ]),
    );
    r["searchParam"] = Value::Array(search_params(&crate::communication::SEARCH_PARAMS));
    r
}

fn subscription() -> Value {
    use crate::subscription::{ALERT_TOPIC, BACKPORT, OBSERVATION_TOPIC};
    let ops = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition";
    let mut r = resource(
        "Subscription",
        json!([
            {"code": "create", "documentation": "A topic-based rest-hook subscription (Subscriptions R5 Backport IG, R4 form): handshake, heartbeat, one notification per event (three tries, then recover it with $events)."},
            {"code": "read"},
            {"code": "delete", "documentation": "Stops its notifications; its owner, an admin or a care manager of the owner's team."},
            {"code": "search-type", "documentation": "The subscriptions the caller may see."}
        ]),
    );
    r["searchParam"] = json!([{
        "name": "status", "type": "token",
        "definition": "http://hl7.org/fhir/SearchParameter/Subscription-status",
        "documentation": "requested, active, error or off; comma-separated."
    }]);
    r["supportedProfile"] = json!([format!("{BACKPORT}/backport-subscription")]);
    r["extension"] = json!([ALERT_TOPIC, OBSERVATION_TOPIC].map(|t| json!({
        "url": format!("{BACKPORT}/capabilitystatement-subscriptiontopic-canonical"),
        "valueCanonical": t
    })));
    r["operation"] = json!([
        {"name": "status", "definition": format!("{ops}/backport-subscription-status"), "documentation": "GET /fhir/Subscription/{id}/$status"},
        {"name": "events", "definition": format!("{ops}/backport-subscription-events"), "documentation": "GET /fhir/Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber= (at most 100 events; numbers no longer kept answer 410 with an OperationOutcome)"}
    ]);
    r
}

/// The resource types served, in the order the CapabilityStatement lists them.
pub fn resources() -> Vec<Value> {
    vec![
        observation(),
        registry_resource(
            "Patient",
            Some(
                "A patient the registry knows (a device assignment or a care team), with that care team.",
            ),
            "Admins send a Patient; its id is the patient id the registry and every Observation use.",
        ),
        registry_resource(
            "Device",
            Some(
                "A registered device, its status (inactive once revoked) and the patient it is assigned to now.",
            ),
            "Admins register a device (its id from Device.identifier) and assign it to Device.patient; the secret comes back once in X-Carewatch-Device-Secret.",
        ),
        registry_resource(
            "CareTeam",
            None,
            "Admins put CareTeam.subject into the care team CareTeam.name.",
        ),
        communication(),
        subscription(),
    ]
}

/// The CapabilityStatement. `base` is the FHIR base URL as the client reached it (e.g.
/// `https://host/fhir`), `version` carewatch's version, `date` when this build's statement was
/// made (a FHIR dateTime), `smart` whether an OpenID Connect issuer is configured (tokens from
/// it are accepted, SMART discovery is served).
pub fn capability_statement(base: &str, version: &str, date: &str, smart: bool) -> Value {
    let mut security = json!({
        "cors": false,
        "description": "Every request needs a bearer token: a carewatch credential (analyst, admin or care manager; a care manager sees the patients of their care team only; devices may only create)"
    });
    if smart {
        security["service"] = json!([{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR"
            }]
        }]);
        security["description"] = json!(
            "Every request needs a bearer token: a carewatch credential or a JWT from the configured OpenID Connect issuer (see /fhir/.well-known/smart-configuration); a care manager sees the patients of their care team only; devices may only create"
        );
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "carewatch",
        "kind": "instance",
        "software": {"name": "carewatch", "version": version},
        "implementation": {
            "description": "carewatch remote patient monitoring: vital-sign Observations, the patients and devices they come from",
            "url": base
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "security": security,
            "resource": resources()
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{SearchError, parse};

    #[test]
    fn listed_parameters_are_exactly_the_accepted_ones() {
        for (name, ..) in SEARCH_PARAMS {
            let value = if name == "date" || name == "_lastUpdated" {
                "ge2024-01-01T00:00:00Z"
            } else {
                "x"
            };
            assert!(parse(Some(&format!("{name}={value}"))).is_ok(), "{name}");
        }
        for other in ["identifier", "status", "performer", "value-quantity"] {
            assert_eq!(
                parse(Some(&format!("{other}=x"))),
                Err(SearchError::NotSupported(other.to_owned()))
            );
        }
    }

    #[test]
    fn statement_shape() {
        let c = capability_statement("http://h/fhir", "0.1.0", "2026-01-01", true);
        assert_eq!(c["kind"], "instance");
        assert_eq!(c["implementation"]["url"], "http://h/fhir");
        let r = &c["rest"][0]["resource"][0];
        assert_eq!(
            r["searchParam"].as_array().map(Vec::len),
            Some(SEARCH_PARAMS.len())
        );
        assert_eq!(
            c["rest"][0]["security"]["service"][0]["coding"][0]["code"],
            "SMART-on-FHIR"
        );
    }
}
