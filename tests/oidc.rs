//! Single sign-on with a real OpenID Provider (npm `oidc-provider`, tests/oidc/provider.mjs):
//! a person's or service account's JWT works as a bearer token on HTTP (and SSE), as the
//! password on the Postgres wire (psql) and on MQTT alert subscriptions; expired, wrongly
//! signed, `alg: none`, HMAC-with-the-public-key and wrong-audience tokens are refused on every
//! wire; keys rotated at the issuer keep working; a person taken out of a team at the issuer
//! loses that team's patients with their next token; a person in several teams sees the union.

mod common;
mod oidc_idp;

use std::path::Path;

use common::{Server, curl};
use oidc_idp::{Idp, mqtt_subscribe, psql};

/// carewatch with the provider as its issuer (alert topics on MQTT), and the provider.
fn start(dir: &Path) -> (Server, Idp) {
    let port = oidc_idp::issuer_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let config = dir.join("carewatch.toml");
    std::fs::write(
        &config,
        "[auth]\nfailed_login_burst = 1000\n\n[auth.oidc]\nclient_id = \"carewatch-dashboard\"\n\
         client_secret = \"dashboard-secret-for-tests\"\njwks_min_refetch_secs = 0\n\n\
         [alerts]\nmqtt_publish = true\n",
    )
    .expect("config");
    let srv = Server::start(
        dir,
        &[
            "--config",
            config.to_str().expect("utf8"),
            "--oidc-issuer",
            &issuer,
            "--oidc-audience",
            "carewatch",
        ],
    );
    let idp = Idp::start(port, &srv.http);
    for (patient, team) in [
        ("p-north", "north"),
        ("p-east", "east"),
        ("p-south", "south"),
    ] {
        common::note_id("patient", patient);
        let (s, b) = curl(
            "PUT",
            &format!("{}/v1/patients/{patient}/care-team", srv.http),
            srv.admin(),
            &format!(r#"{{"team":"{team}"}}"#),
        );
        assert!(s == 200 || s == 204, "{s} {b}");
    }
    (srv, idp)
}

/// The patient ids `token` sees in `/v1/patients` (None: refused, with the status).
fn patients(srv: &Server, token: &str) -> Result<Vec<String>, u16> {
    let (s, b) = curl("GET", &format!("{}/v1/patients", srv.http), token, "");
    if s != 200 {
        return Err(s);
    }
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    let mut ids: Vec<String> = v["patients"]
        .as_array()
        .expect("patients")
        .iter()
        .filter_map(|p| p["patient_id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    Ok(ids)
}

/// The HTTP status of an SSE stream's response (curl stops reading after a second).
fn sse_status(srv: &Server, token: &str) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-N",
            "-o",
            "/dev/null",
            "-m",
            "1",
            "-w",
            "%{http_code}",
        ])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{}/v1/alerts/stream", srv.http))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn provider_tokens_work_on_http_sse_psql_and_mqtt() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (srv, idp) = start(tmp.path());
    // A care manager in two teams sees the union, and nothing else.
    let alice = idp.token("alice");
    assert_eq!(
        patients(&srv, &alice),
        Ok(vec!["p-east".into(), "p-north".into()])
    );
    let (s, _) = curl(
        "GET",
        &format!("{}/v1/patients/p-south/vitals", srv.http),
        &alice,
        "",
    );
    assert_eq!(s, 404, "another team's patient");
    assert_eq!(sse_status(&srv, &alice), "200");
    // MQTT alert topics: each of her teams, no other.
    let mqtt = srv.mqtt.clone().expect("embedded listener");
    let topics = [
        "carewatch/alerts/north",
        "carewatch/alerts/east",
        "carewatch/alerts/south",
    ];
    assert_eq!(mqtt_subscribe(&mqtt, &alice, &topics), (0, vec![0, 0, 128]));
    // SQL is for analysts and admins: a person (authorization code) and a service account
    // (client credentials) with the analyst role; the care manager is refused.
    let pg = srv.pg_ready();
    let bob = idp.token("bob");
    let svc = idp.service_token("svc-analyst");
    for t in [&bob, &svc] {
        let (ok, out, err) = psql(&pg, t, "SELECT count(*) FROM observations");
        assert!(ok, "{err}");
        assert_eq!(out, "0");
        assert_eq!(
            patients(&srv, t).map(|p| p.len()),
            Ok(3),
            "analysts see all"
        );
    }
    let (ok, _, _) = psql(&pg, &alice, "SELECT 1");
    assert!(!ok, "a care manager's token is not a SQL credential");
    // Admin through the provider: the registry API.
    let carol = idp.token("carol");
    let (s, b) = curl("GET", &format!("{}/v1/tokens", srv.http), &carol, "");
    assert_eq!(s, 200, "{b}");
    // SMART on FHIR discovery names the issuer's endpoints (public, like the issuer's own).
    for path in [
        "/.well-known/smart-configuration",
        "/fhir/.well-known/smart-configuration",
    ] {
        let (s, b) = curl("GET", &format!("{}{path}", srv.http), "", "");
        assert_eq!(s, 200, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        assert_eq!(v["authorization_endpoint"], format!("{}/auth", idp.issuer));
        assert_eq!(
            v["code_challenge_methods_supported"],
            serde_json::json!(["S256"])
        );
    }
    // A person with no carewatch role gets nothing.
    let dave = idp.token("dave");
    assert_eq!(patients(&srv, &dave), Err(403));
    assert_eq!(srv.stop(), 0);
}

#[test]
fn bad_tokens_are_refused_on_every_wire() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (srv, idp) = start(tmp.path());
    let pg = srv.pg_ready();
    let mqtt = srv.mqtt.clone().expect("embedded listener");
    // Bob is an analyst: each of these would be a working SQL credential if it were accepted.
    let mut bad: Vec<(&str, String)> = ["expired", "wrong_key", "none", "hs256"]
        .iter()
        .map(|k| (*k, idp.forge("bob", k)))
        .collect();
    bad.push(("wrong audience", idp.token_for_other_api("bob")));
    for (kind, t) in &bad {
        assert_eq!(patients(&srv, t), Err(401), "{kind} on HTTP");
        assert_eq!(sse_status(&srv, t), "401", "{kind} on SSE");
        let (ok, _, err) = psql(&pg, t, "SELECT 1");
        assert!(
            !ok && err.contains("authentication failed"),
            "{kind} on psql: {err}"
        );
        let (rc, _) = mqtt_subscribe(&mqtt, t, &["carewatch/alerts/#"]);
        assert_ne!(rc, 0, "{kind} on MQTT");
    }
    // The same person's real token works on each (the refusals were about the tokens).
    let good = idp.token("bob");
    assert_eq!(patients(&srv, &good).map(|p| p.len()), Ok(3));
    assert!(psql(&pg, &good, "SELECT 1").0);
    let carol = idp.token("carol");
    assert_eq!(
        mqtt_subscribe(&mqtt, &carol, &["carewatch/alerts/#"]),
        (0, vec![0])
    );
    assert_eq!(srv.stop(), 0);
}

