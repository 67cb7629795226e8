//! Enrolling a fleet (issue #18), against the real binary over real HTTP: batches with good
//! and bad items, re-sent batches, a SIGKILL mid-enrolment, parallel enrolments beside
//! unknown-token requests, and `carewatch devices import` offline and against a server.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("json {e}: {body}"))
}

/// POST with a content type of our choosing; (status, JSON body).
fn post(srv: &Server, token: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    let mut child = Command::new("curl")
        .args(["-s", "-S", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Content-Type: {content_type}"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--data-binary", "@-", &format!("{}{path}", srv.http)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("body");
    let out = child.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (b, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), json_of(b))
}

fn batch(srv: &Server, items: &Value) -> (u16, Value) {
    post(
        srv,
        srv.admin(),
        "/v1/devices",
        "application/json",
        &items.to_string(),
    )
}

/// Every device the server lists, following the cursor, with its current patient.
fn fleet(srv: &Server, admin: &str, filter: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut after = String::new();
    loop {
        let url = format!("{}/v1/devices?limit=250{filter}{after}", srv.http);
        let (s, b) = curl("GET", &url, admin, "");
        assert_eq!(s, 200, "{b}");
        let v = json_of(&b);
        for d in v["devices"].as_array().expect("devices") {
            let id = d["device_id"].as_str().expect("id").to_owned();
            assert!(out.insert(id, d.clone()).is_none(), "a device listed twice");
        }
        match v["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => return out,
        }
    }
}

fn reading_status(srv: &Server, secret: &str) -> u16 {
    let body = r#"{"time":"2024-05-01T08:00:00Z","heart_rate":72}"#;
    curl("POST", &format!("{}/v1/readings", srv.http), secret, body).0
}

fn statuses(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().expect("status").to_owned())
        .collect()
}

#[test]
fn a_batch_with_bad_items_answers_each_and_keeps_every_good_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    for d in ["fleet-a", "fleet-b", "fleet-c", "fleet-d", "fleet-taken"] {
        note_id("device", d);
    }
    for p in ["pat-a", "pat-c", "pat-d", "pat-owner", "pat-thief"] {
        note_id("patient", p);
    }
    srv.register("fleet-taken", "pat-owner");
    let items = json!([
        {"device_id": "fleet-a", "patient_id": "pat-a"},
        {"device_id": "fleet-b", "patient_id": "pat\u{7}bell"},
        {"device_id": "fleet-c", "patient_id": "pat-c", "valid_from": "2024-01-01T00:00:00Z"},
        {"device_id": "fleet-a", "patient_id": "pat-a"},
        {"device_id": "fleet-taken", "patient_id": "pat-thief"},
        {"device_id": "fleet-d", "patient_id": "pat-d", "colour": "red"},
        {"device_id": "fleet-d", "patient_id": "pat-d", "valid_from": "yesterday"},
        {"device_id": "fleet-d", "patient_id": "pat-d"},
    ]);
    let (s, v) = batch(&srv, &items);
    assert_eq!(s, 201, "{v}");
    let r = v["results"].as_array().expect("results");
    let errors: Vec<&str> = r
        .iter()
        .map(|r| r["error"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        errors,
        [
            "",
            "invalid_item",
            "",
            "duplicate_device",
            "assigned_elsewhere",
            "invalid_item",
            "invalid_item",
            ""
        ],
        "{v}"
    );
    assert_eq!(
        (v["enrolled"].as_u64(), v["rejected"].as_u64()),
        (Some(3), Some(5))
    );
    assert!(
        !v.to_string().contains("pat-thief"),
        "no patient id in errors"
    );
    // None of the good ones is lost: each secret writes readings for its patient.
    for i in [0, 2, 7] {
        assert_eq!(r[i]["index"], i);
        let secret = r[i]["secret"].as_str().expect("secret");
        note_id("token", secret);
        assert_eq!(reading_status(&srv, secret), 202, "item {i}");
    }
    let all = fleet(&srv, srv.admin(), "");
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        ["fleet-a", "fleet-c", "fleet-d", "fleet-taken"]
    );
    assert_eq!(all["fleet-a"]["patient_id"], "pat-a");
    assert_eq!(all["fleet-taken"]["patient_id"], "pat-owner", "not moved");
    assert!(
        all["fleet-a"]["last_seen"].is_string(),
        "seen once it sent a reading"
    );
    let never = fleet(&srv, srv.admin(), "&never_seen=true");
    assert_eq!(never.keys().collect::<Vec<_>>(), ["fleet-taken"]);
    let mine = fleet(&srv, srv.admin(), "&patient=pat-c");
    assert_eq!(mine.keys().collect::<Vec<_>>(), ["fleet-c"]);
    // Moving a device is one call with its period; the old secret stops.
    let old = r[0]["secret"].as_str().expect("secret");
    let (s, v) = batch(
        &srv,
        &json!([{"device_id": "fleet-a", "patient_id": "pat-d", "reassign": true,
                 "valid_from": "2024-06-01T00:00:00Z", "valid_to": "2024-07-01T00:00:00Z"}]),
    );
    assert_eq!(
        (s, statuses(&v)),
        (201, vec!["reassigned".to_owned()]),
        "{v}"
    );
    assert_eq!(reading_status(&srv, old), 401);
    // A single object keeps today's answer.
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/devices", srv.http),
        srv.admin(),
        r#"{"device_id":"fleet-b","patient_id":"pat-c"}"#,
    );
    assert_eq!(s, 201, "{b}");
    assert!(json_of(&b)["secret"].is_string());
    assert_eq!(srv.stop(), 0);
}

