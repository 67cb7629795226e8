//! Open mHealth / IEEE 1752.1 data points.
//!
//! A data point is `{"header": {...schema_id...}, "body": {...}}`; a bare body (with
//! `effective_time_frame`) is accepted too, its schema inferred from the measure it holds.
//! Units are the ones each schema allows (heart rate `beats/min`, temperature `C`/`F`/`K`, …):
//! a unit the schema forbids is rejected even if the catalogue could convert it, because the
//! sender claims conformance to that schema. `header.user_id` names the patient; the device is
//! the transport's, or `header.acquisition_provenance.source_data_point_id`'s sender given as
//! `device_id` beside header and body (a carewatch extension).

use serde_json::{Map, Value};

use super::{number, opt_str, reading};
use crate::catalogue::{self, Vital};
use crate::normalise::{Context, Outcome, resolve_device};
use crate::reject::{Reason, Rejection, clip};
use crate::time::{self, Instant};

/// (schema name, body field, catalogue key, units the schema allows).
const MEASURES: &[(&str, &str, &str, &[&str])] = &[
    ("heart-rate", "heart_rate", "heart_rate", &["beats/min"]),
    ("oxygen-saturation", "oxygen_saturation", "spo2", &["%"]),
    (
        "body-temperature",
        "body_temperature",
        "body_temperature",
        &["C", "F", "K"],
    ),
    (
        "respiratory-rate",
        "respiratory_rate",
        "respiratory_rate",
        &["breaths/min"],
    ),
    (
        "body-weight",
        "body_weight",
        "body_weight",
        &["kg", "g", "lb", "oz"],
    ),
    (
        "body-height",
        "body_height",
        "body_height",
        &["cm", "m", "in", "ft", "mm"],
    ),
    (
        "body-mass-index",
        "body_mass_index",
        "bmi",
        &["kg/m^2", "kg/m2"],
    ),
    (
        "blood-glucose",
        "blood_glucose",
        "blood_glucose",
        &["mg/dL", "mmol/L"],
    ),
    ("step-count", "step_count", "steps", &["steps"]),
    (
        "blood-pressure",
        "systolic_blood_pressure",
        "systolic",
        &["mmHg"],
    ),
    (
        "blood-pressure",
        "diastolic_blood_pressure",
        "diastolic",
        &["mmHg"],
    ),
];

/// Normalises one OMH data point (or bare body) into `out`.
pub fn normalise(v: &Value, ctx: &Context<'_>, out: &mut Outcome) {
    if let Err(e) = point(v, ctx, out) {
        out.rejections.push(e);
    }
}

fn point(v: &Value, ctx: &Context<'_>, out: &mut Outcome) -> Result<(), Rejection> {
    let o = v
        .as_object()
        .ok_or_else(|| Rejection::wrong_type("data point", "an object", v))?;
    let (header, body) = match (o.get("header"), o.get("body")) {
        (Some(Value::Object(h)), Some(Value::Object(b))) => (Some(h), b),
        (Some(_), Some(b)) if !b.is_object() => {
            return Err(Rejection::wrong_type("body", "an object", b));
        }
        (Some(h), Some(_)) => return Err(Rejection::wrong_type("header", "an object", h)),
        _ => (None, o),
    };
    let device = resolve_device(opt_str(o, "device_id")?, ctx, "device_id")?;
    let dev = Some(device.as_str());
    let mut go = || -> Result<(), Rejection> {
        let patient = match header {
            Some(h) => opt_str(h, "user_id")?,
            None => None,
        };
        let schema = header
            .and_then(|h| h.get("schema_id"))
            .and_then(|s| s.get("name"))
            .and_then(Value::as_str);
        let measures: Vec<_> = MEASURES
            .iter()
            .filter(|(name, field, ..)| {
                schema.is_none_or(|s| s == *name) && body.contains_key(*field)
            })
            .collect();
        if measures.is_empty() {
            return Err(match schema {
                Some(s) if !MEASURES.iter().any(|(n, ..)| *n == s) => Rejection::new(
                    Reason::UnknownVital,
                    format!(
                        "field `header.schema_id.name`: {} is not a supported Open mHealth schema",
                        clip(s)
                    ),
                ),
                Some(s) => Rejection::new(
                    Reason::MissingField,
                    format!("body of an omh:{s} data point has no measure field"),
                ),
                None => Rejection::new(
                    Reason::UnknownVital,
                    "Open mHealth body holds no supported measure",
                ),
            });
        }
        let frame = body
            .get("effective_time_frame")
            .ok_or_else(|| Rejection::missing("body.effective_time_frame"))?;
        let (at, end) = time_frame(frame, ctx)?;
        let mut rows = Vec::with_capacity(2);
        for (name, field, key, units) in measures {
            let vital: &'static Vital =
                catalogue::by_key(key).ok_or_else(|| Rejection::missing(key))?;
            if *name == "step-count" && end.is_none() {
                return Err(Rejection::new(
                    Reason::WrongType,
                    "field `body.effective_time_frame`: step-count needs a time_interval, not a date_time",
                ));
            }
            let f = format!("body.{field}");
            let m = &body[*field];
            let (value, unit) = match m {
                Value::Object(q) => (
                    number(
                        q.get("value")
                            .ok_or_else(|| Rejection::missing(&format!("{f}.value")))?,
                        &format!("{f}.value"),
                    )?,
                    opt_str(q, "unit")?.ok_or_else(|| Rejection::missing(&format!("{f}.unit")))?,
                ),
                // step-count 1.x allowed a bare number.
                other if *name == "step-count" => (number(other, &f)?, "steps"),
                other => return Err(Rejection::wrong_type(&f, "a {value, unit} object", other)),
            };
            if !units.contains(&unit) {
                return Err(Rejection::new(
                    Reason::UnitNotConvertible,
                    format!(
                        "field `{f}.unit`: {} is not allowed by omh:{name} (allowed: {})",
                        clip(unit),
                        units.join(", ")
                    ),
                ));
            }
            rows.push(reading(
                vital,
                value,
                Some(omh_to_ucum(unit)),
                &format!("{f}.value"),
                &device,
                patient,
                at,
                end,
            )?);
        }
        out.readings.extend(rows);
        Ok(())
    };
    go().map_err(|e| e.with_device(dev))
}

