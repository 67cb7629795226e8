//! The care manager's actions (issue #16), at the engine: assign / claim, note, snooze (paused
//! escalation, un-snoozed by time or by a worse reading), resolve with a reason — each one
//! transition naming the person, and a resolved alert that stays resolved.

use std::time::Duration;

use carewatch_alert::engine::{Action, ActionError, Config};
use carewatch_alert::history::{Event, Status, Transition};
use carewatch_store::registry::{Principal, Role};

mod support;

use support::{M, T0, World};

fn manager(team: &str) -> Principal {
    Principal {
        id: format!("cm-{team}"),
        role: Role::CareManager,
        subject: Some(team.to_owned()),
        person: None,
    }
}

/// A fever alert firing for patient `p` of team north (raised at `T0 + M`), escalating a
/// minute after each notification.
async fn firing() -> (World, String) {
    let w = support::fever_world(Config {
        escalate_after: Duration::from_secs(60),
        ..Config::default()
    })
    .await;
    w.registry.set_care_team("p", "north").expect("team");
    w.store
        .append(vec![support::temperature("p", 39.4, T0)], Vec::new())
        .await
        .expect("append");
    w.engine.evaluate(T0 + M).await.expect("eval");
    let id = w.engine.current(&manager("north"))[0].alert_id.clone();
    (w, id)
}

fn since(w: &World, seq: usize) -> Vec<Transition> {
    w.engine
        .history()
        .since(seq as u64)
        .iter()
        .map(|t| (**t).clone())
        .collect()
}

fn events(ts: &[Transition]) -> Vec<Event> {
    ts.iter().map(|t| t.event).collect()
}

#[tokio::test]
async fn a_snooze_pauses_escalation_until_it_runs_out() {
    let (w, id) = firing().await;
    let north = manager("north");
    let a = w
        .engine
        .act(&id, &north, &Action::Snooze(30))
        .expect("snooze");
    assert_eq!(a.status, Status::Snoozed);
    let until = a.snoozed_until_us.expect("until");
    let before = w.engine.history().len();
    let last = since(&w, before - 1);
    assert_eq!(last[0].event, Event::Snoozed);
    assert_eq!(last[0].actor.as_deref(), Some("cm-north"));
    // Long past the escalation delay, but snoozed: no escalation, still open and visible.
    w.engine.evaluate(until - 1_000_000).await.expect("eval");
    assert!(
        since(&w, before).is_empty(),
        "{:?}",
        events(&since(&w, before))
    );
    assert_eq!(w.engine.current(&north)[0].status, Status::Snoozed);
    // The snooze runs out: back to firing, told again, then escalated as before.
    w.engine.evaluate(until).await.expect("eval");
    let woke = since(&w, before);
    assert_eq!(events(&woke), vec![Event::Unsnoozed]);
    assert_eq!(woke[0].reason.as_deref(), Some("expired"));
    assert_eq!(woke[0].status, Status::Firing);
    w.engine.evaluate(until + 2 * M).await.expect("eval");
    assert_eq!(
        events(&since(&w, before)),
        vec![Event::Unsnoozed, Event::Escalated]
    );
}

#[tokio::test]
async fn a_worse_reading_breaks_through_a_snooze_and_a_milder_one_does_not() {
    let (w, id) = firing().await;
    let north = manager("north");
    w.engine
        .act(&id, &north, &Action::Snooze(60))
        .expect("snooze");
    let before = w.engine.history().len();
    w.store
        .append(
            vec![support::temperature("p", 39.0, T0 + 2 * M)],
            Vec::new(),
        )
        .await
        .expect("append");
    w.engine.evaluate(T0 + 3 * M).await.expect("eval");
    assert!(
        since(&w, before).is_empty(),
        "a milder reading broke through"
    );
    w.store
        .append(
            vec![support::temperature("p", 40.1, T0 + 4 * M)],
            Vec::new(),
        )
        .await
        .expect("append");
    w.engine.evaluate(T0 + 5 * M).await.expect("eval");
    let after = since(&w, before);
    assert_eq!(events(&after), vec![Event::Unsnoozed], "{after:#?}");
    assert_eq!(after[0].reason.as_deref(), Some("worse_reading"));
    assert_eq!(after[0].status, Status::Firing);
    assert_eq!(after[0].value, Some(40.1));
}

