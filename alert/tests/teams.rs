//! Authorization follows the patient: an open alert of a patient who moves to another care
//! team is reassigned (a `reassigned` transition with both teams), the old team loses it at
//! once, the new one sees and acknowledges it; `unassigned` is nobody's team.

use carewatch_alert::engine::{Config, may_see};
use carewatch_alert::history::{Event, Status};
use carewatch_store::registry::{Principal, Role};

mod support;

use support::{M, T0, World};

fn fever(p: &str, t: i64) -> carewatch_store::Row {
    support::temperature(p, 39.4, t)
}

fn manager(team: &str) -> Principal {
    Principal {
        id: format!("cm-{team}"),
        role: Role::CareManager,
        subject: Some(team.to_owned()),
        person: None,
    }
}

async fn world() -> World {
    support::fever_world(Config::default()).await
}

#[tokio::test]
async fn an_open_alert_follows_its_patient_to_the_new_team() {
    let w = world().await;
    w.registry.set_care_team("p", "north").expect("team");
    w.store
        .append(vec![fever("p", T0)], Vec::new())
        .await
        .expect("append");
    w.engine.evaluate(T0 + M).await.expect("eval");
    let (north, south) = (manager("north"), manager("south"));
    let id = w.engine.current(&north)[0].alert_id.clone();
    let a = w.engine.acknowledge(&id, &north).expect("north takes it");
    assert_eq!(a.status, Status::Acknowledged);

    w.registry.set_care_team("p", "south").expect("move");
    // At once, before any run: the old team has lost it, the new one has it.
    assert!(w.engine.current(&north).is_empty());
    assert!(w.engine.acknowledge(&id, &north).is_err());
    let theirs = w.engine.current(&south);
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].care_team.as_deref(), Some("south"));

    // The next run records the move: firing again (nobody in the south has taken it).
    let before = w.engine.history().len();
    w.engine.evaluate(T0 + 2 * M).await.expect("eval");
    let rows = w.engine.history().since(before as u64);
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let t = &rows[0];
    assert_eq!(t.event, Event::Reassigned);
    assert_eq!(t.status, Status::Firing);
    assert_eq!(t.care_team.as_deref(), Some("south"));
    assert_eq!(t.previous_care_team.as_deref(), Some("north"));
    assert_eq!(t.acknowledged_by, None);
    // Only once.
    w.engine.evaluate(T0 + 3 * M).await.expect("eval");
    assert_eq!(w.engine.history().len(), before + 1);

    let a = w.engine.acknowledge(&id, &south).expect("south takes it");
    assert_eq!(a.status, Status::Acknowledged);
    assert_eq!(a.acknowledged_by.as_deref(), Some("cm-south"));
}

#[tokio::test]
async fn acknowledging_a_moved_alert_before_the_next_run_records_the_move_first() {
    let w = world().await;
    w.registry.set_care_team("p", "north").expect("team");
    w.store
        .append(vec![fever("p", T0)], Vec::new())
        .await
        .expect("append");
    w.engine.evaluate(T0 + M).await.expect("eval");
    let id = w.engine.current(&manager("north"))[0].alert_id.clone();
    w.registry.set_care_team("p", "south").expect("move");
    let before = w.engine.history().len();
    w.engine
        .acknowledge(&id, &manager("south"))
        .expect("south takes it");
    let events: Vec<(Event, Option<String>)> = w
        .engine
        .history()
        .since(before as u64)
        .iter()
        .map(|t| (t.event, t.care_team.clone()))
        .collect();
    assert_eq!(
        events,
        vec![
            (Event::Reassigned, Some("south".to_owned())),
            (Event::Acknowledged, Some("south".to_owned()))
        ]
    );
    w.engine.evaluate(T0 + 2 * M).await.expect("eval");
    assert_eq!(w.engine.history().len(), before + 2, "no second move");
}

#[tokio::test]
async fn unassigned_is_nobodys_team() {
    let w = world().await;
    w.store
        .append(vec![fever("lonely", T0)], Vec::new())
        .await
        .expect("append");
    w.engine.evaluate(T0 + M).await.expect("eval");
    let admin = Principal {
        id: "admin".into(),
        role: Role::Admin,
        subject: None,
        person: None,
    };
    let a = w.engine.current(&admin);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].care_team, None);
    // A care manager whose subject is not a team (tokens made before the registry refused
    // them) sees nothing, on any path.
    for bad in ["unassigned", "", " "] {
        let who = manager(bad);
        assert!(w.engine.current(&who).is_empty(), "{bad:?}");
        assert!(w.engine.acknowledge(&a[0].alert_id, &who).is_err());
        assert!(!may_see(&who, None));
        assert!(!may_see(&who, Some(bad)));
    }
    assert!(may_see(&manager("north"), Some("north")));
    assert!(!may_see(&manager("north"), None));
}
