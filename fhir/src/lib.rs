//! `carewatch-fhir`: the FHIR R4 Observation view of stored readings.
//!
//! An Observation is built on read from the rows that share one observation id (one reading,
//! or the two blood-pressure components), with `fhir-model`'s R4B types (R4B's Observation has
//! R4's shape). Each follows the HL7 vital-signs profile where one applies: status, the
//! `vital-signs` category, the profile's LOINC code (SpO2 with 2708-6 and 59408-5), subject,
//! device, effective[x] in the sender's offset, valueQuantity with UCUM, BP components.
//! Elements of FHIR-native input that have no column come back from `extra`.
//!
//! What it must not do: I/O, clocks, or run on the ingest path (it is a read-side view).

use fhir_model::r4b::codes::ObservationStatus;
use fhir_model::r4b::resources::{
    Observation, ObservationComponent, ObservationComponentValue, ObservationEffective,
    ObservationValue,
};
use fhir_model::r4b::types::{CodeableConcept, Coding, Meta, Period, Quantity, Reference};
use fhir_model::{DateTime, Instant};
use serde_json::{Map, Value, json};

use carewatch_transform::Reading;
use carewatch_transform::catalogue::{BP_PANEL, BP_PANEL_DISPLAY, LOINC, UCUM, Vital};
use carewatch_transform::time::format_rfc3339;

/// The observation-category code system.
pub const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
/// The system of the identifier that records a FHIR sender's own id.
pub const SOURCE_ID_SYSTEM: &str = "urn:carewatch:source-id";

/// Errors building an Observation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// No rows.
    #[error("no rows to build an Observation from")]
    Empty,
    /// The vital-signs profile needs a subject.
    #[error("reading of device {0} has no patient (the registry assigns one)")]
    MissingPatient(String),
    /// fhir-model refused a value.
    #[error("building FHIR: {0}")]
    Builder(String),
    /// JSON (de)serialisation.
    #[error("FHIR JSON: {0}")]
    Json(String),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn b<E: std::fmt::Display>(e: E) -> Error {
    Error::Builder(e.to_string())
}

fn coding(system: &str, code: &str, display: &str) -> Result<Coding> {
    Coding::builder()
        .system(system.to_owned())
        .code(code.to_owned())
        .display(display.to_owned())
        .build()
        .map_err(b)
}

fn concept(codings: Vec<Coding>, text: &str) -> Result<CodeableConcept> {
    CodeableConcept::builder()
        .coding(codings.into_iter().map(Some).collect())
        .text(text.to_owned())
        .build()
        .map_err(b)
}

fn vital_code(v: &Vital) -> Result<CodeableConcept> {
    let mut cs = vec![coding(LOINC, v.code, v.display)?];
    for (system, code, display) in v.extra_codings {
        cs.push(coding(system, code, display)?);
    }
    concept(cs, v.display)
}

fn quantity(r: &Reading) -> Result<Quantity> {
    Quantity::builder()
        .value(r.value)
        .unit(r.vital.unit_display.to_owned())
        .system(UCUM.to_owned())
        .code(r.vital.unit.to_owned())
        .build()
        .map_err(b)
}

fn date_time(us: i64, offset: Option<i16>) -> Result<DateTime> {
    format_rfc3339(us, offset).parse::<DateTime>().map_err(b)
}

