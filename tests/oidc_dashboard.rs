//! The dashboard with single sign-on, in Chromium (tests/dashboard/sso.mjs): a care manager
//! signs in on the real identity provider's login page (npm `oidc-provider`), sees only their
//! teams' patients, acknowledges an alert (the acknowledgement and the audit trail name the
//! person), a cookie-only call without the CSRF token is refused, and after signing out
//! (RP-initiated logout at the provider) the old session cookie is refused.

mod common;
mod oidc_idp;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, curl, note_id, simulate, wait_until};
use oidc_idp::{Idp, psql};

fn team(srv: &Server, patient: &str, team: &str) {
    note_id("patient", patient);
    let (s, b) = curl(
        "PUT",
        &format!("{}/v1/patients/{patient}/care-team", srv.http),
        srv.admin(),
        &format!(r#"{{"team":"{team}"}}"#),
    );
    assert!(s == 200 || s == 204, "{s} {b}");
}

#[test]
fn a_person_signs_in_through_the_provider_acknowledges_and_signs_out_in_chromium() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = oidc_idp::issuer_port();
    let config = tmp.path().join("carewatch.toml");
    std::fs::write(
        &config,
        format!(
            "[auth.oidc]\nissuer = \"http://127.0.0.1:{port}\"\naudience = \"carewatch\"\n\
             client_id = \"carewatch-dashboard\"\nclient_secret = \"dashboard-secret-for-tests\"\n"
        ),
    )
    .expect("config");
    let srv = Server::start(tmp.path(), &["--config", config.to_str().expect("utf8")]);
    let idp = Idp::start(port, &srv.http);
    // Alice is in north and east; patient 2 is south's.
    team(&srv, "sim-pat-00000", "north");
    team(&srv, "sim-pat-00001", "east");
    team(&srv, "sim-pat-00002", "south");
    simulate(&srv, 3, 30, &["--episode", "fever:0@600+1200"]);
    wait_until("the fever alert", Duration::from_secs(30), || {
        let (_, b) = curl("GET", &format!("{}/v1/alerts", srv.http), srv.admin(), "");
        b.contains("\"fever\"")
    });
    let artifacts = carewatch_fixtures::repo_dir().join("target/test-artifacts");
    let script = carewatch_fixtures::repo_dir().join("tests/dashboard/sso.mjs");
    let out = Command::new("node")
        .arg(&script)
        .args([
            srv.http.as_str(),
            "alice",
            artifacts.to_str().expect("utf8"),
        ])
        .args(["sim-pat-00000", "sim-pat-00002"])
        .stderr(Stdio::piped())
        .output()
        .expect("node (scripts/setup-test-deps.sh installs playwright-core)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    // The authorization code, state, session cookie and CSRF token: never in a log line.
    let secrets = v["secrets"].as_array().expect("secrets");
    assert!(secrets.len() >= 4, "{v}");
    for s in secrets.iter().filter_map(|s| s.as_str()) {
        note_id("token", s);
    }
    assert_eq!(v["who"], "Alice Nurse");
    assert_eq!(v["without_csrf"], 403, "cookie without the CSRF token");
    assert_eq!(
        v["after_sign_out"], 401,
        "the old session cookie after sign-out"
    );
    assert_eq!(v["signed_out_visible"], true);
    // The acknowledgement names the person, not a team credential.
    let id = v["alert_id"].as_str().expect("id");
    let (_, b) = curl(
        "GET",
        &format!("{}/v1/alerts?status=acknowledged", srv.http),
        srv.admin(),
        "",
    );
    let list: serde_json::Value = serde_json::from_str(&b).expect("json");
    let a = list["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| a["alert_id"] == id)
        .unwrap_or_else(|| panic!("{id} not acknowledged: {b}"));
    assert_eq!(a["acknowledged_by"], "Alice Nurse <alice>");
    // The audit trail, read as admin, names the person behind SQL through the provider.
    let pg = srv.pg_ready();
    let bob = idp.token("bob");
    assert!(psql(&pg, &bob, "SELECT count(*) FROM observations").0);
    let (ok, out, err) = psql(
        &pg,
        srv.admin(),
        "SELECT person, person_name, principal FROM audit_log WHERE person IS NOT NULL",
    );
    assert!(ok, "{err}");
    assert!(out.contains("bob|Bob Analyst|oidc:"), "{out}");
    // Every dashboard read of hers is in the audit trail under her name.
    let (ok, out, err) = psql(
        &pg,
        srv.admin(),
        "SELECT DISTINCT statement FROM audit_log WHERE channel = 'dashboard' AND person = 'alice' \
         AND person_name = 'Alice Nurse' ORDER BY 1",
    );
    assert!(ok, "{err}");
    for read in ["GET /v1/triage", "GET /v1/stream"] {
        assert!(out.lines().any(|l| l == read), "{read} not audited: {out}");
    }
    // The history (alerts table) records who acknowledged.
    let (ok, out, err) = psql(
        &pg,
        srv.admin(),
        "SELECT DISTINCT acknowledged_by FROM alerts WHERE acknowledged_by IS NOT NULL",
    );
    assert!(ok, "{err}");
    assert!(out.contains("Alice Nurse <alice>"), "{out}");
    assert_eq!(srv.stop(), 0);
}
