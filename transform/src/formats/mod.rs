//! Payload formats with a fixed shape: carewatch JSON, FHIR, Open mHealth.
//! Device mapping templates live in [`crate::template`].

pub mod carewatch;
pub mod fhir;
pub mod omh;

use serde_json::Value;

use crate::catalogue::Vital;
use crate::reading::Reading;
use crate::reject::{Rejection, describe};
use crate::time::Instant;

/// Reads a JSON number, naming the field when it is not one.
pub(crate) fn number(v: &Value, field: &str) -> Result<f64, Rejection> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| Rejection::wrong_type(field, "a number", v)),
        other => Err(Rejection::wrong_type(field, "a number", other)),
    }
}

/// Reads an optional string field.
pub(crate) fn opt_str<'v>(
    o: &'v serde_json::Map<String, Value>,
    field: &str,
) -> Result<Option<&'v str>, Rejection> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(Rejection::new(
            crate::reject::Reason::WrongType,
            format!("field `{field}` must be a string, got {}", describe(other)),
        )),
    }
}

/// Builds a reading after converting to the canonical unit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reading(
    vital: &'static Vital,
    value: f64,
    unit: Option<&str>,
    field: &str,
    device: &str,
    patient: Option<&str>,
    at: Instant,
    end: Option<Instant>,
) -> Result<Reading, Rejection> {
    let value = vital.canonical(value, unit, field)?;
    Ok(Reading {
        device_id: device.to_owned(),
        patient_id: patient.map(str::to_owned),
        vital,
        value,
        effective_us: at.utc_us,
        effective_end_us: end.map(|e| e.utc_us),
        offset_min: at.offset_min,
        extra: None,
    })
}
