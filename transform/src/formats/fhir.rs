//! FHIR R4 input: an Observation, or a Bundle (batch / transaction / collection) of them.
//!
//! The code is read from `code.coding` (LOINC, or IEEE 11073 MDC), the value from
//! `valueQuantity` (UCUM `code` preferred over the free-text `unit`), blood pressure from its
//! components. Elements that have no column (identifier, note, interpretation, extensions, the
//! sender's id, …) are kept verbatim in `extra` so the Observation can be rebuilt.

use serde_json::{Map, Value};

use super::{number, reading};
use crate::catalogue::{self, UCUM, Vital};
use crate::normalise::{Context, Outcome, resolve_device};
use crate::reject::{Reason, Rejection, clip, describe};
use crate::time::{self, Instant};

/// Elements mapped to columns; everything else goes to `extra`.
const MAPPED: &[&str] = &[
    "resourceType",
    "status",
    "category",
    "code",
    "subject",
    "device",
    "effectiveDateTime",
    "effectiveInstant",
    "effectivePeriod",
    "valueQuantity",
    "component",
    "issued",
];

const STATUSES: &[&str] = &[
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
];

/// Normalises one FHIR resource (Observation or Bundle) into `out`.
pub fn normalise(v: &Value, ctx: &Context<'_>, out: &mut Outcome) {
    let Some(o) = v.as_object() else {
        return out
            .rejections
            .push(Rejection::wrong_type("resource", "a JSON object", v));
    };
    match o.get("resourceType").and_then(Value::as_str) {
        Some("Observation") => {
            if let Err(e) = observation(o, ctx, out) {
                out.rejections.push(e);
            }
        }
        Some("Bundle") => bundle(o, ctx, out),
        Some(other) => out.rejections.push(Rejection::new(
            Reason::UnsupportedResource,
            format!(
                "resourceType {} is not ingested; send Observation or Bundle",
                clip(other)
            ),
        )),
        None => out.rejections.push(Rejection::wrong_type(
            "resourceType",
            "a string",
            o.get("resourceType").unwrap_or(&Value::Null),
        )),
    }
}

fn bundle(o: &Map<String, Value>, ctx: &Context<'_>, out: &mut Outcome) {
    let entries = match o.get("entry") {
        Some(Value::Array(a)) => a,
        None => return out.rejections.push(Rejection::missing("entry")),
        Some(other) => {
            return out
                .rejections
                .push(Rejection::wrong_type("entry", "an array", other));
        }
    };
    if let Some(t) = o.get("type").and_then(Value::as_str)
        && !matches!(
            t,
            "batch" | "transaction" | "collection" | "message" | "searchset"
        )
    {
        return out.rejections.push(Rejection::new(
            Reason::InvalidFhir,
            format!(
                "Bundle.type {} is not accepted; use batch or transaction",
                clip(t)
            ),
        ));
    }
    if entries.is_empty() {
        return out.rejections.push(Rejection::new(
            Reason::MissingField,
            "Bundle has no entries",
        ));
    }
    // Each entry is an item of its own: its index is the entry index.
    for (i, e) in entries.iter().enumerate() {
        let loc = format!("entry[{i}]");
        let before = out.rejections.len();
        match e.get("resource") {
            Some(Value::Object(r))
                if r.get("resourceType").and_then(Value::as_str) == Some("Observation") =>
            {
                if let Err(err) = observation(r, ctx, out) {
                    out.rejections.push(err);
                }
            }
            Some(Value::Object(r)) => out.rejections.push(Rejection::new(
                Reason::UnsupportedResource,
                format!(
                    "resourceType {} is not ingested; send Observation",
                    clip(
                        r.get("resourceType")
                            .and_then(Value::as_str)
                            .unwrap_or("(none)")
                    )
                ),
            )),
            Some(other) => {
                out.rejections
                    .push(Rejection::wrong_type("resource", "an object", other))
            }
            None => out.rejections.push(Rejection::missing("resource")),
        }
        for r in &mut out.rejections[before..] {
            *r = r.clone().context(&loc).at(i);
        }
    }
    if out.items <= 1 {
        out.items = entries.len();
    }
}

