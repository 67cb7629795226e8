//! Adversarial: credentials with a lifecycle, one credential check on every HTTP route,
//! failed-login limits, owner-only data files, `/metrics` behind a credential.
//!
//! Each test drives the real binary with curl (and the CLI). Against the code before this
//! change each fails at its first assertion: `/v1/tokens` had no GET or DELETE (405/404),
//! tokens never expired, `token list|revoke` did not exist, an SSE stream outlived its token,
//! failed logins were never limited (no 429), files were created 0644, and `/metrics` had no
//! credential option.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("json {e}: {body}"))
}

/// Creates a credential through the API; returns (id, token).
fn create(srv: &Server, body: &str) -> (String, String) {
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/tokens", srv.http),
        srv.admin(),
        body,
    );
    assert_eq!(s, 201, "{b}");
    let v = json(&b);
    let token = v["token"].as_str().expect("token").to_owned();
    note_id("token", &token);
    (v["id"].as_str().expect("id").to_owned(), token)
}

fn sql_status(srv: &Server, token: &str) -> u16 {
    curl("POST", &format!("{}/v1/sql", srv.http), token, "SELECT 1").0
}

#[test]
fn revoked_and_expired_credentials_are_refused_and_listed_without_secrets() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let (id, analyst) = create(&srv, r#"{"role":"analyst"}"#);
    let (short_id, short) = create(&srv, r#"{"role":"analyst","expires_in_secs":2}"#);
    assert_eq!(sql_status(&srv, &analyst), 200);
    assert_eq!(sql_status(&srv, &short), 200, "valid before it expires");

    // The list names every credential, never a secret.
    let (s, b) = curl("GET", &format!("{}/v1/tokens", srv.http), srv.admin(), "");
    assert_eq!(s, 200, "{b}");
    for secret in [&analyst, &short, &srv.admin().to_owned()] {
        assert!(!b.contains(&secret[3..]), "a secret leaked into the list");
    }
    let v = json(&b);
    let listed = v["tokens"].as_array().expect("tokens");
    let me = listed
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("listed");
    assert_eq!(me["role"], "analyst");
    assert!(me["last_used"].is_string(), "last use recorded: {me}");
    assert!(me["created"].is_string() && me["revoked"].is_null());
    let exp = listed
        .iter()
        .find(|t| t["id"] == short_id.as_str())
        .expect("listed");
    assert!(exp["expires"].is_string(), "{exp}");

    // Only admins manage credentials.
    let (s, _) = curl("GET", &format!("{}/v1/tokens", srv.http), &analyst, "");
    assert_eq!(s, 403);
    let (s, _) = curl(
        "DELETE",
        &format!("{}/v1/tokens/{id}", srv.http),
        &analyst,
        "",
    );
    assert_eq!(s, 403);

    // Expiry: refused once the time has passed, without anyone doing anything.
    wait_until(
        "the short credential to expire",
        Duration::from_secs(15),
        || sql_status(&srv, &short) == 401,
    );

    // Revocation: refused at once, everywhere on HTTP.
    let (s, _) = curl(
        "DELETE",
        &format!("{}/v1/tokens/{id}", srv.http),
        srv.admin(),
        "",
    );
    assert_eq!(s, 204);
    assert_eq!(sql_status(&srv, &analyst), 401);
    let (s, _) = curl("GET", &format!("{}/v1/alerts", srv.http), &analyst, "");
    assert_eq!(s, 401);
    let (s, _) = curl(
        "GET",
        &format!("{}/fhir/Observation", srv.http),
        &analyst,
        "",
    );
    assert_eq!(s, 401);
    let (s, _) = curl(
        "DELETE",
        &format!("{}/v1/tokens/{id}", srv.http),
        srv.admin(),
        "",
    );
    assert_eq!(s, 404, "already revoked");
    let (_, b) = curl("GET", &format!("{}/v1/tokens", srv.http), srv.admin(), "");
    let v = json(&b);
    let me = v["tokens"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["id"] == id.as_str()).cloned())
        .expect("still listed");
    assert!(me["revoked"].is_string(), "{me}");
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("CAREWATCH_LOG", "warn")
        .output()
        .expect("carewatch");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_cli_lists_and_revokes_on_the_data_directory_and_against_the_server() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let dir = srv.dir.to_str().expect("utf8").to_owned();

    // Offline on the data directory while the server runs: the server honours it.
    let (ok, out) = cli(&["token", "create", "--role", "analyst", "--data-dir", &dir]);
    assert!(ok, "{out}");
    let token = out.trim().to_owned();
    note_id("token", &token);
    wait_until(
        "the server to see the new credential",
        Duration::from_secs(10),
        || sql_status(&srv, &token) == 200,
    );
    let (ok, list) = cli(&["token", "list", "--data-dir", &dir]);
    assert!(ok, "{list}");
    assert!(!list.contains(&token[3..]), "no secret in the list");
    let id = list
        .lines()
        .filter(|l| l.contains("\tanalyst\t"))
        .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
        .next()
        .expect("analyst listed");
    let (ok, out) = cli(&["token", "revoke", &id, "--data-dir", &dir]);
    assert!(ok, "{out}");
    wait_until(
        "the server to refuse the revoked credential",
        Duration::from_secs(10),
        || sql_status(&srv, &token) == 401,
    );
    let (ok, _) = cli(&["token", "revoke", &id, "--data-dir", &dir]);
    assert!(!ok, "revoking twice says so");

    // Against the running server.
    let (ok, out) = cli(&[
        "token",
        "create",
        "--role",
        "care_manager",
        "--subject",
        "team-a",
        "--expires-in",
        "1h",
        "--server",
        &srv.http,
        "--token",
        srv.admin(),
    ]);
    assert!(ok, "{out}");
    let cm = out.trim().to_owned();
    note_id("token", &cm);
    let (s, _) = curl("GET", &format!("{}/v1/patients", srv.http), &cm, "");
    assert_eq!(s, 200);
    let (ok, list) = cli(&[
        "token",
        "list",
        "--server",
        &srv.http,
        "--token",
        srv.admin(),
    ]);
    assert!(ok, "{list}");
    let cm_id = list
        .lines()
        .find(|l| l.contains("\tcare_manager\tteam-a\t"))
        .and_then(|l| l.split('\t').next())
        .expect("care manager listed")
        .to_owned();
    let (ok, out) = cli(&[
        "token",
        "revoke",
        &cm_id,
        "--server",
        &srv.http,
        "--token",
        srv.admin(),
    ]);
    assert!(ok, "{out}");
    let (s, _) = curl("GET", &format!("{}/v1/patients", srv.http), &cm, "");
    assert_eq!(s, 401);
    // `unassigned` is not a care team.
    let (ok, _) = cli(&[
        "token",
        "create",
        "--role",
        "care_manager",
        "--subject",
        "unassigned",
        "--data-dir",
        &dir,
    ]);
    assert!(!ok);
}

