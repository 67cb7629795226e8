//! carewatch JSON.
//!
//! - one reading: `{"device_id", "patient_id"?, "time", "type", "value", "unit"?, "end_time"?}`;
//!   blood pressure as `"type": "blood_pressure", "value": {"systolic": 120, "diastolic": 80}`;
//! - a multi-vital sample: `{"device_id", "time", "heart_rate": 72, "spo2": 97, "steps": 3}`,
//!   where a vital's value is a number or `{"value", "unit"}`;
//! - an array of either (handled by [`crate::normalise`]).
//!
//! `time` is RFC 3339 (offset kept) or epoch milliseconds.

use serde_json::{Map, Value};

use super::{number, opt_str, reading};
use crate::catalogue::{self, Vital};
use crate::normalise::{Context, Outcome, resolve_device};
use crate::reject::{Reason, Rejection, clip, describe};
use crate::time::{self, Instant};

/// Fields of the envelope, not vitals.
const RESERVED: &[&str] = &[
    "device_id",
    "patient_id",
    "time",
    "end_time",
    "type",
    "value",
    "unit",
    "units",
];

/// True when an object has the carewatch shape.
pub fn looks_like(o: &Map<String, Value>) -> bool {
    (o.contains_key("type") && o.contains_key("value"))
        || (o.contains_key("time") && o.keys().any(|k| !RESERVED.contains(&k.as_str())))
        || o.contains_key("device_id")
}

/// Normalises one carewatch item into `out`.
pub fn normalise(v: &Value, ctx: &Context<'_>, out: &mut Outcome) {
    let Some(o) = v.as_object() else {
        out.rejections.push(Rejection::new(
            Reason::WrongType,
            format!("a reading must be a JSON object, got {}", describe(v)),
        ));
        return;
    };
    let payload_device = match opt_str(o, "device_id") {
        Ok(d) => d,
        Err(e) => return out.rejections.push(e),
    };
    let head = match header(o, ctx) {
        Ok(h) => h,
        Err(e) => {
            return out
                .rejections
                .push(e.with_device(payload_device.or(ctx.device)));
        }
    };
    let dev = Some(head.device.as_str());
    if o.contains_key("type") || o.contains_key("value") {
        if let Err(e) = single(o, &head, out) {
            out.rejections.push(e.with_device(dev));
        }
        return;
    }
    let units = o.get("units").and_then(Value::as_object);
    let mut any = false;
    for (key, val) in o {
        if RESERVED.contains(&key.as_str()) {
            continue;
        }
        any = true;
        if let Err(e) = vital_field(key, val, units, &head, out) {
            out.rejections.push(e.with_device(dev));
        }
    }
    if !any {
        out.rejections.push(
            Rejection::new(
                Reason::MissingField,
                "reading has no `type`/`value` and no vital fields",
            )
            .with_device(dev),
        );
    }
}

struct Head {
    device: String,
    patient: Option<String>,
    at: Instant,
    end: Option<Instant>,
}

fn header(o: &Map<String, Value>, ctx: &Context<'_>) -> Result<Head, Rejection> {
    let device = resolve_device(opt_str(o, "device_id")?, ctx, "device_id")?;
    let patient = opt_str(o, "patient_id")?.map(str::to_owned);
    let t = o.get("time").ok_or_else(|| Rejection::missing("time"))?;
    let at = time::parse_value(t, "time", ctx.tz)?;
    let end = match o.get("end_time") {
        None | Some(Value::Null) => None,
        Some(e) => {
            let e = time::parse_value(e, "end_time", ctx.tz)?;
            if e.utc_us < at.utc_us {
                return Err(Rejection::new(
                    Reason::UnparseableTime,
                    "field `end_time` is before `time`".to_owned(),
                ));
            }
            Some(e)
        }
    };
    Ok(Head {
        device,
        patient,
        at,
        end,
    })
}

fn push(
    out: &mut Outcome,
    vital: &'static Vital,
    value: f64,
    unit: Option<&str>,
    field: &str,
    h: &Head,
) -> Result<(), Rejection> {
    let r = reading(
        vital,
        value,
        unit,
        field,
        &h.device,
        h.patient.as_deref(),
        h.at,
        h.end,
    )?;
    out.readings.push(r);
    Ok(())
}

fn single(o: &Map<String, Value>, h: &Head, out: &mut Outcome) -> Result<(), Rejection> {
    let ty = match o.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(Rejection::wrong_type("type", "a string", other)),
        None => return Err(Rejection::missing("type")),
    };
    let value = o.get("value").ok_or_else(|| Rejection::missing("value"))?;
    let unit = opt_str(o, "unit")?;
    if is_bp(ty) {
        return bp(value, unit, "value", h, out);
    }
    let vital = catalogue::by_name(ty).ok_or_else(|| unknown_vital("type", ty))?;
    push(out, vital, number(value, "value")?, unit, "value", h)
}