#[test]
fn resending_a_batch_changes_nothing_and_says_so_per_item() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = Server::start(tmp.path(), &[]);
    let lines: Vec<String> = (0..20)
        .map(|i| {
            json!({"device_id": format!("re-{i}"), "patient_id": format!("rp-{i}")}).to_string()
        })
        .collect();
    note_id("device", "re-7");
    note_id("patient", "rp-7");
    let nd = lines.join("\n") + "\n";
    let (s, first) = post(
        &srv,
        srv.admin(),
        "/v1/devices",
        "application/x-ndjson",
        &nd,
    );
    assert_eq!(s, 201, "{first}");
    assert_eq!(statuses(&first), vec!["enrolled"; 20]);
    let log = srv.dir.join("registry.log");
    // Every credential's id and revocation (last uses move with every request).
    let tokens = |srv: &Server| -> Vec<(Value, Value)> {
        let b = curl("GET", &format!("{}/v1/tokens", srv.http), srv.admin(), "").1;
        let v = json_of(&b);
        let list = v["tokens"].as_array().expect("tokens");
        list.iter()
            .map(|t| (t["id"].clone(), t["revoked"].clone()))
            .collect()
    };
    let before = (std::fs::read(&log).expect("log"), tokens(&srv));
    let (s, again) = post(
        &srv,
        srv.admin(),
        "/v1/devices",
        "application/x-ndjson",
        &nd,
    );
    assert_eq!(s, 200, "{again}");
    assert_eq!(statuses(&again), vec!["unchanged"; 20]);
    assert!(
        !again.to_string().contains("cw_"),
        "a secret comes back only once"
    );
    assert_eq!(again["unchanged"], 20);
    let after = (std::fs::read(&log).expect("log"), tokens(&srv));
    assert_eq!(after.1, before.1, "no credential created or revoked");
    assert!(after.0.starts_with(&before.0), "the log was not rewritten");
    for r in first["results"].as_array().expect("results") {
        let secret = r["secret"].as_str().expect("secret");
        note_id("token", secret);
        assert_eq!(
            reading_status(&srv, secret),
            202,
            "first secrets still work"
        );
    }
    assert_eq!(srv.stop(), 0);
}

