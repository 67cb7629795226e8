//! Break-glass on every wire, with a real identity provider (tests/oidc/provider.mjs): a care
//! manager's grant for one patient of another team opens that patient — and no other of that
//! team — on FHIR search (curl) and on the MQTT alert topic of that team (paho), and closes on
//! both when it expires; the Postgres wire stays closed to care managers, grant or not. The
//! team's lead is told through the webhook notifier (a real HTTP receiver; the body signed with
//! the lead's secret), and the audit trail names the person, the reason and the lead.

mod common;
mod oidc_idp;

use std::io::BufRead;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::{Server, Webhook, curl, note_id, simulate, wait_until};
use oidc_idp::{Idp, psql};

// sim-pat-00000: north (Alice's); sim-pat-00001 and sim-pat-00002: south (not hers).
const NORTH: &str = "sim-pat-00000";
const SOUTH_OTHER: &str = "sim-pat-00001";
const SOUTH: &str = "sim-pat-00002";

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

/// How many Observations of `patient` a FHIR search with `token` answers (None: refused).
fn fhir_count(srv: &Server, token: &str, patient: &str) -> Option<usize> {
    let url = format!("{}/fhir/Observation?patient={patient}&_count=50", srv.http);
    let (s, b) = curl("GET", &url, token, "");
    if s != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&b).expect("bundle");
    Some(v["entry"].as_array().map_or(0, Vec::len))
}

/// An MQTT subscriber (paho) that prints each message's patient as it arrives.
struct Subscriber {
    child: Child,
    lines: std::io::Lines<std::io::BufReader<ChildStdout>>,
}

const SUBSCRIBE: &str = r#"
import json, os, sys, threading
import paho.mqtt.client as mqtt
host, port, password, topics = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="glass-test", protocol=mqtt.MQTTv311)
c.username_pw_set("person", password)
def on_connect(cl, u, flags, rc, props=None):
    cl.subscribe([(t, 0) for t in topics])
def on_subscribe(cl, u, mid, codes, props=None):
    print("granted", " ".join(str(getattr(c, "value", c)) for c in codes), flush=True)
def on_message(cl, u, m):
    print("message", json.loads(m.payload)["patient_id"], flush=True)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, port, 30)
threading.Timer(150, lambda: os._exit(3)).start()  # never hang the test
c.loop_forever()
"#;

impl Subscriber {
    fn start(mqtt: &str, token: &str, topics: &[&str]) -> Subscriber {
        let (host, port) = mqtt.rsplit_once(':').expect("addr");
        let mut child = Command::new(common::python())
            .args(["-c", SUBSCRIBE, host, port, token])
            .args(topics)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python with paho");
        let out = child.stdout.take().expect("stdout");
        Subscriber {
            child,
            lines: std::io::BufReader::new(out).lines(),
        }
    }

