//! MQTT end to end with real clients: mosquitto_pub and paho-mqtt against the embedded listener,
//! and carewatch subscribed to a real Mosquitto broker that restarts mid-stream.

mod common;
#[path = "mqtt_broker/mosquitto.rs"]
mod mosquitto;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use carewatch_store::Table;
use common::*;
use mosquitto::Mosquitto;

fn mosquitto_pub(mqtt: &str, user: &str, pass: &str, topic: &str, msg: &str) -> bool {
    let (host, port) = mqtt.rsplit_once(':').expect("addr");
    Command::new("mosquitto_pub")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-q",
            "1",
            "-i",
            &format!("pub-{user}"),
            "-u",
            user,
            "-P",
            pass,
            "-t",
            topic,
            "-m",
            msg,
        ])
        .status()
        .expect("mosquitto_pub installed (scripts/setup-test-deps.sh)")
        .success()
}

#[test]
fn embedded_listener_with_mosquitto_pub_and_paho() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let mqtt = srv.mqtt.clone().expect("embedded listener");
    let secret = srv.register("w1", "alice");

    // mosquitto_pub, QoS 1: acknowledged means stored.
    assert!(mosquitto_pub(
        &mqtt,
        "w1",
        &secret,
        "devices/w1/readings",
        r#"{"time":"2024-05-01T08:00:00Z","heart_rate":71,"spo2":98}"#
    ));
    // Bad password: the CONNECT is refused.
    assert!(!mosquitto_pub(
        &mqtt,
        "w1",
        "cw_wrong",
        "devices/w1/readings",
        r#"{"time":"2024-05-01T08:00:00Z","heart_rate":71}"#
    ));
    // Wrong topic and a malformed payload: acknowledged as dead letters, never dropped.
    assert!(mosquitto_pub(
        &mqtt,
        "w1",
        &secret,
        "devices/w2/readings",
        r#"{"time":"2024-05-01T08:00:00Z","heart_rate":71}"#
    ));
    assert!(mosquitto_pub(
        &mqtt,
        "w1",
        &secret,
        "devices/w1/readings",
        "{not json"
    ));

    // paho-mqtt publishes 200 QoS 1 messages and counts the PUBACKs it got.
    let (host, port) = mqtt.rsplit_once(':').expect("addr");
    let script = r#"
import sys, paho.mqtt.client as mqtt
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-" + user)
c.username_pw_set(user, pw)
c.connect(host, port)
c.loop_start()
infos = [c.publish("devices/w1/readings",
         '{"time": %d, "heart_rate": %d}' % (1714554000000 + i * 1000, 60 + i % 50), qos=1) for i in range(200)]
for i in infos:
    i.wait_for_publish(timeout=30)
print(sum(1 for i in infos if i.is_published()))
c.disconnect(); c.loop_stop()
"#;
    let out = Command::new(python())
        .args(["-c", script, host, port, "w1", &secret])
        .output()
        .expect("python with paho");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acked: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("count");
    assert_eq!(acked, 200);

    let dir = srv.dir.clone();
    assert_eq!(srv.stop(), 0);
    let obs = read_table(&dir, Table::Observations);
    assert_eq!(count(&obs), 2 + 200, "every acknowledged reading is stored");
    let mut reasons = strings(&read_table(&dir, Table::DeadLetters), "reason");
    reasons.sort();
    assert_eq!(reasons, vec!["invalid_json", "wrong_topic"]);
}

/// Publishes heart-rate sample `i` of device w1 to an external broker, QoS 1, anonymously.
fn broker_publish(port: u16, i: i64) {
    let msg = format!(
        r#"{{"time":{},"heart_rate":{}}}"#,
        1_714_550_400_000_i64 + i * 1000,
        60 + i % 50
    );
    let ok = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            "devices/w1/readings",
            "-m",
            &msg,
        ])
        .status()
        .expect("mosquitto_pub")
        .success();
    assert!(ok, "broker refused message {i}");
}

