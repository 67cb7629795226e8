//! Golden scenario for per-patient baselines and `hr_above_baseline`, evaluated live (the day fed
//! minute by minute, evaluated after each minute) and as a backtest: both find the same episodes,
//! and neither looks ahead — the baseline of a day is learned only from the days before it, so
//! neither that day's own readings nor later days change it. Also: overrides replace the learned
//! value in both; the `baselines` table shows what was learned.

use std::collections::BTreeMap;
use std::sync::Arc;

use carewatch_alert::baselines::{Baselines, DAY};
use carewatch_alert::engine::{AlertEngine, Config};
use carewatch_alert::history::{Event, History};
use carewatch_alert::rules::{self, Rule};
use carewatch_query::{QueryEngine, QueryLimits};
use carewatch_store::registry::{Principal, Registry, Role};
use carewatch_store::{Row, Store};

mod support;

use support::{M, T0, reading};

/// `n` minutes from `start` (µs): heart rate `hr` every 10 s and `steps` per minute.
fn minutes(p: &str, start: i64, n: i64, hr: f64, steps: f64) -> Vec<Row> {
    let mut out = Vec::new();
    for m in 0..n {
        let t = start + m * M;
        out.push(reading(p, "steps", steps, t));
        for k in 0..6 {
            out.push(reading(p, "heart_rate", hr, t + k * 10_000_000));
        }
    }
    out
}

/// One hour at rest at `hr` on each of the four days before T0 (10:00-11:00 UTC).
fn history(p: &str, hr: f64) -> Vec<Row> {
    (1..=4)
        .flat_map(|d| minutes(p, T0 - d * DAY + 600 * M, 60, hr, 0.0))
        .collect()
}

/// The day under test, from T0: `(minutes, heart rate, steps)` pieces.
fn day(p: &str, parts: &[(i64, f64, f64)]) -> Vec<Row> {
    let mut out = Vec::new();
    let mut t = T0;
    for &(n, hr, steps) in parts {
        out.extend(minutes(p, t, n, hr, steps));
        t += n * M;
    }
    out
}

/// History (appended before evaluation starts), the day (fed live), later days (appended after
/// live evaluation ended: only the backtest sees them), and the expected episodes.
fn scenario() -> (Vec<Row>, Vec<Row>, Vec<Row>, Vec<&'static str>) {
    let mut hist = Vec::new();
    let mut today = Vec::new();
    // Baseline 60: 12 minutes at 90 at rest is more than 25 above it.
    hist.extend(history("steady", 60.0));
    today.extend(day(
        "steady",
        &[(5, 60.0, 0.0), (12, 90.0, 0.0), (10, 60.0, 0.0)],
    ));
    // The same 90 while walking is not at rest.
    hist.extend(history("walking", 60.0));
    today.extend(day(
        "walking",
        &[(5, 60.0, 0.0), (12, 90.0, 40.0), (10, 60.0, 0.0)],
    ));
    // Baseline 80: 95 is not more than 25 above it (it would be for `steady`).
    hist.extend(history("high-baseline", 80.0));
    today.extend(day(
        "high-baseline",
        &[(5, 80.0, 0.0), (12, 95.0, 0.0), (10, 80.0, 0.0)],
    ));
    // No history, no baseline: never fires, even at 130.
    today.extend(day(
        "new",
        &[(5, 70.0, 0.0), (15, 130.0, 0.0), (10, 70.0, 0.0)],
    ));
    // Four and a half hours at 84 today (more rest minutes than the whole history): were the
    // day's own data in its baseline, the median would be 84 and 90 would not be 25 above it.
    hist.extend(history("same-day", 60.0));
    today.extend(day(
        "same-day",
        &[(270, 84.0, 0.0), (12, 90.0, 0.0), (10, 60.0, 0.0)],
    ));
    // Later days at rest at 120: were they in the baseline, 90 would not be 25 above it.
    hist.extend(history("later", 60.0));
    today.extend(day(
        "later",
        &[(5, 60.0, 0.0), (12, 90.0, 0.0), (10, 60.0, 0.0)],
    ));
    let later: Vec<Row> = (1..=6)
        .flat_map(|d| minutes("later", T0 + d * DAY + 600 * M, 120, 120.0, 0.0))
        .collect();
    // A clinician's override of 70 replaces the learned 60: 90 is not 25 above it.
    hist.extend(history("overridden", 60.0));
    today.extend(day(
        "overridden",
        &[(5, 60.0, 0.0), (12, 90.0, 0.0), (10, 60.0, 0.0)],
    ));
    let want = vec!["later 5..17", "same-day 270..282", "steady 5..17"];
    (hist, today, later, want)
}

struct World {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    store: Store,
    q: QueryEngine,
    registry: Arc<Registry>,
    baselines: Baselines,
}

async fn world() -> World {
    let support::Base {
        tmp,
        dir,
        store,
        registry,
        q,
    } = support::base().await;
    let baselines = Baselines::open(&store, Some(&dir), Default::default()).expect("baselines");
    baselines.watch(&store);
    carewatch_alert::baselines::register(q.context(), &baselines).expect("table");
    World {
        _tmp: tmp,
        dir,
        store,
        q,
        registry,
        baselines,
    }
}

fn rule() -> Rule {
    rules::load(None)
        .expect("rules")
        .into_iter()
        .find(|r| r.id == "hr_above_baseline")
        .expect("rule")
}

fn fmt(p: &str, start: i64, end: i64) -> String {
    format!("{p} {}..{}", (start - T0) / M, (end - T0) / M)
}

