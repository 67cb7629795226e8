//! Golden tests: every applicable vector in `fixtures/anchors/iomt-fhir/` (MedTech's own unit-test
//! assertions, published samples, Open mHealth validator data) against our normaliser.

use carewatch_fixtures::anchor;
use carewatch_transform::template::{Measurement, Templates};
use carewatch_transform::time::{self, ZonePolicy, format_rfc3339};
use carewatch_transform::{Context, Reason, normalise};
use serde_json::Value;

fn load(name: &str) -> Value {
    let p = anchor(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn micros(s: &str) -> i64 {
    // Expected times may carry 7 fractional digits; we keep microseconds.
    let dt = chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    dt.timestamp_nanos_opt()
        .unwrap_or_default()
        .div_euclid(1000)
}

/// Compares measurements with MedTech's expected normalized output.
fn assert_measurements(case: &str, got: &[Measurement], expected: &Value) {
    let exp = expected
        .as_array()
        .unwrap_or_else(|| panic!("{case}: expected array"));
    assert_eq!(got.len(), exp.len(), "{case}: count; got {got:#?}");
    for (g, e) in got.iter().zip(exp) {
        assert_eq!(
            g.type_name,
            e["type"].as_str().unwrap_or_default(),
            "{case}: type"
        );
        assert_eq!(
            g.device_id,
            e["deviceId"].as_str().unwrap_or_default(),
            "{case}: deviceId"
        );
        if let Some(p) = e.get("patientId") {
            assert_eq!(g.patient_id.as_deref(), p.as_str(), "{case}: patientId");
        }
        let want = micros(e["occurrenceTimeUtc"].as_str().unwrap_or_default());
        assert_eq!(
            g.time.utc_us,
            want,
            "{case}: time {}",
            format_rfc3339(g.time.utc_us, None)
        );
        let props = e["properties"]
            .as_array()
            .unwrap_or_else(|| panic!("{case}: properties"));
        assert_eq!(
            g.properties.len(),
            props.len(),
            "{case}: properties {:?}",
            g.properties
        );
        for ((name, value), p) in g.properties.iter().zip(props) {
            assert_eq!(
                name,
                p["name"].as_str().unwrap_or_default(),
                "{case}: property name"
            );
            if let Some(approx) = p.get("value_numeric_approx").and_then(Value::as_f64) {
                let places = p["tolerance_decimal_places"].as_i64().unwrap_or(6) as i32;
                let v: f64 = value.parse().unwrap_or(f64::NAN);
                assert!(
                    (v - approx).abs() < 0.5 * 10f64.powi(-places),
                    "{case}: {name}={value} vs {approx}"
                );
            } else {
                let want = p["value"].as_str().unwrap_or_default();
                match (value.parse::<f64>(), want.parse::<f64>()) {
                    // .NET renders doubles with 15 significant digits.
                    (Ok(a), Ok(b)) => assert!(
                        (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                        "{case}: {name}={value} vs {want}"
                    ),
                    _ => assert_eq!(value, want, "{case}: {name}"),
                }
            }
        }
    }
}

#[test]
fn medtech_normalization_vectors() {
    let doc = load("normalization-vectors.json");
    let cases = doc["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 9, "vector file changed: review the new cases");
    for c in cases {
        let id = c["id"].as_str().unwrap_or_default();
        let t = Templates::load(&c["device_mapping"].to_string(), None)
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let (got, errs) = t.measurements(&c["event"], ZonePolicy::Reject);
        assert!(errs.is_empty(), "{id}: {errs:?}");
        assert_measurements(id, &got, &c["expected_measurements"]);
    }
}

#[test]
fn medtech_docs_example_needs_an_explicit_zone() {
    let doc = load("medtech-docs-quantity-example.json");
    let t = Templates::load(
        &doc["device_mapping"].to_string(),
        Some(&doc["fhir_destination_mapping"].to_string()),
    )
    .expect("load");
    // endDate has no offset: MedTech silently takes UTC; we refuse unless told.
    let (got, errs) = t.measurements(&doc["device_message"], ZonePolicy::Reject);
    assert!(got.is_empty());
    assert_eq!(errs[0].reason, Reason::ZonelessTime);
    assert!(
        errs[0].message.contains("2023-03-13T22:46:01.8750000"),
        "{}",
        errs[0].message
    );
    let (got, errs) = t.measurements(&doc["device_message"], ZonePolicy::utc());
    assert!(errs.is_empty());
    assert_measurements("medtech-docs", &got, &doc["expected_normalized"]);

    // Through the FHIR mapping: 8867-4 kept, `count/min` stored as UCUM `/min`, with a note.
    let ctx = Context {
        tz: ZonePolicy::utc(),
        templates: Some(&t),
        ..Context::default()
    };
    let out = normalise(doc["device_message"].to_string().as_bytes(), &ctx);
    assert_eq!(out.rejections, vec![]);
    let r = &out.readings[0];
    assert_eq!(
        (r.code(), r.value, r.unit(), r.device_id.as_str()),
        ("8867-4", 78.0, "/min", "device01")
    );
    assert!(
        out.notes
            .iter()
            .any(|n| n.message.contains("count/min") && n.message.contains("/min")),
        "{:?}",
        out.notes
    );
}

#[test]
fn azure_samples_unit_conversion() {
    let doc = load("azure-samples-unit-conversion.json");
    let t = Templates::load(&doc["device_mapping"].to_string(), None).expect("load");
    for dev in ["A", "B"] {
        let (got, errs) = t.measurements(&doc[format!("device_{dev}_message")], ZonePolicy::Reject);
        assert!(
            errs.iter().all(|e| e.reason == Reason::TemplateNoMatch) || errs.is_empty(),
            "{dev}: {errs:?}"
        );
        assert_measurements(dev, &got, &doc[format!("device_{dev}_expected")]);
    }
}

#[test]
fn readme_sample_with_fhir_mapping_corrects_diastolic_code() {
    let doc = load("readme-sample-derived-observations.json");
    let t = Templates::load(
        &doc["device_mapping"].to_string(),
        Some(&doc["fhir_mapping"].to_string()),
    )
    .expect("load");
    let msgs = doc["device_messages"].as_array().expect("messages");
    let mut all = Vec::new();
    for (m, exp) in msgs
        .iter()
        .zip(doc["expected_normalized"].as_array().expect("expected"))
    {
        let (got, errs) = t.measurements(m, ZonePolicy::Reject);
        assert!(errs.is_empty(), "{errs:?}");
        assert_measurements("readme", &got, &Value::Array(vec![exp.clone()]));
        let out = normalise(
            m.to_string().as_bytes(),
            &Context {
                templates: Some(&t),
                ..Context::default()
            },
        );
        assert_eq!(out.rejections, vec![]);
        all.extend(
            out.readings
                .into_iter()
                .map(|r| (r.code(), r.value, r.unit(), r.patient_id.clone())),
        );
        if m.get("diastolic").is_some() {
            assert!(
                out.notes
                    .iter()
                    .any(|n| n.message.contains("8867-4") && n.message.contains("8462-4")),
                "{:?}",
                out.notes
            );
        }
    }
    let p = Some("patient1".to_owned());
    assert_eq!(
        all,
        vec![
            ("8867-4", 65.0, "/min", p.clone()),
            ("55423-8", 10.0, "{steps}", p.clone()),
            // The mapping lists diastolic first, coded 8867-4 (heart rate) upstream.
            ("8462-4", 80.0, "mm[Hg]", p.clone()),
            ("8480-6", 120.0, "mm[Hg]", p),
        ]
    );
}

#[test]
fn openmhealth_schema_vectors() {
    let doc = load("openmhealth-schema-vectors.json");
    let items = doc["items"].as_array().expect("items");
    assert!(items.len() >= 15);
    let ctx = Context {
        device: Some("omh-device"),
        ..Context::default()
    };
    for it in items {
        let path = it["path"].as_str().unwrap_or_default();
        let schema = it["schema"].as_str().unwrap_or_default();
        let mut parts = schema.split(':');
        let (ns, name, version) = (parts.next(), parts.next(), parts.next());
        let point = serde_json::json!({
            "header": {"id": "x", "schema_id": {"namespace": ns, "name": name, "version": version}},
            "body": it["body"],
        });
        let out = normalise(point.to_string().as_bytes(), &ctx);
        match it["expect"].as_str() {
            Some("pass") => {
                assert_eq!(out.rejections, vec![], "{path}");
                assert!(!out.readings.is_empty(), "{path}");
            }
            _ => {
                assert!(
                    out.readings.is_empty(),
                    "{path}: accepted {:?}",
                    out.readings
                );
                assert_eq!(out.rejections.len(), 1, "{path}");
            }
        }
    }
}

#[test]
fn omh_heart_rate_mapping_guide() {
    let doc = load("omh-heart-rate-to-fhir.json");
    let ctx = Context {
        device: Some("acme"),
        ..Context::default()
    };
    for c in doc["cases"].as_array().expect("cases") {
        let out = normalise(c["omh_data_point"].to_string().as_bytes(), &ctx);
        let exp = &c["expected_observation"];
        assert_eq!(out.rejections, vec![], "{}", c["id"]);
        let r = &out.readings[0];
        assert_eq!(r.code(), "8867-4");
        assert_eq!(Some(r.value), exp["valueQuantity"]["value"].as_f64());
        assert_eq!(
            r.patient_id.as_deref(),
            exp["subject"]["identifier"]["value"].as_str()
        );
        if let Some(t) = exp["effectiveDateTime"].as_str() {
            // The source offset is kept.
            assert_eq!(format_rfc3339(r.effective_us, r.offset_min), t);
        }
    }
}

#[test]
fn fitbit_intraday_with_explicit_zone() {
    // A Fitbit intraday response mapped by a CalculatedContent template (fixtures/templates);
    // its times carry no zone, so the zone is an explicit choice.
    let doc = load("fitbit-intraday-heart-rate.json");
    let dir = carewatch_fixtures::fixtures_dir().join("templates");
    let dm =
        std::fs::read_to_string(dir.join("fitbit-intraday.devicemapping.json")).expect("mapping");
    let t = Templates::load(&dm, None).expect("load");
    let payload = serde_json::json!({"Body": doc["vendor_payload"], "Properties": {"deviceId": "fitbit-1"}, "SystemProperties": {}});
    let (got, errs) = t.measurements(&payload, ZonePolicy::Reject);
    assert!(got.is_empty());
    assert!(
        errs.iter().all(|e| e.reason == Reason::ZonelessTime) && errs.len() == 5,
        "{errs:?}"
    );
    // Shimmer stamps these as UTC; with UTC chosen explicitly we agree with it.
    let (got, errs) = t.measurements(&payload, ZonePolicy::utc());
    assert!(errs.is_empty(), "{errs:?}");
    let bodies = doc["expected_omh_bodies"].as_array().expect("bodies");
    assert_eq!(got.len(), bodies.len());
    for (g, b) in got.iter().zip(bodies) {
        let start = b["effective_time_frame"]["time_interval"]["start_date_time"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(g.time.utc_us, micros(start));
        assert_eq!(
            g.properties[0].1.parse::<f64>().ok(),
            b["heart_rate"]["value"].as_f64()
        );
    }
    // The user's real zone gives the real instants.
    let la = ZonePolicy::parse("America/Los_Angeles").expect("tz");
    let (got, _) = t.measurements(&payload, la);
    assert_eq!(
        format_rfc3339(got[0].time.utc_us, got[0].time.offset_min),
        "2015-08-21T00:01:00-07:00"
    );
    assert_eq!(
        got[0].time.utc_us,
        time::parse_str("2015-08-21T07:01:00Z", "t", ZonePolicy::Reject)
            .expect("t")
            .utc_us
    );
}
