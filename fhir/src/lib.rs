//! `carewatch-fhir`: the FHIR R4 Observation view of stored readings.
//!
//! An Observation is built on read from the rows that share one observation id (one reading,
//! or the two blood-pressure components), with `fhir-model`'s R4B types (R4B's Observation has
//! R4's shape). Each follows the HL7 vital-signs profile where one applies: status, the
//! `vital-signs` category, the profile's LOINC code (SpO2 with 2708-6 and 59408-5), subject,
//! device, `effective[x]` in the sender's offset, valueQuantity with UCUM, BP components (a
//! component the sender did not measure comes back with a `dataAbsentReason`, so the `bp`
//! profile's two slices are always there). Elements of FHIR-native input that have no column
//! come back from `extra`, never overriding ours.
//!
//! API: [`observation`] (typed), [`observation_json`] (what is served), [`group`] (rows →
//! Observations), [`bundle_json`] / [`bundle_json_at`] (collection or searchset), [`search`]
//! (the search parameters of `GET /fhir/Observation?…`, parsed without a query engine),
//! [`capability`] (the CapabilityStatement of `GET /fhir/metadata`).
//!
//! What it must not do: I/O, clocks, or run on the ingest path (it is a read-side view). The
//! received time and the server base URL are passed in.

pub mod capability;
pub mod communication;
pub mod search;
pub mod subscription;

use fhir_model::r4b::codes::ObservationStatus;
use fhir_model::r4b::resources::{
    Observation, ObservationComponent, ObservationComponentValue, ObservationEffective,
    ObservationValue,
};
use fhir_model::r4b::types::{CodeableConcept, Coding, Meta, Period, Quantity, Reference};
use fhir_model::{DateTime, Instant};
use serde_json::{Map, Value, json};

use carewatch_transform::Reading;
use carewatch_transform::catalogue::{BP_PANEL, BP_PANEL_DISPLAY, LOINC, UCUM, Vital, by_code};
use carewatch_transform::time::format_rfc3339;

/// The observation-category code system.
pub const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
/// The data-absent-reason code system (a BP component that was not measured).
pub const DATA_ABSENT_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
/// The system of the identifier that records a FHIR sender's own id.
pub const SOURCE_ID_SYSTEM: &str = "urn:carewatch:source-id";
/// The LOINC codes of the blood-pressure components, in the order they are emitted.
pub const BP_COMPONENTS: [&str; 2] = ["8480-6", "8462-4"];
/// The Bundle types [`bundle_json`] builds.
pub const BUNDLE_KINDS: [&str; 2] = ["collection", "searchset"];

/// Errors building an Observation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// No rows.
    #[error("no rows to build an Observation from")]
    Empty,
    /// The vital-signs profile needs a subject.
    #[error("reading of device {0} has no patient (the registry assigns one)")]
    MissingPatient(String),
    /// The rows given to [`observation`] do not share one observation id.
    #[error("rows of different Observations given together: {0}")]
    MixedRows(String),
    /// A Bundle type other than those in [`BUNDLE_KINDS`].
    #[error("unsupported Bundle type {0:?} (expected collection or searchset)")]
    BundleKind(String),
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

fn reference(to: String) -> Result<Reference> {
    Reference::builder().reference(to).build().map_err(b)
}

fn date_time(us: i64, offset: Option<i16>) -> Result<DateTime> {
    format_rfc3339(us, offset).parse::<DateTime>().map_err(b)
}

/// What [`Reading::observation_id`] hashes: rows with equal keys make one Observation.
fn obs_key(r: &Reading) -> (&str, &str, i64) {
    (
        r.device_id.as_str(),
        r.vital.panel.unwrap_or(r.vital.code),
        r.effective_us,
    )
}

/// The BP components, systolic then diastolic; the first row per code wins (as the store's
/// de-duplication keeps the first received). A component with no row gets a dataAbsentReason.
fn bp_components(rows: &[&Reading]) -> Result<Vec<Option<ObservationComponent>>> {
    let mut comps = Vec::with_capacity(BP_COMPONENTS.len());
    for code in BP_COMPONENTS {
        let c = match rows.iter().find(|r| r.vital.code == code) {
            Some(r) => ObservationComponent::builder()
                .code(vital_code(r.vital)?)
                .value(ObservationComponentValue::Quantity(quantity(r)?))
                .build()
                .map_err(b)?,
            None => {
                let v = by_code(code).ok_or_else(|| Error::Builder(format!("no vital {code}")))?;
                ObservationComponent::builder()
                    .code(vital_code(v)?)
                    .data_absent_reason(concept(
                        vec![coding(DATA_ABSENT_SYSTEM, "unknown", "Unknown")?],
                        "Not measured",
                    )?)
                    .build()
                    .map_err(b)?
            }
        };
        comps.push(Some(c));
    }
    Ok(comps)
}