#[test]
fn an_open_stream_ends_when_its_credential_is_revoked() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let (id, cm) = create(&srv, r#"{"role":"care_manager","subject":"team-a"}"#);
    let mut streams: Vec<_> = ["/v1/stream", "/v1/alerts/stream"]
        .iter()
        .map(|path| {
            Command::new("curl")
                .args(["-s", "-N", "--max-time", "60", "-H"])
                .arg(format!("Authorization: Bearer {cm}"))
                .arg(format!("{}{path}", srv.http))
                .stdout(Stdio::null())
                .spawn()
                .expect("curl")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for s in &mut streams {
        assert!(
            s.try_wait().expect("wait").is_none(),
            "stream open while valid"
        );
    }
    let (s, _) = curl(
        "DELETE",
        &format!("{}/v1/tokens/{id}", srv.http),
        srv.admin(),
        "",
    );
    assert_eq!(s, 204);
    for s in &mut streams {
        wait_until(
            "the stream to end after revocation",
            Duration::from_secs(10),
            || s.try_wait().expect("wait").is_some(),
        );
    }
}

#[test]
fn failed_logins_are_limited_per_source() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("carewatch.toml");
    std::fs::write(
        &cfg,
        "[auth]\nfailed_login_burst = 5\nfailed_login_refill_secs = 3\n",
    )
    .expect("config");
    let srv = Server::start(tmp.path(), &["--config", cfg.to_str().expect("utf8")]);
    let (_, analyst) = create(&srv, r#"{"role":"analyst"}"#);
    let secret = srv.register("w-limit", "p-limit");
    let mqtt = srv.mqtt.clone().expect("embedded listener");
    let (host, port) = mqtt.rsplit_once(':').expect("host:port");
    let publish = |password: &str| {
        Command::new("mosquitto_pub")
            .args([
                "-h", host, "-p", port, "-q", "1", "-u", "w-limit", "-P", password,
            ])
            .args(["-t", "devices/w-limit/readings", "-m"])
            .arg(r#"{"time":"2024-05-01T08:00:00Z","heart_rate":70}"#)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mosquitto_pub")
            .success()
    };
    assert!(publish(&secret), "the device publishes before any failure");
    for i in 0..5 {
        let bad = format!("cw_{i:064}");
        assert_eq!(sql_status(&srv, &bad), 401);
    }
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "-X", "POST", "-H"])
        .arg("Authorization: Bearer cw_guess")
        .arg(format!("{}/v1/sql", srv.http))
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 429"), "{head}");
    assert!(head.contains("retry-after:"), "{head}");
    // The source is refused even with a good credential until failures are forgiven, on every
    // wire: the MQTT listener asks the same authenticator.
    assert_eq!(sql_status(&srv, &analyst), 429);
    assert!(
        !publish(&secret),
        "MQTT login from a blocked source is refused"
    );
    let pg = srv.pg_ready();
    let (pg_host, pg_port) = pg.rsplit_once(':').expect("host:port");
    let psql = Command::new("psql")
        .args([
            "-h",
            pg_host,
            "-p",
            pg_port,
            "-U",
            "analyst",
            "-d",
            "carewatch",
        ])
        .args(["-c", "SELECT 1"])
        .env("PGPASSWORD", &analyst)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql");
    assert!(
        !psql.status.success(),
        "Postgres login from a blocked source is refused"
    );
    wait_until("failures to be forgiven", Duration::from_secs(20), || {
        sql_status(&srv, &analyst) == 200
    });
}

fn modes_open_to_others(dir: &std::path::Path, out: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt as _;
    for e in std::fs::read_dir(dir)
        .expect("read_dir")
        .map_while(Result::ok)
    {
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).expect("stat");
        if m.permissions().mode() & 0o077 != 0 {
            out.push(format!("{} {:o}", p.display(), m.permissions().mode()));
        }
        if m.is_dir() {
            modes_open_to_others(&p, out);
        }
    }
}

