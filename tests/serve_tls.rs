//! TLS on both listeners: curl and mosquitto_pub verify the server certificate.

mod common;

use std::process::Command;

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
