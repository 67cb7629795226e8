//! Resolved alerts leave memory after a horizon (the history keeps them), and a re-evaluation
//! of the same old episode never raises its id again.

use std::time::Duration;

use carewatch_alert::engine::Config;
use carewatch_alert::history::Status;
use carewatch_store::registry::{Principal, Role};

mod support;

use support::{M, T0, temperature};

fn admin() -> Principal {
    Principal {
        id: "t".into(),
        role: Role::Admin,
        subject: None,
        person: None,
    }
}

#[tokio::test]
async fn resolved_alerts_leave_memory_after_the_horizon_and_are_never_raised_again() {
    let w = support::fever_world(Config {
        resolved_horizon: Duration::from_secs(6 * 3600),
        ..Config::default()
    })
    .await;
    let (store, history, engine) = (w.store.clone(), w.history.clone(), &w.engine);
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
