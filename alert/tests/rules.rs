//! Golden scenarios per shipped rule (borderline, gap, late arrival, exercise…), evaluated by
//! the backtest and by live evaluation fed the same data minute by minute: both must give the
//! expected episodes. Also: restart in the middle of a pending episode fires once, a fired
//! alert does not fire again after a restart, escalation stops when acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use carewatch_alert::engine::{AlertEngine, Config};
use carewatch_alert::history::{Event, History, Status};
use carewatch_alert::rules::{self, Param, Rule};
use carewatch_query::{QueryEngine, QueryLimits};
use carewatch_store::registry::{Principal, Registry, Role};
use carewatch_store::{Row, Store};

mod support;

use support::{M, T0, reading};

/// Minute-by-minute plan for one patient: `(minutes, heart rate, steps per minute)`; heart rate
/// every 10 s (`None`: no heart rate, `Some(None)` steps: no step record).
fn plan(p: &str, start_min: i64, parts: &[(i64, Option<f64>, Option<f64>)]) -> Vec<(i64, Row)> {
    let mut out = Vec::new();
    let mut m = start_min;
    for &(n, hr, steps) in parts {
        for _ in 0..n {
            let t = T0 + m * M;
            if let Some(s) = steps {
                out.push((t, reading(p, "steps", s, t)));
            }
            if let Some(h) = hr {
                for k in 0..6 {
                    out.push((
                        t + k * 10_000_000,
                        reading(p, "heart_rate", h, t + k * 10_000_000),
                    ));
                }
            }
            m += 1;
        }
    }
    out
}

fn spot(p: &str, key: &str, at_min: i64, v: f64) -> Vec<(i64, Row)> {
    let t = T0 + at_min * M;
    vec![(t, reading(p, key, v, t))]
}

fn every(p: &str, key: &str, from_min: i64, n: i64, v: f64) -> Vec<(i64, Row)> {
    (0..n).flat_map(|i| spot(p, key, from_min + i, v)).collect()
}

