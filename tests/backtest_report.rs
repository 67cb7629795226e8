//! The alarm-burden report and per-patient baselines on real data nobody here wrote: the Fitbit
//! month (5 users' heart rate and minute steps) replayed, then `carewatch rules backtest
//! --report … --format csv` over every shipped rule. Its page renders in Chromium (screenshot in
//! the test artifacts), loads nothing from elsewhere, and every number it shows equals DuckDB SQL
//! over the same backtest's CSV (and carewatch SQL over the same observations for the
//! patient-days); the sweep's cell for (100/min, 10 min, 0 steps) is the data set's 120
//! published episodes. The per-patient baselines are computed and shown in the `baselines` table
//! and at `GET /v1/patients/{id}/baselines`.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use common::BIN;

const USERS: [&str; 5] = [
    "2022484408",
    "2347167796",
    "4558609924",
    "6117666160",
    "7007744171",
];

/// Replays the month into `data`; returns the admin token the first replay printed.
fn replay_month(data: &str) -> String {
    for id in USERS {
        common::note_id("device", id);
        common::note_id("patient", id);
    }
    let fitbit = carewatch_fixtures::data_dir("fitabase-fitbit");
    let mut admin = None;
    for (file, map) in [
        (
            "heartrate_seconds_5users.csv.gz",
            "device_id=Id,time=Time,heart_rate=Value",
        ),
        (
            "minuteSteps_5users_narrow.csv.gz",
            "device_id=Id,time=ActivityMinute,steps=Steps",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["replay", "--data-dir", data, "--register-devices"])
            .args(["--assume-tz", "UTC", "--csv-map", map])
            .arg(fitbit.join(file))
            .output()
            .expect("replay");
        common::save_output("replay", &out);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{text}");
        assert!(text.contains(" 0 rejected"), "{text}");
        if let Some(t) = text.lines().find_map(|l| l.strip_prefix("admin token: ")) {
            common::note_id("token", t);
            admin = Some(t.to_owned());
        }
    }
    admin.expect("the first replay creates the registry and prints the admin token")
}

