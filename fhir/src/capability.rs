//! The CapabilityStatement of carewatch's FHIR API (`GET /fhir/metadata`): exactly what is
//! served — Observation `read`, `search-type` with the parameters [`crate::search`] accepts,
//! and `create` (`POST /fhir/Observation`, a device or FHIR client sending readings). The
//! search parameters listed here are tested against [`crate::search::parse`], so the two
//! cannot drift apart.

use serde_json::{Value, json};

/// The search parameters of `GET /fhir/Observation`: name, FHIR type, definition, what it does.
pub const SEARCH_PARAMS: [(&str, &str, &str, &str); 5] = [
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
];

/// The CapabilityStatement. `base` is the FHIR base URL as the client reached it (e.g.
/// `https://host/fhir`), `version` carewatch's version, `date` when this build's statement was
/// made (a FHIR dateTime), `smart` whether an OpenID Connect issuer is configured (tokens from
/// it are accepted, SMART discovery is served).
pub fn capability_statement(base: &str, version: &str, date: &str, smart: bool) -> Value {
    let params: Vec<Value> = SEARCH_PARAMS
        .iter()
        .map(|(name, ty, def, doc)| {
            json!({"name": name, "definition": def, "type": ty, "documentation": doc})
        })
        .collect();
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
            "description": "carewatch remote patient monitoring: vital-sign Observations",
            "url": base
        },
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "security": security,
            "resource": [{
                "type": "Observation",
                "profile": "http://hl7.org/fhir/StructureDefinition/Observation",
                "supportedProfile": [
                    "http://hl7.org/fhir/StructureDefinition/vitalsigns",
                    "http://hl7.org/fhir/StructureDefinition/heartrate",
                    "http://hl7.org/fhir/StructureDefinition/oxygensat",
                    "http://hl7.org/fhir/StructureDefinition/bodytemp",
                    "http://hl7.org/fhir/StructureDefinition/bodyweight",
                    "http://hl7.org/fhir/StructureDefinition/resprate",
                    "http://hl7.org/fhir/StructureDefinition/bp"
                ],
                "interaction": [
                    {"code": "read"},
                    {"code": "search-type", "documentation": "Paged with _count (1-1000, default 50) and _offset; a searchset Bundle with self/next/previous links."},
                    {"code": "create", "documentation": "A device or FHIR client sends an Observation (or a Bundle of them to the base URL); it is normalised and stored like every reading."}
                ],
                "versioning": "no-version",
                "readHistory": false,
                "updateCreate": false,
                "conditionalCreate": false,
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": params
            }]
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
            let value = if name == "date" {
                "ge2024-01-01T00:00:00Z"
            } else {
                "x"
            };
            assert!(parse(Some(&format!("{name}={value}"))).is_ok(), "{name}");
        }
        for other in ["category", "_lastUpdated", "_sort", "identifier", "status"] {
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
