//! The triage dashboard through a care manager's shift (issue #16), in Chromium
//! (tests/dashboard/triage.mjs): Alice signs in through the identity provider, the list shows
//! her patients in order of need (open alert level, then NEWS2 from the latest vitals, then time
//! since the last reading), she opens the fever patient with the keyboard and sees the
//! temperature chart highlighted with the episode, snoozes, a worse reading breaks through,
//! she hands off to a colleague, notes and resolves with a reason. The alert history and the
//! webhook receiver each show every step once, naming her; axe-core finds no serious
//! accessibility violation; the phone layout does not scroll sideways. `GET /v1/triage` and the
//! timeline are scoped to the caller's care team.

mod common;
mod oidc_idp;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Server, Webhook, curl, note_id, wait_until};
use oidc_idp::Idp;

fn at(secs_ago: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(secs_ago)).to_rfc3339()
}

/// A patient with a device in a team; the device's secret.
fn patient(srv: &Server, id: &str, team: &str) -> String {
    note_id("patient", id);
    let secret = srv.register(&format!("d-{id}"), id);
    note_id("token", &secret);
    let (s, b) = curl(
        "PUT",
        &format!("{}/v1/patients/{id}/care-team", srv.http),
        srv.admin(),
        &format!(r#"{{"team":"{team}"}}"#),
    );
    assert!(s == 200 || s == 204, "{s} {b}");
    secret
}

/// One multi-vital sample from a device.
fn sample(srv: &Server, secret: &str, secs_ago: i64, vitals: &str) {
    let body = format!(r#"{{"time":"{}",{vitals}}}"#, at(secs_ago));
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), secret, &body);
    assert_eq!(s, 202, "{b}");
    assert!(b.contains(r#""rejected":[]"#), "{b}");
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// The world: five north patients whose need differs in one way each, and one south patient.
fn world(srv: &Server) -> String {
    let fever = patient(srv, "p-fever", "north");
    let news = patient(srv, "p-news", "north");
    let calm = patient(srv, "p-calm", "north");
    let quiet = patient(srv, "p-quiet", "north");
    let south = patient(srv, "p-south", "south");
    note_id("patient", "p-new");
    let (s, _) = curl(
        "PUT",
        &format!("{}/v1/patients/p-new/care-team", srv.http),
        srv.admin(),
        r#"{"team":"north"}"#,
    );
    assert!(s == 200 || s == 204);
    // NEWS2 2 (temperature 39.2) with a fever alert (warning).
    sample(
        srv,
        &fever,
        180,
        r#""heart_rate":88,"spo2":97,"respiratory_rate":16,"body_temperature":39.2"#,
    );
    // NEWS2 4 (RR 22: 2, SpO2 95: 1, pulse 95: 1), below every alert rule.
    sample(
        srv,
        &news,
        120,
        r#""heart_rate":95,"spo2":95,"respiratory_rate":22,"body_temperature":37.0"#,
    );
    // NEWS2 0, fresh.
    sample(
        srv,
        &calm,
        120,
        r#""heart_rate":70,"spo2":98,"respiratory_rate":14,"body_temperature":36.8"#,
    );
    // NEWS2 0 (partial: pulse only), last heard of 50 minutes ago.
    sample(srv, &quiet, 50 * 60, r#""heart_rate":70"#);
    sample(
        srv,
        &south,
        120,
        r#""heart_rate":140,"body_temperature":39.9"#,
    );
    fever
}

#[test]
fn a_care_manager_works_a_shift_on_the_triage_dashboard_in_chromium() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hook = Webhook::start(0);
    let port = oidc_idp::issuer_port();
    let config = common::write_config(
        tmp.path(),
        &format!(
            "[alerts]\nwebhook_url = \"{}\"\ninterval_secs = 0.5\n\n[auth.oidc]\n\
             issuer = \"http://127.0.0.1:{port}\"\naudience = \"carewatch\"\n\
             client_id = \"carewatch-dashboard\"\nclient_secret = \"dashboard-secret-for-tests\"\n",
            hook.url
        ),
    );
    let srv = Server::start(tmp.path(), &["--config", &config]);
    let _idp = Idp::start(port, &srv.http);
    let fever = world(&srv);
    let north = srv.token("care_manager", Some("north"));
    wait_until("the fever alert", Duration::from_secs(30), || {
        hook.all()
            .iter()
            .any(|v| v["event"] == "firing" && v["rule"] == "fever")
    });

    // The feed, scoped by care team through the same path as every other feed.
    let (s, b) = curl("GET", &format!("{}/v1/triage", srv.http), &north, "");
    assert_eq!(s, 200, "{b}");
    let v = json(&b);
    let ids: Vec<&str> = v["patients"]
        .as_array()
        .expect("patients")
        .iter()
        .filter_map(|p| p["patient_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["p-fever", "p-news", "p-quiet", "p-calm", "p-new"],
        "{b}"
    );
    let row = |i: usize| &v["patients"][i];
    assert_eq!(row(0)["level"], "warning", "{b}");
    assert_eq!(
        row(0)["open_alerts"][0]["vitals"],
        serde_json::json!(["8310-5"])
    );
    assert_eq!(row(0)["news2"]["score"], 2);
    assert_eq!(row(0)["news2"]["partial"], true, "no blood pressure");
    assert_eq!(row(1)["news2"]["score"], 4);
    assert_eq!(row(2)["news2"]["missing"].as_array().map(Vec::len), Some(4));
    assert!(
        row(2)["minutes_since_data"]
            .as_i64()
            .is_some_and(|m| m >= 49),
        "{b}"
    );
    assert_eq!(row(4)["news2"], serde_json::Value::Null);
    assert_eq!(row(0)["devices"][0]["device_id"], "d-p-fever");
    assert_eq!(row(0)["devices"][0]["silent"], false);
    assert_eq!(row(4)["devices"], serde_json::json!([]));
    let south = srv.token("care_manager", Some("south"));
    let (_, b) = curl("GET", &format!("{}/v1/triage", srv.http), &south, "");
    let ids: Vec<String> = json(&b)["patients"]
        .as_array()
        .expect("patients")
        .iter()
        .filter_map(|p| p["patient_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, ["p-south"]);
    let (s, _) = curl(
        "GET",
        &format!("{}/v1/patients/p-fever/timeline", srv.http),
        &south,
        "",
    );
    assert_eq!(s, 404, "another team's timeline");
    let (s, _) = curl("GET", &format!("{}/v1/triage", srv.http), "", "");
    assert_eq!(s, 401);

    // The shift, in Chromium.
    let artifacts = carewatch_fixtures::repo_dir().join("target/test-artifacts");
    let script = carewatch_fixtures::repo_dir().join("tests/dashboard/triage.mjs");
    let out = Command::new("node")
        .arg(&script)
        .args([
            srv.http.as_str(),
            "alice",
            artifacts.to_str().expect("utf8"),
        ])
        .args(["p-fever", "p-south", "d-p-fever", fever.as_str()])
        .stderr(Stdio::piped())
        .output()
        .expect("node (scripts/setup-test-deps.sh installs playwright-core and axe-core)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(stdout.trim());
    assert_eq!(r["who"], "Alice Nurse");
    assert_eq!(
        r["order"],
        serde_json::json!(["p-fever", "p-news", "p-quiet", "p-calm", "p-new"])
    );
    assert_eq!(
        r["order_snoozed"][0], "p-news",
        "a snoozed alert does not rank: {r}"
    );
    assert_eq!(r["order_broken_through"][0], "p-fever", "{r}");
    assert_eq!(r["worse_reading"], 202);
    assert!(r["tabs_to_patient"].as_i64().is_some_and(|n| n > 0), "{r}");
    for (control, presses) in r["tabs"].as_object().expect("tabs") {
        assert!(
            presses.as_i64().is_some_and(|n| n > 0),
            "{control} not reachable by Tab: {r}"
        );
    }
    let charts = r["charts"].as_array().expect("charts");
    for vital in ["body_temperature", "heart_rate", "spo2", "respiratory_rate"] {
        assert!(charts.iter().any(|c| c == vital), "no {vital} chart: {r}");
    }
    assert_eq!(r["highlighted"], serde_json::json!(["body_temperature"]));
    for page in [
        "list_desktop",
        "patient_desktop",
        "list_phone",
        "patient_phone",
    ] {
        assert_eq!(
            r["axe"][page],
            serde_json::json!([]),
            "axe-core, {page}: {r}"
        );
        assert!(
            r["axe"][format!("{page}_rules_passed")]
                .as_i64()
                .is_some_and(|n| n > 10)
        );
    }
    assert!(
        r["phone_list_width"].as_i64().is_some_and(|w| w <= 390),
        "{r}"
    );
    assert!(
        r["phone_view_width"].as_i64().is_some_and(|w| w <= 390),
        "{r}"
    );
    for shot in [
        "list-desktop",
        "patient-desktop",
        "list-phone",
        "patient-phone",
    ] {
        assert!(
            artifacts.join(format!("triage-{shot}.png")).exists(),
            "{shot}"
        );
    }
    let id = r["alert_id"].as_str().expect("alert id");
    let steps = ["snoozed", "unsnoozed", "assigned", "noted", "resolved"];
    assert_eq!(
        r["timeline"],
        serde_json::json!([
            "pending",
            "firing",
            "snoozed",
            "unsnoozed",
            "assigned",
            "noted",
            "resolved"
        ]),
        "{r}"
    );

    // The webhook receiver: each step once, naming Alice.
    wait_until(
        "the resolution at the webhook",
        Duration::from_secs(30),
        || {
            hook.all()
                .iter()
                .any(|v| v["alert_id"] == id && v["event"] == "resolved")
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let got: Vec<serde_json::Value> = hook
        .all()
        .into_iter()
        .filter(|v| v["alert_id"] == id)
        .collect();
    for e in steps {
        let n = got.iter().filter(|v| v["event"] == e).count();
        assert_eq!(n, 1, "{e} once at the webhook: {got:?}");
    }
    let by = |e: &str| got.iter().find(|v| v["event"] == e).expect("event").clone();
    for e in ["snoozed", "assigned", "noted", "resolved"] {
        assert_eq!(by(e)["actor"], "Alice Nurse <alice>", "{e}");
    }
    assert_eq!(by("assigned")["assignee"], "Erin Nurse");
    assert_eq!(
        by("noted")["note"],
        "Called the patient: 40.6 on a second thermometer."
    );
    assert_eq!(by("unsnoozed")["reason"], "worse_reading");
    assert_eq!(by("resolved")["reason"], "escalated_to_physician");

    // The history (the `alerts` table): each step once, in order.
    let analyst = srv.token("analyst", None);
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/sql", srv.http),
        &analyst,
        &format!("SELECT event FROM alerts WHERE alert_id = '{id}' ORDER BY seq"),
    );
    assert_eq!(s, 200, "{b}");
    let evs: Vec<String> = json(&b)
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["event"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        evs,
        [
            "pending",
            "firing",
            "snoozed",
            "unsnoozed",
            "assigned",
            "noted",
            "resolved"
        ],
        "{b}"
    );
    assert_eq!(srv.stop(), 0);
}
