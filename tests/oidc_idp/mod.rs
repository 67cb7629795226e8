//! The identity provider of the single sign-on tests: `tests/oidc/provider.mjs` (npm
//! `oidc-provider`, OpenID-certified) in a Node process, plus the real clients the tests use
//! with its tokens (curl, psql, paho-mqtt).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{curl, note_id, python};

/// A running provider.
pub struct Idp {
    child: Child,
    /// The issuer URL.
    pub issuer: String,
}

/// A port for the provider, chosen before carewatch starts (carewatch is told the issuer).
pub fn issuer_port() -> u16 {
    crate::common::free_port()
}

impl Idp {
    /// Starts the provider on `port`, with the dashboard client's redirect URIs at `carewatch`.
    pub fn start(port: u16, carewatch: &str) -> Idp {
        let script = carewatch_fixtures::repo_dir().join("tests/oidc/provider.mjs");
        let mut child = Command::new("node")
            .arg(&script)
            .arg(port.to_string())
            .arg(carewatch)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("node (scripts/setup-test-deps.sh installs oidc-provider)");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        if !first.starts_with("oidc-provider listening on ") {
            let _ = child.kill();
            let mut why = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut why);
            }
            panic!("provider did not start: {first:?}\n{why}");
        }
        // Its stderr is drained so that the provider never blocks on a full pipe.
        if let Some(e) = child.stderr.take() {
            std::thread::spawn(move || for _ in BufReader::new(e).lines().map_while(Result::ok) {});
        }
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Idp {
            child,
            issuer: format!("http://127.0.0.1:{port}"),
        }
    }

    fn post(&self, path: &str, body: &str) -> serde_json::Value {
        let (s, b) = curl("POST", &format!("{}{path}", self.issuer), "", body);
        assert_eq!(s, 200, "{path}: {b}");
        serde_json::from_str(&b).expect("json")
    }

    fn token_of(&self, v: serde_json::Value) -> String {
        let t = v["token"].as_str().expect("token").to_owned();
        note_jwt(&t);
        t
    }

    /// A person's access token for carewatch, through the authorization code flow.
    pub fn token(&self, user: &str) -> String {
        let v = self.post("/test/token", &format!(r#"{{"user":"{user}"}}"#));
        self.token_of(v)
    }

    /// A person's access token for another API (wrong audience for carewatch).
    pub fn token_for_other_api(&self, user: &str) -> String {
        let v = self.post(
            "/test/token",
            &format!(r#"{{"user":"{user}","resource":"urn:other"}}"#),
        );
        self.token_of(v)
    }

    /// A bad token: `expired` (the issuer's key), `wrong_key`, `none`, `hs256`.
    pub fn forge(&self, user: &str, kind: &str) -> String {
        let v = self.post(
            "/test/forge",
            &format!(r#"{{"user":"{user}","kind":"{kind}"}}"#),
        );
        self.token_of(v)
    }

    /// Changes a person at the issuer (`fields`: JSON object members).
    pub fn set_user(&self, user: &str, fields: &str) {
        self.post(&format!("/test/users/{user}"), fields);
    }

    /// The FHIR base of the simulated EHR (the provider plays it).
    pub fn fhir_base(&self) -> String {
        format!("{}/fhir", self.issuer)
    }

    /// An EHR launch id with `patient` in context.
    pub fn launch(&self, patient: &str) -> String {
        let v = self.post("/test/launch", &format!(r#"{{"patient":"{patient}"}}"#));
        let id = v["launch"].as_str().expect("launch").to_owned();
        note_id("token", &id);
        id
    }

    /// The paths requested from the provider so far.
    pub fn seen(&self) -> Vec<String> {
        let (s, b) = curl("GET", &format!("{}/test/seen", self.issuer), "", "");
        assert_eq!(s, 200, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        v["paths"]
            .as_array()
            .expect("paths")
            .iter()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect()
    }

    /// A new signing key at the issuer.
    pub fn rotate(&self) {
        self.post("/test/rotate", "{}");
    }

    /// A service account's token (client credentials grant).
    pub fn service_token(&self, client: &str) -> String {
        let out = Command::new("curl")
            .args(["-s", "-S", "-u", &format!("{client}:{client}-secret")])
            .args([
                "-d",
                "grant_type=client_credentials",
                "-d",
                "resource=urn:carewatch",
            ])
            .args(["-d", "scope=sql"])
            .arg(format!("{}/token", self.issuer))
            .output()
            .expect("curl");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let t = v["access_token"].as_str().expect("access_token").to_owned();
        note_jwt(&t);
        t
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Records a JWT and each of its signed parts for scripts/check_logs_phi.py: none may appear
/// in a log line at INFO or above.
pub fn note_jwt(t: &str) {
    note_id("token", t);
    for part in t.split('.').skip(1).filter(|p| p.len() > 16) {
        note_id("token", part);
    }
}

/// psql with `password`: (success, stdout, stderr).
pub fn psql(pg: &str, password: &str, sql: &str) -> (bool, String, String) {
    let (host, port) = pg.rsplit_once(':').expect("addr");
    let out = Command::new("psql")
        .args(["-h", host, "-p", port, "-U", "someone", "-d", "carewatch"])
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql installed (scripts/setup-test-deps.sh)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const MQTT: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
host, port, password, topics = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
done = threading.Event()
out = {}
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="oidc-test", protocol=mqtt.MQTTv311)
c.username_pw_set("person", password)
def on_connect(cl, u, flags, rc, props=None):
    out["rc"] = rc.value if hasattr(rc, "value") else int(rc)
    if out["rc"] != 0 or not topics:
        done.set()
        return
    cl.subscribe([(t, 0) for t in topics])
def on_subscribe(cl, u, mid, codes, props=None):
    out["granted"] = [getattr(x, "value", x) for x in codes]
    done.set()
c.on_connect, c.on_subscribe = on_connect, on_subscribe
c.connect(host, port, 30)
c.loop_start()
done.wait(20)
print("rc", out.get("rc"), "granted", out.get("granted"))
c.loop_stop()
"#;

/// Connects to the embedded MQTT listener with `password` and subscribes to `topics`:
/// (CONNACK return code, the SUBACK codes: 0 granted, 128 refused).
pub fn mqtt_subscribe(mqtt: &str, password: &str, topics: &[&str]) -> (i64, Vec<i64>) {
    let (host, port) = mqtt.rsplit_once(':').expect("addr");
    let out = Command::new(python())
        .args(["-c", MQTT, host, port, password])
        .args(topics)
        .output()
        .expect("python with paho (scripts/setup-test-deps.sh)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let rc = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1);
    let granted = text
        .split_once("granted ")
        .map(|(_, g)| {
            g.trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace())
                .split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    (rc, granted)
}

/// Waits (polling) until `f` holds; for effects that need the provider or carewatch to catch up.
pub fn eventually(what: &str, f: impl FnMut() -> bool) {
    crate::common::wait_until(what, Duration::from_secs(30), f);
}
