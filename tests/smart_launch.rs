//! SMART App Launch of the dashboard, driven end to end in Chromium (tests/dashboard/
//! smart_launch.mjs). No real EHR can run here: the EHR and its SMART authorization server are
//! the test identity provider (npm `oidc-provider`, tests/oidc/provider.mjs), which keeps a
//! launch id → patient table like an EHR and returns the `patient` in its token response.
//!
//! An EHR launch into a patient of the person's team opens that patient; into a patient
//! outside their teams it is refused with a page offering break-glass, and breaking the glass
//! (with a reason) opens the patient; a standalone launch opens the patient picked at the EHR.
//! A launch naming any other FHIR server is refused before carewatch fetches anything from it.
//! The audit trail, read as admin, names the person behind the reads and the break-glass with
//! its reason; no code, state, cookie or CSRF token reaches a log line (the suite's log check).

mod common;
mod oidc_idp;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Server, curl, note_id};
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

/// carewatch whose SMART launches come from the provider's FHIR base, and the provider.
fn start(dir: &Path) -> (Server, Idp) {
    let port = oidc_idp::issuer_port();
    let config = dir.join("carewatch.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nfailed_login_burst = 1000\n\n\
             [auth.oidc]\nissuer = \"http://127.0.0.1:{port}\"\naudience = \"carewatch\"\n\
             client_id = \"carewatch-dashboard\"\nclient_secret = \"dashboard-secret-for-tests\"\n\
             smart_fhir_base = \"http://127.0.0.1:{port}/fhir\"\n"
        ),
    )
    .expect("config");
    let srv = Server::start(dir, &["--config", config.to_str().expect("utf8")]);
    let idp = Idp::start(port, &srv.http);
    team(&srv, "p-north", "north");
    team(&srv, "p-east", "east");
    team(&srv, "p-south", "south");
    (srv, idp)
}

/// Status and `Location` of a GET, without following redirects.
fn get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (status, to) = text.split_once(' ').unwrap_or((&text, ""));
    (status.parse().unwrap_or(0), to.to_owned())
}

#[test]
fn a_launch_from_another_fhir_server_is_refused_before_any_request() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (srv, idp) = start(tmp.path());
    let launch = idp.launch("p-north");
    let rogue = format!("{}/rogue-fhir", idp.issuer);
    for iss in [
        rogue.as_str(),
        "http://169.254.169.254/latest",
        "https://ehr.example.org/fhir",
    ] {
        let enc: String = url::form_urlencoded::byte_serialize(iss.as_bytes()).collect();
        let (s, to) = get(&format!(
            "{}/smart/launch?iss={enc}&launch={launch}",
            srv.http
        ));
        assert_eq!((s, to.as_str()), (400, ""), "{iss}");
    }
    assert!(
        !idp.seen().iter().any(|p| p.starts_with("/rogue-fhir")),
        "carewatch fetched from a server it was not configured for"
    );
    // An EHR launch must name its server; a launch id with control characters is refused.
    assert_eq!(
        get(&format!("{}/smart/launch?launch={launch}", srv.http)).0,
        400
    );
    let fhir: String = url::form_urlencoded::byte_serialize(idp.fhir_base().as_bytes()).collect();
    let bad = get(&format!(
        "{}/smart/launch?iss={fhir}&launch=a%0Ab",
        srv.http
    ));
    assert_eq!(bad.0, 400);
    // The configured server: to its authorization endpoint with PKCE, aud and the launch.
    let (s, to) = get(&format!(
        "{}/smart/launch?iss={fhir}&launch={launch}",
        srv.http
    ));
    assert_eq!(s, 303);
    let u = url::Url::parse(&to).expect("location");
    assert!(to.starts_with(&format!("{}/auth?", idp.issuer)), "{to}");
    let q: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
    assert_eq!(q["aud"], idp.fhir_base());
    assert_eq!(q["launch"], launch);
    assert_eq!(q["code_challenge_method"], "S256");
    let scopes: Vec<&str> = q["scope"].split(' ').collect();
    for want in ["openid", "fhirUser", "launch", "patient/*.read"] {
        assert!(scopes.contains(&want), "{scopes:?}");
    }
    assert!(
        idp.seen()
            .iter()
            .any(|p| p == "/fhir/.well-known/smart-configuration")
    );
    // A callback whose state this browser never started opens nothing.
    let (s, _) = get(&format!("{}/smart/callback?code=x&state=y", srv.http));
    assert_eq!(s, 400);
    // carewatch's own SMART configuration says what it supports.
    let (s, b) = curl(
        "GET",
        &format!("{}/.well-known/smart-configuration", srv.http),
        "",
        "",
    );
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    for cap in [
        "launch-ehr",
        "launch-standalone",
        "context-ehr-patient",
        "context-standalone-patient",
    ] {
        assert!(
            v["capabilities"]
                .as_array()
                .expect("caps")
                .iter()
                .any(|c| c == cap),
            "{cap}"
        );
    }
    assert_eq!(srv.stop(), 0);
}

