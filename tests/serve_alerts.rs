//! Alerting end to end with the real binary: the simulator's injected episodes each reach a
//! local webhook receiver exactly once (through a failing first delivery), care-team scoping,
//! escalation until acknowledgement over HTTP, the SSE stream, and the `alerts` table.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Server, Webhook, curl, simulate, wait_until, write_config};

fn firing(hook: &Webhook) -> BTreeMap<String, Vec<(String, String)>> {
    let mut m: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for v in hook.all() {
        if v["event"] == "firing" {
            m.entry(v["fingerprint"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push((
                    v["rule"].as_str().unwrap_or_default().to_owned(),
                    v["patient_id"].as_str().unwrap_or_default().to_owned(),
                ));
        }
    }
    m
}

#[test]
fn simulated_episodes_alert_once_each_escalate_and_stop_when_acknowledged() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hook = Webhook::start(1);
    let cfg = tmp.path().join("carewatch.toml");
    std::fs::write(
        &cfg,
        format!(
            "[alerts]\nwebhook_url = \"{}\"\ninterval_secs = 0.5\nescalate_after_secs = 3\nmax_escalations = 2\n",
            hook.url
        ),
    )
    .expect("config");
    let srv = Server::start(tmp.path(), &["--config", cfg.to_str().expect("utf8")]);
    for i in 0..4 {
        let (s, b) = curl(
            "PUT",
            &format!("{}/v1/patients/sim-pat-{i:05}/care-team", srv.http),
            srv.admin(),
            r#"{"team":"north"}"#,
        );
        assert!(s == 200 || s == 204, "{s} {b}");
    }
    // 35 simulated minutes ending now, sent as fast as they are acknowledged.
    simulate(
        &srv,
        4,
        35,
        &[
            "--episode",
            "tachycardia:0@300+900",
            "--episode",
            "desaturation:1@300+900",
            "--episode",
            "fever:2@600+900",
        ],
    );

    // Each injected episode raises exactly one alert, and nothing else fires.
    let want: Vec<(String, String)> = vec![
        ("fever".into(), "sim-pat-00002".into()),
        ("hr_high_at_rest".into(), "sim-pat-00000".into()),
        ("spo2_low".into(), "sim-pat-00001".into()),
    ];
    wait_until(
        "three alerts at the webhook",
        Duration::from_secs(60),
        || firing(&hook).len() >= 3,
    );
    std::thread::sleep(Duration::from_secs(2));
    let f = firing(&hook);
    let mut got: Vec<(String, String)> = f.values().flatten().cloned().collect();
    got.sort();
    assert_eq!(got, want, "{:#?}", hook.all());
    assert!(
        f.values().all(|v| v.len() == 1),
        "one delivery per alert: {f:?}"
    );

    // Payload: stable fingerprint, Teams/Power Automate card, no surprise fields missing.
    let first = hook
        .all()
        .into_iter()
        .find(|v| v["event"] == "firing")
        .expect("one");
    assert_eq!(first["type"], "message");
    assert_eq!(
        first["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(first["care_team"], "north");
    // Each transition carries its level: the rule's default from its severity.
    for v in hook.all() {
        let want = if v["rule"] == "fever" {
            "warning"
        } else {
            "urgent"
        };
        assert_eq!(v["level"], want, "{v}");
    }

    // Care-team scoping.
    let north = srv.token("care_manager", Some("north"));
    let south = srv.token("care_manager", Some("south"));
    let list = |tok: &str| -> Vec<serde_json::Value> {
        let (s, b) = curl(
            "GET",
            &format!("{}/v1/alerts?status=all", srv.http),
            tok,
            "",
        );
        assert_eq!(s, 200, "{b}");
        serde_json::from_str::<serde_json::Value>(&b).expect("json")["alerts"]
            .as_array()
            .expect("alerts")
            .clone()
    };
    assert!(list(&south).is_empty());
    let mine = list(&north);
    // The tachycardia and desaturation episodes are over (resolved); the fever is not (no
    // normal temperature since), so it keeps firing.
    assert!(
        mine.iter()
            .any(|a| a["rule"] == "hr_high_at_rest" && a["status"] == "resolved"),
        "{mine:#?}"
    );
    assert!(
        mine.iter().all(|a| a["level"]
            == if a["rule"] == "fever" {
                "warning"
            } else {
                "urgent"
            }),
        "{mine:#?}"
    );
    let open_alert = mine
        .iter()
        .find(|a| a["rule"] == "fever" && a["status"] == "firing")
        .expect("fever alert")["alert_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (s, _) = curl(
        "POST",
        &format!("{}/v1/alerts/{open_alert}/ack", srv.http),
        &south,
        "",
    );
    assert_eq!(s, 404, "another team cannot acknowledge");

    // Unacknowledged alerts escalate (every 3 s here).
    wait_until("an escalation", Duration::from_secs(20), || {
        hook.all()
            .iter()
            .any(|v| v["event"] == "escalated" && v["fingerprint"] == open_alert.as_str())
    });
    // The SSE stream sees the acknowledgement.
    let sse = Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "4",
            "-H",
            &format!("Authorization: Bearer {north}"),
            &format!("{}/v1/alerts/stream", srv.http),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(800));
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/alerts/{open_alert}/ack", srv.http),
        &north,
        "",
    );
    assert_eq!(s, 200, "{b}");
    let acked: serde_json::Value = serde_json::from_str(&b).expect("json");
    assert_eq!(acked["status"], "acknowledged");
    let sse = sse.wait_with_output().expect("sse");
    let sse = String::from_utf8_lossy(&sse.stdout);
    assert!(sse.contains("event: alert"), "{sse}");
    assert!(sse.contains("\"level\":\"warning\""), "{sse}");
    assert!(
        sse.lines()
            .any(|l| l.contains("\"acknowledged\"") && l.contains(&open_alert)),
        "{sse}"
    );
    wait_until(
        "the acknowledgement at the webhook",
        Duration::from_secs(10),
        || {
            hook.all()
                .iter()
                .any(|v| v["event"] == "acknowledged" && v["fingerprint"] == open_alert.as_str())
        },
    );
    let n_before = hook.all().len();
    std::thread::sleep(Duration::from_secs(7));
    let after: Vec<_> = hook.all()[n_before..].to_vec();
    assert!(
        !after
            .iter()
            .any(|v| v["event"] == "escalated" && v["fingerprint"] == open_alert.as_str()),
        "an acknowledged alert stops escalating: {after:#?}"
    );

    // The `alerts` table holds the history.
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/sql", srv.http),
        srv.admin(),
        "SELECT rule, event, acknowledged_by IS NOT NULL AS by, level FROM alerts WHERE event IN ('firing', 'acknowledged') ORDER BY rule, event",
    );
    assert_eq!(s, 200, "{b}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&b).expect("json");
    assert_eq!(rows.len(), 4, "{b}");
    assert_eq!(rows[1]["event"], "firing");
    assert_eq!(rows[0]["event"], "acknowledged");
    assert_eq!(rows[0]["by"], true);
    assert_eq!(
        (&rows[0]["level"], &rows[3]["level"]),
        (&"warning".into(), &"urgent".into()),
        "{b}"
    );
    assert_eq!(srv.stop(), 0);
}

#[test]
fn a_bad_rule_file_stops_start_up_with_its_file_and_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rules = tmp.path().join("rules");
    std::fs::create_dir_all(&rules).expect("dir");
    std::fs::write(
        rules.join("typo.toml"),
        "title = \"x\"\nseverity = \"high\"\nmessage = \"m\"\nsql = \"SELECT patient_id, effective_time AS t, value > 1 AS hit, value FROM observation WHERE {scope}\"\n",
    )
    .expect("rule");
    let out = Command::new(BIN)
        .args([
            "serve",
            "--data-dir",
            tmp.path().join("data").to_str().expect("utf8"),
            "--http-addr",
            "127.0.0.1:0",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--pg-addr",
            "127.0.0.1:0",
            "--rules-dir",
            rules.to_str().expect("utf8"),
        ])
        .output()
        .expect("serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("typo.toml:4:"), "{err}");
    assert!(err.contains("observation"), "{err}");
}

/// NDJSON samples for `minutes` minutes from `start_ms`: heart rate every 10 s, steps 0 at each
/// minute start.
fn minutes(start_ms: i64, minutes: i64, hr: f64) -> String {
    let mut out = String::new();
    for m in 0..minutes {
        for k in 0..6 {
            let t = start_ms + m * 60_000 + k * 10_000;
            if k == 0 {
                out.push_str(&format!(
                    "{{\"time\":{t},\"heart_rate\":{hr},\"steps\":0}}\n"
                ));
            } else {
                out.push_str(&format!("{{\"time\":{t},\"heart_rate\":{hr}}}\n"));
            }
        }
    }
    out
}

#[test]
fn a_crash_in_the_middle_of_a_pending_episode_still_fires_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hook = Webhook::start(0);
    let alerts = format!(
        "[alerts]\nwebhook_url = \"{}\"\ninterval_secs = 0.5\n",
        hook.url
    );
    let cfg = write_config(tmp.path(), &alerts);
    let args = ["--config", cfg.as_str()];
    let mut srv = Server::start(tmp.path(), &args);
    let admin = srv.admin().to_owned();
    let secret = srv.register("w9", "dave");
    let now_min = chrono::Utc::now().timestamp_millis() / 60_000 * 60_000;
    let t0 = now_min - 20 * 60_000;
    let post = |srv: &Server, body: String| {
        let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
        assert_eq!(s, 202, "{b}");
    };
    // Two resting minutes, then six minutes above 100: pending, not yet an alert.
    post(
        &srv,
        minutes(t0, 2, 70.0) + &minutes(t0 + 2 * 60_000, 6, 120.0),
    );
    wait_until("a pending episode", Duration::from_secs(20), || {
        let (_, b) = curl(
            "GET",
            &format!("{}/v1/alerts?status=pending", srv.http),
            &admin,
            "",
        );
        b.contains("hr_high_at_rest")
    });
    // SIGKILL: no shutdown, no flush.
    srv.child.kill().expect("kill");
    let _ = srv.child.wait();
    srv = Server::start(tmp.path(), &args);
    srv.admin = Some(admin.clone());
    // The rest of the episode arrives after the restart: one alert, exactly once.
    post(
        &srv,
        minutes(t0 + 8 * 60_000, 6, 120.0) + &minutes(t0 + 14 * 60_000, 3, 70.0),
    );
    wait_until("the alert at the webhook", Duration::from_secs(30), || {
        !firing(&hook).is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    let f = firing(&hook);
    assert_eq!(f.len(), 1, "{f:?}");
    let (rule_patient, n) = f
        .iter()
        .next()
        .map(|(_, v)| (v[0].clone(), v.len()))
        .expect("one");
    assert_eq!(
        rule_patient,
        ("hr_high_at_rest".to_owned(), "dave".to_owned())
    );
    assert_eq!(n, 1);
    let first = hook
        .all()
        .into_iter()
        .find(|v| v["event"] == "firing")
        .expect("firing");
    let start =
        chrono::DateTime::parse_from_rfc3339(first["episode_start"].as_str().expect("start"))
            .expect("time")
            .timestamp_millis();
    assert_eq!(
        start,
        t0 + 2 * 60_000,
        "the episode starts where it did before the crash"
    );
    // Another restart does not fire it again.
    assert_eq!(srv.stop(), 0);
    let srv = Server::start(tmp.path(), &args);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(firing(&hook).values().map(Vec::len).sum::<usize>(), 1);
    drop(srv);
}

#[test]
fn rule_files_reload_while_running_and_a_bad_edit_keeps_the_old_rules() {
    let tmp = tempfile::tempdir().expect("tmp");
    let rules = tmp.path().join("rules");
    std::fs::create_dir_all(&rules).expect("dir");
    let shipped = carewatch_fixtures::repo_dir().join("alert/rules/fever.toml");
    let text = std::fs::read_to_string(shipped).expect("fever rule");
    let with = |t: &str| text.replace("threshold = 38.0", &format!("threshold = {t}"));
    std::fs::write(rules.join("fever.toml"), with("40.0")).expect("write");
    let cfg = tmp.path().join("carewatch.toml");
    std::fs::write(&cfg, "[alerts]\ninterval_secs = 0.3\n").expect("config");
    let srv = Server::start(
        tmp.path(),
        &[
            "--config",
            cfg.to_str().expect("utf8"),
            "--rules-dir",
            rules.to_str().expect("utf8"),
        ],
    );
    let temp = |device: &str, patient: &str, v: f64| {
        let secret = srv.register(device, patient);
        let body = format!(
            r#"{{"time":"{}","body_temperature":{v}}}"#,
            chrono::Utc::now().to_rfc3339()
        );
        let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
        assert_eq!(s, 202, "{b}");
    };
    let alerts = || {
        let (_, b) = curl(
            "GET",
            &format!("{}/v1/alerts?status=all", srv.http),
            srv.admin(),
            "",
        );
        b
    };
    temp("d1", "pa", 39.0);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !alerts().contains("\"pa\""),
        "39.0 is below the file's 40.0"
    );
    // Lower the threshold: the running server picks it up.
    std::fs::write(rules.join("fever.toml"), with("38.5")).expect("write");
    wait_until("the reload", Duration::from_secs(15), || {
        std::fs::read_to_string(&srv.stderr_log)
            .unwrap_or_default()
            .contains("alert rules reloaded")
    });
    temp("d2", "pb", 39.0);
    wait_until(
        "an alert under the new threshold",
        Duration::from_secs(15),
        || alerts().contains("\"pb\""),
    );
    // A broken edit is reported and the previous rules stay in force.
    std::fs::write(rules.join("fever.toml"), with("\"high\"")).expect("write");
    wait_until("the failed reload", Duration::from_secs(15), || {
        std::fs::read_to_string(&srv.stderr_log)
            .unwrap_or_default()
            .contains("alert rules reload failed")
    });
    temp("d3", "pc", 39.0);
    wait_until(
        "the old rules still alerting",
        Duration::from_secs(15),
        || alerts().contains("\"pc\""),
    );
    assert_eq!(srv.stop(), 0);
}