#[tokio::test]
async fn a_resolved_alert_stays_resolved_and_only_takes_notes() {
    let (w, id) = firing().await;
    let north = manager("north");
    assert_eq!(
        w.engine.act(&id, &north, &Action::Resolve("bored".into())),
        Err(ActionError::Invalid(
            "`reason` is false_alarm, contacted_patient, escalated_to_physician, device_problem, condition_resolved or other"
        ))
    );
    let a = w
        .engine
        .act(&id, &north, &Action::Resolve("device_problem".into()))
        .expect("resolve");
    assert_eq!(a.status, Status::Resolved);
    let t = since(&w, w.engine.history().len() - 1).remove(0);
    assert_eq!(
        (t.event, t.reason.as_deref()),
        (Event::Resolved, Some("device_problem"))
    );
    // The episode goes on: matched to the resolved alert, never raised again.
    let before = w.engine.history().len();
    w.store
        .append(
            vec![support::temperature("p", 39.8, T0 + 3 * M)],
            Vec::new(),
        )
        .await
        .expect("append");
    w.engine.evaluate(T0 + 4 * M).await.expect("eval");
    assert!(
        since(&w, before).is_empty(),
        "{:?}",
        events(&since(&w, before))
    );
    assert_eq!(
        w.engine.act(&id, &north, &Action::Snooze(5)),
        Err(ActionError::Resolved)
    );
    let a = w
        .engine
        .act(
            &id,
            &north,
            &Action::Note("called the patient, thermometer broken".into()),
        )
        .expect("note");
    assert_eq!(a.status, Status::Resolved);
    let t = since(&w, before).remove(0);
    assert_eq!(t.event, Event::Noted);
    assert_eq!(
        t.note.as_deref(),
        Some("called the patient, thermometer broken")
    );
}

#[tokio::test]
async fn assign_hands_off_and_claim_takes_and_both_are_the_teams_only() {
    let (w, id) = firing().await;
    let (north, south) = (manager("north"), manager("south"));
    let a = w
        .engine
        .act(&id, &north, &Action::Assign(Some("dr-okafor".into())))
        .expect("assign");
    assert_eq!(a.assignee.as_deref(), Some("dr-okafor"));
    assert_eq!(a.status, Status::Firing, "assigning does not acknowledge");
    let a = w
        .engine
        .act(&id, &north, &Action::Assign(None))
        .expect("claim");
    assert_eq!(a.assignee.as_deref(), Some("cm-north"));
    // The assignee is kept on later transitions (and so after a restart's fold).
    let a = w.engine.acknowledge(&id, &north).expect("ack");
    assert_eq!(a.assignee.as_deref(), Some("cm-north"));
    let t = since(&w, w.engine.history().len() - 1).remove(0);
    assert_eq!(t.assignee.as_deref(), Some("cm-north"));
    for action in [
        Action::Assign(None),
        Action::Note("x".into()),
        Action::Snooze(5),
        Action::Resolve("other".into()),
    ] {
        assert_eq!(
            w.engine.act(&id, &south, &action),
            Err(ActionError::NotFound)
        );
    }
    assert!(matches!(
        w.engine.act(&id, &north, &Action::Note("  ".into())),
        Err(ActionError::Invalid(_))
    ));
    assert!(matches!(
        w.engine.act(&id, &north, &Action::Snooze(0)),
        Err(ActionError::Invalid(_))
    ));
    assert!(matches!(
        w.engine
            .act(&id, &north, &Action::Assign(Some("a\nb".into()))),
        Err(ActionError::Invalid(_))
    ));
}