fn is_bp(name: &str) -> bool {
    ["bloodpressure", "bp", "85354-9", "nibp"]
        .iter()
        .any(|k| catalogue::is_key(name, k))
}

fn unknown_vital(field: &str, name: &str) -> Rejection {
    Rejection::new(
        Reason::UnknownVital,
        format!(
            "field `{field}`: {} is not a known vital (see the catalogue)",
            clip(name)
        ),
    )
}

/// `{"systolic": 120, "diastolic": 80}` (each a number or `{value, unit}`), both or neither.
fn bp(
    value: &Value,
    unit: Option<&str>,
    field: &str,
    h: &Head,
    out: &mut Outcome,
) -> Result<(), Rejection> {
    let o = value.as_object().ok_or_else(|| {
        Rejection::wrong_type(field, "an object with `systolic` and `diastolic`", value)
    })?;
    let mut rows = Vec::with_capacity(2);
    for key in ["systolic", "diastolic"] {
        let f = format!("{field}.{key}");
        let v = o.get(key).ok_or_else(|| Rejection::missing(&f))?;
        let (n, u) = value_and_unit(v, &f)?;
        let vital = catalogue::by_key(key).ok_or_else(|| unknown_vital(&f, key))?;
        rows.push(reading(
            vital,
            n,
            u.or(unit),
            &f,
            &h.device,
            h.patient.as_deref(),
            h.at,
            h.end,
        )?);
    }
    out.readings.extend(rows);
    Ok(())
}

fn value_and_unit<'v>(v: &'v Value, field: &str) -> Result<(f64, Option<&'v str>), Rejection> {
    match v {
        Value::Object(o) => {
            let n = number(
                o.get("value")
                    .ok_or_else(|| Rejection::missing(&format!("{field}.value")))?,
                &format!("{field}.value"),
            )?;
            let u = opt_str(o, "unit").map_err(|e| e.context(field))?;
            Ok((n, u))
        }
        other => Ok((number(other, field)?, None)),
    }
}

fn vital_field(
    key: &str,
    val: &Value,
    units: Option<&Map<String, Value>>,
    h: &Head,
    out: &mut Outcome,
) -> Result<(), Rejection> {
    let unit_override = units.and_then(|u| u.get(key)).and_then(Value::as_str);
    if is_bp(key) {
        return bp(val, unit_override, key, h, out);
    }
    let vital = catalogue::by_name(key).ok_or_else(|| unknown_vital(key, key))?;
    let (n, u) = value_and_unit(val, key)?;
    push(out, vital, n, u.or(unit_override), key, h)
}

#[cfg(test)]
mod tests {
    use crate::normalise::{Context, normalise};
    use crate::reject::Reason;
    use crate::time::ZonePolicy;

    fn run(s: &str) -> crate::Outcome {
        normalise(s.as_bytes(), &Context::default())
    }

    #[test]
    fn single_reading_with_offset() {
        let o = run(
            r#"{"device_id":"d1","patient_id":"p1","time":"2024-05-01T08:00:00+02:00","type":"heart_rate","value":72}"#,
        );
        assert_eq!(o.rejections, vec![]);
        let r = &o.readings[0];
        assert_eq!(
            (r.code(), r.value, r.unit(), r.offset_min),
            ("8867-4", 72.0, "/min", Some(120))
        );
        assert_eq!(r.patient_id.as_deref(), Some("p1"));
    }

    #[test]
    fn multi_vital_sample_and_bp() {
        let o = run(
            r#"{"device_id":"d1","time":1714550400000,"heart_rate":72,"spo2":{"value":0.97,"unit":"1"},"steps":3,"blood_pressure":{"systolic":120,"diastolic":80},"temperature":{"value":98.6,"unit":"[degF]"}}"#,
        );
        assert_eq!(o.rejections, vec![]);
        let got: Vec<(&str, f64)> = o.readings.iter().map(|r| (r.code(), r.value)).collect();
        assert_eq!(
            got,
            vec![
                ("8867-4", 72.0),
                ("2708-6", 97.0),
                ("55423-8", 3.0),
                ("8480-6", 120.0),
                ("8462-4", 80.0),
                ("8310-5", 37.0)
            ]
        );
        assert_eq!(
            o.readings[3].observation_id(),
            o.readings[4].observation_id()
        );
    }

