//! Real data nobody here wrote: a month of Fitbit heart rate (5 users, 791 k samples) and minute
//! steps replayed through the normal ingest path with an explicit zone, then SQL that finds every
//! run of ≥ 10 minutes with per-minute mean heart rate above 100 and 0 steps — exactly the 120
//! episodes of `fixtures/data/fitabase-fitbit/expected_hr_gt100_rest_10min_episodes.csv`.

mod common;

use std::process::Command;

use common::BIN;

/// `--register-devices` registers each Fitbit Id (the data set's five users,
/// fixtures/data/fitabase-fitbit/README.md) as a device of the patient of the same id: none may
/// appear in a log line at INFO or above (scripts/check_logs_phi.py).
fn note_fitbit_ids() {
    for id in [
        "2022484408",
        "2347167796",
        "4558609924",
        "6117666160",
        "7007744171",
    ] {
        common::note_id("device", id);
        common::note_id("patient", id);
    }
}

#[test]
fn fitbit_month_replayed_gives_the_120_resting_episodes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    let data = data.to_str().expect("utf8");
    let fitbit = carewatch_fixtures::data_dir("fitabase-fitbit");
    note_fitbit_ids();
    let hr = fitbit.join("heartrate_seconds_5users.csv.gz");
    // Zone-less local times are refused without an explicit zone.
    let small = fitbit.join("heartrate_seconds_2022484408_2016-04-13.csv");
    let out = Command::new(BIN)
        .args([
            "replay",
            "--data-dir",
            data,
            "--register-devices",
            "--csv-map",
            "device_id=Id,time=Time,heart_rate=Value",
        ])
        .arg(&small)
        .output()
        .expect("replay");
    common::save_output("replay", &out);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rejected zoneless_time 5332"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // With the zone chosen (the data's own wall clock, read as UTC so minutes compare 1:1).
    for (file, map) in [
        (hr, "device_id=Id,time=Time,heart_rate=Value"),
        (
            fitbit.join("minuteSteps_5users_narrow.csv.gz"),
            "device_id=Id,time=ActivityMinute,steps=Steps",
        ),
    ] {
        let out = Command::new(BIN)
            .args([
                "replay",
                "--data-dir",
                data,
                "--register-devices",
                "--assume-tz",
                "UTC",
                "--csv-map",
                map,
            ])
            .arg(&file)
            .output()
            .expect("replay");
        common::save_output("replay", &out);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(" 0 rejected"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let sql = std::fs::read_to_string(
        carewatch_fixtures::fixtures_dir().join("sql/hr_gt100_rest_10min_episodes.sql"),
    )
    .expect("sql");
    let out = Command::new(BIN)
        .args(["sql", "--data-dir", data, "--format", "csv", &sql])
        .output()
        .expect("sql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let mut want: Vec<String> =
        std::fs::read_to_string(fitbit.join("expected_hr_gt100_rest_10min_episodes.csv"))
            .expect("expected")
            .lines()
            .map(str::to_owned)
            .collect();
    got.sort();
    want.sort();
    assert_eq!(want.len(), 121, "120 episodes and a header");
    assert_eq!(got, want);

    // The shipped resting rule, parameterised as the data set's README defines an episode
    // (per-minute mean > 100 and 0 steps in each of >= 10 consecutive minutes; no hysteresis),
    // through `carewatch rules backtest`: the same 120 episodes, per user, minute for minute.
    let expect = |file: &str| -> Vec<String> {
        let text = std::fs::read_to_string(fitbit.join(file)).expect("expected");
        let mut v: Vec<String> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').take(4).collect::<Vec<_>>().join(","))
            .collect();
        v.sort();
        v
    };
    let resting = backtest(data, &["--param", "clear_minutes=0"]);
    assert_eq!(resting.len(), 120);
    assert_eq!(resting, expect("expected_hr_gt100_rest_10min_episodes.csv"));
    // Other parameters give the other answers the README lists.
    let any = backtest(
        data,
        &[
            "--param",
            "clear_minutes=0",
            "--param",
            "require_rest=false",
        ],
    );
    assert_eq!(any.len(), 246);
    assert_eq!(any, expect("expected_hr_gt100_10min_episodes.csv"));
    let over120 = backtest(
        data,
        &[
            "--param",
            "clear_minutes=0",
            "--param",
            "require_rest=false",
            "--param",
            "threshold=120",
        ],
    );
    assert_eq!(over120.len(), 33);
    let upto10 = backtest(
        data,
        &["--param", "clear_minutes=0", "--param", "max_steps=10"],
    );
    assert_eq!(upto10.len(), 148);
}

/// The same month sent to a running server (`carewatch replay --server`, as a phone's late sync
/// would arrive): the alerts its live engine raises are the episodes the backtest finds in the
/// same data, with the shipped parameters (hysteresis included).
#[test]
fn fitbit_month_live_alerts_are_the_backtest_episodes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = tmp.path().join("c.toml");
    std::fs::write(&cfg, "[alerts]\ninterval_secs = 0.5\n").expect("cfg");
    let srv = common::Server::start(
        tmp.path(),
        &[
            "--assume-tz",
            "UTC",
            "--config",
            cfg.to_str().expect("utf8"),
        ],
    );
    let fitbit = carewatch_fixtures::data_dir("fitabase-fitbit");
    note_fitbit_ids();
    let mut stored = 0u64;
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
            .args([
                "replay",
                "--server",
                &srv.http,
                "--token",
                srv.admin(),
                "--register-devices",
                "--csv-map",
                map,
            ])
            .arg(fitbit.join(file))
            .output()
            .expect("replay");
        common::save_output("replay", &out);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(" 0 rejected"), "{text}");
        stored += text
            .split_whitespace()
            .skip_while(|w| *w != "items,")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .expect("stored count");
    }
    common::wait_until(
        "everything stored",
        std::time::Duration::from_secs(60),
        || srv.stats()["rows_appended"].as_u64() == Some(stored),
    );
    let live = || -> Vec<String> {
        let (s, b) = common::curl(
            "GET",
            &format!("{}/v1/alerts?status=all&rule=hr_high_at_rest", srv.http),
            srv.admin(),
            "",
        );
        assert_eq!(s, 200);
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        let mut out: Vec<String> = v["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .map(|a| {
                let (start, end) = (
                    a["episode_start"].as_str().expect("s"),
                    a["episode_end"].as_str().expect("e"),
                );
                let t = |x: &str| {
                    chrono::DateTime::parse_from_rfc3339(x)
                        .expect("time")
                        .timestamp()
                };
                format!(
                    "{},{},{},{}",
                    a["patient_id"].as_str().expect("p"),
                    start.trim_end_matches('Z'),
                    end.trim_end_matches('Z'),
                    (t(end) - t(start)) / 60
                )
            })
            .collect();
        out.sort();
        out
    };
    // Let the engine finish: two more complete rule runs after the last reading was stored
    // (the first may have started before it), read from /metrics.
    let runs = || -> u64 {
        let (_, body) = common::curl("GET", &format!("{}/metrics", srv.http), "", "");
        body.lines()
            .find_map(|l| l.strip_prefix("carewatch_rule_runs_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("rule runs metric") as u64
    };
    let after = runs() + 2;
    common::wait_until(
        "the rules to catch up",
        std::time::Duration::from_secs(180),
        || runs() >= after,
    );
    // The shipped parameters, hysteresis included.
    let bt = backtest(srv.dir.to_str().expect("utf8"), &[]);
    assert!(bt.len() > 50, "{}", bt.len());
    // A run whose rule query timed out (a loaded machine) counts as a run and retries its
    // ranges at the next: give the live engine until it agrees, then compare what it has.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while live() != bt && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    assert_eq!(live(), bt, "live alerts and backtest episodes differ");
    assert_eq!(srv.stop(), 0);
}

/// `carewatch rules backtest` of the resting rule over the replayed month, as
/// `Id,start,end_exclusive,minutes` lines (sorted).
fn backtest(data: &str, params: &[&str]) -> Vec<String> {
    let out = Command::new(BIN)
        .args([
            "rules",
            "backtest",
            "--data-dir",
            data,
            "--from",
            "2016-04-01",
            "--to",
            "2016-06-01",
            "--rule",
            "hr_high_at_rest",
            "--format",
            "json",
        ])
        .args(params)
        .output()
        .expect("backtest");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut got: Vec<String> = v["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| {
            format!(
                "{},{},{},{}",
                a["patient_id"].as_str().expect("patient"),
                a["start"].as_str().expect("start").trim_end_matches('Z'),
                a["end"].as_str().expect("end").trim_end_matches('Z'),
                a["minutes"]
            )
        })
        .collect();
    got.sort();
    assert_eq!(v["rules"][0]["alerts"].as_u64(), Some(got.len() as u64));
    got
}
