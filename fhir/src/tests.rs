//! Tests of the FHIR view: snapshots, the vital-signs rules checked in Rust, the official R4
//! examples round-tripped through transform, and samples for the external validator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use carewatch_transform::catalogue::{Category, VITALS, by_key};
use carewatch_transform::{Context, ZonePolicy, normalise};

/// 2024-05-01T08:00:00Z.
const T0: i64 = 1_714_550_400_000_000;
const RECEIVED: i64 = T0 + 1_000_000;

fn reading(key: &str, value: f64) -> Reading {
    Reading {
        device_id: "watch-7".into(),
        patient_id: Some("pat-1".into()),
        vital: by_key(key).expect("vital"),
        value,
        effective_us: T0,
        effective_end_us: None,
        offset_min: Some(120),
        extra: None,
    }
}

fn codes(concept: &Value) -> Vec<&str> {
    concept["coding"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["code"].as_str()).collect())
        .unwrap_or_default()
}

/// The HL7 vital-signs rules of shared/reference.md §2.3 and §3, checked in Rust, plus a
/// re-parse as a fhir-model Observation.
fn check_vital_signs(o: &Value) {
    assert_eq!(o["resourceType"], "Observation", "{o}");
    assert_eq!(o["status"], "final", "{o}");
    assert!(o["id"].as_str().is_some_and(|s| s.len() == 32), "{o}");
    assert!(
        o["subject"]["reference"]
            .as_str()
            .is_some_and(|s| s.len() > "Patient/".len() && s.starts_with("Patient/")),
        "subject: {o}"
    );
    // vs-1: a dateTime is at least day-precise; a Period has a start.
    match (o.get("effectiveDateTime"), o.get("effectivePeriod")) {
        (Some(dt), None) => assert!(dt.as_str().is_some_and(|s| s.len() >= 8), "{o}"),
        (None, Some(p)) => assert!(p["start"].is_string(), "{o}"),
        _ => panic!("exactly one effective[x] expected: {o}"),
    }
    let values: Vec<&String> = o
        .as_object()
        .expect("object")
        .keys()
        .filter(|k| k.starts_with("value"))
        .collect();
    assert!(values.len() <= 1, "value[x] exclusivity: {o}");
    let code = codes(&o["code"]);
    assert_eq!(o["code"]["coding"][0]["system"], LOINC, "{o}");
    let vs_cat = o["category"].as_array().is_some_and(|cats| {
        cats.iter().any(|c| {
            c["coding"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["system"] == CATEGORY_SYSTEM && c["code"] == "vital-signs")
            })
        })
    });
    let vital = by_code(code[0]).or_else(|| by_code("8480-6").filter(|_| code[0] == BP_PANEL));
    let vital = vital.expect("a catalogue code");
    assert_eq!(vs_cat, vital.category == Category::VitalSigns, "VSCat: {o}");
    assert_eq!(
        o["meta"]["profile"][0].as_str(),
        vital.profile,
        "profile: {o}"
    );
    let check_q = |q: &Value| {
        assert_eq!(q["system"], UCUM, "{q}");
        assert!(q["code"].as_str().is_some_and(|c| !c.is_empty()), "{q}");
        assert!(q["value"].is_number(), "{q}");
    };
    if code.contains(&BP_PANEL) {
        let comps = o["component"].as_array().expect("components");
        let cc: Vec<&str> = comps.iter().map(|c| codes(&c["code"])[0]).collect();
        assert_eq!(cc, BP_COMPONENTS, "{o}");
        for c in comps {
            // vs-3: a value or a dataAbsentReason, not both.
            match (c.get("valueQuantity"), c.get("dataAbsentReason")) {
                (Some(q), None) => {
                    check_q(q);
                    assert_eq!(q["code"], "mm[Hg]");
                }
                (None, Some(dar)) => assert_eq!(dar["coding"][0]["system"], DATA_ABSENT_SYSTEM),
                _ => panic!("vs-3: {c}"),
            }
        }
        assert!(values.is_empty(), "{o}");
    } else {
        check_q(&o["valueQuantity"]);
        assert!(o.get("dataAbsentReason").is_none(), "obs-6: {o}");
        assert!(o.get("component").is_none(), "{o}");
    }
    let unit = o["valueQuantity"]["code"].as_str();
    let allowed: &[&str] = match code[0] {
        "8867-4" | "9279-1" => &["/min"],
        "2708-6" => &["%"],
        "8310-5" => &["Cel", "[degF]"],
        "29463-7" => &["kg", "g", "[lb_av]"],
        "8302-2" => &["cm", "[in_i]"],
        "39156-5" => &["kg/m2"],
        _ => &[],
    };
    if !allowed.is_empty() {
        assert!(unit.is_some_and(|u| allowed.contains(&u)), "unit: {o}");
    }
    if code.contains(&"2708-6") || code.contains(&"59408-5") {
        assert!(code.contains(&"2708-6") && code.contains(&"59408-5"), "{o}");
    }
    let _: Observation = serde_json::from_value(o.clone()).expect("re-parses as fhir-model");
}

