//! Escalation chains and on-call (issue #16), at the engine: a team's unacknowledged alert goes
//! up its chain step by step after each step's delay, each `escalated` transition naming who
//! the step told (the backup, then whoever is on call by the rota or its override); the chain
//! stops at its end, on acknowledgement and during a snooze; a team without a chain keeps the
//! plain escalation.

use std::sync::Arc;

use carewatch_alert::chain::ChainConfig;
use carewatch_alert::engine::{Action, Config};
use carewatch_alert::history::{Event, Transition};
use carewatch_store::registry::{Principal, Role};

mod support;

use support::{M, T0, World};

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

fn manager(team: &str) -> Principal {
    Principal {
        id: format!("cm-{team}"),
        role: Role::CareManager,
        subject: Some(team.to_owned()),
        person: None,
    }
}

/// A fever alert of team `team` firing at `T0 + M` (T0 is 00:00 UTC), north having the chain.
async fn firing(team: &str) -> (World, String) {
    let chain = toml::from_str::<ChainConfig>(CHAIN)
        .expect("toml")
        .check()
        .expect("chain");
    let w = support::fever_world(Config {
        chains: Arc::new([("north".to_owned(), chain)].into()),
        escalate_after: std::time::Duration::from_secs(300),
        max_escalations: 1,
        ..Config::default()
    })
    .await;
    w.registry.set_care_team("p", team).expect("team");
    w.store
        .append(vec![support::temperature("p", 39.4, T0)], Vec::new())
        .await
        .expect("append");
    w.engine.evaluate(T0 + M).await.expect("eval");
    let id = w.engine.current(&manager(team))[0].alert_id.clone();
    (w, id)
}

fn escalations(w: &World) -> Vec<Transition> {
    w.engine
        .history()
        .since(0)
        .iter()
        .filter(|t| t.event == Event::Escalated)
        .map(|t| (**t).clone())
        .collect()
}

fn told(w: &World) -> Vec<(u32, Option<String>)> {
    escalations(w)
        .into_iter()
        .map(|t| (t.escalation_level, t.notified))
        .collect()
}

#[tokio::test]
async fn an_unacknowledged_alert_goes_up_the_chain_to_whoever_is_on_call() {
    let (w, _) = firing("north").await;
    // Not yet 10 minutes after firing: nobody else told.
    w.engine.evaluate(T0 + 10 * M).await.expect("eval");
    assert!(told(&w).is_empty());
    w.engine.evaluate(T0 + 11 * M).await.expect("eval");
    assert_eq!(told(&w), vec![(1, Some("backup".into()))]);
    // 15 minutes after the backup (00:26, inside the override): the cover, not the rota.
    w.engine.evaluate(T0 + 25 * M).await.expect("eval");
    assert_eq!(told(&w).len(), 1);
    w.engine.evaluate(T0 + 26 * M).await.expect("eval");
    assert_eq!(told(&w)[1], (2, Some("dr-cover".into())));
    // The end of the chain: no more.
    w.engine.evaluate(T0 + 300 * M).await.expect("eval");
    assert_eq!(told(&w).len(), 2);
}

#[tokio::test]
async fn the_rota_decides_when_there_is_no_override_and_ack_or_snooze_stops_the_chain() {
    let (w, id) = firing("north").await;
    w.engine.evaluate(T0 + 11 * M).await.expect("eval");
    let north = manager("north");
    w.engine
        .act(&id, &north, &Action::Snooze(60))
        .expect("snooze");
    // Snoozed: no step, however late (the snooze runs on the wall clock, far ahead of T0).
    w.engine.evaluate(T0 + 60 * M).await.expect("eval");
    assert_eq!(told(&w).len(), 1);
    w.engine.acknowledge(&id, &north).expect("ack");
    w.engine.evaluate(T0 + 600 * M).await.expect("eval");
    assert_eq!(told(&w).len(), 1, "acknowledged: the chain stops");

    // Another alert, escalated at 12:26 UTC: the late rota slot.
    let (w, _) = firing("north").await;
    w.engine.evaluate(T0 + 11 * M).await.expect("eval");
    w.engine
        .evaluate(T0 + 12 * 60 * M + 26 * M)
        .await
        .expect("eval");
    assert_eq!(told(&w)[1], (2, Some("dr-late".into())));
}

#[tokio::test]
async fn a_team_without_a_chain_keeps_the_plain_escalation() {
    let (w, _) = firing("south").await;
    w.engine.evaluate(T0 + 6 * M).await.expect("eval");
    w.engine.evaluate(T0 + 60 * M).await.expect("eval");
    assert_eq!(
        told(&w),
        vec![(1, None)],
        "one escalation (max_escalations = 1)"
    );
}