fn omh_to_ucum(u: &str) -> &str {
    match u {
        "C" => "Cel",
        "F" => "[degF]",
        "lb" => "[lb_av]",
        "oz" => "[oz_av]",
        "in" => "[in_i]",
        "ft" => "[ft_i]",
        "mmHg" => "mm[Hg]",
        "kg/m^2" => "kg/m2",
        other => other,
    }
}

fn time_frame(frame: &Value, ctx: &Context<'_>) -> Result<(Instant, Option<Instant>), Rejection> {
    let f = frame
        .as_object()
        .ok_or_else(|| Rejection::wrong_type("effective_time_frame", "an object", frame))?;
    if let Some(t) = f.get("date_time") {
        return Ok((
            time::parse_value(t, "effective_time_frame.date_time", ctx.tz)?,
            None,
        ));
    }
    let i: &Map<String, Value> = f
        .get("time_interval")
        .and_then(Value::as_object)
        .ok_or_else(|| Rejection::missing("effective_time_frame.date_time"))?;
    let start = i
        .get("start_date_time")
        .ok_or_else(|| Rejection::missing("effective_time_frame.time_interval.start_date_time"))?;
    let start = time::parse_value(
        start,
        "effective_time_frame.time_interval.start_date_time",
        ctx.tz,
    )?;
    let end = match i.get("end_date_time") {
        Some(e) => time::parse_value(
            e,
            "effective_time_frame.time_interval.end_date_time",
            ctx.tz,
        )?,
        None => {
            let d = i.get("duration").ok_or_else(|| {
                Rejection::missing("effective_time_frame.time_interval.end_date_time")
            })?;
            let secs = duration_secs(d)?;
            Instant {
                utc_us: start.utc_us + (secs * 1e6) as i64,
                offset_min: start.offset_min,
            }
        }
    };
    if end.utc_us < start.utc_us {
        return Err(Rejection::new(
            Reason::UnparseableTime,
            "time_interval ends before it starts",
        ));
    }
    Ok((start, Some(end)))
}

fn duration_secs(d: &Value) -> Result<f64, Rejection> {
    let v = number(
        d.get("value").unwrap_or(&Value::Null),
        "time_interval.duration.value",
    )?;
    let unit = d.get("unit").and_then(Value::as_str).unwrap_or("");
    let s = match unit {
        "ms" => 0.001,
        "sec" | "s" => 1.0,
        "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(Rejection::new(
                Reason::UnitNotConvertible,
                format!(
                    "field `time_interval.duration.unit`: {} is not a duration unit",
                    clip(other)
                ),
            ));
        }
    };
    Ok(v * s)
}

#[cfg(test)]
mod tests {
    use crate::normalise::{Context, normalise};
    use serde_json::json;

    #[test]
    fn heart_rate_data_point_with_user() {
        let dp = json!({"header": {"id": "x", "schema_id": {"namespace": "omh", "name": "heart-rate", "version": "2.0"},
                         "user_id": "u1"},
                        "body": {"heart_rate": {"value": 50, "unit": "beats/min"},
                                 "effective_time_frame": {"date_time": "2020-02-05T07:25:00-08:00"}}});
        let ctx = Context {
            device: Some("watch-1"),
            ..Context::default()
        };
        let o = normalise(dp.to_string().as_bytes(), &ctx);
        assert_eq!(o.rejections, vec![]);
        let r = &o.readings[0];
        assert_eq!(
            (r.code(), r.value, r.offset_min, r.patient_id.as_deref()),
            ("8867-4", 50.0, Some(-480), Some("u1"))
        );
    }
}