#[test]
fn data_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().expect("tmp");
    // A data directory that someone made world-readable is closed at start.
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let srv = Server::start(tmp.path(), &[]);
    let secret = srv.register("w1", "p-owner-1");
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/readings", srv.http),
        &secret,
        r#"[{"time":"2024-05-01T08:00:00Z","heart_rate":72},{"time":"2024-05-01T08:00:00Z","heart_rate":"x"}]"#,
    );
    assert_eq!(s, 202, "{b}");
    let (_, analyst) = create(&srv, r#"{"role":"analyst"}"#);
    assert_eq!(sql_status(&srv, &analyst), 200);
    let dir = srv.dir.clone();
    assert_eq!(srv.stop(), 0);
    let mode = std::fs::metadata(&dir).expect("stat").permissions().mode();
    assert_eq!(mode & 0o077, 0, "data directory is {mode:o}");
    let mut open = Vec::new();
    modes_open_to_others(&dir, &mut open);
    assert!(open.is_empty(), "readable by others: {open:#?}");
    let files = walk_count(&dir);
    assert!(files > 3, "the check saw the data files ({files})");
}

fn walk_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map_while(Result::ok)
        .map(|e| {
            if e.path().is_dir() {
                walk_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn metrics_can_require_a_credential() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("carewatch.toml");
    std::fs::write(&cfg, "[auth]\nmetrics_require_token = true\n").expect("config");
    let srv = Server::start(tmp.path(), &["--config", cfg.to_str().expect("utf8")]);
    let url = format!("{}/metrics", srv.http);
    assert_eq!(curl("GET", &url, "", "").0, 401);
    let (_, cm) = create(&srv, r#"{"role":"care_manager","subject":"team-a"}"#);
    assert_eq!(curl("GET", &url, &cm, "").0, 403);
    let (_, analyst) = create(&srv, r#"{"role":"analyst"}"#);
    let (s, b) = curl("GET", &url, &analyst, "");
    assert_eq!(s, 200);
    assert!(b.contains("carewatch_readings_stored_total"));
}