fn reference_id<'v>(
    o: &'v Map<String, Value>,
    field: &str,
    kinds: &[&str],
) -> Result<Option<&'v str>, Rejection> {
    let Some(r) = o.get(field) else {
        return Ok(None);
    };
    let r = r
        .as_object()
        .ok_or_else(|| Rejection::wrong_type(field, "a Reference object", r))?;
    if let Some(reference) = r.get("reference") {
        let s = reference.as_str().ok_or_else(|| {
            Rejection::wrong_type(&format!("{field}.reference"), "a string", reference)
        })?;
        // Relative (`Device/x`) or absolute (`https://…/Device/x`) references.
        let id = kinds.iter().find_map(|kind| {
            s.strip_prefix(&format!("{kind}/"))
                .or_else(|| s.rsplit_once(&format!("/{kind}/")).map(|(_, id)| id))
        });
        return match id {
            Some(id) if !id.is_empty() && !id.contains('/') => Ok(Some(id)),
            _ => Err(Rejection::new(
                Reason::InvalidFhir,
                format!(
                    "field `{field}.reference` {} is not a {} reference",
                    clip(s),
                    kinds.join(" or ")
                ),
            )),
        };
    }
    if let Some(Value::String(v)) = r.get("identifier").and_then(|i| i.get("value")) {
        return Ok(Some(v.as_str()));
    }
    Err(Rejection::new(
        Reason::InvalidFhir,
        format!("field `{field}` has neither `reference` nor `identifier.value`"),
    ))
}

/// Finds the vital named by a CodeableConcept (LOINC or MDC codings).
pub fn vital_of(code: &Value, field: &str) -> Result<&'static Vital, Rejection> {
    let codings = code
        .get("coding")
        .and_then(Value::as_array)
        .ok_or_else(|| Rejection::missing(&format!("{field}.coding")))?;
    let mut seen = Vec::new();
    for c in codings {
        if let Some(cd) = c.get("code").and_then(Value::as_str) {
            if let Some(v) = catalogue::by_code(cd) {
                return Ok(v);
            }
            seen.push(clip(cd));
        }
    }
    Err(Rejection::new(
        Reason::UnknownVital,
        format!(
            "field `{field}`: codes [{}] name no known vital (see the catalogue)",
            seen.join(", ")
        ),
    ))
}

fn effective(
    o: &Map<String, Value>,
    ctx: &Context<'_>,
) -> Result<(Instant, Option<Instant>), Rejection> {
    if let Some(t) = o.get("effectiveDateTime") {
        return Ok((time::parse_value(t, "effectiveDateTime", ctx.tz)?, None));
    }
    if let Some(t) = o.get("effectiveInstant") {
        return Ok((time::parse_value(t, "effectiveInstant", ctx.tz)?, None));
    }
    if let Some(p) = o.get("effectivePeriod") {
        let start = p
            .get("start")
            .ok_or_else(|| Rejection::missing("effectivePeriod.start"))?;
        let start = time::parse_value(start, "effectivePeriod.start", ctx.tz)?;
        let end = match p.get("end") {
            Some(e) => Some(time::parse_value(e, "effectivePeriod.end", ctx.tz)?),
            None => None,
        };
        // FHIR's per-1: a period does not end before it starts.
        if end.is_some_and(|e| e.utc_us < start.utc_us) {
            return Err(Rejection::new(
                Reason::UnparseableTime,
                "field `effectivePeriod.end` is before `effectivePeriod.start`".to_owned(),
            ));
        }
        // A zero-length period (MedTech style) is an instant.
        let end = end.filter(|e| e.utc_us != start.utc_us);
        return Ok((start, end));
    }
    Err(Rejection::missing("effective[x]"))
}

fn quantity<'v>(q: &'v Value, field: &str) -> Result<(f64, Option<&'v str>), Rejection> {
    let qo = q
        .as_object()
        .ok_or_else(|| Rejection::wrong_type(field, "a Quantity object", q))?;
    let value = qo
        .get("value")
        .ok_or_else(|| Rejection::missing(&format!("{field}.value")))?;
    let value = number(value, &format!("{field}.value"))?;
    let ucum = qo.get("system").and_then(Value::as_str) == Some(UCUM);
    let unit = match (
        qo.get("code").and_then(Value::as_str),
        qo.get("unit").and_then(Value::as_str),
    ) {
        (Some(code), _) if ucum => Some(code),
        (_, Some(unit)) => Some(unit),
        (Some(code), None) => Some(code),
        (None, None) => None,
    };
    Ok((value, unit))
}

