//! Resolved alerts leave memory after a horizon (the history keeps them), and a re-evaluation
//! of the same old episode never raises its id again.

use std::sync::Arc;
use std::time::Duration;

use carewatch_alert::engine::{AlertEngine, Config};
use carewatch_alert::history::{History, Status};
use carewatch_alert::rules;
use carewatch_query::{QueryEngine, QueryLimits};
use carewatch_store::registry::{Principal, Registry, Role};
use carewatch_store::{Row, Store};
use carewatch_transform::{Format, Reading, Source, catalogue};

const M: i64 = 60_000_000;
/// 2026-01-05T00:00:00Z
const T0: i64 = 1_767_571_200_000_000;

fn temperature(p: &str, value: f64, t: i64) -> Row {
    Row {
        reading: Reading {
            device_id: format!("d-{p}"),
            patient_id: Some(p.to_owned()),
            vital: catalogue::by_key("body_temperature").expect("vital"),
            value,
            effective_us: t,
            effective_end_us: None,
            offset_min: Some(0),
            extra: None,
        },
        received_us: t,
        source: Source::Http,
        format: Format::Carewatch,
    }
}

fn admin() -> Principal {
    Principal {
        id: "t".into(),
        role: Role::Admin,
        subject: None,
    }
}

#[tokio::test]
async fn resolved_alerts_leave_memory_after_the_horizon_and_are_never_raised_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let mut c = carewatch_store::Config::new(&dir);
    c.tick = Duration::from_secs(3600);
    let store = Store::open(c).await.expect("store");
    let registry = Arc::new(Registry::open(&dir).expect("registry").0);
    let audit = carewatch_query::audit::AuditLog::open(&dir, false).expect("audit");
    let q = QueryEngine::new(
        store.clone(),
        registry.clone(),
        QueryLimits::default(),
        Arc::new(audit),
    )
    .expect("query engine");
    let rule = rules::load(None)
        .expect("rules")
        .into_iter()
        .find(|r| r.id == "fever")
        .expect("fever rule");
    let history = Arc::new(History::open(&dir, false).expect("history"));
    let engine = AlertEngine::new(
        Config {
            resolved_horizon: Duration::from_secs(6 * 3600),
            ..Config::default()
        },
        vec![rule],
        q.context().clone(),
        &store,
        registry,
        history.clone(),
    );
    engine.evaluate(T0).await.expect("catch-up");
    let high = temperature("p", 39.4, T0 + M);
    store
        .append(vec![high.clone()], Vec::new())
        .await
        .expect("append");
    engine.evaluate(T0 + 2 * M).await.expect("run");
    let normal = vec![
        temperature("p", 36.8, T0 + 70 * M),
        temperature("p", 36.8, T0 + 75 * M),
    ];
    store.append(normal, Vec::new()).await.expect("append");
    engine.evaluate(T0 + 80 * M).await.expect("run");
    let all = engine.current(&admin());
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].status, Status::Resolved, "{all:#?}");
    let rows = history.len();

    // Within the horizon it stays; past it, it leaves memory but not the history.
    engine
        .evaluate(T0 + 5 * 3600 * 1_000_000)
        .await
        .expect("run");
    assert_eq!(engine.current(&admin()).len(), 1);
    engine
        .evaluate(T0 + 8 * 3600 * 1_000_000)
        .await
        .expect("run");
    assert!(
        engine.current(&admin()).is_empty(),
        "resolved alerts leave memory"
    );
    assert_eq!(history.len(), rows, "the history keeps them");

    // The same old reading arrives again (a re-sync): the episode is not raised again.
    store.append(vec![high], Vec::new()).await.expect("append");
    engine
        .evaluate(T0 + 9 * 3600 * 1_000_000)
        .await
        .expect("run");
    let again: Vec<_> = history.since(rows as u64).to_vec();
    assert!(
        again.iter().all(|t| t.alert_id != all[0].alert_id),
        "a retired alert id is never reused: {again:#?}"
    );
}