#[test]
fn rotated_keys_at_the_issuer_keep_working() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (srv, idp) = start(tmp.path());
    let pg = srv.pg_ready();
    let before = idp.token("bob");
    assert!(psql(&pg, &before, "SELECT 1").0);
    idp.rotate();
    // Signed with a key carewatch has never seen: it refetches the issuer's keys.
    let after = idp.token("bob");
    assert_ne!(before.split('.').next(), after.split('.').next(), "new kid");
    assert_eq!(patients(&srv, &after).map(|p| p.len()), Ok(3));
    assert!(psql(&pg, &after, "SELECT 1").0, "psql with the new key");
    // The old key is still published, so tokens signed before the rotation still work.
    assert_eq!(patients(&srv, &before).map(|p| p.len()), Ok(3));
    assert_eq!(srv.stop(), 0);
}

#[test]
fn leaving_a_team_at_the_issuer_removes_access_with_the_next_token() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (srv, idp) = start(tmp.path());
    let first = idp.token("alice");
    assert_eq!(
        patients(&srv, &first),
        Ok(vec!["p-east".into(), "p-north".into()])
    );
    idp.set_user("alice", r#"{"care_team":"north"}"#);
    let next = idp.token("alice");
    assert_eq!(patients(&srv, &next), Ok(vec!["p-north".into()]));
    let (s, _) = curl(
        "GET",
        &format!("{}/v1/patients/p-east/vitals", srv.http),
        &next,
        "",
    );
    assert_eq!(s, 404);
    let mqtt = srv.mqtt.clone().expect("embedded listener");
    assert_eq!(
        mqtt_subscribe(&mqtt, &next, &["carewatch/alerts/east"]),
        (0, vec![128])
    );
    // Taken out of every team: an empty list, not an error.
    idp.set_user("alice", r#"{"care_team":[]}"#);
    let none = idp.token("alice");
    assert_eq!(patients(&srv, &none), Ok(vec![]));
    assert_eq!(srv.stop(), 0);
}

#[test]
fn break_glass_opens_one_patient_with_a_reason_audited_and_seen_by_the_team() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (srv, idp) = start(tmp.path());
    let url = format!("{}/v1/break-glass", srv.http);
    let alice = idp.token("alice");
    let south_vitals = format!("{}/v1/patients/p-south/vitals", srv.http);
    assert_eq!(curl("GET", &south_vitals, &alice, "").0, 404);
    let body = r#"{"patient_id":"p-south","reason":"Unresponsive in ED, own team unreachable","minutes":30}"#;
    // A reason is required; a shared team token cannot break the glass (it names nobody).
    let short = r#"{"patient_id":"p-south","reason":"because"}"#;
    assert_eq!(curl("POST", &url, &alice, short).0, 400);
    let team_token = srv.token("care_manager", Some("north"));
    assert_eq!(curl("POST", &url, &team_token, body).0, 403);
    // The patient's team lead is listening on their live stream.
    idp.set_user(
        "erin",
        r#"{"name":"Erin Lead","roles":["care_manager"],"care_team":["south"]}"#,
    );
    let erin = idp.token("erin");
    let mut lead = listen(&srv, &erin, "break_glass");
    let (s, b) = curl("POST", &url, &alice, body);
    assert_eq!(s, 201, "{b}");
    let heard = lead.heard();
    assert!(
        heard.contains("Alice Nurse") && heard.contains("p-south"),
        "{heard}"
    );
    // Her own team's patient needs no glass.
    let (s, b) = curl(
        "POST",
        &url,
        &alice,
        r#"{"patient_id":"p-north","reason":"checking the north patient"}"#,
    );
    assert_eq!((s, b.contains(r#""needed":false"#)), (200, true), "{b}");
    // Opened: the chart and the patient list, with the same token.
    assert_eq!(curl("GET", &south_vitals, &alice, "").0, 200);
    let seen = patients(&srv, &alice).expect("patients");
    assert!(seen.contains(&"p-south".to_owned()), "{seen:?}");
    // The patient's team sees who broke the glass and why; another team does not.
    let (s, b) = curl("GET", &url, &erin, "");
    assert_eq!(s, 200, "{b}");
    assert!(
        b.contains("Alice Nurse") && b.contains("own team unreachable"),
        "{b}"
    );
    let (_, b) = curl("GET", &url, &team_token, "");
    assert!(!b.contains("Alice Nurse"), "{b}");
    // The audit trail, read as admin, has the grant with its reason and the person.
    let pg = srv.pg_ready();
    let (ok, out, err) = psql(
        &pg,
        srv.admin(),
        "SELECT person_name, statement, outcome FROM audit_log WHERE channel = 'break-glass'",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("Alice Nurse|break-glass patient=p-south minutes=30 reason=Unresponsive"),
        "{out}"
    );
    assert_eq!(srv.stop(), 0);
}

/// A live stream (`GET /v1/stream`) read by a small Python client until an event of a kind.
struct Listener {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

const LISTEN: &str = r#"
import sys, urllib.request
url, token, kind = sys.argv[1], sys.argv[2], sys.argv[3]
r = urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer " + token}), timeout=60)
print("open", r.status, flush=True)
event = None
for raw in r:
    line = raw.decode().strip()
    if line.startswith("event:"):
        event = line[6:].strip()
    elif line.startswith("data:") and event == kind:
        print(line[5:].strip(), flush=True)
        break
"#;

/// Opens the stream and returns once it is open (so nothing sent after this is missed).
fn listen(srv: &Server, token: &str, kind: &str) -> Listener {
    use std::io::BufRead;
    let mut child = std::process::Command::new(common::python())
        .args([
            "-c",
            LISTEN,
            &format!("{}/v1/stream", srv.http),
            token,
            kind,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("read");
    assert_eq!(first.trim(), "open 200");
    Listener { child, out }
}

impl Listener {
    /// The event's data (waits for it; the client gives up after a minute).
    fn heard(&mut self) -> String {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut self.out, &mut s).expect("read");
        s
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