/// Checks, then returns the JSON (for snapshots).
fn checked(rows: &[&Reading], received: Option<i64>) -> Value {
    let o = observation_json(rows, received).expect("observation");
    check_vital_signs(&o);
    o
}

/// One reading per catalogue entry with a plausible value (BP as a pair; steps over a minute).
fn catalogue_samples() -> Vec<(String, Vec<Reading>)> {
    let mut out = Vec::new();
    for v in VITALS {
        let value = match v.key {
            "heart_rate" => 72.0,
            "spo2" => 97.0,
            "respiratory_rate" => 16.0,
            "body_temperature" => 36.8,
            "body_weight" => 72.5,
            "body_height" => 176.0,
            "bmi" => 23.4,
            "steps" => 88.0,
            "hrv" => 42.0,
            "blood_glucose" | "cgm_glucose" => 104.0,
            "systolic" | "diastolic" => continue,
            _ => {
                let mid = (v.range.0 + v.range.1) / 2.0;
                (mid * 10.0).round() / 10.0
            }
        };
        let mut r = reading(v.key, value);
        assert!(v.range.0 <= value && value <= v.range.1, "{}", v.key);
        if v.key == "steps" {
            r.effective_end_us = Some(r.effective_us + 60_000_000);
        }
        out.push((format!("catalogue-{}", v.key), vec![r]));
    }
    out.push((
        "catalogue-blood_pressure".into(),
        vec![reading("systolic", 128.0), reading("diastolic", 82.0)],
    ));
    out
}

/// The official R4 examples of reference.md §3.2 through transform's FHIR input and back.
fn official_example_samples() -> Vec<(String, Vec<Reading>)> {
    let dir = carewatch_fixtures::data_dir("fhir-examples").join("r4-core");
    // The examples give day-precision dates: read them as UTC midnight.
    let named = Context {
        tz: ZonePolicy::utc(),
        ..Context::default()
    };
    // Most name no device: then the transport supplies one.
    let anonymous = Context {
        device: Some("dev-example"),
        ..named
    };
    let mut out = Vec::new();
    for name in [
        "heart-rate",
        "respiratory-rate",
        "satO2",
        "body-temperature",
        "body-height",
        "bmi",
        "blood-pressure",
        "blood-pressure-dar",
        "example",
    ] {
        let p = dir.join(format!("Observation-{name}.json"));
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let mut o = normalise(&bytes, &named);
        if o.readings.is_empty() {
            o = normalise(&bytes, &anonymous);
        }
        assert_eq!(o.rejections, vec![], "{name}");
        assert!(!o.readings.is_empty(), "{name}");
        out.push((format!("r4-example-{name}"), o.readings));
    }
    out
}

#[test]
fn snapshots() {
    let hr = reading("heart_rate", 72.0);
    insta::assert_json_snapshot!("heart_rate", checked(&[&hr], Some(RECEIVED)));
    let spo2 = reading("spo2", 97.0);
    insta::assert_json_snapshot!("spo2", checked(&[&spo2], None));
    // Diastolic first on input: systolic is still the first component.
    let (d, s) = (reading("diastolic", 80.0), reading("systolic", 120.0));
    insta::assert_json_snapshot!("blood_pressure", checked(&[&d, &s], None));
    let mut steps = reading("steps", 42.0);
    steps.effective_end_us = Some(steps.effective_us + 60_000_000);
    insta::assert_json_snapshot!("steps", checked(&[&steps], None));
    let t = reading("body_temperature", 37.2);
    insta::assert_json_snapshot!("body_temperature", checked(&[&t], None));
    let s = reading("systolic", 131.0);
    insta::assert_json_snapshot!("blood_pressure_diastolic_absent", checked(&[&s], None));
}

#[test]
fn every_catalogue_vital_makes_a_conformant_observation() {
    let samples = catalogue_samples();
    // Every catalogue entry is covered (the two BP rows by one sample).
    assert_eq!(samples.len(), VITALS.len() - 1);
    for (name, rows) in &samples {
        let refs: Vec<&Reading> = rows.iter().collect();
        let o = checked(&refs, Some(RECEIVED));
        assert_eq!(o["id"], rows[0].observation_id(), "{name}");
        assert_eq!(o["issued"], "2024-05-01T08:00:01Z", "{name}");
    }
}