/// The scenario for a rule: readings with the wall time they *arrive* (late data arrives after
/// later readings), and the episodes expected: `patient start_min..end_min`.
fn scenario(rule: &str) -> (Vec<(i64, Row)>, Vec<&'static str>) {
    let rest = |n| (n, Some(70.0), Some(0.0));
    let high = |n, bpm| (n, Some(bpm), Some(0.0));
    let mut d: Vec<(i64, Row)> = Vec::new();
    let want: Vec<&str>;
    match rule {
        "hr_high_at_rest" => {
            d.extend(plan("borderline", 0, &[rest(5), high(10, 101.0), rest(10)]));
            d.extend(plan("nine-min", 0, &[rest(5), high(9, 130.0), rest(10)]));
            d.extend(plan("at-100", 0, &[rest(5), high(15, 100.0), rest(10)]));
            d.extend(plan(
                "gap",
                0,
                &[
                    rest(5),
                    high(5, 120.0),
                    (1, None, Some(0.0)),
                    high(6, 120.0),
                    rest(10),
                ],
            ));
            d.extend(plan(
                "exercise",
                0,
                &[rest(5), (15, Some(140.0), Some(90.0)), rest(10)],
            ));
            d.extend(plan(
                "no-steps",
                0,
                &[rest(5), (15, Some(120.0), None), rest(10)],
            ));
            d.extend(plan(
                "dip",
                0,
                &[
                    rest(2),
                    high(12, 120.0),
                    high(2, 95.0),
                    high(12, 120.0),
                    rest(10),
                ],
            ));
            // A phone syncs 12 minutes at once, 20 minutes late.
            let late = plan("late", 0, &[rest(3), high(12, 125.0), rest(10)]);
            for (t, r) in late {
                let m = (t - T0) / M;
                let arrive = if (3..15).contains(&m) { T0 + 35 * M } else { t };
                d.push((arrive, r));
            }
            want = vec!["borderline 5..15", "dip 2..28", "late 3..15"];
        }
        "hr_low" => {
            d.extend(plan(
                "low",
                0,
                &[rest(3), (12, Some(38.0), Some(0.0)), rest(10)],
            ));
            d.extend(plan(
                "brief",
                0,
                &[rest(3), (9, Some(35.0), Some(0.0)), rest(10)],
            ));
            d.extend(plan(
                "at-40",
                0,
                &[rest(3), (12, Some(40.0), Some(0.0)), rest(10)],
            ));
            want = vec!["low 3..15"];
        }
        "spo2_low" => {
            d.extend(every("desat", "spo2", 0, 10, 97.0));
            d.extend(every("desat", "spo2", 10, 12, 86.0));
            d.extend(every("desat", "spo2", 22, 20, 97.0));
            d.extend(every("short", "spo2", 0, 10, 97.0));
            d.extend(every("short", "spo2", 10, 7, 85.0));
            d.extend(every("short", "spo2", 17, 20, 97.0));
            d.extend(every("at-90", "spo2", 0, 40, 90.0));
            want = vec!["desat 10..20"];
        }
        "fever" => {
            for (p, v) in [("fever", 38.6), ("warm", 37.9)] {
                d.extend(spot(p, "body_temperature", 0, 36.8));
                d.extend(spot(p, "body_temperature", 60, v));
                d.extend(spot(p, "body_temperature", 180, 36.9));
            }
            want = vec!["fever 60..61"];
        }
        "hypertensive" => {
            for (p, s, di) in [
                ("sys", 185.0, 95.0),
                ("dia", 150.0, 121.0),
                ("high-normal", 175.0, 115.0),
            ] {
                for (m, (a, b)) in [(0, (130.0, 80.0)), (30, (s, di)), (120, (128.0, 82.0))] {
                    d.extend(spot(p, "systolic", m, a));
                    d.extend(spot(p, "diastolic", m, b));
                }
            }
            want = vec!["dia 30..31", "sys 30..31"];
        }
        "news2" => {
            // 15-minute buckets: pulse 125 (2 points) with SpO2 91 (3) scores 5; with SpO2 95 (1), 3.
            d.extend(every("urgent", "heart_rate", 0, 15, 75.0));
            d.extend(every("urgent", "spo2", 0, 15, 97.0));
            d.extend(every("urgent", "heart_rate", 15, 15, 125.0));
            d.extend(every("urgent", "spo2", 15, 15, 91.0));
            d.extend(every("urgent", "heart_rate", 30, 45, 75.0));
            d.extend(every("urgent", "spo2", 30, 45, 97.0));
            d.extend(every("watch", "heart_rate", 0, 45, 125.0));
            d.extend(every("watch", "spo2", 0, 45, 95.0));
            // One parameter alone never triggers (min_parameters = 2).
            d.extend(every("one-vital", "spo2", 0, 45, 80.0));
            want = vec!["urgent 15..30"];
        }
        "device_silent" => {
            d.extend(every("silent", "heart_rate", 0, 10, 70.0));
            d.extend(every("silent", "heart_rate", 80, 10, 70.0));
            d.extend(every("pause", "heart_rate", 0, 10, 70.0));
            d.extend(every("pause", "heart_rate", 60, 30, 70.0));
            // The backtest measures silence up to the end of its range (minute 300).
            want = vec!["pause 90..300", "silent 10..80", "silent 90..300"];
        }
        other => panic!("no scenario for {other}"),
    }
    d.sort_by_key(|(t, _)| *t);
    (d, want)
}

struct World {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    store: Store,
    q: QueryEngine,
    registry: Arc<Registry>,
}

async fn world() -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let mut c = carewatch_store::Config::new(&dir);
    c.tick = Duration::from_secs(3600);
    let store = Store::open(c).await.expect("store");
    let (registry, _) = Registry::open(&dir).expect("registry");
    let registry = Arc::new(registry);
    let q = QueryEngine::new(
        store.clone(),
        registry.clone(),
        QueryLimits::default(),
        Arc::new(carewatch_query::audit::AuditLog::open(&dir, false).expect("audit")),
    )
    .expect("engine");
    // The rules relative to a patient's baseline read `baselines`, as in serve.
    let baselines =
        carewatch_alert::baselines::Baselines::open(&store, Some(&dir), Default::default())
            .expect("baselines");
    baselines.watch(&store);
    carewatch_alert::baselines::register(q.context(), &baselines).expect("baselines table");
    World {
        _dir: tmp,
        dir,
        store,
        q,
        registry,
    }
}