#[test]
fn external_mosquitto_restart_loses_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let broker = Mosquitto::start(tmp.path(), port);
    let srv = Server::start(
        tmp.path(),
        &["--mqtt-url", &format!("mqtt://127.0.0.1:{port}")],
    );
    srv.register("w1", "alice");
    let publish = |from: usize, to: usize| {
        for i in from..to {
            broker_publish(port, i as i64);
        }
    };
    publish(0, 60);
    // The broker restarts mid-stream; carewatch reconnects to its persistent session.
    broker.stop();
    let broker = Mosquitto::start(tmp.path(), port);
    publish(60, 120);
    wait_until(
        "carewatch to store all 120",
        Duration::from_secs(60),
        || srv.stats()["rows_appended"].as_u64().unwrap_or(0) >= 120,
    );
    let dir = srv.dir.clone();
    assert_eq!(srv.stop(), 0);
    broker.stop();
    let obs = read_table(&dir, Table::Observations);
    assert_eq!(count(&obs), 120, "nothing lost, nothing duplicated");
}

#[test]
fn simulator_fleet_over_mqtt_and_http_arrives_exactly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let mqtt = srv.mqtt.clone().expect("embedded");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "simulate",
            "--patients",
            "4",
            "--duration",
            "30m",
            "--start",
            "2024-05-01T06:00:00Z",
            "--fast",
            "--http-url",
            &srv.http,
            "--admin-token",
            srv.admin(),
            "--mqtt-addr",
            &mqtt,
            "--episode",
            "tachycardia:1@300+900",
            "--episode",
            "silence:2@0+600",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(BIN).args(&args).output().expect("simulate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let first = text.lines().next().unwrap_or_default().to_owned();
        let n: Vec<u64> = first
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (n[0], n[2], text)
    };
    let (sent, acked, text) = run(&["--batch", "10"]);
    assert_eq!(sent, acked, "{text}");
    assert!(
        text.contains("episode tachycardia patient=sim-pat-00001"),
        "{text}"
    );
    let (sent2, acked2, _) = run(&["--http", "--batch", "60", "--prefix", "simh-"]);
    assert_eq!(sent2, acked2);
    let dir = srv.dir.clone();
    assert_eq!(srv.stop(), 0);
    let obs = read_table(&dir, Table::Observations);
    assert_eq!(
        count(&obs) as u64,
        sent + sent2,
        "storage holds exactly what was acknowledged"
    );
}

#[test]
fn two_nodes_share_one_broker_through_a_shared_subscription() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let broker = Mosquitto::start(tmp.path(), port);
    let node = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let conf = dir.join("carewatch.toml");
        std::fs::write(
            &conf,
            format!("[mqtt]\nclient_id = \"carewatch-{name}\"\nshared_group = \"carewatch\"\n"),
        )
        .expect("conf");
        let srv = Server::start(
            &dir,
            &[
                "--mqtt-url",
                &format!("mqtt://127.0.0.1:{port}"),
                "--config",
                conf.to_str().expect("utf8"),
            ],
        );
        srv.register("w1", "alice");
        srv
    };
    let (a, b) = (node("a"), node("b"));
    // Both subscriptions are in place once each node has connected.
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..200 {
        broker_publish(port, i as i64);
    }
    let total = || {
        a.stats()["rows_appended"].as_u64().unwrap_or(0)
            + b.stats()["rows_appended"].as_u64().unwrap_or(0)
    };
    wait_until(
        "both nodes together to store 200",
        Duration::from_secs(30),
        || total() >= 200,
    );
    let (na, nb) = (
        a.stats()["rows_appended"].as_u64().unwrap_or(0),
        b.stats()["rows_appended"].as_u64().unwrap_or(0),
    );
    assert_eq!(na + nb, 200, "each message stored by exactly one node");
    assert!(na > 0 && nb > 0, "the broker split the load: {na} + {nb}");
    let (da, db) = (a.dir.clone(), b.dir.clone());
    assert_eq!(a.stop(), 0);
    assert_eq!(b.stop(), 0);
    broker.stop();
    assert_eq!(
        count(&read_table(&da, Table::Observations)) + count(&read_table(&db, Table::Observations)),
        200
    );
}