#[test]
fn official_examples_round_trip_conformant() {
    for (name, rows) in official_example_samples() {
        let groups = group(&rows);
        assert_eq!(groups.len(), 1, "{name}");
        let o = checked(&groups[0], None);
        // The sender's id is kept as an identifier; its narrative and other elements return.
        let idents = o["identifier"].as_array().expect("identifier");
        assert!(
            idents.iter().any(|i| i["system"] == SOURCE_ID_SYSTEM),
            "{name}: {o}"
        );
        assert!(o.get("text").is_some(), "{name}");
        if name.ends_with("blood-pressure") {
            let vals: Vec<&Value> = o["component"]
                .as_array()
                .expect("components")
                .iter()
                .map(|c| &c["valueQuantity"]["value"])
                .collect();
            assert_eq!(vals, [&json!(107), &json!(60)]);
            // The sender's interpretation and bodySite are not columns: they come back.
            assert!(o.get("interpretation").is_some() && o.get("bodySite").is_some());
        }
        if name.ends_with("-dar") {
            assert_eq!(
                o["component"][1]["dataAbsentReason"]["coding"][0]["code"],
                "unknown"
            );
        }
    }
}

/// Writes every sample Observation, one JSON file each, into `$CAREWATCH_FHIR_OUT` for the
/// external validator (scripts/fhir_validate.py, run by scripts/test.sh). Without the variable
/// it still builds and checks them all.
#[test]
fn write_samples_for_external_validator() {
    let mut samples = catalogue_samples();
    samples.extend(official_example_samples());
    let mut with_extras = reading("heart_rate", 61.0);
    with_extras.extra = Some(
        json!({
            "id": "hr-1",
            "identifier": [{"system": "urn:example:ids", "value": "a-1"}],
            "note": [{"text": "after stairs"}],
            "interpretation": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                "code": "N", "display": "Normal"}]}],
            "meta": {"versionId": "3", "tag": [{"system": "urn:example:tags", "code": "wearable"}]}
        })
        .to_string(),
    );
    samples.push(("fhir-native-extras".into(), vec![with_extras]));
    samples.push((
        "blood-pressure-systolic-only".into(),
        vec![reading("systolic", 131.0)],
    ));
    let mut fractional = reading("respiratory_rate", 14.5);
    fractional.effective_us += 123_456;
    fractional.offset_min = Some(-330);
    samples.push(("fractional-time-negative-offset".into(), vec![fractional]));

    let out = std::env::var_os("CAREWATCH_FHIR_OUT").map(std::path::PathBuf::from);
    if let Some(dir) = &out {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    let mut written = 0;
    for (name, rows) in &samples {
        for (i, g) in group(rows).iter().enumerate() {
            let o = checked(g, Some(RECEIVED));
            assert!(o.as_object().is_some_and(|m| !m.is_empty()), "{name}");
            if let Some(dir) = &out {
                let file = dir.join(format!("observation-{name}-{i}.json"));
                let body = serde_json::to_vec_pretty(&o).expect("json");
                std::fs::write(&file, body).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            }
            written += 1;
        }
    }
    assert!(written >= VITALS.len() - 1 + 9 + 3, "{written}");
    if let Some(dir) = &out {
        // One bundle too, as `carewatch template check --fhir` and FHIR search serve them.
        let rows: Vec<Reading> = catalogue_samples().into_iter().flat_map(|s| s.1).collect();
        let bundle = bundle_json(&rows, "searchset").expect("bundle");
        let body = serde_json::to_vec_pretty(&bundle).expect("json");
        std::fs::write(dir.join("bundle-catalogue-searchset.json"), body).expect("write");
    }
}

#[test]
fn times_keep_the_senders_offset_and_fraction() {
    let mut r = reading("heart_rate", 70.0);
    r.effective_us += 123_456;
    r.offset_min = Some(-330);
    let o = checked(&[&r], Some(RECEIVED + 500_000));
    assert_eq!(o["effectiveDateTime"], "2024-05-01T02:30:00.123456-05:30");
    assert_eq!(o["issued"], "2024-05-01T08:00:01.5Z");
    r.offset_min = None;
    r.effective_us = T0 + 250_000;
    let o = checked(&[&r], None);
    assert_eq!(o["effectiveDateTime"], "2024-05-01T08:00:00.25Z");
    assert!(o.get("issued").is_none());
}

#[test]
fn integral_values_are_integers_and_fractions_stay() {
    let o = checked(&[&reading("heart_rate", 72.0)], None);
    assert_eq!(o["valueQuantity"]["value"].to_string(), "72");
    let o = checked(&[&reading("body_temperature", 37.25)], None);
    assert_eq!(o["valueQuantity"]["value"].to_string(), "37.25");
    // The typed Observation keeps f64.
    let t = observation(&[&reading("body_weight", 80.0)], None).expect("obs");
    let Some(ObservationValue::Quantity(q)) = &t.value else {
        panic!("valueQuantity");
    };
    assert_eq!(q.value, Some(80.0));
}

