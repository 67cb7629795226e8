//! The malformed-input corpus: over 200 bad payloads, each answered with its specific reason and
//! stored as a dead-letter row, while the valid readings sent alongside all arrive.

use std::sync::Arc;
use std::time::Duration;

use carewatch_ingest::{Origin, Pipeline};
use carewatch_store::registry::Registry;
use carewatch_store::{Config, Store, Table};
use carewatch_transform::{Format, Source, ZonePolicy};

fn cases() -> Vec<(String, Vec<u8>, &'static str)> {
    let mut c: Vec<(String, Vec<u8>, &'static str)> = Vec::new();
    let t = "\"time\":\"2024-05-01T08:00:00Z\"";
    let mut add =
        |name: String, bytes: Vec<u8>, reason: &'static str| c.push((name, bytes, reason));
    // Invalid JSON, many shapes.
    for (i, s) in [
        "{",
        "}",
        "[",
        "{\"a\":}",
        "{\"a\" 1}",
        "nul",
        "tru",
        "{'a':1}",
        "{\"a\":1,}",
        "[1,]",
        "\"unterminated",
        "{\"a\":01}",
        "{\"a\":1e}",
        "{\"a\":-}",
        "{\"a\":.5}",
        "\u{0}",
        "{\"a\":\"\\x\"}",
        "{\"a\":NaN}",
        "{\"a\":Infinity}",
        "// c",
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("invalid json {i}"),
            s.as_bytes().to_vec(),
            "invalid_json",
        );
    }
    for i in 0..20 {
        add(
            format!("truncated reading {i}"),
            format!("{{\"device_id\":\"w1\",{t},\"type\":\"heart_rate\",\"value\":7")[..20 + i]
                .as_bytes()
                .to_vec(),
            "invalid_json",
        );
    }
    // Invalid UTF-8.
    for i in 0..10u8 {
        let mut b =
            format!("{{\"device_id\":\"w1\",{t},\"type\":\"heart_rate\",\"value\":70,\"x\":\"")
                .into_bytes();
        b.extend_from_slice(&[0xc3 + (i % 2), 0x28 + i, 0xff]);
        b.extend_from_slice(b"\"}");
        add(format!("invalid utf8 {i}"), b, "invalid_utf8");
    }
    // Deeply nested.
    for d in [200, 500, 1000, 5000, 20000] {
        add(
            format!("deep {d}"),
            format!("{}{}", "[".repeat(d), "]".repeat(d)).into_bytes(),
            "too_deep",
        );
        add(
            format!("deep object {d}"),
            format!("{}1{}", "{\"a\":".repeat(d), "}".repeat(d)).into_bytes(),
            "too_deep",
        );
    }
    // Too large.
    for n in [1, 2, 3] {
        add(
            format!("huge {n}"),
            format!("{{\"pad\":\"{}\"}}", "x".repeat((1 << 20) * n + 10)).into_bytes(),
            "too_large",
        );
    }
    // Wrong types for each field.
    for (i, v) in ["\"70\"", "true", "null", "[70]", "{}"].iter().enumerate() {
        add(
            format!("value wrong type {i}"),
            format!("{{\"device_id\":\"w1\",{t},\"type\":\"heart_rate\",\"value\":{v}}}")
                .into_bytes(),
            "wrong_type",
        );
        add(
            format!("multi wrong type {i}"),
            format!("{{\"device_id\":\"w1\",{t},\"heart_rate\":{v}}}").into_bytes(),
            if *v == "{}" {
                "missing_field"
            } else {
                "wrong_type"
            },
        );
    }
    for (i, v) in ["70", "true", "[\"heart_rate\"]", "{}"].iter().enumerate() {
        add(
            format!("type wrong type {i}"),
            format!("{{\"device_id\":\"w1\",{t},\"type\":{v},\"value\":70}}").into_bytes(),
            "wrong_type",
        );
    }
    for (i, v) in ["1", "true", "[]", "{}"].iter().enumerate() {
        add(
            format!("device wrong type {i}"),
            format!("{{\"device_id\":{v},{t},\"heart_rate\":70}}").into_bytes(),
            "wrong_type",
        );
    }
    for (i, v) in ["true", "[]", "{}", "null"].iter().enumerate() {
        add(
            format!("time wrong type {i}"),
            format!("{{\"device_id\":\"w1\",\"time\":{v},\"heart_rate\":70}}").into_bytes(),
            "wrong_type",
        );
    }
    // Unparseable and zone-less times.
    for (i, v) in [
        "yesterday",
        "2024-13-01T00:00:00Z",
        "2024-05-32T00:00:00Z",
        "2024-05-01T25:00:00Z",
        "01/05/2024",
        "2024-05-01T08:00:00+25:00",
        "",
        "T08:00",
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("bad time {i}"),
            format!("{{\"device_id\":\"w1\",\"time\":\"{v}\",\"heart_rate\":70}}").into_bytes(),
            "unparseable_time",
        );
    }
    for (i, v) in [
        "2024-05-01T08:00:00",
        "2024-05-01 08:00:00",
        "2024-05-01T08:00",
        "2024-05-01",
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("zoneless {i}"),
            format!("{{\"device_id\":\"w1\",\"time\":\"{v}\",\"heart_rate\":70}}").into_bytes(),
            "zoneless_time",
        );
    }
    for (i, v) in ["1714550400", "-5", "99999999999999999"].iter().enumerate() {
        add(
            format!("epoch out of range {i}"),
            format!("{{\"device_id\":\"w1\",\"time\":{v},\"heart_rate\":70}}").into_bytes(),
            "unparseable_time",
        );
    }
    // Missing fields.
    add(
        "no time".into(),
        b"{\"device_id\":\"w1\",\"heart_rate\":70}".to_vec(),
        "missing_field",
    );
    add(
        "no value".into(),
        format!("{{\"device_id\":\"w1\",{t},\"type\":\"heart_rate\"}}").into_bytes(),
        "missing_field",
    );
    add(
        "no type".into(),
        format!("{{\"device_id\":\"w1\",{t},\"value\":70}}").into_bytes(),
        "missing_field",
    );
    add(
        "no vitals".into(),
        format!("{{\"device_id\":\"w1\",{t}}}").into_bytes(),
        "missing_field",
    );
    add(
        "bp missing diastolic".into(),
        format!("{{\"device_id\":\"w1\",{t},\"blood_pressure\":{{\"systolic\":120}}}}")
            .into_bytes(),
        "missing_field",
    );
    add("empty array".into(), b"[]".to_vec(), "missing_field");
    // Unknown vitals.
    for (i, v) in [
        "mood",
        "heartbeat_rate",
        "glucosee",
        "altitude",
        "8867-5",
        "x",
        "stress",
        "battery",
        "calories",
        "sleep_stage",
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("unknown vital {i}"),
            format!("{{\"device_id\":\"w1\",{t},\"type\":\"{v}\",\"value\":1}}").into_bytes(),
            "unknown_vital",
        );
    }
    // Units that do not convert.
    for (i, (ty, u)) in [
        ("heart_rate", "mmHg"),
        ("spo2", "kg"),
        ("body_temperature", "%"),
        ("body_weight", "cm"),
        ("systolic", "bpm"),
        ("steps", "km"),
        ("blood_glucose", "mmol"),
        ("respiratory_rate", "L/min"),
        ("hrv", "Hz"),
        ("body_height", "kg"),
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("bad unit {i}"),
            format!("{{\"device_id\":\"w1\",{t},\"type\":\"{ty}\",\"value\":1,\"unit\":\"{u}\"}}")
                .into_bytes(),
            "unit_not_convertible",
        );
    }
    // Implausible values.
    for (i, (ty, v)) in [
        ("heart_rate", "0"),
        ("heart_rate", "301"),
        ("heart_rate", "-1"),
        ("spo2", "101"),
        ("spo2", "12"),
        ("body_temperature", "55"),
        ("body_temperature", "10"),
        ("systolic", "400"),
        ("diastolic", "5"),
        ("body_weight", "900"),
        ("steps", "-3"),
        ("respiratory_rate", "200"),
        ("hrv", "5000"),
        ("blood_glucose", "5"),
        ("bmi", "1"),
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("out of range {i}"),
            format!("{{\"device_id\":\"w1\",{t},\"type\":\"{ty}\",\"value\":{v}}}").into_bytes(),
            "out_of_range",
        );
    }
    // Device problems.
    add(
        "device mismatch".into(),
        format!("{{\"device_id\":\"w2\",{t},\"heart_rate\":70}}").into_bytes(),
        "device_mismatch",
    );
    add(
        "empty device".into(),
        format!("{{\"device_id\":\"\",{t},\"heart_rate\":70}}").into_bytes(),
        "device_mismatch",
    );
    // Unknown shapes.
    for (i, s) in [
        "42",
        "\"hello\"",
        "true",
        "null",
        "{\"foo\":1}",
        "[1]",
        "{\"readings\":[]}",
        "[null]",
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("unknown format {i}"),
            s.as_bytes().to_vec(),
            "unknown_format",
        );
    }
    // FHIR resources of the wrong type or broken.
    for (i, rt) in [
        "Patient",
        "Device",
        "Encounter",
        "MedicationRequest",
        "DiagnosticReport",
        "Condition",
        "Practitioner",
        "Organization",
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("fhir wrong type {i}"),
            format!("{{\"resourceType\":\"{rt}\",\"id\":\"x\"}}").into_bytes(),
            "unsupported_resource",
        );
    }
    let obs = |extra: &str| {
        format!(
            "{{\"resourceType\":\"Observation\",\"code\":{{\"coding\":[{{\"system\":\"http://loinc.org\",\"code\":\"8867-4\"}}]}},\"effectiveDateTime\":\"2024-05-01T08:00:00Z\"{extra}}}"
        )
    };
    add(
        "fhir no status".into(),
        obs(",\"valueQuantity\":{\"value\":70}").into_bytes(),
        "missing_field",
    );
    add(
        "fhir bad status".into(),
        obs(",\"status\":\"done\",\"valueQuantity\":{\"value\":70}").into_bytes(),
        "invalid_fhir",
    );
    add(
        "fhir two values".into(),
        obs(",\"status\":\"final\",\"valueQuantity\":{\"value\":70},\"valueString\":\"70\"")
            .into_bytes(),
        "invalid_fhir",
    );
    add(
        "fhir value string".into(),
        obs(",\"status\":\"final\",\"valueString\":\"70\"").into_bytes(),
        "wrong_type",
    );
    add(
        "fhir no value".into(),
        obs(",\"status\":\"final\"").into_bytes(),
        "missing_field",
    );
    add(
        "fhir absent".into(),
        obs(",\"status\":\"final\",\"dataAbsentReason\":{\"text\":\"off\"}").into_bytes(),
        "no_value",
    );
    add(
        "fhir cancelled".into(),
        obs(",\"status\":\"cancelled\",\"valueQuantity\":{\"value\":70}").into_bytes(),
        "no_value",
    );
    add("fhir bad subject".into(), obs(",\"status\":\"final\",\"subject\":{\"reference\":\"Group/1\"},\"valueQuantity\":{\"value\":70}").into_bytes(), "invalid_fhir");
    add("fhir unit".into(), obs(",\"status\":\"final\",\"valueQuantity\":{\"value\":70,\"system\":\"http://unitsofmeasure.org\",\"code\":\"mm[Hg]\"}").into_bytes(), "unit_not_convertible");
    add("fhir unknown code".into(), "{\"resourceType\":\"Observation\",\"status\":\"final\",\"code\":{\"coding\":[{\"code\":\"1234-5\"}]},\"effectiveDateTime\":\"2024-05-01T08:00:00Z\",\"valueQuantity\":{\"value\":1}}".as_bytes().to_vec(), "unknown_vital");
    add(
        "fhir empty bundle".into(),
        b"{\"resourceType\":\"Bundle\",\"type\":\"batch\",\"entry\":[]}".to_vec(),
        "missing_field",
    );
    add(
        "fhir bundle history".into(),
        b"{\"resourceType\":\"Bundle\",\"type\":\"history\",\"entry\":[{}]}".to_vec(),
        "invalid_fhir",
    );
    add(
        "fhir resourceType number".into(),
        b"{\"resourceType\":7}".to_vec(),
        "wrong_type",
    );
    // More unknown vitals, units and ranges seen from real devices.
    for (i, v) in [
        "vo2max",
        "ecg",
        "pai",
        "body_battery",
        "readiness",
        "skin_conductance",
        "noise",
        "uv_index",
        "floors",
        "distance",
        "active_minutes",
        "hydration",
        "weight_change",
        "cadence",
        "power",
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("unknown device metric {i}"),
            format!("{{\"device_id\":\"w1\",{t},\"{v}\":1}}").into_bytes(),
            "unknown_vital",
        );
    }
    for (i, u) in [
        "beats",
        "per second per second",
        "kph",
        "psi",
        "mg",
        "lbs/in",
        "°",
        "%%",
        "mmol/mol",
        "ratio2",
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("unit variety {i}"),
            format!(
                "{{\"device_id\":\"w1\",{t},\"heart_rate\":{{\"value\":70,\"unit\":\"{u}\"}}}}"
            )
            .into_bytes(),
            "unit_not_convertible",
        );
    }
    for (i, v) in ["1e308", "-1e308", "1e-300", "4000", "0.0001"]
        .iter()
        .enumerate()
    {
        add(
            format!("extreme value {i}"),
            format!("{{\"device_id\":\"w1\",{t},\"spo2\":{v}}}").into_bytes(),
            "out_of_range",
        );
    }
    for (i, line) in [
        "{\"time\":1714550400000,\"heart_rate\":",
        "{bad}",
        "[",
        "\u{7f}",
    ]
    .iter()
    .enumerate()
    {
        add(
            format!("ndjson bad line {i}"),
            format!("{line}\n").into_bytes(),
            "invalid_json",
        );
    }
    // Open mHealth problems.
    add("omh bad unit".into(), b"{\"header\":{\"schema_id\":{\"name\":\"heart-rate\"}},\"body\":{\"heart_rate\":{\"value\":60,\"unit\":\"beat/min\"},\"effective_time_frame\":{\"date_time\":\"2024-05-01T08:00:00Z\"}}}".to_vec(), "unit_not_convertible");
    add("omh no frame".into(), b"{\"header\":{\"schema_id\":{\"name\":\"heart-rate\"}},\"body\":{\"heart_rate\":{\"value\":60,\"unit\":\"beats/min\"}}}".to_vec(), "missing_field");
    add("omh unknown schema".into(), b"{\"header\":{\"schema_id\":{\"name\":\"mood\"}},\"body\":{\"mood\":1,\"effective_time_frame\":{\"date_time\":\"2024-05-01T08:00:00Z\"}}}".to_vec(), "unknown_vital");
    add("omh steps date_time".into(), b"{\"header\":{\"schema_id\":{\"name\":\"step-count\"}},\"body\":{\"step_count\":{\"value\":6,\"unit\":\"steps\"},\"effective_time_frame\":{\"date_time\":\"2024-05-01T08:00:00Z\"}}}".to_vec(), "wrong_type");
    add("omh string value".into(), b"{\"header\":{\"schema_id\":{\"name\":\"heart-rate\"}},\"body\":{\"heart_rate\":{\"value\":\"60\",\"unit\":\"beats/min\"},\"effective_time_frame\":{\"date_time\":\"2024-05-01T08:00:00Z\"}}}".to_vec(), "wrong_type");
    c
}

