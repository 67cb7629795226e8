//! Cluster mode's shared registry (issue 13): carewatch nodes started with the same
//! `--postgres-url` (a real PostgreSQL server, started for the test) share devices,
//! credentials and care teams. A device enrolled on one node sends to another; a credential
//! made on one works on the other; a revocation on one is refused by the other within its
//! refresh; a node killed with its data directory takes nothing of the registry with it.

mod common;

use std::time::Duration;

use carewatch_fixtures::postgres::Postgres;
use common::{Server, curl, wait_until};

fn reading(http: &str, secret: &str, minute: u32) -> u16 {
    let body = format!(r#"{{"time":"2024-05-01T08:{minute:02}:00Z","heart_rate":71}}"#);
    curl("POST", &format!("{http}/v1/readings"), secret, &body).0
}

#[test]
fn nodes_on_one_postgres_share_the_registry_and_survive_losing_one() {
    let pg = Postgres::start();
    let url = pg.url.clone();
    let (da, db, dc) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let a = Server::start(da.path(), &["--postgres-url", &url]);
    let admin = a.admin().to_owned();
    let mut b = Server::start(db.path(), &["--postgres-url", &url]);
    assert_eq!(
        b.admin, None,
        "one admin for the cluster, printed by the first node"
    );
    b.admin = Some(admin.clone());

    // Enrolled on a, sending to b.
    let secret = a.register("w1", "p1");
    assert_eq!(reading(&b.http, &secret, 0), 202, "b knows a's device");
    // The admin of a is the admin of b; a team set on b is seen on a.
    let (s, _) = curl(
        "PUT",
        &format!("{}/v1/patients/p1/care-team", b.http),
        &admin,
        r#"{"team":"north"}"#,
    );
    assert_eq!(s, 204);
    let north = b.token("care_manager", Some("north"));
    wait_until(
        "a to accept b's credential",
        Duration::from_secs(10),
        || curl("GET", &format!("{}/v1/patients", a.http), &north, "").0 == 200,
    );
    let (s, body) = curl("GET", &format!("{}/v1/patients", a.http), &north, "");
    assert_eq!(s, 200);
    assert!(body.contains("p1"), "a scopes by the team set on b: {body}");

    // Revoked on b: a refuses the device at its next refresh.
    let (s, _) = curl("DELETE", &format!("{}/v1/devices/w1", b.http), &admin, "");
    assert!(s == 200 || s == 204, "revoke answered {s}");
    wait_until(
        "a to refuse the revoked device",
        Duration::from_secs(10),
        || reading(&a.http, &secret, 1) == 401,
    );

    // A second device, then a is killed and its data directory deleted: a new node c still
    // has the whole registry.
    let secret2 = b.register("w2", "p2");
    let mut a = a;
    a.child.kill().expect("kill -9 a");
    let _ = a.child.wait();
    drop(da);
    let c = Server::start(dc.path(), &["--postgres-url", &url]);
    assert_eq!(c.admin, None);
    assert_eq!(reading(&c.http, &secret2, 2), 202, "c knows b's device");
    assert_eq!(reading(&c.http, &secret, 3), 401, "c knows the revocation");
    let (s, _) = curl("GET", &format!("{}/v1/patients", c.http), &north, "");
    assert_eq!(s, 200, "c accepts the care manager's credential");
    assert!(b.stop() == 0 && c.stop() == 0, "clean shutdowns");
    drop(pg);
}

#[test]
fn a_wrong_postgres_url_stops_start_up_without_echoing_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carewatch"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--postgres-url",
            "postgres://carewatch:hunter2@127.0.0.1:1/postgres",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PostgreSQL"), "{err}");
    assert!(
        !err.contains("hunter2"),
        "the password is not echoed: {err}"
    );
}