#[test]
fn extra_elements_come_back_and_source_id_is_an_identifier() {
    let mut r = reading("heart_rate", 61.0);
    r.extra = Some(
        json!({
            "id": "hr-1",
            "identifier": [{"system": "urn:example:ids", "value": "a-1"}],
            "note": [{"text": "after stairs"}],
            "status": "preliminary",
            "valueString": "sixty-one",
            "dataAbsentReason": {"text": "?"},
            "meta": {"versionId": "3", "profile": ["urn:other"], "tag": [{"code": "w"}]}
        })
        .to_string(),
    );
    let o = checked(&[&r], None);
    assert_eq!(o["note"][0]["text"], "after stairs");
    assert_eq!(o["status"], "final", "our elements are not overridden");
    assert_eq!(
        o["identifier"],
        json!([
            {"system": "urn:example:ids", "value": "a-1"},
            {"system": SOURCE_ID_SYSTEM, "value": "hr-1"}
        ])
    );
    assert_eq!(o["id"], r.observation_id());
    assert!(o.get("valueString").is_none() && o.get("dataAbsentReason").is_none());
    assert_eq!(
        o["meta"],
        json!({
            "profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"],
            "tag": [{"code": "w"}]
        })
    );
}

#[test]
fn errors() {
    let mut r = reading("heart_rate", 61.0);
    r.patient_id = None;
    assert_eq!(
        observation_json(&[&r], None).unwrap_err(),
        Error::MissingPatient("watch-7".into())
    );
    assert_eq!(observation(&[], None).unwrap_err(), Error::Empty);
    let (a, mut b) = (reading("systolic", 120.0), reading("diastolic", 80.0));
    b.effective_us += 1;
    assert!(matches!(
        observation(&[&a, &b], None),
        Err(Error::MixedRows(_))
    ));
    assert!(matches!(
        observation(&[&a, &reading("heart_rate", 60.0)], None),
        Err(Error::MixedRows(_))
    ));
    assert_eq!(
        bundle_json(&[], "transaction").unwrap_err(),
        Error::BundleKind("transaction".into())
    );
}

#[test]
fn duplicate_rows_keep_the_first() {
    let (s1, s2, d) = (
        reading("systolic", 120.0),
        reading("systolic", 125.0),
        reading("diastolic", 80.0),
    );
    let o = checked(&[&s1, &d, &s2], None);
    assert_eq!(o["component"][0]["valueQuantity"]["value"], 120);
    assert_eq!(o["component"].as_array().map(Vec::len), Some(2));
}

#[test]
fn group_preserves_first_appearance_and_pairs_bp() {
    let mut later = reading("heart_rate", 71.0);
    later.effective_us += 60_000_000;
    let rows = vec![
        reading("heart_rate", 70.0),
        reading("systolic", 120.0),
        later,
        reading("diastolic", 80.0),
    ];
    let g = group(&rows);
    let shape: Vec<Vec<f64>> = g
        .iter()
        .map(|g| g.iter().map(|r| r.value).collect())
        .collect();
    assert_eq!(shape, vec![vec![70.0], vec![120.0, 80.0], vec![71.0]]);
    for g in &g {
        assert!(
            g.iter()
                .all(|r| r.observation_id() == g[0].observation_id())
        );
    }
    assert!(group(&[]).is_empty());
}

#[test]
fn bundles() {
    let rows = vec![
        reading("systolic", 120.0),
        reading("diastolic", 80.0),
        reading("heart_rate", 70.0),
    ];
    let b = bundle_json(&rows, "searchset").expect("bundle");
    assert_eq!(b["type"], "searchset");
    assert_eq!(b["total"], 2);
    let entries = b["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 2);
    for e in entries {
        check_vital_signs(&e["resource"]);
        assert_eq!(e["search"]["mode"], "match");
        let id = e["resource"]["id"].as_str().expect("id");
        assert_eq!(e["fullUrl"], format!("urn:carewatch:Observation/{id}"));
    }
    assert_eq!(
        entries[0]["resource"]["component"].as_array().map(Vec::len),
        Some(2)
    );
    let c = bundle_json_at(&rows, "collection", Some("https://cw.example/fhir/")).expect("b");
    assert_eq!(c["type"], "collection");
    assert!(c.get("total").is_none() && c["entry"][0].get("search").is_none());
    let id = c["entry"][1]["resource"]["id"].as_str().expect("id");
    assert_eq!(
        c["entry"][1]["fullUrl"],
        format!("https://cw.example/fhir/Observation/{id}")
    );
    let mut orphan = reading("heart_rate", 70.0);
    orphan.patient_id = None;
    assert!(matches!(
        bundle_json(&[orphan], "collection"),
        Err(Error::MissingPatient(_))
    ));
}
