//! `vital_minutes`: the shipped rules read per-minute bins instead of raw `observations`.
//! Each rule's SQL over the live bins (folded at append time, in memory), over the bins the
//! backtest folds from history, and the rule's former SQL over raw `observations`
//! (`fixtures/raw_rules/`, the rules as shipped before the bins) give the same samples — with
//! data in Parquet files and in the buffer, late arrivals before and after the live horizon,
//! and scopes with and without a patient filter. Appends trigger evaluation (micro-batching)
//! without waiting for the periodic tick.

use std::sync::Arc;
use std::time::Duration;

use carewatch_alert::engine::{AlertEngine, Config, run_rule_sql, scope_sql};
use carewatch_alert::episodes::Sample;
use carewatch_alert::history::{History, Status};
use carewatch_alert::rules::{self, Rule};
use carewatch_query::{QueryEngine, QueryLimits};
use carewatch_store::Row;
use carewatch_store::registry::{Principal, Role};

mod support;

use support::{M, T0, reading};

/// Minute `m` of patient `p`: heart rate every 10 s, steps, SpO2, and now and then
/// temperature, blood pressure and respiratory rate. Values are multiples of 0.5, so sums are
/// exact and the comparison can be exact too.
fn minute(p: usize, m: i64) -> Vec<Row> {
    let id = format!("p{p}");
    let t = T0 + m * M;
    let k = p as i64 * 7 + m * 3;
    let mut v = Vec::new();
    for s in 0..6 {
        let hr = 30.0 + ((k + s * 11) % 100) as f64 + if s % 2 == 0 { 0.5 } else { 0.0 };
        v.push(reading(&id, "heart_rate", hr, t + s * 10_000_000));
    }
    let steps = if (m + p as i64) % 4 == 0 { 20.0 } else { 0.0 };
    v.push(reading(&id, "steps", steps, t + 1_000_000));
    v.push(reading(&id, "spo2", 84.0 + (k % 15) as f64, t + 5_000_000));
    if m % 15 == p as i64 % 15 {
        v.push(reading(
            &id,
            "body_temperature",
            36.0 + (k % 8) as f64 * 0.5,
            t + 7_000_000,
        ));
    }
    if m % 20 == 3 {
        v.push(reading(
            &id,
            "systolic",
            150.0 + (k % 50) as f64,
            t + 9_000_000,
        ));
        v.push(reading(
            &id,
            "diastolic",
            90.0 + (k % 40) as f64,
            t + 9_000_000,
        ));
    }
    if m % 5 == 0 {
        v.push(reading(
            &id,
            "respiratory_rate",
            8.0 + (k % 20) as f64,
            t + 8_000_000,
        ));
    }
    v
}

/// A session as the backtest has it: `vital_minutes` folded from history.
async fn context(base: &support::Base) -> QueryEngine {
    let audit = carewatch_query::audit::AuditLog::open(&base.dir, false).expect("audit");
    let q = QueryEngine::new(
        base.store.clone(),
        base.registry.clone(),
        QueryLimits::default(),
        Arc::new(audit),
    )
    .expect("query engine");
    let baselines = carewatch_alert::baselines::Baselines::open(
        &base.store,
        Some(&base.dir),
        Default::default(),
    )
    .expect("baselines");
    carewatch_alert::baselines::register(q.context(), &baselines).expect("baselines table");
    carewatch_alert::minutes::table::ensure_registered(q.context())
        .await
        .expect("vital_minutes");
    q
}

fn engine(base: &support::Base, q: &QueryEngine, rules: Vec<Rule>, c: Config) -> AlertEngine {
    AlertEngine::new(
        c,
        rules,
        q.context().clone(),
        &base.store,
        base.registry.clone(),
        Arc::new(History::open(&base.dir, false).expect("history")),
    )
}

async fn samples(
    ctx: &carewatch_alert::SessionContext,
    rule: &Rule,
    scope: &str,
) -> Vec<(String, i64, Sample)> {
    let sql = rule.render(&rule.params, scope).expect("render");
    let mut v = run_rule_sql(ctx, &sql).await.expect("rule sql");
    v.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    v
}

