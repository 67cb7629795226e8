//! Golden scenarios for the alert levels and burden controls (issue #16): snooze break-through,
//! un-snooze, re-alert gap, level repeat, escalation chain with an on-call override, quiet
//! periods, the expected flag. Each runs live — the engine over a store fed minute by minute,
//! people acting through `act_at` — and as a backtest replay of the same history with the same
//! actions scripted; both must write the same transitions, and those must be the expected ones.

use std::sync::Arc;
use std::time::Duration;

use carewatch_alert::backtest::{Options, Scripted, backtest_with};
use carewatch_alert::chain::ChainConfig;
use carewatch_alert::engine::{Action, AlertEngine, Config};
use carewatch_alert::history::{Event, History, Transition};
use carewatch_alert::rules::{Level, Rule};
use carewatch_store::Row;
use carewatch_store::registry::{Principal, Role};

mod support;

use support::{M, T0, temperature};

/// The shipped fever rule (threshold 38 °C, resolved by a normal reading more than
/// `clear_minutes` after the last high one) with `extra` appended to its file.
fn fever(extra: &str) -> Rule {
    let text = include_str!("../rules/fever.toml");
    Rule::parse("fever.toml", &format!("{text}\n{extra}")).expect("rule")
}

/// A scenario: rules, settings, care teams, temperatures `(patient, minute, °C)`, people's
/// actions `(minute, patient, action)` and how many minutes to run.
struct Case {
    rule: Rule,
    config: Config,
    teams: Vec<(&'static str, &'static str)>,
    temps: Vec<(&'static str, i64, f64)>,
    acts: Vec<(i64, &'static str, Action)>,
    minutes: i64,
}

fn quiet_config() -> Config {
    Config {
        max_escalations: 0,
        ..Config::default()
    }
}

fn who() -> Principal {
    Principal {
        id: "nurse-1".into(),
        role: Role::Admin,
        subject: None,
        person: None,
    }
}

/// Live: each minute's readings appended, then an evaluation at the minute's end, then the
/// actions at that time.
async fn live(c: &Case, w: &support::Base) -> Vec<Transition> {
    let history = Arc::new(History::open(&w.dir, false).expect("history"));
    let engine = AlertEngine::new(
        c.config.clone(),
        vec![c.rule.clone()],
        w.q.context().clone(),
        &w.store,
        w.registry.clone(),
        history,
    );
    for m in 0..c.minutes {
        let rows: Vec<Row> = c
            .temps
            .iter()
            .filter(|(_, at, _)| *at == m)
            .map(|(p, at, v)| temperature(p, *v, T0 + at * M))
            .collect();
        if !rows.is_empty() {
            w.store.append(rows, Vec::new()).await.expect("append");
        }
        let now = T0 + (m + 1) * M;
        engine.evaluate(now).await.expect("evaluate");
        for (_, p, action) in c.acts.iter().filter(|(at, _, _)| *at == m + 1) {
            let id = open_alert(&engine, p);
            engine.act_at(&id, &who(), action, now).expect("act");
        }
    }
    let rows = engine.history().since(0);
    rows.iter().map(|t| (**t).clone()).collect()
}

fn open_alert(engine: &AlertEngine, p: &str) -> String {
    let admin = who();
    let mut open: Vec<_> = engine
        .current(&admin)
        .into_iter()
        .filter(|a| a.patient_id == p && a.status != carewatch_alert::history::Status::Resolved)
        .collect();
    open.sort_by_key(|a| a.episode_start_us);
    open.pop().expect("an open alert").alert_id
}

/// The backtest's replay of the same history, the actions scripted.
async fn replay(c: &Case, w: &support::Base) -> carewatch_alert::backtest::Report {
    let registry = w.registry.clone();
    let teams = move |p: &str| registry.care_team(p);
    let opts = Options {
        config: c.config.clone(),
        teams: Some(&teams),
        script: c
            .acts
            .iter()
            .map(|(at, p, action)| Scripted {
                at_us: T0 + at * M,
                rule: c.rule.id.clone(),
                patient_id: (*p).to_owned(),
                actor: "nurse-1".into(),
                action: action.clone(),
            })
            .collect(),
    };
    backtest_with(
        w.q.context(),
        std::slice::from_ref(&c.rule),
        (T0, T0 + c.minutes * M),
        &opts,
        &|_, _| {},
    )
    .await
    .expect("backtest")
}

/// `(minute, patient, event, held, reason)` per transition (pending records dated by their
/// episode's start).
type Line = (i64, String, &'static str, Option<String>, Option<String>);

fn lines(ts: &[Transition]) -> Vec<Line> {
    ts.iter()
        .map(|t| {
            (
                (t.at_us - T0) / M,
                t.patient_id.clone(),
                t.event.as_str(),
                t.held.clone(),
                t.reason.clone(),
            )
        })
        .collect()
}

/// Runs `c` live and as a replay: the same transitions both ways. Returns them and the report.
async fn golden(c: &Case) -> (Vec<Transition>, carewatch_alert::backtest::Report) {
    let w = support::base().await;
    for (p, team) in &c.teams {
        w.registry.set_care_team(p, team).expect("team");
    }
    let live = live(c, &w).await;
    let report = replay(c, &w).await;
    assert_eq!(
        lines(&live),
        lines(&report.transitions),
        "live (left) and backtest replay (right) differ"
    );
    assert_eq!(live, report.transitions, "every field alike");
    (live, report)
}

fn of(ts: &[Transition], p: &str) -> Vec<(i64, &'static str, Option<String>)> {
    ts.iter()
        .filter(|t| t.patient_id == p)
        .map(|t| ((t.at_us - T0) / M, t.event.as_str(), t.reason.clone()))
        .collect()
}

fn r(s: &str) -> Option<String> {
    Some(s.to_owned())
}

#[tokio::test]
async fn snooze_break_through_and_un_snooze() {
    let c = Case {
        rule: fever(""),
        config: quiet_config(),
        teams: vec![("p", "north")],
        temps: vec![("p", 0, 38.6), ("p", 5, 39.5), ("p", 100, 36.8)],
        acts: vec![
            (2, "p", Action::Snooze(60)),
            (8, "p", Action::Snooze(20)),
            (30, "p", Action::Acknowledge),
        ],
        minutes: 110,
    };
    let (ts, _) = golden(&c).await;
    assert_eq!(
        of(&ts, "p"),
        vec![
            (0, "pending", None),
            (1, "firing", None),
            (2, "snoozed", None),
            (6, "unsnoozed", r("worse_reading")),
            (8, "snoozed", None),
            (28, "unsnoozed", r("expired")),
            (30, "acknowledged", None),
            (101, "resolved", None),
        ]
    );
}

#[tokio::test]
async fn a_new_episode_inside_the_realert_gap_is_held_then_released_or_never_told() {
    let c = Case {
        rule: fever("[overrides.p]\nrealert_gap_minutes = 120\nclear_minutes = 5\n"),
        config: quiet_config(),
        teams: vec![],
        temps: vec![
            ("p", 0, 38.6),
            ("p", 10, 36.8),
            // Inside the gap and over inside it: recorded, never told.
            ("p", 30, 38.5),
            ("p", 40, 36.8),
            // Inside the gap (counted from the last episode's end, minute 31) and still on
            // when it ends at minute 151: told then.
            ("p", 60, 38.7),
            ("p", 100, 38.7),
            ("p", 140, 38.7),
            ("p", 170, 36.8),
        ],
        acts: vec![],
        minutes: 180,
    };
    let (ts, report) = golden(&c).await;
    let until = |t: &Transition| t.held_until_us.map(|u| (u - T0) / M);
    let firing: Vec<(i64, Option<String>, Option<i64>)> = ts
        .iter()
        .filter(|t| t.event == Event::Firing)
        .map(|t| ((t.at_us - T0) / M, t.held.clone(), until(t)))
        .collect();
    assert_eq!(
        firing,
        vec![
            (1, None, None),
            (31, r("realert_gap"), Some(121)),
            (61, r("realert_gap"), Some(151)),
        ]
    );
    assert_eq!(
        of(&ts, "p")
            .into_iter()
            .filter(|e| !matches!(e.1, "pending" | "firing"))
            .collect::<Vec<_>>(),
        vec![
            (11, "resolved", None),
            (41, "resolved", None),
            (151, "released", r("realert_gap")),
            (171, "resolved", None),
        ]
    );
    let l = &report.lifecycle[0];
    assert_eq!(
        (l.raised, l.told, l.suppressed_realert_gap),
        (3, 2, 1),
        "{l:?}"
    );
}

#[tokio::test]
async fn an_unanswered_alert_repeats_at_its_levels_interval_until_acknowledged() {
    let c = Case {
        rule: fever("[overrides.urgent]\nlevel = \"urgent\"\n[overrides.info]\nlevel = \"info\"\n"),
        config: quiet_config(),
        teams: vec![],
        temps: vec![
            ("urgent", 0, 38.6),
            ("warning", 0, 38.6),
            ("info", 0, 38.6),
            ("urgent", 100, 36.8),
        ],
        acts: vec![(40, "urgent", Action::Acknowledge)],
        minutes: 130,
    };
    let (ts, report) = golden(&c).await;
    let level = |p: &str| ts.iter().find(|t| t.patient_id == p).expect("p").level;
    assert_eq!(
        (level("urgent"), level("warning"), level("info")),
        (Level::Urgent, Level::Warning, Level::Info)
    );
    let repeats = |p: &str| -> Vec<i64> {
        of(&ts, p)
            .into_iter()
            .filter(|e| e.1 == "repeated")
            .map(|e| e.0)
            .collect()
    };
    // Urgent every 15 min until acknowledged at 40; warning every 60 min; info never.
    assert_eq!(repeats("urgent"), vec![16, 31]);
    assert_eq!(repeats("warning"), vec![61, 121]);
    assert_eq!(repeats("info"), Vec::<i64>::new());
    assert_eq!(report.lifecycle[0].repeated, 4);
}

const CHAIN: &str = r#"
    steps = [
      { after_minutes = 10, name = "backup", url = "http://backup/hook" },
      { after_minutes = 15, oncall = true },
    ]
    oncall = [
      { days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], from = "00:00", to = "12:00", person = "dr-early", url = "http://early/hook" },
      { days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], from = "12:00", to = "00:00", person = "dr-late", url = "http://late/hook" },
    ]
    overrides = [
      { from = "2026-01-05T00:20:00Z", to = "2026-01-05T00:40:00Z", person = "dr-cover", url = "http://cover/hook" },
    ]
"#;

#[tokio::test]
async fn the_escalation_chain_reaches_the_on_call_override() {
    let chain = toml::from_str::<ChainConfig>(CHAIN)
        .expect("toml")
        .check()
        .expect("chain");
    let c = Case {
        rule: fever(""),
        config: Config {
            chains: Arc::new([("north".to_owned(), chain)].into()),
            ..Config::default()
        },
        teams: vec![("p", "north")],
        temps: vec![("p", 0, 39.4)],
        acts: vec![(50, "p", Action::Acknowledge)],
        minutes: 90,
    };
    let (ts, _) = golden(&c).await;
    let esc: Vec<(i64, u32, Option<String>)> = ts
        .iter()
        .filter(|t| t.event == Event::Escalated)
        .map(|t| ((t.at_us - T0) / M, t.escalation_level, t.notified.clone()))
        .collect();
    assert_eq!(esc, vec![(11, 1, r("backup")), (26, 2, r("dr-cover"))]);
    assert!(ts.iter().all(|t| t.care_team.as_deref() == Some("north")));
}

#[tokio::test]
async fn quiet_periods_hold_warnings_and_urgent_alerts_break_through() {
    // T0 is midnight UTC, 19:00 in New York: the quiet period is 19:00–20:00 there.
    let quiet = "quiet = [\"19:00-20:00\"]\ntimezone = \"America/New_York\"\n";
    let c = Case {
        rule: fever(&format!(
            "[overrides.held]\n{quiet}[overrides.short]\n{quiet}clear_minutes = 5\n[overrides.urgent]\n{quiet}level = \"urgent\"\n"
        )),
        config: quiet_config(),
        teams: vec![],
        temps: vec![
            ("held", 5, 38.6),
            ("short", 5, 38.6),
            ("short", 20, 36.8),
            ("urgent", 5, 38.6),
            ("free", 5, 38.6),
        ],
        acts: vec![],
        minutes: 70,
    };
    let (ts, report) = golden(&c).await;
    let firing = |p: &str| -> (i64, Option<String>) {
        let t = ts
            .iter()
            .find(|t| t.patient_id == p && t.event == Event::Firing)
            .expect("firing");
        ((t.at_us - T0) / M, t.held.clone())
    };
    assert_eq!(firing("held"), (6, r("quiet")));
    assert_eq!(firing("urgent"), (6, None), "urgent breaks through");
    assert_eq!(firing("free"), (6, None), "no quiet period");
    assert!(
        of(&ts, "held").contains(&(60, "released", r("quiet"))),
        "{:?}",
        of(&ts, "held")
    );
    assert!(!of(&ts, "short").iter().any(|e| e.1 == "released"));
    let l = &report.lifecycle[0];
    assert_eq!((l.raised, l.told, l.suppressed_quiet), (4, 3, 1), "{l:?}");
}

#[tokio::test]
async fn an_expected_condition_is_recorded_at_level_info_and_never_told() {
    let c = Case {
        rule: fever("[overrides.known]\nexpected = true\n"),
        config: Config {
            escalate_after: Duration::from_secs(600),
            ..Config::default()
        },
        teams: vec![],
        temps: vec![("known", 0, 38.9), ("other", 0, 38.9)],
        acts: vec![],
        minutes: 90,
    };
    let (ts, report) = golden(&c).await;
    let known: Vec<&Transition> = ts.iter().filter(|t| t.patient_id == "known").collect();
    assert_eq!(
        known.iter().map(|t| t.event).collect::<Vec<_>>(),
        vec![Event::Pending, Event::Firing],
        "no repeats, no escalations"
    );
    assert!(
        known
            .iter()
            .all(|t| t.level == Level::Info && t.held.as_deref() == Some("expected"))
    );
    assert!(
        ts.iter()
            .any(|t| t.patient_id == "other" && t.event == Event::Escalated)
    );
    assert_eq!(report.lifecycle[0].expected, 1);
}