/// `mosquitto_sub` for one message on `topic` (waits up to `secs`), as a child process.
fn subscribe_once(host: &str, port: &str, user: &str, pass: &str, topic: &str, secs: u32) -> Child {
    Command::new("mosquitto_sub")
        .args([
            "-h",
            host,
            "-p",
            port,
            "-u",
            user,
            "-P",
            pass,
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            &secs.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub")
}

#[test]
fn alerts_are_published_on_care_team_topics_embedded_and_external() {
    // Embedded listener: care managers subscribe with their token; only to their team.
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[alerts]\nmqtt_publish = true\ninterval_secs = 0.5\n").expect("cfg");
    let srv = Server::start(tmp.path(), &["--config", cfg.to_str().expect("utf8")]);
    let mqtt = srv.mqtt.clone().expect("mqtt");
    let (host, port) = mqtt.rsplit_once(':').expect("addr");
    let secret = srv.register("t1", "carol");
    let (s, _) = curl(
        "PUT",
        &format!("{}/v1/patients/carol/care-team", srv.http),
        srv.admin(),
        r#"{"team":"north"}"#,
    );
    assert!(s == 200 || s == 204);
    let north = srv.token("care_manager", Some("north"));
    let south = srv.token("care_manager", Some("south"));
    let mine = subscribe_once(host, port, "cm", &north, "carewatch/alerts/north", 30);
    let theirs = subscribe_once(host, port, "cm2", &south, "carewatch/alerts/north", 4);
    std::thread::sleep(Duration::from_millis(700));
    assert!(mosquitto_pub(
        &mqtt,
        "t1",
        &secret,
        "devices/t1/readings",
        &format!(
            r#"{{"time":"{}","body_temperature":39.4}}"#,
            chrono::Utc::now().to_rfc3339()
        )
    ));
    let out = mine.wait_with_output().expect("sub");
    let msg: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        (msg["rule"].as_str(), msg["event"].as_str()),
        (Some("fever"), Some("firing"))
    );
    assert_eq!(msg["patient_id"], "carol");
    let out = theirs.wait_with_output().expect("sub");
    assert!(
        out.stdout.is_empty(),
        "another team's care manager got {out:?}"
    );
    assert_eq!(srv.stop(), 0);

    // External broker: carewatch publishes there at QoS 1.
    let tmp = tempfile::tempdir().expect("tmp");
    let bport = free_port();
    let broker = Mosquitto::start(tmp.path(), bport);
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[alerts]\nmqtt_publish = true\ninterval_secs = 0.5\n").expect("cfg");
    let srv = Server::start(
        tmp.path(),
        &[
            "--mqtt-url",
            &format!("mqtt://127.0.0.1:{bport}"),
            "--config",
            cfg.to_str().expect("utf8"),
        ],
    );
    srv.register("w1", "alice");
    // Only patients with a care team have a topic (`unassigned` is not a team).
    let (s, _) = curl(
        "PUT",
        &format!("{}/v1/patients/alice/care-team", srv.http),
        srv.admin(),
        r#"{"team":"south"}"#,
    );
    assert!(s == 200 || s == 204);
    let sub = subscribe_once(
        "127.0.0.1",
        &bport.to_string(),
        "x",
        "x",
        "carewatch/alerts/#",
        30,
    );
    std::thread::sleep(Duration::from_millis(700));
    let ok = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &bport.to_string(),
            "-q",
            "1",
            "-t",
            "devices/w1/readings",
            "-m",
            &format!(
                r#"{{"time":"{}","blood_pressure":{{"systolic":190,"diastolic":100}}}}"#,
                chrono::Utc::now().to_rfc3339()
            ),
        ])
        .status()
        .expect("pub")
        .success();
    assert!(ok);
    let out = sub.wait_with_output().expect("sub");
    let msg: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(msg["rule"], "hypertensive");
    assert_eq!(msg["care_team"], "south");
    assert_eq!(srv.stop(), 0);
    broker.stop();
}