    #[test]
    fn blood_pressure_by_type_names_and_panel_code() {
        for ty in ["bloodPressure", "BP", "85354-9", "nibp"] {
            let o = run(&format!(
                r#"{{"device_id":"d1","time":1714550400000,"type":"{ty}","value":{{"systolic":121,"diastolic":79}}}}"#
            ));
            assert_eq!(o.rejections, vec![], "{ty}");
            let got: Vec<(&str, f64)> = o.readings.iter().map(|r| (r.code(), r.value)).collect();
            assert_eq!(got, vec![("8480-6", 121.0), ("8462-4", 79.0)], "{ty}");
        }
        let o = run(r#"{"device_id":"d1","time":1714550400000,"type":"b p x","value":1}"#);
        assert_eq!(o.rejections[0].reason, Reason::UnknownVital);
    }

    #[test]
    fn units_match_without_case_or_spaces() {
        let o = run(
            r#"[{"device_id":"d1","time":1714550400000,"type":"temperature","value":98.6,"unit":" [DEGF] "},
                {"device_id":"d1","time":1714550400000,"type":"Heart-Rate","value":60,"unit":"/ MIN"},
                {"device_id":"d1","time":1714550400000,"type":"spo2","value":97,"unit":"  "}]"#,
        );
        assert_eq!(o.rejections, vec![]);
        let got: Vec<(&str, f64)> = o.readings.iter().map(|r| (r.code(), r.value)).collect();
        assert_eq!(
            got,
            vec![("8310-5", 37.0), ("8867-4", 60.0), ("2708-6", 97.0)]
        );
    }

    #[test]
    fn bad_vital_does_not_sink_good_ones() {
        let o = run(
            r#"[{"device_id":"d1","time":"2024-05-01T08:00:00Z","heart_rate":72,"mood":"ok"},
                      {"device_id":"d1","time":"2024-05-01T08:00:00Z","type":"spo2","value":"97"},
                      {"device_id":"d1","time":"2024-05-01T08:00:01Z","type":"spo2","value":97}]"#,
        );
        assert_eq!(o.items, 3);
        assert_eq!(o.readings.len(), 2);
        let rs: Vec<(Option<usize>, Reason)> =
            o.rejections.iter().map(|r| (r.index, r.reason)).collect();
        assert_eq!(
            rs,
            vec![
                (Some(0), Reason::UnknownVital),
                (Some(1), Reason::WrongType)
            ]
        );
        assert_eq!(
            o.rejections[1].message,
            "field `value` must be a number, got string \"97\""
        );
    }

    #[test]
    fn ndjson_lines_are_items() {
        let o = run(
            "{\"device_id\":\"d\",\"time\":\"2024-05-01T08:00:00Z\",\"hr\":70}\nnot json\n{\"device_id\":\"d\",\"time\":\"2024-05-01T08:00:01Z\",\"hr\":71}\n",
        );
        assert_eq!(o.items, 3);
        assert_eq!(o.readings.len(), 2);
        assert_eq!(o.rejections[0].reason, Reason::InvalidJson);
        assert_eq!(o.rejections[0].index, Some(1));
    }

    #[test]
    fn device_must_match_transport() {
        let ctx = Context {
            device: Some("d2"),
            ..Context::default()
        };
        let o = normalise(
            br#"{"device_id":"d1","time":"2024-05-01T08:00:00Z","hr":70}"#,
            &ctx,
        );
        assert_eq!(o.rejections[0].reason, Reason::DeviceMismatch);
        let o = normalise(br#"{"time":"2024-05-01T08:00:00Z","hr":70}"#, &ctx);
        assert_eq!(o.readings[0].device_id, "d2");
    }

    #[test]
    fn zoneless_time_needs_policy() {
        let p = br#"{"device_id":"d","time":"2024-05-01T08:00:00","hr":70}"#;
        assert_eq!(
            normalise(p, &Context::default()).rejections[0].reason,
            Reason::ZonelessTime
        );
        let ctx = Context {
            tz: ZonePolicy::utc(),
            ..Context::default()
        };
        assert_eq!(normalise(p, &ctx).readings.len(), 1);
    }

    #[test]
    fn envelope_errors() {
        assert_eq!(run("").rejections[0].reason, Reason::InvalidJson);
        assert_eq!(
            normalise(b"\xff\xfe", &Context::default()).rejections[0].reason,
            Reason::InvalidUtf8
        );
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(run(&deep).rejections[0].reason, Reason::TooDeep);
        assert_eq!(run("42").rejections[0].reason, Reason::UnknownFormat);
        assert_eq!(
            run(r#"{"device_id":"d","type":"hr","value":70}"#).rejections[0].reason,
            Reason::MissingField
        );
    }
}