/// Every shipped rule: live bins == history bins == the former raw SQL, over `scopes`.
async fn same_everywhere(live: &QueryEngine, history: &QueryEngine, scopes: &[String]) {
    let raw_dir = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("tests/fixtures/raw_rules");
    let raw = rules::load(Some(&raw_dir)).expect("raw rules");
    let shipped = rules::load(None).expect("rules");
    assert_eq!(raw.len(), shipped.len());
    for rule in &shipped {
        assert!(
            rule.sql.contains("vital_minutes"),
            "{} reads the bins",
            rule.id
        );
        let old = raw.iter().find(|r| r.id == rule.id).expect("raw rule");
        for scope in scopes {
            let want = samples(history.context(), old, scope).await;
            let from_history = samples(history.context(), rule, scope).await;
            let from_live = samples(live.context(), rule, scope).await;
            assert_eq!(
                from_history, want,
                "{}: history bins vs raw, {scope}",
                rule.id
            );
            assert_eq!(from_live, want, "{}: live bins vs raw, {scope}", rule.id);
        }
        assert!(
            !samples(history.context(), old, &scopes[0]).await.is_empty()
                || rule.id == "hr_above_baseline",
            "{} has samples to compare",
            rule.id
        );
    }
}

#[tokio::test]
async fn every_rewritten_rule_answers_as_its_raw_sql_live_and_in_the_backtest() {
    let base = support::base().await;
    let live_q = context(&base).await;
    let history_q = context(&base).await;
    let config = Config {
        bins_window: Some(Duration::from_secs(30 * 60)),
        ..Config::default()
    };
    let live = engine(&base, &live_q, rules::load(None).expect("rules"), config);
    // Minutes 0..40 persisted to Parquet, 40..90 in the buffer; patient 3's minutes 20..30 and
    // 70..80 arrive last (late).
    let late = |p: usize, m: i64| p == 3 && ((20..30).contains(&m) || (70..80).contains(&m));
    for m in 0..90 {
        let rows: Vec<Row> = (0..6)
            .filter(|p| !late(*p, m))
            .flat_map(|p| minute(p, m))
            .collect();
        base.store.append(rows, Vec::new()).await.expect("append");
        if m == 39 {
            base.store.persist().await.expect("persist");
        }
    }
    let (patients, bins) = live.bins_size();
    assert_eq!(patients, 6);
    assert!(bins > 6 * 90 * 3, "{bins} bins");
    // The engine's clock moves the horizon to minute 60: earlier minutes are folded from the
    // store at scan time, later ones come from memory.
    live.evaluate(T0 + 90 * M).await.expect("evaluate");
    assert!(
        live.bins_size().1 < bins,
        "bins before the horizon are pruned"
    );
    for m in (20..30).chain(70..80) {
        base.store
            .append(minute(3, m), Vec::new())
            .await
            .expect("late append");
    }
    let scopes = [
        scope_sql(T0 - 60 * M, T0 + 200 * M, None),
        scope_sql(T0 + 15 * M, T0 + 75 * M, Some(&["p3", "p5"])),
        scope_sql(T0 + 60 * M, T0 + 90 * M, Some(&["p3"])),
    ];
    same_everywhere(&live_q, &history_q, &scopes).await;
}

#[tokio::test]
async fn an_append_triggers_evaluation_before_the_periodic_tick() {
    let base = support::base().await;
    let q = context(&base).await;
    let fever: Vec<Rule> = rules::load(None)
        .expect("rules")
        .into_iter()
        .filter(|r| r.id == "fever")
        .collect();
    // The periodic tick is an hour away after its first run: only the append can trigger.
    let config = Config {
        interval: Duration::from_secs(3600),
        batch: Duration::from_millis(50),
        ..Config::default()
    };
    let engine = engine(&base, &q, fever, config);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(engine.clone().run(stop.clone()));
    let wait = |n: u64| {
        let e = engine.clone();
        async move {
            for _ in 0..600 {
                if e.runs().0 >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("no evaluation run {n}");
        }
    };
    wait(1).await;
    let now = carewatch_alert::engine::now_us();
    base.store
        .append(
            vec![support::temperature("feverish", 39.5, now)],
            Vec::new(),
        )
        .await
        .expect("append");
    wait(2).await;
    let admin = Principal {
        id: "t".into(),
        role: Role::Admin,
        subject: None,
        person: None,
    };
    let open = engine.current(&admin);
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].patient_id, "feverish");
    assert_eq!(open[0].status, Status::Firing);
    stop.cancel();
    task.await.expect("engine loop");
}
