//! carewatch subscribed to a real Mosquitto broker stores the messages queued for it several to
//! an append (issue 19): a burst of single-reading messages, published with `mosquitto_pub -l`
//! over one connection and mixed with messages that are not JSON and messages of a device
//! nobody enrolled, arrives exactly — every good reading once, every bad message a dead letter
//! of its own reason — so one bad message never takes its batch neighbours down with it.

mod common;
#[path = "mqtt_broker/mosquitto.rs"]
mod mosquitto;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use carewatch_store::Table;
use common::*;
use mosquitto::Mosquitto;

/// Publishes `lines` (one message each) on `topic` at QoS 1 over one connection.
fn publish_lines(port: u16, topic: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub");
    let mut stdin = child.stdin.take().expect("stdin");
    for l in lines {
        writeln!(stdin, "{l}").expect("write");
    }
    drop(stdin);
    assert!(
        child.wait().expect("wait").success(),
        "mosquitto_pub failed"
    );
}

fn reading(i: i64) -> String {
    format!(
        r#"{{"time":{},"heart_rate":{}}}"#,
        1_714_550_400_000_i64 + i * 1000,
        60 + i % 50
    )
}

#[test]
fn a_burst_from_the_broker_is_stored_exactly_with_bad_messages_as_their_own_dead_letters() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let broker = Mosquitto::start(tmp.path(), port);
    note_id("id", "mb-ghost");
    let srv = Server::start(
        tmp.path(),
        &["--mqtt-url", &format!("mqtt://127.0.0.1:{port}")],
    );
    srv.register("w1", "alice");
    // 1,000 messages of the enrolled device, every tenth not JSON; 100 of a stranger.
    let own: Vec<String> = (0..1000)
        .map(|i| {
            if i % 10 == 9 {
                format!("not json {i} {{")
            } else {
                reading(i)
            }
        })
        .collect();
    let stranger: Vec<String> = (0..100).map(reading).collect();
    publish_lines(port, "devices/w1/readings", &own);
    publish_lines(port, "devices/mb-ghost/readings", &stranger);
    wait_until("everything stored", Duration::from_secs(120), || {
        let st = srv.stats();
        st["rows_appended"].as_u64().unwrap_or(0) >= 900
            && st["dead_letters_appended"].as_u64().unwrap_or(0) >= 200
    });
    let st = srv.stats();
    assert_eq!(st["rows_appended"], 900, "{st}");
    assert_eq!(st["dead_letters_appended"], 200, "{st}");
    let dir = srv.dir.clone();
    assert_eq!(srv.stop(), 0);
    broker.stop();

    let obs = read_table(&dir, Table::Observations);
    assert_eq!(count(&obs), 900, "every good reading once");
    let mut devices = strings(&obs, "device_id");
    devices.dedup();
    assert_eq!(devices, ["w1"]);
    let dead = read_table(&dir, Table::DeadLetters);
    let mut reasons = strings(&dead, "reason");
    reasons.sort();
    let invalid = reasons.iter().filter(|r| *r == "invalid_json").count();
    let unknown = reasons.iter().filter(|r| *r == "unknown_device").count();
    assert_eq!((invalid, unknown, reasons.len()), (100, 100, 200));
}
