//! TLS on both listeners: curl and mosquitto_pub verify the server certificate. And TLS to an
//! external broker (`mqtts://`): carewatch verifies the broker's certificate against the system
//! roots plus `CAREWATCH_MQTT_CA`.

mod common;
#[path = "mqtt_broker/mosquitto.rs"]
mod mosquitto;

use std::process::Command;
use std::time::Duration;

use carewatch_store::Table;
use common::*;

#[test]
fn https_and_mqtts_with_a_verified_certificate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (cert, key) = self_signed_cert(tmp.path());
    let srv = Server::start(
        tmp.path(),
        &["--tls-cert", cert.as_str(), "--tls-key", key.as_str()],
    );
    assert!(srv.http.starts_with("https://localhost:"), "{}", srv.http);
    let (s, body) = curl("GET", &format!("{}/healthz", srv.http), "", "");
    assert_eq!((s, body.as_str()), (200, "ok"));
    // Plain HTTP to the TLS port fails.
    let plain = srv.http.replace("https://", "http://");
    let (s, _) = curl("GET", &format!("{plain}/healthz"), "", "");
    assert_ne!(s, 200);
    let secret = srv.register("w1", "alice");
    let mqtt = srv.mqtt.clone().expect("mqtt");
    let port = mqtt.rsplit_once(':').map(|x| x.1.to_owned()).expect("port");
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            cert.as_str(),
            "-q",
            "1",
            "-u",
            "w1",
            "-P",
            &secret,
        ])
        .args([
            "-t",
            "devices/w1/readings",
            "-m",
            r#"{"time":"2024-05-01T08:00:00Z","heart_rate":70}"#,
        ])
        .status()
        .expect("mosquitto_pub");
    assert!(st.success());
    let dir = srv.dir.clone();
    assert_eq!(srv.stop(), 0);
    assert_eq!(count(&read_table(&dir, Table::Observations)), 1);
}

/// Publishes a heart rate of device w1 at second `i` to the TLS broker on `port`.
fn publish_tls(port: u16, ca: &str, i: u64) -> bool {
    let msg = format!(
        r#"{{"time":{},"heart_rate":71}}"#,
        1_714_550_400_000 + i * 1000
    );
    Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &port.to_string(), "--cafile", ca])
        .args(["-q", "1", "-t", "devices/w1/readings", "-m", &msg])
        .status()
        .expect("mosquitto_pub")
        .success()
}

#[test]
fn external_broker_over_tls_is_verified_against_a_private_ca() {
    let tmp = tempfile::tempdir().expect("tmp");
    let broker_dir = tmp.path().join("broker");
    std::fs::create_dir_all(&broker_dir).expect("dir");
    // A CA and a broker certificate it signed (rustls refuses a self-signed CA as a server's).
    let (ca, crt, key) = carewatch_fixtures::tls::ca_and_server_cert(&broker_dir);
    let path = |p: std::path::PathBuf| p.to_str().expect("utf8").to_owned();
    let (cert, crt, key) = (path(ca), path(crt), path(key));
    let port = free_port();
    let _broker = mosquitto::Mosquitto::start_tls(&broker_dir, port, &crt, &key);
    let url = format!("mqtts://localhost:{port}");

    // Without the CA the broker's certificate does not verify: nothing is taken from it.
    let untrusted = tmp.path().join("untrusted");
    std::fs::create_dir_all(&untrusted).expect("dir");
    let srv = Server::start(&untrusted, &["--mqtt-url", &url]);
    srv.register("w1", "alice");
    for i in 0..3 {
        assert!(publish_tls(port, &cert, i), "the broker took message {i}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(srv.stats()["rows_appended"].as_u64(), Some(0));
    assert_eq!(srv.stop(), 0);

    // With CAREWATCH_MQTT_CA naming it, carewatch connects and stores what is published.
    let trusted = tmp.path().join("trusted");
    std::fs::create_dir_all(&trusted).expect("dir");
    let env = [("CAREWATCH_MQTT_CA".to_owned(), cert.clone())];
    let srv = Server::start_with_env(&trusted, &["--mqtt-url", &url], &env);
    srv.register("w1", "alice");
    // Published until one arrives: the subscription is made after start-up.
    let mut i = 10;
    wait_until("a reading over mqtts", Duration::from_secs(30), || {
        i += 1;
        assert!(publish_tls(port, &cert, i));
        srv.stats()["rows_appended"].as_u64().unwrap_or(0) >= 1
    });
    let dir = srv.dir.clone();
    assert_eq!(srv.stop(), 0);
    assert!(count(&read_table(&dir, Table::Observations)) >= 1);
}