/// One Observation from the rows sharing one observation id (a reading, or the BP pair).
pub fn observation(rows: &[&Reading], received_us: Option<i64>) -> Result<Observation> {
    let first = *rows.first().ok_or(Error::Empty)?;
    let patient = first
        .patient_id
        .as_deref()
        .ok_or_else(|| Error::MissingPatient(first.device_id.clone()))?;
    let v = first.vital;
    let category = concept(
        vec![coding(
            CATEGORY_SYSTEM,
            v.category.code(),
            v.category.display(),
        )?],
        v.category.display(),
    )?;
    let effective = match first.effective_end_us {
        None => ObservationEffective::DateTime(date_time(first.effective_us, first.offset_min)?),
        Some(end) => ObservationEffective::Period(
            Period::builder()
                .start(date_time(first.effective_us, first.offset_min)?)
                .end(date_time(end, first.offset_min)?)
                .build()
                .map_err(b)?,
        ),
    };
    let mut builder = Observation::builder()
        .id(first.observation_id())
        .status(ObservationStatus::Final)
        .category(vec![Some(category)])
        .subject(
            Reference::builder()
                .reference(format!("Patient/{patient}"))
                .build()
                .map_err(b)?,
        )
        .device(
            Reference::builder()
                .reference(format!("Device/{}", first.device_id))
                .build()
                .map_err(b)?,
        )
        .effective(effective);
    if let Some(us) = received_us {
        builder = builder.issued(format_rfc3339(us, None).parse::<Instant>().map_err(b)?);
    }
    let is_panel = v.panel == Some(BP_PANEL);
    if is_panel {
        let mut sorted: Vec<&Reading> = rows.to_vec();
        // Systolic first, as in the HL7 example.
        sorted.sort_by_key(|r| r.vital.code != "8480-6");
        let mut comps = Vec::with_capacity(sorted.len());
        for r in sorted {
            comps.push(Some(
                ObservationComponent::builder()
                    .code(vital_code(r.vital)?)
                    .value(ObservationComponentValue::Quantity(quantity(r)?))
                    .build()
                    .map_err(b)?,
            ));
        }
        builder = builder
            .code(concept(
                vec![coding(LOINC, BP_PANEL, BP_PANEL_DISPLAY)?],
                "Blood pressure",
            )?)
            .component(comps);
    } else {
        builder = builder
            .code(vital_code(v)?)
            .value(ObservationValue::Quantity(quantity(first)?));
    }
    if let Some(p) = v.profile {
        builder = builder.meta(
            Meta::builder()
                .profile(vec![Some(p.to_owned())])
                .build()
                .map_err(b)?,
        );
    }
    builder.build().map_err(b)
}

/// The Observation as FHIR JSON, with the elements FHIR-native input kept in `extra` merged
/// back (never overriding ours; the sender's `id` becomes an identifier).
pub fn observation_json(rows: &[&Reading], received_us: Option<i64>) -> Result<Value> {
    let obs = observation(rows, received_us)?;
    let mut v = serde_json::to_value(&obs).map_err(|e| Error::Json(e.to_string()))?;
    if let (Some(extra), Some(out)) = (
        rows.first().and_then(|r| r.extra.as_deref()),
        v.as_object_mut(),
    ) {
        let extra: Map<String, Value> =
            serde_json::from_str(extra).map_err(|e| Error::Json(e.to_string()))?;
        merge_extra(out, extra);
    }
    Ok(v)
}

fn merge_extra(out: &mut Map<String, Value>, extra: Map<String, Value>) {
    for (k, val) in extra {
        match k.as_str() {
            "id" => {
                if let Some(id) = val.as_str() {
                    let ident = json!({"system": SOURCE_ID_SYSTEM, "value": id});
                    match out.get_mut("identifier").and_then(Value::as_array_mut) {
                        Some(a) => a.push(ident),
                        None => {
                            out.insert("identifier".to_owned(), Value::Array(vec![ident]));
                        }
                    }
                }
            }
            "identifier" => {
                let mut items = val.as_array().cloned().unwrap_or_default();
                if let Some(existing) = out.get("identifier").and_then(Value::as_array) {
                    items.extend(existing.iter().cloned());
                }
                out.insert(k, Value::Array(items));
            }
            _ if !out.contains_key(&k) => {
                out.insert(k, val);
            }
            _ => {}
        }
    }
}