/// Feeds `rows` minute by minute, evaluating after each minute; returns the fired episodes.
async fn live(w: &World, rule: &Rule, rows: Vec<Row>) -> (AlertEngine, Vec<String>) {
    let history = Arc::new(History::open(&w.dir, false).expect("history"));
    let engine = AlertEngine::new(
        Config::default(),
        vec![rule.clone()],
        w.q.context().clone(),
        &w.store,
        w.registry.clone(),
        history,
    );
    let mut by_minute: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
    for r in rows {
        by_minute
            .entry((r.reading.effective_us - T0).div_euclid(M))
            .or_default()
            .push(r);
    }
    let last = by_minute.keys().last().copied().unwrap_or(0) + 1;
    for m in 0..=last + 30 {
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

async fn backtest(ctx: &carewatch_alert::SessionContext, rule: &Rule) -> Vec<String> {
    let r = carewatch_alert::backtest::backtest(
        ctx,
        std::slice::from_ref(rule),
        T0 - 60 * M,
        T0 + 400 * M,
        &|_, _| {},
    )
    .await
    .expect("backtest");
    let t = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("time")
            .timestamp_micros()
    };
    let mut v: Vec<String> = r
        .alerts
        .iter()
        .map(|f| fmt(&f.patient_id, t(&f.start), t(&f.end)))
        .collect();
    v.sort();
    // The replayed lifecycle raised one alert per episode, with the ids live evaluation gives.
    let mut fired: Vec<String> = r
        .transitions
        .iter()
        .filter(|t| t.event == Event::Firing)
        .map(|t| {
            fmt(
                &t.patient_id,
                t.episode_start_us,
                t.episode_end_us.max(t.episode_start_us),
            )
        })
        .collect();
    fired.sort();
    assert_eq!(
        fired.len(),
        v.len(),
        "replay: one alert per episode: {fired:?} vs {v:?}"
    );
    v
}

#[tokio::test]
async fn baseline_rule_live_and_backtest_agree_without_look_ahead() {
    let w = world().await;
    let rule = rule();
    let (hist, today, later, want) = scenario();
    w.store.append(hist, Vec::new()).await.expect("history");
    w.baselines
        .set_override("overridden", "8867-4", Some(70.0))
        .expect("override");
    let (engine, live) = live(&w, &rule, today).await;
    let want: Vec<String> = want.into_iter().map(str::to_owned).collect();
    assert_eq!(live, want, "live");
    let fired = engine.history().since(0);
    let fired = fired.iter().filter(|t| t.event == Event::Firing).count();
    assert_eq!(fired, want.len(), "one alert per episode");
    // Later days arrive; the backtest sees all of it and finds the same episodes.
    w.store.append(later, Vec::new()).await.expect("later");
    assert_eq!(backtest(w.q.context(), &rule).await, want, "backtest");
    // A fresh offline session over the same directory (as `rules backtest` opens): the same.
    let fresh = Baselines::open(&w.store, Some(&w.dir), Default::default()).expect("fresh");
    let audit = carewatch_query::audit::AuditLog::open(&w.dir, true).expect("audit");
    let q2 = QueryEngine::new(
        w.store.clone(),
        w.registry.clone(),
        QueryLimits::default(),
        Arc::new(audit),
    )
    .expect("engine");
    carewatch_alert::baselines::register(q2.context(), &fresh).expect("table");
    assert_eq!(
        backtest(q2.context(), &rule).await,
        want,
        "offline backtest"
    );
}

#[tokio::test]
async fn the_baselines_table_shows_what_was_learned_per_day() {
    let w = world().await;
    let (hist, today, later, _) = scenario();
    w.store.append(hist, Vec::new()).await.expect("history");
    w.store.append(today, Vec::new()).await.expect("today");
    w.store.append(later, Vec::new()).await.expect("later");
    w.baselines
        .set_override("overridden", "8867-4", Some(70.0))
        .expect("override");
    w.baselines.prepare(T0, T0 + 2 * DAY);
    let sql = "SELECT patient_id, baseline, learned, override_value, rest_minutes, source \
               FROM baselines WHERE code = '8867-4' AND day = to_timestamp_micros(1767571200000000) \
               ORDER BY patient_id";
    let got = w.q.collect(sql).await.expect("sql");
    let text = arrow_cast::pretty::pretty_format_batches(&got)
        .expect("fmt")
        .to_string();
    let want = "\
+---------------+----------+---------+----------------+--------------+----------+
| patient_id    | baseline | learned | override_value | rest_minutes | source   |
+---------------+----------+---------+----------------+--------------+----------+
| high-baseline | 80.0     | 80.0    |                | 240          | learned  |
| later         | 60.0     | 60.0    |                | 240          | learned  |
| overridden    | 70.0     | 60.0    | 70.0           | 240          | override |
| same-day      | 60.0     | 60.0    |                | 240          | learned  |
| steady        | 60.0     | 60.0    |                | 240          | learned  |
| walking       | 60.0     | 60.0    |                | 240          | learned  |
+---------------+----------+---------+----------------+--------------+----------+";
    assert_eq!(text, want);
    // The next day learns from the day before: same-day's 270 minutes at 84 now dominate.
    let next = w
        .baselines
        .for_patient("same-day", T0 + DAY + 5 * M)
        .await
        .expect("next day");
    let hr = next.iter().find(|b| b.code == "8867-4").expect("hr");
    assert_eq!(
        (hr.learned, hr.rest_minutes),
        (Some(84.0), 240 + 270 + 12 + 10)
    );
    // A patient without history has no baseline on the day, and says why.
    let new = w.baselines.for_patient("new", T0).await.expect("new");
    assert!(
        new.iter()
            .all(|b| b.baseline.is_none() && b.source == "insufficient")
    );
}