fn shipped(id: &str) -> Rule {
    rules::load(None)
        .expect("rules")
        .into_iter()
        .find(|r| r.id == id)
        .expect("rule")
}

fn fmt(p: &str, start: i64, end: i64) -> String {
    format!("{p} {}..{}", (start - T0) / M, (end - T0) / M)
}

fn minute_of(iso: &str) -> i64 {
    let t = chrono::DateTime::parse_from_rfc3339(iso)
        .expect("iso")
        .timestamp_micros();
    t
}

async fn backtest(w: &World, rule: &Rule) -> Vec<String> {
    let r = carewatch_alert::backtest::backtest(
        w.q.context(),
        std::slice::from_ref(rule),
        T0 - 60 * M,
        T0 + 300 * M,
        &|_, _| {},
    )
    .await
    .expect("backtest");
    let mut v: Vec<String> = r
        .alerts
        .iter()
        .map(|f| fmt(&f.patient_id, minute_of(&f.start), minute_of(&f.end)))
        .collect();
    v.sort();
    v
}

fn live_engine(w: &World, rule: &Rule, history: Arc<History>) -> AlertEngine {
    AlertEngine::new(
        Config {
            interval: Duration::from_secs(1),
            escalate_after: Duration::from_secs(15 * 60),
            max_escalations: 2,
            // The scenarios' minute bins all stay in memory (the live `vital_minutes`).
            bins_window: Some(Duration::from_secs(24 * 3600)),
            ..Config::default()
        },
        vec![rule.clone()],
        w.q.context().clone(),
        &w.store,
        w.registry.clone(),
        history,
    )
}

/// Feeds the scenario minute by minute (by arrival time) into the store and evaluates after
/// each minute with that minute as "now". Returns the fired alerts as episodes.
async fn live(w: &World, rule: &Rule, data: &[(i64, Row)]) -> (AlertEngine, Vec<String>) {
    let history = Arc::new(History::open(&w.dir, false).expect("history"));
    let engine = live_engine(w, rule, history.clone());
    let mut by_minute: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
    for (t, r) in data {
        by_minute
            .entry((t - T0).div_euclid(M))
            .or_default()
            .push(r.clone());
    }
    let last = by_minute.keys().last().copied().unwrap_or(0) + 1;
    for m in by_minute.keys().next().copied().unwrap_or(0)..=last + 30 {
        if let Some(rows) = by_minute.remove(&m) {
            w.store.append(rows, Vec::new()).await.expect("append");
        }
        engine.evaluate(T0 + (m + 1) * M).await.expect("evaluate");
    }
    let admin = Principal {
        id: "t".into(),
        role: Role::Admin,
        subject: None,
        person: None,
    };
    let mut v: Vec<String> = engine
        .current(&admin)
        .iter()
        .map(|a| fmt(&a.patient_id, a.episode_start_us, a.episode_end_us))
        .collect();
    v.sort();
    (engine, v)
}

async fn golden(rule_id: &str) {
    let rule = shipped(rule_id);
    let (data, want) = scenario(rule_id);
    let w = world().await;
    let (engine, live) = live(&w, &rule, &data).await;
    assert!(
        engine.bins_size().1 > 0,
        "live evaluation read the in-memory bins"
    );
    let bt = backtest(&w, &rule).await;
    let want: Vec<String> = want.into_iter().map(str::to_owned).collect();
    assert_eq!(bt, want, "backtest of {rule_id}");
    if rule.absence {
        // Live silence is measured against the clock, which the test advanced past the data:
        // the same gaps plus the silence after the last reading.
        let closed: Vec<String> = want
            .iter()
            .filter(|w| !w.ends_with("..300"))
            .cloned()
            .collect();
        assert_eq!(live, closed, "live evaluation of {rule_id}");
    } else {
        assert_eq!(live, want, "live evaluation of {rule_id}");
    }
    // One episode, one alert: each fired exactly once, and every one resolved.
    let rows = engine.history().since(0);
    let fired = rows.iter().filter(|t| t.event == Event::Firing).count();
    assert_eq!(fired, live.len(), "{rule_id}: {rows:#?}");
    if !rule.absence {
        let resolved = rows.iter().filter(|t| t.event == Event::Resolved).count();
        assert_eq!(resolved, live.len(), "{rule_id}: every episode resolved");
    }
}