fn observation(
    o: &Map<String, Value>,
    ctx: &Context<'_>,
    out: &mut Outcome,
) -> Result<(), Rejection> {
    let device_ref = reference_id(o, "device", &["Device", "DeviceMetric"])?;
    let device = resolve_device(device_ref, ctx, "device")?;
    let dev = Some(device.as_str());
    let inner = || -> Result<Vec<crate::Reading>, Rejection> {
        match o.get("status") {
            Some(Value::String(s)) if STATUSES.contains(&s.as_str()) => {
                if matches!(s.as_str(), "cancelled" | "entered-in-error") {
                    return Err(Rejection::new(
                        Reason::NoValue,
                        format!("status {} carries no measurement", clip(s)),
                    ));
                }
            }
            Some(Value::String(s)) => {
                return Err(Rejection::new(
                    Reason::InvalidFhir,
                    format!(
                        "field `status`: {} is not an observation-status code",
                        clip(s)
                    ),
                ));
            }
            Some(other) => return Err(Rejection::wrong_type("status", "a string", other)),
            None => return Err(Rejection::missing("status")),
        }
        let values: Vec<&String> = o.keys().filter(|k| k.starts_with("value")).collect();
        if values.len() > 1 {
            return Err(Rejection::new(
                Reason::InvalidFhir,
                format!(
                    "Observation has {} value[x] elements; at most one is allowed",
                    values.len()
                ),
            ));
        }
        let patient = reference_id(o, "subject", &["Patient"])?;
        let code = o.get("code").ok_or_else(|| Rejection::missing("code"))?;
        let (at, end) = effective(o, ctx)?;
        let extra = extra(o);
        let mut rows = Vec::new();
        let is_panel = code
            .get("coding")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.get("code").and_then(Value::as_str) == Some(catalogue::BP_PANEL))
            });
        if is_panel || (o.get("component").is_some() && o.get("valueQuantity").is_none()) {
            let comps = o
                .get("component")
                .and_then(Value::as_array)
                .ok_or_else(|| Rejection::missing("component"))?;
            for (i, c) in comps.iter().enumerate() {
                let f = format!("component[{i}]");
                let vital = vital_of(c.get("code").unwrap_or(&Value::Null), &format!("{f}.code"))?;
                if c.get("dataAbsentReason").is_some() && c.get("valueQuantity").is_none() {
                    continue;
                }
                let q = c.get("valueQuantity").ok_or_else(|| {
                    Rejection::new(Reason::NoValue, format!("field `{f}` has no valueQuantity"))
                })?;
                let (n, u) = quantity(q, &format!("{f}.valueQuantity"))?;
                rows.push(reading(
                    vital,
                    n,
                    u,
                    &format!("{f}.valueQuantity"),
                    &device,
                    patient,
                    at,
                    end,
                )?);
            }
            if rows.is_empty() {
                return Err(Rejection::new(
                    Reason::NoValue,
                    "no component carries a value",
                ));
            }
        } else {
            let vital = vital_of(code, "code")?;
            let Some(q) = o.get("valueQuantity") else {
                if o.get("dataAbsentReason").is_some() {
                    return Err(Rejection::new(
                        Reason::NoValue,
                        "Observation has dataAbsentReason and no value",
                    ));
                }
                let other = o.keys().find(|k| k.starts_with("value"));
                return Err(match other {
                    Some(k) => Rejection::new(
                        Reason::WrongType,
                        format!(
                            "field `{k}`: only valueQuantity is ingested, got {}",
                            describe(&o[k])
                        ),
                    ),
                    None => Rejection::missing("valueQuantity"),
                });
            };
            let (n, u) = quantity(q, "valueQuantity")?;
            rows.push(reading(
                vital,
                n,
                u,
                "valueQuantity",
                &device,
                patient,
                at,
                end,
            )?);
        }
        for r in &mut rows {
            r.extra.clone_from(&extra);
        }
        Ok(rows)
    };
    let rows = inner().map_err(|e| e.with_device(dev))?;
    out.readings.extend(rows);
    Ok(())
}

fn extra(o: &Map<String, Value>) -> Option<String> {
    let rest: Map<String, Value> = o
        .iter()
        .filter(|(k, _)| !MAPPED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!rest.is_empty()).then(|| Value::Object(rest).to_string())
}

#[cfg(test)]
mod tests {
    use crate::normalise::{Context, normalise};
    use crate::reject::Reason;

    fn example(rel: &str) -> Vec<u8> {
        let p = carewatch_fixtures::data_dir("fhir-examples").join(rel);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn ctx() -> Context<'static> {
        // The official examples give day-precision dates: read them as UTC midnight.
        Context {
            tz: crate::time::ZonePolicy::utc(),
            ..Context::default()
        }
    }

    #[test]
    fn official_heart_rate_example() {
        // No device in the example: the transport supplies one.
        let c = Context {
            device: Some("dev-hr"),
            ..ctx()
        };
        let o = normalise(&example("r4-core/Observation-heart-rate.json"), &c);
        assert_eq!(o.rejections, vec![]);
        let r = &o.readings[0];
        assert_eq!((r.code(), r.value, r.unit()), ("8867-4", 44.0, "/min"));
        assert_eq!(r.patient_id.as_deref(), Some("example"));
        let extra: serde_json::Value =
            serde_json::from_str(r.extra.as_deref().unwrap_or("{}")).expect("json");
        assert_eq!(extra["id"], "heart-rate");
    }