/// A store (no background persist) and a pipeline with device `w1` assigned to `alice`.
async fn pipeline_for_w1(dir: &std::path::Path) -> (Store, Pipeline, Origin) {
    let mut cfg = Config::new(dir);
    cfg.tick = Duration::from_secs(3600);
    let store = Store::open(cfg).await.expect("store");
    let (registry, _) = Registry::open(dir).expect("registry");
    registry
        .register_device("w1", "alice", Some(0))
        .expect("device");
    let p = Pipeline {
        store: store.clone(),
        registry: Arc::new(registry),
        templates: Default::default(),
        tz: ZonePolicy::Reject,
        max_bytes: 1 << 20,
        max_future_skew_us: carewatch_ingest::pipeline::DEFAULT_MAX_FUTURE_SKEW_US,
    };
    let origin = Origin {
        source: Some(Source::Http),
        device: Some("w1".into()),
        format: None,
    };
    (store, p, origin)
}

#[tokio::test]
async fn every_malformed_payload_gets_its_reason_and_a_dead_letter() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, p, origin) = pipeline_for_w1(dir.path()).await;
    let cases = cases();
    assert!(cases.len() >= 200, "corpus has {} cases", cases.len());
    let mut wrong = Vec::new();
    for (i, (name, bytes, want)) in cases.iter().enumerate() {
        // A valid reading right before each bad payload.
        let good = format!(
            "{{\"time\":{},\"heart_rate\":{}}}",
            1_714_550_400_000_i64 + i as i64 * 1000,
            60 + i % 40
        );
        let g = p.ingest(good.as_bytes(), &origin).await.expect("durable");
        assert_eq!(g.accepted, 1);
        let got = p.ingest(bytes, &origin).await.expect("durable");
        let reasons: Vec<&str> = got.rejected.iter().map(|r| r.reason.code()).collect();
        if got.accepted != 0 || reasons != vec![*want] {
            wrong.push(format!(
                "{name}: accepted {} reasons {reasons:?}, want [{want}]",
                got.accepted
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cases wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Unknown and revoked devices are dead-lettered too (the registry decides).
    let stranger = Origin {
        source: Some(Source::Mqtt),
        device: Some("nobody".into()),
        format: None,
    };
    let r = p
        .ingest(b"{\"time\":1714550400000,\"heart_rate\":70}", &stranger)
        .await
        .expect("durable");
    assert_eq!(r.rejected[0].reason.code(), "unknown_device");
    p.registry.revoke_device("w1").expect("revoke");
    let r = p
        .ingest(b"{\"time\":1714550400000,\"heart_rate\":70}", &origin)
        .await
        .expect("durable");
    assert_eq!(r.rejected[0].reason.code(), "revoked_device");
    let fhir = Origin {
        format: Some(Format::Fhir),
        ..origin.clone()
    };
    let r = p
        .ingest(b"{\"device_id\":\"w1\"}", &fhir)
        .await
        .expect("durable");
    assert_eq!(r.rejected.len(), 1);

    let obs = store.read_all(Table::Observations).await.expect("read");
    assert_eq!(
        obs.iter().map(|b| b.num_rows()).sum::<usize>(),
        cases.len(),
        "every valid reading arrived"
    );
    let dead = store.read_all(Table::DeadLetters).await.expect("read");
    assert_eq!(
        dead.iter().map(|b| b.num_rows()).sum::<usize>(),
        cases.len() + 3,
        "one dead letter per bad payload"
    );
}

/// A reading dated 2199 was accepted and shown as the patient's latest heart rate forever
/// (issue #12). Against the previous code the 2199 reading is stored: `accepted == 2`.
#[tokio::test]
async fn readings_from_the_future_are_rejected_beside_good_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, p, origin) = pipeline_for_w1(dir.path()).await;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let body = format!(
        r#"[{{"time":"2199-01-01T00:00:00Z","heart_rate":70}},
            {{"time":{},"heart_rate":71}},
            {{"time":{},"heart_rate":72}},
            {{"time":{},"heart_rate":73}}]"#,
        now_ms - 60_000,
        now_ms + 60_000,
        now_ms + 6 * 60_000
    );
    let got = p.ingest(body.as_bytes(), &origin).await.expect("durable");
    let reasons: Vec<&str> = got.rejected.iter().map(|r| r.reason.code()).collect();
    assert_eq!(reasons, vec!["future_time", "future_time"]);
    assert_eq!(got.accepted, 2, "a minute ahead is within the default skew");
    let dead = store.read_all(Table::DeadLetters).await.expect("read");
    assert_eq!(dead.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    let obs = store.read_all(Table::Observations).await.expect("read");
    assert_eq!(obs.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
}
