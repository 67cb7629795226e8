//! Readings/s for each payload format, next to serde_json's parse-only rate on the same bytes,
//! so the cost of normalisation over parsing (normalise ÷ parse) is visible.
//!
//! Run: `cargo bench -p carewatch-benches --bench normalise` (release profile).

use carewatch_transform::template::Templates;
use carewatch_transform::time::ZonePolicy;
use carewatch_transform::{Context, normalise};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use std::hint::black_box;

fn ts(i: usize) -> String {
    format!(
        "2024-05-01T08:{:02}:{:02}.{:03}+02:00",
        (i / 60) % 60,
        i % 60,
        i % 1000
    )
}

fn payloads() -> Vec<(&'static str, Vec<u8>, usize)> {
    let single = json!({"device_id": "dev-0001", "patient_id": "p-0001", "time": ts(1), "type": "heart_rate", "value": 72});
    let multi =
        json!({"device_id": "dev-0001", "time": ts(1), "heart_rate": 72, "spo2": 97, "steps": 3});
    let array: Vec<Value> = (0..100)
        .map(|i| json!({"device_id": "dev-0001", "time": ts(i), "type": "heart_rate", "value": 60 + i % 40}))
        .collect();
    let ndjson: String = array.iter().map(|v| format!("{v}\n")).collect();
    let obs = |i: usize| {
        json!({"resourceType": "Observation", "status": "final",
          "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
          "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
          "subject": {"reference": "Patient/p-0001"}, "device": {"reference": "Device/dev-0001"},
          "effectiveDateTime": ts(i),
          "valueQuantity": {"value": 60 + i % 40, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}})
    };
    let bundle = json!({"resourceType": "Bundle", "type": "batch",
        "entry": (0..100).map(|i| json!({"resource": obs(i)})).collect::<Vec<_>>()});
    let omh = json!({"header": {"id": "x", "schema_id": {"namespace": "omh", "name": "heart-rate", "version": "2.0"}, "user_id": "p-0001"},
        "body": {"heart_rate": {"value": 50, "unit": "beats/min"}, "effective_time_frame": {"date_time": ts(1)}}, "device_id": "dev-0001"});
    let medtech = json!({"heartRate": "78", "endDate": "2019-02-01T22:46:01.8750000Z", "deviceId": "dev-0001"});
    vec![
        ("carewatch_single", single.to_string().into_bytes(), 1),
        ("carewatch_multi_vital", multi.to_string().into_bytes(), 3),
        (
            "carewatch_array_100",
            Value::Array(array).to_string().into_bytes(),
            100,
        ),
        ("carewatch_ndjson_100", ndjson.into_bytes(), 100),
        ("fhir_observation", obs(1).to_string().into_bytes(), 1),
        ("fhir_bundle_100", bundle.to_string().into_bytes(), 100),
        ("omh_heart_rate", omh.to_string().into_bytes(), 1),
        ("template_calculated", medtech.to_string().into_bytes(), 1),
    ]
}

fn bench(c: &mut Criterion) {
    let templates = Templates::load(
        r#"{"templateType":"CollectionContent","template":[{"templateType":"CalculatedContent","template":{
            "typeName":"heartrate","typeMatchExpression":"$..[?(@heartRate)]",
            "deviceIdExpression":"$.matchedToken.deviceId","timestampExpression":"$.matchedToken.endDate",
            "values":[{"required":true,"valueExpression":"$.matchedToken.heartRate","valueName":"hr"}]}}]}"#,
        None,
    )
    .expect("template");
    let mut g = c.benchmark_group("normalise");
    for (name, bytes, readings) in payloads() {
        let ctx = if name.starts_with("template") {
            Context {
                templates: Some(&templates),
                tz: ZonePolicy::Reject,
                ..Context::default()
            }
        } else {
            Context::default()
        };
        let out = normalise(&bytes, &ctx);
        assert_eq!(out.readings.len(), readings, "{name}: {:?}", out.rejections);
        g.throughput(Throughput::Elements(readings as u64));
        g.bench_function(format!("{name}/normalise"), |b| {
            b.iter(|| normalise(black_box(&bytes), &ctx))
        });
        g.bench_function(format!("{name}/parse_only"), |b| {
            b.iter(|| {
                if name.contains("ndjson") {
                    let n = bytes
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
                        .count();
                    black_box(n);
                } else {
                    black_box(serde_json::from_slice::<Value>(black_box(&bytes)).ok());
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
