//! Authorization probes with the real binary and real clients (paho-mqtt, curl, a raw MQTT
//! socket): an open alert follows its patient to the new care team (list, ack, MQTT topic,
//! team webhook, SSE, the `alerts` history); `unassigned` is not a team; MQTT sessions and SSE
//! streams end with their credential; QoS 2 is answered PUBREC/PUBCOMP once durable.

mod common;
#[path = "mqtt_broker/paho_session.rs"]
mod paho_session;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, Webhook, curl, python, wait_until};
use paho_session::Session;

fn config(dir: &std::path::Path, text: &str) -> String {
    let cfg = dir.join("carewatch.toml");
    std::fs::write(&cfg, text).expect("config");
    cfg.to_str().expect("utf8").to_owned()
}

fn set_team(srv: &Server, patient: &str, team: &str) -> u16 {
    curl(
        "PUT",
        &format!("{}/v1/patients/{patient}/care-team", srv.http),
        srv.admin(),
        &format!(r#"{{"team":"{team}"}}"#),
    )
    .0
}

/// A fever reading now: the fever rule fires on its next run.
fn fever(srv: &Server, secret: &str) {
    let body = format!(
        r#"{{"time":"{}","body_temperature":39.6}}"#,
        chrono::Utc::now().to_rfc3339()
    );
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), secret, &body);
    assert_eq!(s, 202, "{b}");
}

fn alerts(srv: &Server, token: &str) -> Vec<serde_json::Value> {
    let (s, b) = curl(
        "GET",
        &format!("{}/v1/alerts?status=all", srv.http),
        token,
        "",
    );
    assert_eq!(s, 200, "{b}");
    serde_json::from_str::<serde_json::Value>(&b).expect("json")["alerts"]
        .as_array()
        .expect("alerts")
        .clone()
}

fn ack(srv: &Server, token: &str, id: &str) -> (u16, String) {
    curl(
        "POST",
        &format!("{}/v1/alerts/{id}/ack", srv.http),
        token,
        "",
    )
}

