//! Property tests: normalisation never panics on arbitrary input, and every result is
//! either a reading or a rejection; unit conversions round-trip.

use carewatch_transform::catalogue::VITALS;
use carewatch_transform::template::Templates;
use carewatch_transform::time::ZonePolicy;
use carewatch_transform::{Context, normalise};
use proptest::prelude::*;
use serde_json::Value;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z_]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("2024-05-01T08:00:00Z"),
            Just("2024-05-01T08:00:00"),
            Just("heart_rate"),
            Just("spo2"),
            Just("bpm"),
            Just("[degF]"),
            Just("Observation"),
            Just("Bundle"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    let keys = prop_oneof![
        "[a-z_]{1,10}",
        prop_oneof![
            Just("device_id"),
            Just("time"),
            Just("type"),
            Just("value"),
            Just("unit"),
            Just("heart_rate"),
            Just("blood_pressure"),
            Just("systolic"),
            Just("resourceType"),
            Just("status"),
            Just("code"),
            Just("valueQuantity"),
            Just("component"),
            Just("entry"),
            Just("resource"),
            Just("header"),
            Just("body"),
            Just("effective_time_frame"),
            Just("date_time"),
            Just("coding"),
            Just("heartRate"),
        ]
        .prop_map(str::to_owned),
    ];
    leaf.prop_recursive(5, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn templates() -> Templates {
    Templates::load(
        r#"{"templateType":"CollectionContent","template":[{"templateType":"CalculatedContent","template":{
            "typeName":"heartrate","typeMatchExpression":"$..[?(@heartRate)]",
            "deviceIdExpression":"$.matchedToken.deviceId","timestampExpression":"$.matchedToken.endDate",
            "values":[{"required":true,"valueExpression":"$.matchedToken.heartRate","valueName":"hr"}]}}]}"#,
        None,
    )
    .expect("template")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_json(v in arb_json()) {
        let bytes = v.to_string().into_bytes();
        let out = normalise(&bytes, &Context::default());
        // Every item is accounted for: something was accepted or something was rejected.
        prop_assert!(!out.readings.is_empty() || !out.rejections.is_empty());
        for r in &out.readings {
            let (lo, hi) = r.vital.range;
            prop_assert!(r.value >= lo && r.value <= hi);
        }
        let t = templates();
        let ctx = Context { templates: Some(&t), tz: ZonePolicy::utc(), ..Context::default() };
        let _ = normalise(&bytes, &ctx);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let out = normalise(&bytes, &Context::default());
        prop_assert!(!out.readings.is_empty() || !out.rejections.is_empty());
    }

    #[test]
    fn unit_conversions_round_trip(i in 0usize..VITALS.len(), x in -1.0e6f64..1.0e6) {
        let v = &VITALS[i];
        for alias in v.units {
            let c = alias.conversion;
            let back = c.invert(c.apply(x));
            prop_assert!((back - x).abs() <= 1e-9 * x.abs().max(1.0), "{} {}: {x} -> {back}", v.key, alias.unit);
        }
    }

    #[test]
    fn accepted_values_are_canonical(i in 0usize..VITALS.len(), f in 0.0f64..1.0) {
        let v = &VITALS[i];
        let x = v.range.0 + f * (v.range.1 - v.range.0);
        for alias in v.units {
            let sent = alias.conversion.invert(x);
            if let Ok(got) = v.canonical(sent, Some(alias.unit), "value") {
                prop_assert!((got - x).abs() <= 1e-5 * x.abs().max(1.0), "{} {}: {sent} -> {got}, want {x}", v.key, alias.unit);
            }
        }
    }
}
