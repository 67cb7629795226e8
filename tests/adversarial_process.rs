//! Adversarial: process hygiene at the HTTP edge (issue #12).
//!
//! Against the code before this change: three idle TCP connections held up HTTPS (handshakes
//! ran one at a time inside the accept loop, 10 s each), and an open SSE stream kept SIGTERM
//! from finishing (graceful shutdown waited for it forever) — both tests fail there.

mod common;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Idle sockets that never start a TLS handshake do not delay anybody else, and SIGTERM with an
/// open SSE stream and idle sockets still exits cleanly.
#[test]
fn idle_sockets_and_open_streams_neither_block_https_nor_shutdown() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (cert, key) = self_signed_cert(tmp.path());
    let cfg = tmp.path().join("carewatch.toml");
    std::fs::write(&cfg, "[http]\nshutdown_deadline_secs = 3\n").expect("config");
    let srv = Server::start(
        tmp.path(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--config",
            cfg.to_str().expect("utf8"),
        ],
    );
    let port = srv
        .http
        .rsplit_once(':')
        .map(|x| x.1)
        .expect("port")
        .to_owned();
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect"))
        .collect();
    // With the handshakes in the accept loop, this waited for the three idle sockets' 10 s
    // handshake timeouts one after the other; --max-time makes that a failure.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "8",
            "--cacert",
            &cert,
        ])
        .arg(format!("{}/healthz", srv.http))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "HTTPS answered despite idle sockets"
    );

    // An open SSE stream (as the dashboard keeps) and the idle sockets, then SIGTERM.
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/tokens", srv.http),
        srv.admin(),
        r#"{"role":"care_manager","subject":"team-a"}"#,
    );
    assert_eq!(s, 201, "{b}");
    let cm = serde_json::from_str::<serde_json::Value>(&b).expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    note_id("token", &cm);
    let mut sse = Command::new("curl")
        .args(["-s", "-N", "--max-time", "120", "--cacert", &cert, "-H"])
        .arg(format!("Authorization: Bearer {cm}"))
        .arg(format!("{}/v1/stream", srv.http))
        .stdout(Stdio::null())
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(500));
    assert!(sse.try_wait().expect("wait").is_none(), "stream is open");
    // `stop` fails the test if the process is still running 30 s after SIGTERM.
    assert_eq!(srv.stop(), 0, "clean exit on SIGTERM");
    wait_until(
        "the SSE client to see the stream end",
        Duration::from_secs(10),
        || sse.try_wait().expect("wait").is_some(),
    );
    drop(idle);
}

/// A start-up error after the store is open (here the Postgres wire's port is taken) ends
/// `serve` with that error. Before, the alert engine's runtime waited for a shutdown that
/// never came, so the process hung with its HTTP port bound, printing nothing (found as a
/// test server that reset its first connection when the free port it was given got taken).
#[test]
fn a_taken_postgres_port_ends_serve_with_the_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            "127.0.0.1:0",
        ])
        .args(["--pg-addr", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(tmp.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn carewatch");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve hung for 60 s after failing to bind the Postgres wire");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    use std::io::Read as _;
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(!status.success(), "{err}");
    assert!(err.contains("binding Postgres wire"), "{err}");
    drop(taken);
}