/// SIGKILL while batches are being enrolled: everything answered before the kill is there
/// after a restart, every device is whole (listed with its patient and exactly one live
/// credential), and re-sending all batches completes the fleet without a refusal.
#[test]
fn a_kill_mid_enrolment_leaves_the_registry_consistent() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut srv = Server::start(tmp.path(), &[]);
    let admin = srv.admin().to_owned();
    let batches: Vec<Value> = (0..8)
        .map(|b| {
            Value::Array(
                (0..1500)
                    .map(|i| json!({"device_id": format!("k{b}-{i}"), "patient_id": format!("kp{b}-{i}")}))
                    .collect(),
            )
        })
        .collect();
    note_id("device", "k0-0");
    note_id("patient", "kp0-0");
    let (tx, rx) = std::sync::mpsc::channel();
    let http = srv.http.clone();
    for b in batches.clone() {
        let (tx, http, admin) = (tx.clone(), http.clone(), admin.clone());
        std::thread::spawn(move || {
            let url = format!("{http}/v1/devices");
            let _ = tx.send(curl("POST", &url, &admin, &b.to_string()));
        });
    }
    drop(tx);
    let (s, first) = rx.recv().expect("one batch answered");
    assert_eq!(s, 201, "{first}");
    let pid = srv.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let _ = srv.child.wait();
    let mut answered = vec![json_of(&first)];
    while let Ok((s, b)) = rx.recv_timeout(Duration::from_secs(30)) {
        if s == 201 {
            answered.push(json_of(&b));
        }
    }
    drop(srv);
    let mut srv = Server::start(tmp.path(), &[]);
    srv.admin = Some(admin.clone());
    let all = fleet(&srv, &admin, "");
    let (_, toks) = curl("GET", &format!("{}/v1/tokens", srv.http), &admin, "");
    let mut live: BTreeMap<String, usize> = BTreeMap::new();
    for t in json_of(&toks)["tokens"].as_array().expect("tokens") {
        if t["role"] == "device" && t["revoked"].is_null() {
            *live
                .entry(t["subject"].as_str().expect("subject").to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(
        live.keys().collect::<BTreeSet<_>>(),
        all.keys().collect(),
        "device without credential or credential without device"
    );
    assert!(live.values().all(|n| *n == 1), "one live secret per device");
    for (id, d) in &all {
        let want = format!("kp{}", &id[1..]);
        assert_eq!(d["patient_id"], want.as_str(), "{id}");
    }
    for a in &answered {
        for r in a["results"].as_array().expect("results") {
            let id = r["device_id"].as_str().expect("id");
            assert!(all.contains_key(id), "{id} was answered, then lost");
        }
    }
    let secret = answered[0]["results"][0]["secret"]
        .as_str()
        .expect("secret");
    note_id("token", secret);
    assert_eq!(
        reading_status(&srv, secret),
        202,
        "an answered secret survives the kill"
    );
    let mut enrolled = 0;
    for b in &batches {
        let (s, v) = batch(&srv, b);
        assert!(s == 201 || s == 200, "{v}");
        assert_eq!(v["rejected"], 0, "{v}");
        enrolled += v["enrolled"].as_u64().expect("n");
        assert_eq!(
            v["enrolled"].as_u64().expect("n") + v["unchanged"].as_u64().expect("n"),
            1500
        );
    }
    assert_eq!(enrolled as usize, 8 * 1500 - all.len());
    assert_eq!(fleet(&srv, &admin, "").len(), 8 * 1500);
    assert_eq!(srv.stop(), 0);
}

/// Many parallel enrolments (single and batched) with unknown-token requests and device
/// readings mixed in: everything finishes (the old registry could deadlock here, issue #18),
/// the server stays healthy and every device is there.
#[test]
fn parallel_enrolments_and_unknown_tokens_all_finish() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Unknown tokens are the point here, not the failed-login limit.
    let config = tmp.path().join("carewatch.toml");
    std::fs::write(&config, "[auth]\nfailed_login_burst = 100000\n").expect("config");
    let srv = Server::start(tmp.path(), &["--config", config.to_str().expect("utf8")]);
    let (http, admin) = (srv.http.clone(), srv.admin().to_owned());
    let secret = srv.register("par-dev", "par-pat");
    let mut threads = Vec::new();
    for w in 0..6 {
        let (http, admin) = (http.clone(), admin.clone());
        threads.push(std::thread::spawn(move || {
            for i in 0..15 {
                let url = format!("{http}/v1/devices");
                let (s, b) = if i % 3 == 0 {
                    let items: Vec<Value> = (0..20)
                        .map(|j| json!({"device_id": format!("p{w}-{i}-{j}"), "patient_id": format!("q{w}-{i}-{j}")}))
                        .collect();
                    curl("POST", &url, &admin, &Value::Array(items).to_string())
                } else {
                    let one = json!({"device_id": format!("p{w}-{i}"), "patient_id": format!("q{w}-{i}")});
                    curl("POST", &url, &admin, &one.to_string())
                };
                assert_eq!(s, 201, "{b}");
            }
        }));
    }
    for k in 0..3 {
        let (http, secret) = (http.clone(), secret.clone());
        threads.push(std::thread::spawn(move || {
            for i in 0..40 {
                let bogus = format!("cw_{k}{i:063}");
                let (s, _) = curl("GET", &format!("{http}/v1/devices"), &bogus, "");
                assert_eq!(s, 401);
                let body = r#"{"time":"2024-05-01T08:00:00Z","heart_rate":70}"#;
                assert_eq!(
                    curl("POST", &format!("{http}/v1/readings"), &secret, body).0,
                    202
                );
            }
        }));
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ok = threads.into_iter().all(|t| t.join().is_ok());
        let _ = done_tx.send(ok);
    });
    let ok = done_rx
        .recv_timeout(Duration::from_secs(300))
        .expect("requests hung: registry deadlock?");
    assert!(ok, "a client thread failed");
    assert_eq!(curl("GET", &format!("{http}/healthz"), "", "").0, 200);
    assert_eq!(fleet(&srv, &admin, "").len(), 1 + 6 * (5 * 20 + 10));
    assert_eq!(srv.stop(), 0);
}