#[tokio::test]
async fn golden_hr_high_at_rest() {
    golden("hr_high_at_rest").await;
}
#[tokio::test]
async fn golden_hr_low() {
    golden("hr_low").await;
}
#[tokio::test]
async fn golden_spo2_low() {
    golden("spo2_low").await;
}
#[tokio::test]
async fn golden_fever() {
    golden("fever").await;
}
#[tokio::test]
async fn golden_hypertensive() {
    golden("hypertensive").await;
}
#[tokio::test]
async fn golden_news2() {
    golden("news2").await;
}
#[tokio::test]
async fn golden_device_silent() {
    golden("device_silent").await;
}

#[tokio::test]
async fn parameters_and_per_patient_overrides_change_the_answer() {
    let w = world().await;
    let (data, _) = scenario("hr_high_at_rest");
    w.store
        .append(data.into_iter().map(|(_, r)| r).collect(), Vec::new())
        .await
        .expect("append");
    let mut r = shipped("hr_high_at_rest");
    r.set_param("require_rest", Param::Bool(false)).expect("p");
    let got = backtest(&w, &r).await;
    assert!(got.contains(&"exercise 5..20".to_owned()), "{got:?}");
    assert!(got.contains(&"no-steps 5..20".to_owned()), "{got:?}");
    let mut r = shipped("hr_high_at_rest");
    r.overrides.insert(
        "borderline".into(),
        [("threshold".to_owned(), Param::Int(110))].into(),
    );
    let got = backtest(&w, &r).await;
    assert!(!got.iter().any(|s| s.starts_with("borderline")), "{got:?}");
    r.set_param("for_minutes", Param::Int(12)).expect("p");
    assert_eq!(backtest(&w, &r).await, vec!["dip 2..28", "late 3..15"]);
}

#[tokio::test]
async fn restart_mid_pending_fires_once_and_fired_alerts_do_not_refire() {
    let w = world().await;
    let rule = shipped("hr_high_at_rest");
    let data = plan(
        "p",
        0,
        &[
            (2, Some(70.0), Some(0.0)),
            (12, Some(120.0), Some(0.0)),
            (10, Some(70.0), Some(0.0)),
        ],
    );
    let mut by_minute: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
    for (t, r) in data {
        by_minute.entry((t - T0) / M).or_default().push(r);
    }
    let history = Arc::new(History::open(&w.dir, false).expect("history"));
    let mut engine = live_engine(&w, &rule, history);
    let admin = Principal {
        id: "t".into(),
        role: Role::Admin,
        subject: None,
        person: None,
    };
    for (m, rows) in by_minute {
        w.store.append(rows, Vec::new()).await.expect("append");
        if m == 8 {
            // 6 minutes into the episode: pending, not firing.
            engine.evaluate(T0 + 9 * M).await.expect("eval");
            assert_eq!(engine.pending(&admin).len(), 1);
            assert!(engine.current(&admin).is_empty());
            // Restart: a new engine over the same history and store.
            drop(engine);
            let history = Arc::new(History::open(&w.dir, false).expect("history"));
            engine = live_engine(&w, &rule, history);
        }
        engine.evaluate(T0 + (m + 1) * M).await.expect("eval");
    }
    let fired: Vec<_> = engine
        .history()
        .since(0)
        .iter()
        .filter(|t| t.event == Event::Firing)
        .map(|t| fmt(&t.patient_id, t.episode_start_us, t.episode_end_us))
        .collect();
    assert_eq!(fired.len(), 1, "{fired:?}");
    // Another restart after it fired and resolved: nothing new.
    drop(engine);
    let history = Arc::new(History::open(&w.dir, false).expect("history"));
    let engine = live_engine(&w, &rule, history);
    engine.evaluate(T0 + 40 * M).await.expect("eval");
    let rows = engine.history().since(0);
    assert_eq!(rows.iter().filter(|t| t.event == Event::Firing).count(), 1);
    let a = engine.current(&admin);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].status, Status::Resolved);
    assert_eq!(
        fmt("p", a[0].episode_start_us, a[0].episode_end_us),
        "p 2..14"
    );
}

