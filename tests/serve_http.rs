//! `carewatch serve` over HTTP with curl: registry, partial accept, FHIR endpoints, auth,
//! backpressure-free durability, graceful shutdown.

mod common;

use carewatch_store::Table;
use common::*;

#[test]
fn http_ingest_end_to_end() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let secret = srv.register("w1", "alice");
    let other = srv.register("w2", "bob");

    // Unauthenticated and wrong-role writes are refused.
    let (s, _) = curl("POST", &format!("{}/v1/readings", srv.http), "", "{}");
    assert_eq!(s, 401);
    let (s, _) = curl(
        "POST",
        &format!("{}/v1/readings", srv.http),
        "cw_bogus",
        "{}",
    );
    assert_eq!(s, 401);
    let (s, _) = curl("GET", &format!("{}/healthz", srv.http), "", "");
    assert_eq!(s, 200);

    // NDJSON: two good lines (3 readings), one out of range, one not JSON.
    let body = "{\"time\":\"2024-05-01T08:00:00+02:00\",\"heart_rate\":72,\"spo2\":97}\n\
                {\"time\":\"2024-05-01T08:00:01+02:00\",\"heart_rate\":400}\n\
                not json\n\
                {\"device_id\":\"w1\",\"time\":1714543202000,\"type\":\"heart_rate\",\"value\":74}\n";
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, body);
    assert_eq!(s, 202, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["accepted"], 3);
    let reasons: Vec<(u64, &str)> = v["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap_or(99),
                r["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(reasons, vec![(1, "out_of_range"), (2, "invalid_json")]);

    // A device cannot write as another device.
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/readings", srv.http),
        &other,
        r#"{"device_id":"w1","time":"2024-05-01T08:00:00Z","type":"heart_rate","value":70}"#,
    );
    assert_eq!(s, 422, "{b}");
    assert!(b.contains("device_mismatch"), "{b}");

    // FHIR: an Observation is 201; a Patient is 400 with an OperationOutcome; a Bundle answers per entry.
    let obs = r#"{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8310-5"}]},
                 "effectiveDateTime":"2024-05-01T09:00:00+02:00","valueQuantity":{"value":98.6,"unit":"F","system":"http://unitsofmeasure.org","code":"[degF]"}}"#;
    let (s, b) = curl(
        "POST",
        &format!("{}/fhir/Observation", srv.http),
        &secret,
        obs,
    );
    assert_eq!(s, 201, "{b}");
    let (s, b) = curl(
        "POST",
        &format!("{}/fhir/Observation", srv.http),
        &secret,
        r#"{"resourceType":"Patient"}"#,
    );
    assert_eq!(s, 400);
    assert!(
        b.contains("OperationOutcome") && b.contains("unsupported_resource"),
        "{b}"
    );
    let bundle = format!(
        r#"{{"resourceType":"Bundle","type":"batch","entry":[{{"resource":{obs}}},{{"resource":{{"resourceType":"Observation","status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"9999-9"}}]}},"effectiveDateTime":"2024-05-01T09:00:00Z","valueQuantity":{{"value":1}}}}}}]}}"#
    );
    let (s, b) = curl("POST", &format!("{}/fhir", srv.http), &secret, &bundle);
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["type"], "batch-response");
    assert_eq!(v["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(
        v["entry"][1]["response"]["status"],
        "422 Unprocessable Entity"
    );

    // Oversized bodies are refused before parsing.
    let huge = "x".repeat(5 << 20);
    let (s, _) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &huge);
    assert_eq!(s, 413);

    // A revoked device's token stops working.
    let (s, _) = curl(
        "DELETE",
        &format!("{}/v1/devices/w2", srv.http),
        srv.admin(),
        "",
    );
    assert_eq!(s, 204);
    let (s, _) = curl("POST", &format!("{}/v1/readings", srv.http), &other, "{}");
    assert_eq!(s, 401);

    let stats = srv.stats();
    let dir = srv.dir.clone();
    assert_eq!(srv.stop(), 0, "graceful shutdown exits 0");
    // Everything acknowledged is in storage, attributed to the registry's patient.
    let obs = read_table(&dir, Table::Observations);
    // 3 readings, the FHIR Observation, and its copy in the Bundle: acknowledged 5 times, but
    // the copy has the same natural key (device, code, effective time) and is stored once.
    assert_eq!(stats["rows_appended"], 5);
    assert_eq!(count(&obs), 4);
    assert!(strings(&obs, "patient_id").iter().all(|p| p == "alice"));
    let dead = read_table(&dir, Table::DeadLetters);
    let mut reasons = strings(&dead, "reason");
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            "device_mismatch",
            "invalid_json",
            "out_of_range",
            "unknown_vital",
            "unsupported_resource"
        ]
    );
}