/// Groups readings by observation id, in first-appearance order.
pub fn group(readings: &[Reading]) -> Vec<Vec<&Reading>> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: std::collections::HashMap<String, Vec<&Reading>> =
        std::collections::HashMap::new();
    for r in readings {
        let id = r.observation_id();
        if !groups.contains_key(&id) {
            order.push(id.clone());
        }
        groups.entry(id).or_default().push(r);
    }
    order
        .into_iter()
        .filter_map(|id| groups.remove(&id))
        .collect()
}

/// A Bundle (`collection` or `searchset`) of the readings' Observations.
pub fn bundle_json(readings: &[Reading], kind: &str) -> Result<Value> {
    let mut entries = Vec::new();
    for g in group(readings) {
        let o = observation_json(&g, None)?;
        let id = o
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let mut e = json!({"fullUrl": format!("urn:carewatch:Observation/{id}"), "resource": o});
        if kind == "searchset" {
            e["search"] = json!({"mode": "match"});
        }
        entries.push(e);
    }
    let mut bundle = json!({"resourceType": "Bundle", "type": kind, "entry": entries});
    if kind == "searchset" {
        bundle["total"] = json!(entries_len(&bundle));
    }
    Ok(bundle)
}

fn entries_len(b: &Value) -> usize {
    b.get("entry").and_then(Value::as_array).map_or(0, Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use carewatch_transform::catalogue::{VITALS, by_key};

    pub(crate) fn reading(key: &str, value: f64) -> Reading {
        Reading {
            device_id: "watch-7".into(),
            patient_id: Some("pat-1".into()),
            vital: by_key(key).expect("vital"),
            value,
            effective_us: 1_714_550_400_000_000,
            effective_end_us: None,
            offset_min: Some(120),
            extra: None,
        }
    }

    /// The HL7 vital-signs rules of shared/reference.md §2.3 and §3, checked in Rust.
    fn check_vital_signs(o: &Value) {
        assert_eq!(o["resourceType"], "Observation");
        assert_eq!(o["status"], "final");
        assert!(
            o["subject"]["reference"]
                .as_str()
                .is_some_and(|s| s.starts_with("Patient/")),
            "{o}"
        );
        assert!(
            o.get("effectiveDateTime").is_some() || o.get("effectivePeriod").is_some(),
            "{o}"
        );
        let codes: Vec<&str> = o["code"]["coding"]
            .as_array()
            .expect("coding")
            .iter()
            .filter_map(|c| c["code"].as_str())
            .collect();
        let cat = o["category"][0]["coding"][0]["code"]
            .as_str()
            .expect("category");
        if cat == "vital-signs" {
            assert_eq!(o["category"][0]["coding"][0]["system"], CATEGORY_SYSTEM);
        }
        let check_q = |q: &Value| {
            assert_eq!(q["system"], UCUM, "{q}");
            assert!(q["code"].as_str().is_some_and(|c| !c.is_empty()), "{q}");
            assert!(q["value"].is_number(), "{q}");
        };
        if codes.contains(&BP_PANEL) {
            let comps = o["component"].as_array().expect("components");
            let cc: Vec<&str> = comps
                .iter()
                .map(|c| c["code"]["coding"][0]["code"].as_str().unwrap_or(""))
                .collect();
            assert_eq!(cc, vec!["8480-6", "8462-4"]);
            for c in comps {
                check_q(&c["valueQuantity"]);
                assert_eq!(c["valueQuantity"]["code"], "mm[Hg]");
            }
            assert!(o.get("valueQuantity").is_none());
        } else {
            check_q(&o["valueQuantity"]);
        }
        if codes.contains(&"8867-4") || codes.contains(&"9279-1") {
            assert_eq!(o["valueQuantity"]["code"], "/min");
        }
        if codes.contains(&"2708-6") {
            assert!(codes.contains(&"59408-5"));
            assert_eq!(o["valueQuantity"]["code"], "%");
        }
        // Re-parses as a fhir-model Observation.
        let _: Observation = serde_json::from_value(o.clone()).expect("re-parses");
    }

    fn all_samples() -> Vec<Vec<Reading>> {
        let mut out = Vec::new();
        for v in VITALS {
            if v.key == "diastolic" {
                continue;
            }
            let mid = (v.range.0 + v.range.1) / 2.0;
            let value = (mid * 10.0).round() / 10.0;
            if v.key == "systolic" {
                out.push(vec![reading("systolic", 128.0), reading("diastolic", 82.0)]);
            } else {
                let mut r = reading(v.key, value);
                if v.key == "steps" {
                    r.effective_end_us = Some(r.effective_us + 60_000_000);
                }
                out.push(vec![r]);
            }
        }
        out
    }

    #[test]
    fn snapshots() {
        let hr = reading("heart_rate", 72.0);
        insta::assert_json_snapshot!(
            "heart_rate",
            observation_json(&[&hr], Some(1_714_550_401_000_000)).expect("hr")
        );
        let spo2 = reading("spo2", 97.0);
        insta::assert_json_snapshot!("spo2", observation_json(&[&spo2], None).expect("spo2"));
        let (d, s) = (reading("diastolic", 80.0), reading("systolic", 120.0));
        insta::assert_json_snapshot!(
            "blood_pressure",
            observation_json(&[&d, &s], None).expect("bp")
        );
        let mut steps = reading("steps", 42.0);
        steps.effective_end_us = Some(steps.effective_us + 60_000_000);
        insta::assert_json_snapshot!("steps", observation_json(&[&steps], None).expect("steps"));
        let t = reading("body_temperature", 37.2);
        insta::assert_json_snapshot!(
            "body_temperature",
            observation_json(&[&t], None).expect("temp")
        );
    }

    #[test]
    fn every_catalogue_vital_makes_a_conformant_observation() {
        let samples = all_samples();
        assert_eq!(samples.len(), VITALS.len() - 1);
        let out = std::env::var_os("CAREWATCH_FHIR_OUT").map(std::path::PathBuf::from);
        for rows in &samples {
            let refs: Vec<&Reading> = rows.iter().collect();
            let o = observation_json(&refs, Some(1_714_550_401_000_000)).expect("observation");
            check_vital_signs(&o);
            if let Some(dir) = &out {
                std::fs::create_dir_all(dir).expect("mkdir");
                let name = format!("catalogue-{}.json", rows[0].vital.key);
                std::fs::write(dir.join(name), serde_json::to_vec_pretty(&o).expect("json"))
                    .expect("write");
            }
        }
    }

    #[test]
    fn extra_elements_come_back_and_source_id_is_an_identifier() {
        let mut r = reading("heart_rate", 61.0);
        r.extra =
            Some(r#"{"id":"hr-1","note":[{"text":"after stairs"}],"status":"preliminary"}"#.into());
        let o = observation_json(&[&r], None).expect("obs");
        assert_eq!(o["note"][0]["text"], "after stairs");
        assert_eq!(o["status"], "final", "our elements are not overridden");
        assert_eq!(
            o["identifier"][0],
            json!({"system": SOURCE_ID_SYSTEM, "value": "hr-1"})
        );
        assert_eq!(o["id"], r.observation_id());
    }

    #[test]
    fn missing_patient_is_an_error_and_bundle_groups_bp() {
        let mut r = reading("heart_rate", 61.0);
        r.patient_id = None;
        assert_eq!(
            observation_json(&[&r], None).unwrap_err(),
            Error::MissingPatient("watch-7".into())
        );
        let rows = vec![
            reading("systolic", 120.0),
            reading("diastolic", 80.0),
            reading("heart_rate", 70.0),
        ];
        let b = bundle_json(&rows, "searchset").expect("bundle");
        assert_eq!(b["total"], 2);
        assert_eq!(
            b["entry"][0]["resource"]["component"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
    }
}