#[tokio::test]
async fn unacknowledged_alerts_escalate_until_acknowledged() {
    let w = world().await;
    let rule = shipped("fever");
    w.registry.set_care_team("p", "north").expect("team");
    let history = Arc::new(History::open(&w.dir, false).expect("history"));
    let engine = live_engine(&w, &rule, history);
    w.store
        .append(
            spot("p", "body_temperature", 0, 39.0)
                .into_iter()
                .map(|(_, r)| r)
                .collect(),
            Vec::new(),
        )
        .await
        .expect("append");
    let now = T0 + M;
    engine.evaluate(now).await.expect("eval");
    let esc = 15 * M;
    engine.evaluate(now + esc).await.expect("eval");
    let rows = engine.history().since(0);
    let last = rows.last().expect("rows");
    assert_eq!((last.event, last.escalation_level), (Event::Escalated, 1));
    // Another team's care manager can neither see nor acknowledge it.
    let other = Principal {
        id: "cm-south".into(),
        role: Role::CareManager,
        subject: Some("south".into()),
        person: None,
    };
    assert!(engine.current(&other).is_empty());
    assert!(engine.acknowledge(&last.alert_id, &other).is_err());
    let mine = Principal {
        id: "cm-north".into(),
        role: Role::CareManager,
        subject: Some("north".into()),
        person: None,
    };
    let a = engine.acknowledge(&last.alert_id, &mine).expect("ack");
    assert_eq!(a.status, Status::Acknowledged);
    assert_eq!(a.acknowledged_by.as_deref(), Some("cm-north"));
    let before = engine.history().len();
    engine.evaluate(now + 3 * esc).await.expect("eval");
    assert_eq!(
        engine.history().len(),
        before,
        "no escalation after acknowledgement"
    );
    // A normal reading more than clear_minutes later resolves it.
    w.store
        .append(
            spot("p", "body_temperature", 90, 36.9)
                .into_iter()
                .map(|(_, r)| r)
                .collect(),
            Vec::new(),
        )
        .await
        .expect("append");
    engine.evaluate(now + 4 * esc).await.expect("eval");
    let a = engine.current(&mine);
    assert_eq!(a[0].status, Status::Resolved);
}

#[tokio::test]
async fn a_bad_rule_fails_planning_with_its_file_and_line() {
    let w = world().await;
    let text = "title = \"x\"\nseverity = \"high\"\nmessage = \"m\"\nsql = \"\"\"\nSELECT patient_id, effective_time AS t, value > 1 AS hit, value FROM observatons WHERE {scope}\n\"\"\"\n";
    let r = Rule::parse("rules/bad.toml", text).expect("parses");
    let e = rules::check(w.q.context(), &[r])
        .await
        .expect_err("bad table");
    assert_eq!((e.file.as_str(), e.line), ("rules/bad.toml", 4), "{e}");
    assert!(e.message.contains("observatons"), "{e}");
    let text = text
        .replace("value > 1 AS hit", "value AS hit")
        .replace("observatons", "observations");
    let r = Rule::parse("rules/bad.toml", &text).expect("parses");
    let e = rules::check(w.q.context(), &[r])
        .await
        .expect_err("bad type");
    assert!(e.message.contains("hit"), "{e}");
    // The shipped rules all plan.
    rules::check(w.q.context(), &rules::load(None).expect("rules"))
        .await
        .expect("shipped rules plan");
}