fn cli(args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .env("CAREWATCH_LOG", "info")
        .output()
        .expect("carewatch");
    save_output("devices-import", &out);
    out
}

fn records(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(json_of)
        .collect()
}

#[test]
fn devices_import_works_offline_and_against_a_server() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let data_s = data.to_str().expect("utf8");
    for d in ["imp-1", "imp-2", "imp-3", "imp-4"] {
        note_id("device", d);
    }
    for p in ["ipat-1", "ipat-2", "ipat-3", "ipat-4"] {
        note_id("patient", p);
    }
    let csv = tmp.path().join("fleet.csv");
    std::fs::write(&csv, "device_id,patient_id,valid_from\nimp-1,ipat-1,\nimp-2,ipat-2,2024-01-01T00:00:00Z\nimp-1,ipat-9,\n").expect("csv");
    // Offline on a fresh data directory.
    let out = cli(&[
        "devices",
        "import",
        csv.to_str().expect("utf8"),
        "--data-dir",
        data_s,
    ]);
    assert_eq!(out.status.code(), Some(1), "one record refused");
    let r = records(&out);
    let st: Vec<&str> = r
        .iter()
        .map(|r| r["status"].as_str().expect("status"))
        .collect();
    assert_eq!(st, ["enrolled", "enrolled", "rejected"]);
    assert_eq!(r[2]["error"], "duplicate_device");
    let offline_secret = r[0]["secret"].as_str().expect("secret").to_owned();
    note_id("token", &offline_secret);
    // Re-running it changes nothing.
    let again = cli(&[
        "devices",
        "import",
        csv.to_str().expect("utf8"),
        "--data-dir",
        data_s,
    ]);
    let st: Vec<String> = records(&again)
        .iter()
        .map(|r| r["status"].as_str().expect("s").to_owned())
        .collect();
    assert_eq!(st, ["unchanged", "unchanged", "rejected"]);
    // The server on that directory knows them; the admin token was printed by the import.
    let admin = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("admin token: ").map(str::to_owned))
        .expect("admin token printed on the fresh directory");
    note_id("token", &admin);
    let mut srv = Server::start(tmp.path(), &[]);
    srv.admin = Some(admin.clone());
    assert_eq!(reading_status(&srv, &offline_secret), 202);
    // Against the server, from NDJSON, in batches of one.
    let nd = tmp.path().join("more.ndjson");
    std::fs::write(&nd, "{\"device_id\":\"imp-3\",\"patient_id\":\"ipat-3\"}\n{\"device_id\":\"imp-2\",\"patient_id\":\"ipat-2\",\"valid_from\":\"2024-01-01T00:00:00Z\"}\n").expect("nd");
    let out = cli(&[
        "devices",
        "import",
        nd.to_str().expect("utf8"),
        "--batch",
        "1",
        "--server",
        &srv.http,
        "--token",
        &admin,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = records(&out);
    assert_eq!(
        (r[0]["status"].as_str(), r[1]["status"].as_str()),
        (Some("enrolled"), Some("unchanged"))
    );
    assert_eq!(
        (r[0]["record"].as_u64(), r[1]["record"].as_u64()),
        (Some(1), Some(2))
    );
    let secret = r[0]["secret"].as_str().expect("secret");
    note_id("token", secret);
    assert_eq!(reading_status(&srv, secret), 202);
    // Offline while the server runs: the server picks it up.
    std::fs::write(&csv, "device_id,patient_id\nimp-4,ipat-4\n").expect("csv");
    let out = cli(&[
        "devices",
        "import",
        csv.to_str().expect("utf8"),
        "--data-dir",
        data_s,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let secret = records(&out)[0]["secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    note_id("token", &secret);
    assert_eq!(
        reading_status(&srv, &secret),
        202,
        "the server sees the offline import"
    );
    assert_eq!(fleet(&srv, &admin, "").len(), 4);
    // A malformed file is refused whole, naming the line.
    std::fs::write(
        &nd,
        "{\"device_id\":\"imp-5\",\"patient_id\":\"x5\"}\nnot json\n",
    )
    .expect("nd");
    let out = cli(&[
        "devices",
        "import",
        nd.to_str().expect("utf8"),
        "--data-dir",
        data_s,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
    assert_eq!(fleet(&srv, &admin, "").len(), 4);
    assert_eq!(srv.stop(), 0);
}
