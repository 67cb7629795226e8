//! A newcomer's first steps store what they send (issue #12): the README's "Using it" example
//! registers a device without `valid_from` and posts a reading dated 2024, and `replay
//! --register-devices` is given a file that names both device and patient. Against the
//! previous code the reading was dead-lettered as `unassigned_device` (over MQTT after a PUBACK)
//! and every replayed item as `patient_mismatch`.

mod common;

use std::process::Command;

use carewatch_store::Table;
use common::*;

#[test]
fn the_readme_example_stores_a_backlog_reading_over_http_and_mqtt() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    note_id("device", "watch-1");
    note_id("patient", "p-readme-1");
    // As in the README: no valid_from.
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/devices", srv.http),
        srv.admin(),
        r#"{"device_id":"watch-1","patient_id":"p-readme-1"}"#,
    );
    assert_eq!(s, 201, "{b}");
    let secret = serde_json::from_str::<serde_json::Value>(&b).expect("json")["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    note_id("token", &secret);
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/readings", srv.http),
        &secret,
        r#"{"time":"2024-05-01T08:00:00+02:00","heart_rate":72,"spo2":97}"#,
    );
    assert_eq!(s, 202, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    assert_eq!(v["accepted"], 2, "{b}");
    let mqtt = srv.mqtt.clone().expect("embedded listener");
    let (host, port) = mqtt.rsplit_once(':').expect("host:port");
    let ok = Command::new("mosquitto_pub")
        .args([
            "-h", host, "-p", port, "-u", "watch-1", "-P", &secret, "-q", "1",
        ])
        .args(["-t", "devices/watch-1/readings", "-m"])
        .arg(r#"{"time":1714543260000,"heart_rate":73}"#)
        .status()
        .expect("mosquitto_pub");
    assert!(ok.success());
    let dir = srv.dir.clone();
    assert_eq!(srv.stop(), 0);
    assert_eq!(count(&read_table(&dir, Table::Observations)), 3);
    assert_eq!(count(&read_table(&dir, Table::DeadLetters)), 0);
}

#[test]
fn replay_register_devices_honours_the_patient_in_the_data() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("backfill.ndjson");
    note_id("device", "band-7");
    note_id("patient", "p-replay-7");
    std::fs::write(
        &file,
        "{\"device_id\":\"band-7\",\"patient_id\":\"p-replay-7\",\"time\":\"2024-05-01T08:00:00Z\",\"heart_rate\":61}\n\
         {\"device_id\":\"band-7\",\"patient_id\":\"p-replay-7\",\"time\":\"2024-05-01T08:01:00Z\",\"heart_rate\":62}\n",
    )
    .expect("write");
    let data = tmp.path().join("data");
    let out = Command::new(BIN)
        .arg("replay")
        .arg("--data-dir")
        .arg(&data)
        .arg("--register-devices")
        .arg(&file)
        .env("CAREWATCH_LOG", "warn")
        .output()
        .expect("replay");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(count(&read_table(&data, Table::Observations)), 2, "{text}");
    assert_eq!(count(&read_table(&data, Table::DeadLetters)), 0, "{text}");
    let patients = strings(&read_table(&data, Table::Observations), "patient_id");
    assert!(patients.iter().all(|p| p == "p-replay-7"), "{patients:?}");
}