#[test]
fn ehr_and_standalone_launches_open_the_patient_in_context_in_chromium() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (srv, idp) = start(tmp.path());
    let fhir: String = url::form_urlencoded::byte_serialize(idp.fhir_base().as_bytes()).collect();
    let ehr = |patient: &str| {
        let l = idp.launch(patient);
        format!("{}/smart/launch?iss={fhir}&launch={l}", srv.http)
    };
    // Alice (north, east) picks p-east in the EHR's patient chooser for the standalone launch.
    idp.set_user("alice", r#"{"patient":"p-east"}"#);
    let cases = serde_json::json!([
        {"name": "ehr-own-team", "url": ehr("p-north"), "person": "alice", "patient": "p-north", "expect": "open"},
        {"name": "ehr-other-team", "url": ehr("p-south"), "person": "alice", "patient": "p-south",
         "expect": "refused", "reason": "Collapsed in clinic, south team not reachable"},
        {"name": "standalone", "url": format!("{}/smart/launch", srv.http), "person": "alice",
         "patient": "p-east", "expect": "open"},
    ]);
    let artifacts = carewatch_fixtures::repo_dir().join("target/test-artifacts");
    let script = carewatch_fixtures::repo_dir().join("tests/dashboard/smart_launch.mjs");
    let out = Command::new("node")
        .arg(&script)
        .args([srv.http.as_str(), artifacts.to_str().expect("utf8")])
        .arg(cases.to_string())
        .stderr(Stdio::piped())
        .output()
        .expect("node (scripts/setup-test-deps.sh installs playwright-core)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_default();
    for s in v["secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
    {
        note_id("token", s);
    }
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = &v["cases"];
    assert_eq!(c["ehr-own-team"]["landed"], "p-north");
    assert_eq!(c["ehr-own-team"]["who"], "Alice Nurse");
    let refused = &c["ehr-other-team"];
    assert_eq!(refused["refused_status"], 403, "{refused}");
    assert_eq!(
        refused["refused_shows_patient"], false,
        "the refusal names no patient"
    );
    assert_eq!(refused["vitals_before"], 404, "{refused}");
    assert_eq!(
        refused["landed"], "p-south",
        "opened after breaking the glass"
    );
    assert_eq!(c["standalone"]["landed"], "p-east");
    assert!(v["secrets"].as_array().is_some_and(|s| s.len() >= 9), "{v}");
    // The audit trail, as admin: the break-glass with its reason, and every chart read of hers
    // under her name.
    let pg = srv.pg_ready();
    let (ok, out, err) = psql(
        &pg,
        srv.admin(),
        "SELECT person, person_name, statement FROM audit_log WHERE channel = 'break-glass'",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "alice|Alice Nurse|break-glass patient=p-south minutes=30 reason=Collapsed in clinic"
        ),
        "{out}"
    );
    let (ok, out, err) = psql(
        &pg,
        srv.admin(),
        "SELECT DISTINCT statement FROM audit_log WHERE channel = 'dashboard' AND person = 'alice' \
         AND person_name = 'Alice Nurse' ORDER BY 1",
    );
    assert!(ok, "{err}");
    for p in ["p-north", "p-south", "p-east"] {
        let read = format!("GET /v1/patients/{p}/vitals");
        assert!(out.lines().any(|l| l == read), "{read} not audited: {out}");
    }
    let (ok, out, _) = psql(
        &pg,
        srv.admin(),
        "SELECT count(*) FROM audit_log WHERE channel = 'dashboard' AND person IS NULL \
         AND principal LIKE 'oidc:%'",
    );
    assert!(
        ok && out == "0",
        "a person's read without their name: {out}"
    );
    assert_eq!(srv.stop(), 0);
}