    #[test]
    fn official_blood_pressure_examples() {
        let c = Context {
            device: Some("dev-bp"),
            ..ctx()
        };
        let o = normalise(&example("r4-core/Observation-blood-pressure.json"), &c);
        assert_eq!(o.rejections, vec![]);
        let got: Vec<(&str, f64)> = o.readings.iter().map(|r| (r.code(), r.value)).collect();
        assert_eq!(got, vec![("8480-6", 107.0), ("8462-4", 60.0)]);
        // The -dar example has a diastolic dataAbsentReason: only systolic is stored.
        let o = normalise(&example("r4-core/Observation-blood-pressure-dar.json"), &c);
        assert_eq!(o.readings.len(), 1);
        assert_eq!(o.readings[0].code(), "8480-6");
    }

    #[test]
    fn temperature_and_spo2_examples() {
        let c = Context {
            device: Some("d"),
            ..ctx()
        };
        let o = normalise(&example("r4-core/Observation-body-temperature.json"), &c);
        assert_eq!(
            (o.readings[0].code(), o.readings[0].value),
            ("8310-5", 36.5)
        );
        let o = normalise(&example("r4-core/Observation-satO2.json"), &ctx());
        assert_eq!(o.rejections, vec![]);
        let r = &o.readings[0];
        assert_eq!(
            (r.code(), r.value, r.unit(), r.device_id.as_str()),
            ("2708-6", 95.0, "%", "example")
        );
        // The transport's device wins over nothing but must agree with the payload's.
        let o = normalise(&example("r4-core/Observation-satO2.json"), &c);
        assert_eq!(o.rejections[0].reason, Reason::DeviceMismatch);
    }

    #[test]
    fn handwritten_invalid_is_rejected_specifically() {
        let c = Context {
            device: Some("d"),
            ..ctx()
        };
        let c2 = ctx();
        let o = normalise(&example("handwritten-heart-rate-invalid.json"), &c);
        assert_eq!(o.readings.len(), 0);
        assert_eq!(o.rejections.len(), 1);
        let o = normalise(&example("handwritten-heart-rate-bad-status.json"), &c2);
        assert_eq!(o.rejections[0].reason, Reason::InvalidFhir);
        assert!(
            o.rejections[0].message.contains("status"),
            "{}",
            o.rejections[0].message
        );
    }

    #[test]
    fn bundle_entries_are_items() {
        let bundle = serde_json::json!({
        "resourceType": "Bundle", "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": "Patient/p1"}, "device": {"reference": "Device/d1"},
                "effectiveDateTime": "2024-01-01T00:00:00Z",
                "valueQuantity": {"value": 61, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}}},
            {"resource": {"resourceType": "Patient", "id": "p1"}},
            {"resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "device": {"reference": "Device/d1"},
                "effectiveDateTime": "2024-01-01T00:00:01Z",
                "valueQuantity": {"value": 61, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}}
        ]});
        let o = normalise(bundle.to_string().as_bytes(), &ctx());
        assert_eq!(o.readings.len(), 1);
        let rs: Vec<(Option<usize>, Reason)> =
            o.rejections.iter().map(|r| (r.index, r.reason)).collect();
        assert_eq!(
            rs,
            vec![
                (Some(1), Reason::UnsupportedResource),
                (Some(2), Reason::UnitNotConvertible)
            ]
        );
        assert!(
            o.rejections[1]
                .message
                .starts_with("entry[2]: unit \"mm[Hg]\""),
            "{}",
            o.rejections[1].message
        );
    }

    #[test]
    fn wrong_resource_type() {
        let o = normalise(br#"{"resourceType":"Patient","id":"x"}"#, &ctx());
        assert_eq!(o.rejections[0].reason, Reason::UnsupportedResource);
    }

    /// Found by the `fhir_json` fuzz target: an `effectivePeriod` ending before its start was
    /// accepted (FHIR's per-1 forbids it; carewatch JSON and Open mHealth already refuse it).
    #[test]
    fn a_period_ending_before_it_starts_is_rejected() {
        let o = normalise(
            br#"{"resourceType":"Observation","status":"final",
            "category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],
            "code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},
            "subject":{"reference":"Patient/pat-1"},"device":{"reference":"Device/watch-7"},
            "effectivePeriod":{"start":"2024-05-01T10:15:00+02:00","end":"2024-05-01T10:01:00+02:00"},
            "valueQuantity":{"value":72,"unit":"beats/minute","system":"http://unitsofmeasure.org","code":"/min"}}"#,
            &ctx(),
        );
        assert_eq!(o.readings, vec![]);
        assert_eq!(o.rejections.len(), 1);
        assert_eq!(o.rejections[0].reason, Reason::UnparseableTime);
        assert!(o.rejections[0].message.contains("effectivePeriod.end"));
    }
}