/// One Observation from the rows sharing one observation id (a reading, or the BP pair).
///
/// `received_us` becomes `issued`. Errors: no rows, rows of different Observations, or a
/// reading without a patient (the vital-signs profile requires `subject`).
pub fn observation(rows: &[&Reading], received_us: Option<i64>) -> Result<Observation> {
    let first = *rows.first().ok_or(Error::Empty)?;
    if let Some(other) = rows.iter().find(|r| obs_key(r) != obs_key(first)) {
        return Err(Error::MixedRows(format!(
            "{:?} and {:?}",
            obs_key(first),
            obs_key(other)
        )));
    }
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
        .subject(reference(format!("Patient/{patient}"))?)
        .device(reference(format!("Device/{}", first.device_id))?)
        .effective(effective);
    if let Some(us) = received_us {
        builder = builder.issued(format_rfc3339(us, None).parse::<Instant>().map_err(b)?);
    }
    if v.is_bp_component() {
        builder = builder
            .code(concept(
                vec![coding(LOINC, BP_PANEL, BP_PANEL_DISPLAY)?],
                "Blood pressure",
            )?)
            .component(bp_components(rows)?);
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

/// The Observation as FHIR JSON: [`observation`] serialised, integral values written as
/// integers (`72`, not `72.0`), and the elements FHIR-native input kept in `extra` merged back
/// (never overriding ours; the sender's `id` becomes an identifier with system
/// [`SOURCE_ID_SYSTEM`]).
pub fn observation_json(rows: &[&Reading], received_us: Option<i64>) -> Result<Value> {
    let obs = observation(rows, received_us)?;
    let mut v = serde_json::to_value(&obs).map_err(|e| Error::Json(e.to_string()))?;
    if let Some(out) = v.as_object_mut() {
        integral_values(out);
        if let Some(extra) = rows.first().and_then(|r| r.extra.as_deref()) {
            let extra: Map<String, Value> =
                serde_json::from_str(extra).map_err(|e| Error::Json(e.to_string()))?;
            merge_extra(out, extra);
        }
    }
    Ok(v)
}

/// `fhir-model` types every decimal as f64, so serde writes `72.0`; a reading of 72 bpm or 42
/// steps reads better (and as the HL7 examples do) as `72`.
fn integral_values(out: &mut Map<String, Value>) {
    fn fix(q: Option<&mut Value>) {
        let Some(value) = q.and_then(|q| q.get_mut("value")) else {
            return;
        };
        if let Some(f) = value.as_f64()
            && f.fract() == 0.0
            && f.abs() < 9.0e15
        {
            *value = Value::from(f as i64);
        }
    }
    fix(out.get_mut("valueQuantity"));
    if let Some(comps) = out.get_mut("component").and_then(Value::as_array_mut) {
        for c in comps {
            fix(c.get_mut("valueQuantity"));
        }
    }
}

/// The sender's meta elements that still describe our Observation (its profile claims,
/// version and update time do not).
const KEPT_META: &[&str] = &["tag", "security", "source"];

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
                let mut items = match val {
                    Value::Array(a) => a,
                    Value::Object(_) => vec![val],
                    _ => Vec::new(),
                };
                if let Some(existing) = out.get("identifier").and_then(Value::as_array) {
                    items.extend(existing.iter().cloned());
                }
                out.insert(k, Value::Array(items));
            }
            "meta" => {
                let Value::Object(theirs) = val else { continue };
                let kept: Map<String, Value> = theirs
                    .into_iter()
                    .filter(|(mk, _)| KEPT_META.contains(&mk.as_str()))
                    .collect();
                if kept.is_empty() {
                    continue;
                }
                match out.get_mut("meta").and_then(Value::as_object_mut) {
                    Some(ours) => {
                        for (mk, mv) in kept {
                            ours.entry(mk).or_insert(mv);
                        }
                    }
                    None => {
                        out.insert(k, Value::Object(kept));
                    }
                }
            }
            // We always carry a value (or components): a second `value[x]` or a
            // dataAbsentReason beside it would make the Observation invalid (obs-6).
            _ if k.starts_with("value") || k == "dataAbsentReason" => {}
            _ if !out.contains_key(&k) => {
                out.insert(k, val);
            }
            _ => {}
        }
    }
}

/// Groups readings by observation id, in first-appearance order.
pub fn group(readings: &[Reading]) -> Vec<Vec<&Reading>> {
    let mut index: std::collections::HashMap<(&str, &str, i64), usize> =
        std::collections::HashMap::new();
    let mut groups: Vec<Vec<&Reading>> = Vec::new();
    for r in readings {
        let i = *index.entry(obs_key(r)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push(r);
    }
    groups
}

/// A Bundle (`collection` or `searchset`) of the readings' Observations, with `fullUrl`s
/// `urn:carewatch:Observation/{id}`. See [`bundle_json_at`] to serve them under a base URL.
pub fn bundle_json(readings: &[Reading], kind: &str) -> Result<Value> {
    bundle_json_at(readings, kind, None)
}

/// [`bundle_json`] with `fullUrl = {base}/Observation/{id}` when `base` (the FHIR server's
/// base URL, e.g. `https://host/fhir`) is given.
pub fn bundle_json_at(readings: &[Reading], kind: &str, base: Option<&str>) -> Result<Value> {
    if !BUNDLE_KINDS.contains(&kind) {
        return Err(Error::BundleKind(kind.to_owned()));
    }
    let mut entries = Vec::new();
    for g in group(readings) {
        let o = observation_json(&g, None)?;
        let id = o.get("id").and_then(Value::as_str).unwrap_or_default();
        let full_url = match base {
            Some(base) => format!("{}/Observation/{id}", base.trim_end_matches('/')),
            None => format!("urn:carewatch:Observation/{id}"),
        };
        let mut e = json!({"fullUrl": full_url, "resource": o});
        if kind == "searchset" {
            e["search"] = json!({"mode": "match"});
        }
        entries.push(e);
    }
    let total = entries.len();
    let mut bundle = json!({"resourceType": "Bundle", "type": kind});
    if kind == "searchset" {
        bundle["total"] = json!(total);
    }
    bundle["entry"] = Value::Array(entries);
    Ok(bundle)
}

#[cfg(test)]
mod tests;