fn sql(data: &str, query: &str) -> String {
    let out = Command::new(BIN)
        .args(["sql", "--data-dir", data, "--format", "csv", query])
        .output()
        .expect("sql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// DuckDB over the backtest's CSV: `key,value` lines named like the page's `data-metric`s.
fn duckdb_metrics(csv: &std::path::Path, patient_days: f64) -> BTreeMap<String, String> {
    let script = r#"
import sys, duckdb
con = duckdb.connect()
con.execute("CREATE TABLE a AS SELECT * FROM read_csv(?, header=true, all_varchar=true)", [sys.argv[1]])
pd = float(sys.argv[2])
out = {}
out["alerts_total"] = con.execute("SELECT count(*) FROM a").fetchone()[0]
for rule, n, p in con.execute("SELECT rule, count(*), count(DISTINCT patient_id) FROM a GROUP BY 1").fetchall():
    out[f"rule:{rule}:alerts"] = n
    out[f"rule:{rule}:patients"] = p
    out[f"rule:{rule}:per_patient_day"] = f"{n / pd:.3f}"
for p, n in con.execute("SELECT patient_id, count(*) FROM a GROUP BY 1").fetchall():
    out[f"patient:{p}:alerts"] = n
# Five patients with data: the top tenth is the one with most alerts.
top, total = con.execute("SELECT max(n), sum(n) FROM (SELECT count(*) AS n FROM a GROUP BY patient_id)").fetchone()
out["top_tenth_share"] = f"{top / total * 100:.1f}"
for rule, h, n in con.execute("SELECT rule, substr(start, 12, 2), count(*) FROM a GROUP BY ALL").fetchall():
    out[f"hour:{rule}:{h}"] = n
for h, n in con.execute("SELECT substr(start, 12, 2), count(*) FROM a GROUP BY 1").fetchall():
    out[f"hour:all:{h}"] = n
for k, v in sorted(out.items()):
    print(f"{k},{v}")
"#;
    let out = Command::new(common::python())
        .args(["-c", script])
        .arg(csv)
        .arg(patient_days.to_string())
        .output()
        .expect("python with duckdb (scripts/setup-test-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(','))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Renders the page in Chromium: its `data-metric`s, and the screenshot path.
fn render(report: &std::path::Path) -> serde_json::Value {
    let artifacts = carewatch_fixtures::repo_dir().join("target/test-artifacts");
    let shot = artifacts.join("alarm-burden-report.png");
    let script = carewatch_fixtures::repo_dir().join("tests/report/render.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(report)
        .arg(&shot)
        .stderr(Stdio::piped())
        .output()
        .expect("node (scripts/setup-test-deps.sh installs playwright-core)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shot.exists(), "screenshot");
    serde_json::from_str(stdout.trim()).expect("json")
}

#[test]
fn fitbit_month_report_renders_and_matches_sql_and_the_published_episodes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data_path = tmp.path().join("data");
    let data = data_path.to_str().expect("utf8");
    let admin = replay_month(data);
    let report = tmp.path().join("report.html");
    let out = Command::new(BIN)
        .args(["rules", "backtest", "--data-dir", data])
        .args(["--from", "2016-04-01", "--to", "2016-06-01"])
        .args(["--param", "clear_minutes=0", "--format", "csv", "--report"])
        .arg(&report)
        .output()
        .expect("backtest");
    common::save_output("backtest", &out);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = tmp.path().join("alerts.csv");
    std::fs::write(&csv, &out.stdout).expect("csv");
    let page = std::fs::read_to_string(&report).expect("report");
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("<script"));

    let shown = render(&report);
    assert_eq!(shown["elsewhere"], serde_json::json!([]), "self-contained");
    assert!(shown["charts"].as_u64() >= Some(4), "{shown}");
    let m = &shown["metrics"];
    let metric = |k: &str| -> String {
        m[k].as_str()
            .unwrap_or_else(|| panic!("no {k} on the page"))
            .to_owned()
    };

    // The sweep's cell for the published definition: 120 episodes, all of them the reference.
    let cell = "sweep:threshold=100:for_minutes=10";
    assert_eq!(metric(&format!("{cell}:alerts")), "120");
    assert_eq!(metric(&format!("{cell}:caught")), "120");
    assert_eq!(metric("sweep:reference"), "120");
    // A higher threshold or a longer duration never raises more alerts.
    let alerts = |t: i64, f: i64| -> u64 {
        metric(&format!("sweep:threshold={t}:for_minutes={f}:alerts"))
            .parse()
            .expect("n")
    };
    for (t, f) in [(90, 5), (100, 5), (110, 10), (120, 15)] {
        assert!(alerts(t + 10, f) <= alerts(t, f), "threshold {t}");
        assert!(alerts(t, f + 5) <= alerts(t, f), "duration {f}");
    }

    // Patient-days: (patient, UTC day) pairs with data, by carewatch SQL over the observations.
    let pd = sql(
        data,
        "SELECT count(*) AS n FROM (SELECT DISTINCT patient_id, date_trunc('day', effective_time) \
         FROM observations WHERE effective_time >= '2016-04-01T00:00:00Z' \
         AND effective_time < '2016-06-01T00:00:00Z')",
    );
    let pd: f64 = pd.lines().nth(1).expect("n").trim().parse().expect("n");
    assert_eq!(metric("patient_days"), format!("{pd}"));
    // Every number the page shows about alerts equals DuckDB SQL over the same CSV.
    let want = duckdb_metrics(&csv, pd);
    assert!(want["alerts_total"].parse::<u64>().expect("n") >= 120);
    for (k, v) in &want {
        assert_eq!(&metric(k), v, "{k}");
    }
    // …and nothing else on the page counts alerts that SQL did not (zeros aside).
    for (k, v) in m.as_object().expect("metrics") {
        let counted = k.starts_with("rule:") || k.starts_with("patient:") || k.starts_with("hour:");
        if counted && !k.ends_with(":per_patient_day") && v != "0" {
            assert!(want.contains_key(k), "{k} = {v} is not in the SQL answer");
        }
    }

    baselines_are_shown(tmp.path(), data, &admin);
}

/// The per-patient baselines of the month: in the `baselines` table offline, and over HTTP.
fn baselines_are_shown(dir: &std::path::Path, data: &str, admin: &str) {
    let rows = sql(
        data,
        "SELECT patient_id, count(*) AS days, min(baseline) AS lo, max(baseline) AS hi \
         FROM baselines WHERE code = '8867-4' AND baseline IS NOT NULL GROUP BY 1 ORDER BY 1",
    );
    let lines: Vec<&str> = rows.lines().skip(1).collect();
    assert_eq!(
        lines.len(),
        5,
        "every user has a learned resting heart rate: {rows}"
    );
    for l in &lines {
        let f: Vec<&str> = l.split(',').collect();
        let (lo, hi): (f64, f64) = (f[2].parse().expect("lo"), f[3].parse().expect("hi"));
        assert!(
            (40.0..=100.0).contains(&lo) && (40.0..=100.0).contains(&hi),
            "{l}"
        );
        assert!(f[1].parse::<u32>().expect("days") >= 20, "{l}");
    }
    let srv = common::Server::start(dir, &["--assume-tz", "UTC"]);
    let (s, b) = common::curl(
        "GET",
        &format!(
            "{}/v1/patients/{}/baselines?day=2016-05-01",
            srv.http, USERS[0]
        ),
        admin,
        "",
    );
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    let hr = v["baselines"]
        .as_array()
        .expect("baselines")
        .iter()
        .find(|x| x["vital"] == "heart_rate")
        .expect("heart rate")
        .clone();
    assert_eq!(hr["source"], "learned", "{v}");
    assert!(hr["rest_minutes"].as_u64() > Some(60), "{v}");
    // A care manager of another team does not see the patient; an override is kept and used.
    let (s, _) = common::curl(
        "PUT",
        &format!("{}/v1/patients/{}/baselines", srv.http, USERS[0]),
        admin,
        r#"{"heart_rate": 301}"#,
    );
    assert_eq!(s, 400, "outside the plausible range");
    let (s, b) = common::curl(
        "PUT",
        &format!("{}/v1/patients/{}/baselines", srv.http, USERS[0]),
        admin,
        r#"{"heart_rate": 58}"#,
    );
    assert_eq!(s, 200, "{b}");
    let v: serde_json::Value = serde_json::from_str(&b).expect("json");
    assert!(
        v["baselines"]
            .as_array()
            .expect("b")
            .iter()
            .any(|x| x["vital"] == "heart_rate"
                && x["baseline"] == 58.0
                && x["source"] == "override"),
        "{v}"
    );
    assert_eq!(srv.stop(), 0);
}