    fn next(&mut self) -> String {
        self.lines
            .next()
            .and_then(Result::ok)
            .expect("subscriber ended")
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The open alert of `patient` (admin's view).
fn alert_of(srv: &Server, patient: &str) -> String {
    let (_, b) = curl("GET", &format!("{}/v1/alerts", srv.http), srv.admin(), "");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    v["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| a["patient_id"] == patient)
        .and_then(|a| a["alert_id"].as_str())
        .unwrap_or_else(|| panic!("no alert for {patient}: {b}"))
        .to_owned()
}

/// An admin's note on the patient's alert: one transition, published on its team's topic.
fn note(srv: &Server, patient: &str) {
    let id = alert_of(srv, patient);
    let url = format!("{}/v1/alerts/{id}/note", srv.http);
    let (s, b) = curl(
        "POST",
        &url,
        srv.admin(),
        r#"{"text":"checked by the admin"}"#,
    );
    assert!((200..300).contains(&s), "{s} {b}");
}

fn hmac(key: &str, body: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("write");
    let out = child.wait_with_output().expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_grant_opens_one_patient_on_fhir_and_mqtt_until_it_expires_and_tells_the_lead() {
    let tmp = tempfile::tempdir().expect("tmp");
    let lead = Webhook::start(0);
    let port = oidc_idp::issuer_port();
    let config = tmp.path().join("carewatch.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nfailed_login_burst = 1000\n\n\
             [auth.oidc]\nissuer = \"http://127.0.0.1:{port}\"\naudience = \"carewatch\"\n\n\
             [alerts]\nmqtt_publish = true\n\n\
             [alerts.escalation.south]\n\
             lead = {{ person = \"Erin Lead\", url = \"{}\", secret = \"lead-s3cret\" }}\n",
            lead.url
        ),
    )
    .expect("config");
    let srv = Server::start(tmp.path(), &["--config", config.to_str().expect("utf8")]);
    let idp = Idp::start(port, &srv.http);
    team(&srv, NORTH, "north");
    team(&srv, SOUTH_OTHER, "south");
    team(&srv, SOUTH, "south");
    simulate(
        &srv,
        3,
        30,
        &[
            "--episode",
            "fever:0@600+1200",
            "--episode",
            "fever:1@600+1200",
            "--episode",
            "fever:2@600+1200",
        ],
    );
    wait_until("three fever alerts", Duration::from_secs(60), || {
        let (_, b) = curl("GET", &format!("{}/v1/alerts", srv.http), srv.admin(), "");
        [NORTH, SOUTH_OTHER, SOUTH].iter().all(|p| b.contains(p))
    });
    let alice = idp.token("alice");
    let mqtt = srv.mqtt.clone().expect("embedded listener");
    let pg = srv.pg_ready();
    // Before: not hers anywhere.
    assert_eq!(fhir_count(&srv, &alice, SOUTH), Some(0));
    assert!(fhir_count(&srv, &alice, NORTH).is_some_and(|n| n > 0));
    let mut before = Subscriber::start(&mqtt, &alice, &["carewatch/alerts/south"]);
    assert_eq!(before.next(), "granted 128", "another team's topic");
    drop(before);
    assert!(!psql(&pg, &alice, "SELECT 1").0, "no SQL for care managers");
    // The grant: one minute, with a reason.
    let body = format!(
        r#"{{"patient_id":"{SOUTH}","reason":"Found collapsed, south team unreachable","minutes":1}}"#
    );
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/break-glass", srv.http),
        &alice,
        &body,
    );
    assert_eq!(s, 201, "{b}");
    let alice = idp.token("alice"); // any token of hers carries the grant; a fresh one too
    assert!(
        fhir_count(&srv, &alice, SOUTH).is_some_and(|n| n > 0),
        "FHIR opens"
    );
    assert_eq!(
        fhir_count(&srv, &alice, SOUTH_OTHER),
        Some(0),
        "only that patient"
    );
    assert!(
        !psql(&pg, &alice, "SELECT 1").0,
        "the grant is not a SQL credential"
    );
    // MQTT: the team's topic, that patient's messages only.
    let topics = ["carewatch/alerts/south", "carewatch/alerts/north"];
    let mut sub = Subscriber::start(&mqtt, &alice, &topics);
    assert_eq!(sub.next(), "granted 0 0");
    note(&srv, SOUTH_OTHER);
    note(&srv, SOUTH);
    assert_eq!(
        sub.next(),
        format!("message {SOUTH}"),
        "not the other south patient's"
    );
    // The lead was told, signed with the lead's secret.
    wait_until("the lead's notice", Duration::from_secs(30), || {
        !lead.all().is_empty()
    });
    let notice = &lead.all()[0];
    assert_eq!(notice["event"], "break_glass");
    assert_eq!(
        (
            notice["name"].as_str(),
            notice["patient_id"].as_str(),
            notice["lead"].as_str()
        ),
        (Some("Alice Nurse"), Some(SOUTH), Some("Erin Lead"))
    );
    assert!(
        notice["reason"]
            .as_str()
            .is_some_and(|r| r.contains("south team unreachable"))
    );
    let (head, raw) = lead.raw.lock().expect("lock")[0].clone();
    let sig = head
        .lines()
        .find_map(|l| l.strip_prefix("x-carewatch-signature:"))
        .map(str::trim)
        .expect("signed");
    assert_eq!(sig, format!("sha256={}", hmac("lead-s3cret", &raw)));
    // Expiry: FHIR closes again, then MQTT drops that patient's messages (a north message
    // after a south one shows the south one was not delivered: one stream, in order).
    wait_until("the grant to expire", Duration::from_secs(120), || {
        fhir_count(&srv, &alice, SOUTH) == Some(0)
    });
    note(&srv, SOUTH);
    note(&srv, NORTH);
    assert_eq!(
        sub.next(),
        format!("message {NORTH}"),
        "expired grant still delivered"
    );
    // The audit trail, as admin: the person, the reason and the lead told.
    let (ok, out, err) = psql(
        &pg,
        srv.admin(),
        "SELECT person, person_name, statement FROM audit_log WHERE channel = 'break-glass'",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "alice|Alice Nurse|break-glass patient={SOUTH} minutes=1 reason=Found collapsed"
        )) && out.contains("lead=Erin Lead"),
        "{out}"
    );
    let (ok, out, err) = psql(
        &pg,
        srv.admin(),
        "SELECT count(*) FROM audit_log WHERE person = 'alice' AND channel <> 'break-glass'",
    );
    assert!(ok, "{err}");
    assert!(
        out.parse::<u32>().is_ok_and(|n| n >= 4),
        "her FHIR reads are audited: {out}"
    );
    assert_eq!(srv.stop(), 0);
}