#[test]
fn device_mapping_templates_reload_without_restart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fixtures = carewatch_fixtures::fixtures_dir().join("templates");
    let dm = tmp.path().join("devicecontent.json");
    let fm = tmp.path().join("fhirmapping.json");
    std::fs::copy(fixtures.join("medtech-sample.devicemapping.json"), &dm).expect("copy");
    std::fs::copy(fixtures.join("medtech-sample.fhirmapping.json"), &fm).expect("copy");
    let conf = tmp.path().join("carewatch.toml");
    std::fs::write(
        &conf,
        format!(
            "[templates]\ndevice_mapping = {:?}\nfhir_mapping = {:?}\n",
            dm, fm
        ),
    )
    .expect("conf");
    let srv = Server::start(tmp.path(), &["--config", conf.to_str().expect("utf8")]);
    let secret = srv.register("device1", "patient1");
    let post = |sec: u32| {
        let body = format!(
            r#"{{"heartrate":65,"deviceid":"device1","patientid":"patient1","measurementdatetime":"2023-10-09T19:18:{sec:02}+00:00"}}"#
        );
        let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
        (s, b)
    };
    let (s, b) = post(1);
    assert_eq!(s, 202, "{b}");
    assert!(b.contains(r#""accepted":1"#), "{b}");
    // Edit the mapping: heart rate is no longer mapped.
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dm).expect("read")).expect("json");
    m["template"]
        .as_array_mut()
        .expect("templates")
        .retain(|t| t["template"]["typeName"] != "heartrate");
    std::fs::write(&dm, m.to_string()).expect("write");
    let mut n = 2;
    wait_until(
        "the edited mapping to take effect",
        std::time::Duration::from_secs(15),
        || {
            n += 1;
            post(n).1.contains("template_no_match")
        },
    );
    // A broken edit is refused and the previous mapping stays in force.
    std::fs::write(&dm, "{ not json").expect("write");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(post(59).1.contains("template_no_match"));
    assert_eq!(srv.stop(), 0);
}

#[test]
fn a_full_buffer_answers_503_with_retry_after() {
    let tmp = tempfile::tempdir().expect("tmp");
    let conf = tmp.path().join("carewatch.toml");
    // A buffer of 5 rows that never persists on its own during the test.
    std::fs::write(
        &conf,
        "[store]\nbuffer_limit_rows = 5\npersist_rows = 1000000\npersist_age_secs = 3600\n",
    )
    .expect("conf");
    let srv = Server::start(tmp.path(), &["--config", conf.to_str().expect("utf8")]);
    let secret = srv.register("w1", "alice");
    let body: String = (0..5)
        .map(|i| {
            format!(
                "{{\"time\":{},\"heart_rate\":70}}\n",
                1_714_550_400_000_i64 + i * 1000
            )
        })
        .collect();
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
    assert_eq!(s, 202, "{b}");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-i",
            "-H",
            &format!("Authorization: Bearer {secret}"),
            "--data-binary",
            r#"{"time":1714550500000,"heart_rate":71}"#,
        ])
        .arg(format!("{}/v1/readings", srv.http))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert_eq!(srv.stop(), 0);
}