/// Creates a credential; returns (token, id).
fn token_with_id(srv: &Server, role: &str, subject: &str) -> (String, String) {
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/tokens", srv.http),
        srv.admin(),
        &format!(r#"{{"role":"{role}","subject":"{subject}"}}"#),
    );
    assert_eq!(s, 201, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    (
        v["token"].as_str().expect("token").to_owned(),
        v["id"].as_str().expect("credential id").to_owned(),
    )
}

fn events_for(hook: &Webhook, id: &str) -> Vec<String> {
    hook.all()
        .iter()
        .filter(|v| v["alert_id"] == id)
        .map(|v| v["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn an_open_alert_follows_its_patient_to_the_new_care_team() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (all, hook_a, hook_b) = (Webhook::start(0), Webhook::start(0), Webhook::start(0));
    let cfg = config(
        tmp.path(),
        &format!(
            "[alerts]\nwebhook_url = \"{}\"\nmqtt_publish = true\ninterval_secs = 0.5\n[alerts.team_webhooks]\n\"team-a\" = \"{}\"\n\"team-b\" = \"{}\"\n",
            all.url, hook_a.url, hook_b.url
        ),
    );
    let srv = Server::start(tmp.path(), &["--config", &cfg]);
    let secret = srv.register("fa1", "pat-move");
    assert_eq!(set_team(&srv, "pat-move", "team-a"), 204);
    let cm_a = srv.token("care_manager", Some("team-a"));
    let cm_b = srv.token("care_manager", Some("team-b"));
    fever(&srv, &secret);
    wait_until("team A to see the alert", Duration::from_secs(30), || {
        alerts(&srv, &cm_a).iter().any(|a| a["status"] == "firing")
    });
    let id = alerts(&srv, &cm_a)[0]["alert_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mut sub_a = Session::start(&srv, "cm-a", &cm_a);
    let mut sub_b = Session::start(&srv, "cm-b", &cm_b);
    assert_eq!(sub_a.subscribe("carewatch/alerts/team-a"), "subscribed [0]");
    assert_eq!(sub_b.subscribe("carewatch/alerts/team-b"), "subscribed [0]");
    assert!(alerts(&srv, &cm_b).is_empty());

    // The move: authorization follows the patient at once.
    assert_eq!(set_team(&srv, "pat-move", "team-b"), 204);
    assert!(alerts(&srv, &cm_a).is_empty(), "the old team still sees it");
    assert_eq!(ack(&srv, &cm_a, &id).0, 404, "the old team can acknowledge");
    let mine = alerts(&srv, &cm_b);
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!(mine[0]["alert_id"], id.as_str());
    assert_eq!(mine[0]["care_team"], "team-b");
    let (s, b) = ack(&srv, &cm_b, &id);
    assert_eq!(s, 200, "{b}");
    let acked: serde_json::Value = serde_json::from_str(&b).expect("json");
    assert_eq!(acked["status"], "acknowledged");

    // Team B's MQTT topic hears of the move and of its acknowledgement.
    sub_b.wait_for("the acknowledgement on team B's topic", |l| {
        l.contains("\"acknowledged\"") && l.contains(&id)
    });
    let got: Vec<_> = sub_b
        .messages()
        .iter()
        .map(|m| {
            (
                m["event"].as_str().unwrap_or("").to_owned(),
                m["care_team"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("reassigned".to_owned(), serde_json::json!("team-b")),
            ("acknowledged".to_owned(), serde_json::json!("team-b")),
        ]
    );
    // Team A's topic hears nothing more of it: its next message is its own patient's alert.
    let stay = srv.register("fa2", "pat-stay");
    assert_eq!(set_team(&srv, "pat-stay", "team-a"), 204);
    fever(&srv, &stay);
    sub_a.wait_for("team A's own alert", |l| l.contains("pat-stay"));
    let first = &sub_a.messages()[0];
    assert_eq!(first["patient_id"], "pat-stay", "{:?}", sub_a.seen);

    // Team webhooks: B gets the move and the acknowledgement; A nothing after the firing.
    wait_until("team B's webhook", Duration::from_secs(30), || {
        events_for(&hook_b, &id).contains(&"acknowledged".to_owned())
    });
    assert_eq!(events_for(&hook_b, &id), vec!["reassigned", "acknowledged"]);
    let moved = hook_b
        .all()
        .into_iter()
        .find(|v| v["event"] == "reassigned");
    let moved = moved.expect("reassigned");
    assert_eq!(moved["previous_care_team"], "team-a");
    wait_until(
        "team A's own alert at its webhook",
        Duration::from_secs(30),
        || hook_a.all().iter().any(|v| v["patient_id"] == "pat-stay"),
    );
    assert_eq!(events_for(&hook_a, &id), vec!["firing"]);
    assert_eq!(
        events_for(&all, &id),
        vec!["firing", "reassigned", "acknowledged"]
    );

    // The history records the move.
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/sql", srv.http),
        srv.admin(),
        &format!(
            "SELECT event, care_team, previous_care_team, status FROM alerts WHERE alert_id = '{id}' AND event <> 'pending' ORDER BY seq"
        ),
    );
    assert_eq!(s, 200, "{b}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&b).expect("json");
    assert_eq!(rows.len(), 3, "{b}");
    assert_eq!(rows[0]["care_team"], "team-a");
    assert_eq!(
        (
            &rows[1]["event"],
            &rows[1]["care_team"],
            &rows[1]["previous_care_team"]
        ),
        (
            &serde_json::json!("reassigned"),
            &serde_json::json!("team-b"),
            &serde_json::json!("team-a")
        ),
        "{b}"
    );
    assert_eq!(rows[2]["event"], "acknowledged");
    drop((sub_a, sub_b));
    assert_eq!(srv.stop(), 0);
}

#[test]
fn unassigned_is_not_a_team() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hook = Webhook::start(0);
    let cfg = config(
        tmp.path(),
        &format!(
            "[alerts]\nwebhook_url = \"{}\"\nmqtt_publish = true\ninterval_secs = 0.5\n",
            hook.url
        ),
    );
    let srv = Server::start(tmp.path(), &["--config", &cfg]);
    for body in [
        r#"{"role":"care_manager","subject":"unassigned"}"#,
        r#"{"role":"care_manager","subject":""}"#,
        r#"{"role":"care_manager"}"#,
    ] {
        let (s, b) = curl(
            "POST",
            &format!("{}/v1/tokens", srv.http),
            srv.admin(),
            body,
        );
        assert_eq!(s, 400, "{body}: {b}");
    }
    assert_eq!(set_team(&srv, "pat-none", "unassigned"), 400);
    let cm = srv.token("care_manager", Some("team-c"));
    let mut cm_sub = Session::start(&srv, "cm-c", &cm);
    assert_eq!(
        cm_sub.subscribe("carewatch/alerts/unassigned"),
        "subscribed [128]"
    );
    let mut admin_sub = Session::start(&srv, "admin", srv.admin());
    assert_eq!(admin_sub.subscribe("carewatch/alerts/#"), "subscribed [0]");

    // A patient without a team: the global webhook and admins' API hear of it, no topic does.
    let none = srv.register("nt1", "pat-none");
    fever(&srv, &none);
    wait_until("the global webhook", Duration::from_secs(30), || {
        hook.all().iter().any(|v| v["patient_id"] == "pat-none")
    });
    assert!(
        alerts(&srv, srv.admin())
            .iter()
            .any(|a| a["patient_id"] == "pat-none")
    );
    assert!(alerts(&srv, &cm).is_empty());
    let team = srv.register("nt2", "pat-team");
    assert_eq!(set_team(&srv, "pat-team", "team-c"), 204);
    fever(&srv, &team);
    admin_sub.wait_for("the team patient's alert", |l| l.contains("pat-team"));
    let topics: Vec<&str> = admin_sub
        .seen
        .iter()
        .filter_map(|l| l.strip_prefix("msg "))
        .filter_map(|l| l.split_once(' ').map(|x| x.0))
        .collect();
    assert_eq!(
        topics,
        vec!["carewatch/alerts/team-c"],
        "{:?}",
        admin_sub.seen
    );
    drop((cm_sub, admin_sub));
    assert_eq!(srv.stop(), 0);
}

fn reading(t_ms: i64) -> String {
    format!(r#"{{"time":{t_ms},"heart_rate":72}}"#)
}

#[test]
fn mqtt_sessions_end_with_their_credential() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = config(tmp.path(), "[alerts]\nmqtt_publish = true\n");
    let srv = Server::start(tmp.path(), &["--config", &cfg]);
    let t0 = 1_714_554_000_000_i64;

    // Revocation closes the session; a publish after it is never acknowledged.
    let secret = srv.register("dv1", "pat-d");
    let mut dev = Session::start(&srv, "dv1", &secret);
    let mid = dev.publish(1, "devices/dv1/readings", &reading(t0));
    dev.wait_for("the PUBACK", |l| l == format!("acked {mid}"));
    let (s, b) = curl(
        "DELETE",
        &format!("{}/v1/devices/dv1", srv.http),
        srv.admin(),
        "",
    );
    assert!(s == 200 || s == 204, "{s} {b}");
    let late = dev.publish(1, "devices/dv1/readings", &reading(t0 + 1000));
    dev.wait_for("the server to close the revoked session", |l| {
        l == "disconnected"
    });
    assert!(
        !dev.seen.contains(&format!("acked {late}")),
        "a publish after revocation was acknowledged: {:?}",
        dev.seen
    );

    // Re-registration rotates the secret: the old session closes, the new secret works.
    let old = srv.register("dv2", "pat-e");
    let mut dev2 = Session::start(&srv, "dv2", &old);
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/devices", srv.http),
        srv.admin(),
        &format!(
            r#"{{"device_id":"dv2","patient_id":"pat-f","valid_from":"{}"}}"#,
            chrono::Utc::now().to_rfc3339()
        ),
    );
    assert_eq!(s, 201, "{b}");
    let new: serde_json::Value = serde_json::from_str(&b).expect("json");
    dev2.wait_for("the rotated session to close", |l| l == "disconnected");
    let mut dev3 = Session::start(&srv, "dv2", new["secret"].as_str().expect("secret"));
    let mid = dev3.publish(1, "devices/dv2/readings", &reading(t0));
    dev3.wait_for("the new secret's PUBACK", |l| l == format!("acked {mid}"));

    // A care manager's subscriber session ends when the token is revoked.
    let (cm, cm_id) = token_with_id(&srv, "care_manager", "team-d");
    let mut sub = Session::start(&srv, "cm-d", &cm);
    assert_eq!(sub.subscribe("carewatch/alerts/team-d"), "subscribed [0]");
    let (s, b) = curl(
        "DELETE",
        &format!("{}/v1/tokens/{cm_id}", srv.http),
        srv.admin(),
        "",
    );
    assert_eq!(s, 204, "{b}");
    sub.wait_for("the revoked subscriber to be disconnected", |l| {
        l == "disconnected"
    });
    drop((dev, dev2, dev3, sub));
    assert_eq!(srv.stop(), 0);
}

/// A raw MQTT 3.1.1 client: CONNECT, the same QoS 2 PUBLISH twice (the second with DUP), then
/// PUBREL; prints the type and packet id of every packet the server sends.
const RAW_QOS2: &str = r#"
import socket, struct, sys
host, port, user, pw, topic, payload = sys.argv[1:7]
def s(x):
    b = x.encode(); return struct.pack('!H', len(b)) + b
def pkt(t, body):
    n, rl = len(body), b''
    while True:
        d, n = n % 128, n // 128
        rl += bytes([d | (0x80 if n else 0)])
        if not n: break
    return bytes([t]) + rl + body
sock = socket.create_connection((host, int(port)), timeout=20)
def exact(n):
    b = b''
    while len(b) < n:
        c = sock.recv(n - len(b))
        if not c: raise SystemExit("closed")
        b += c
    return b
def read():
    h = exact(1)[0]
    n, mul = 0, 1
    while True:
        d = exact(1)[0]; n += (d & 127) * mul; mul *= 128
        if d < 128: break
    body = exact(n)
    pkid = struct.unpack('!H', body[:2])[0] if h >> 4 in (4, 5, 6, 7) else body[1]
    print("%02x %d" % (h, pkid), flush=True)
sock.sendall(pkt(0x10, s('MQTT') + bytes([4, 0xC2]) + struct.pack('!H', 30) + s('raw-q2') + s(user) + s(pw)))
read()
pub = s(topic) + struct.pack('!H', 7) + payload.encode()
sock.sendall(pkt(0x34, pub))
sock.sendall(pkt(0x3C, pub))
read(); read()
sock.sendall(pkt(0x62, struct.pack('!H', 7)))
read()
"#;

#[test]
fn qos2_is_exactly_once_with_pubrec_after_the_fsync() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let mqtt = srv.mqtt.clone().expect("mqtt");
    let (host, port) = mqtt.rsplit_once(':').expect("addr");
    let secret = srv.register("q2", "pat-q");
    // paho: a QoS 2 publish completes (PUBREC, PUBREL, PUBCOMP).
    let mut dev = Session::start(&srv, "q2", &secret);
    let mid = dev.publish(2, "devices/q2/readings", &reading(1_714_554_000_000));
    dev.wait_for("the QoS 2 flow to complete", |l| {
        l == format!("acked {mid}")
    });
    drop(dev);
    // The same packet twice before PUBREL: PUBREC twice, one reading stored, then PUBCOMP.
    let out = Command::new(python())
        .args([
            "-c",
            RAW_QOS2,
            host,
            port,
            "q2",
            &secret,
            "devices/q2/readings",
            &reading(1_714_554_060_000),
        ])
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec!["20 0", "50 7", "50 7", "70 7"],
        "CONNACK, PUBREC, PUBREC, PUBCOMP: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/sql", srv.http),
        srv.admin(),
        "SELECT count(*) AS n FROM observations WHERE device_id = 'q2'",
    );
    assert_eq!(s, 200, "{b}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&b).expect("json");
    assert_eq!(rows[0]["n"], 2, "one row per QoS 2 message: {b}");
    assert_eq!(srv.stop(), 0);
}

#[test]
fn the_alert_stream_ends_when_its_token_is_revoked() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let (cm, id) = token_with_id(&srv, "care_manager", "team-e");
    let mut sse = Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Authorization: Bearer {cm}"),
            &format!("{}/v1/alerts/stream", srv.http),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    // The stream is open once the credential has been used.
    wait_until("the stream to open", Duration::from_secs(20), || {
        let (_, b) = curl("GET", &format!("{}/v1/tokens", srv.http), srv.admin(), "");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
        v["tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["id"] == id.as_str() && !t["last_used"].is_null())
    });
    let (s, b) = curl(
        "DELETE",
        &format!("{}/v1/tokens/{id}", srv.http),
        srv.admin(),
        "",
    );
    assert_eq!(s, 204, "{b}");
    // Well before curl's own 60 s limit.
    wait_until("the stream to end", Duration::from_secs(30), || {
        sse.try_wait().expect("wait").is_some()
    });
    let out = sse.wait_with_output().expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(srv.stop(), 0);
}
