//! Reconcile as a pure function: episodes and alerts in, transitions and updates out.

use std::collections::HashSet;

use super::*;
use crate::rules::load;

const M: i64 = 60_000_000;
const NOW: i64 = 1_767_571_200_000_000;

fn fever() -> Rule {
    load(None)
        .expect("rules")
        .into_iter()
        .find(|r| r.id == "fever")
        .expect("fever")
}

fn ep(start_min: i64, end_min: i64, value: f64, qualified: bool, resolved: bool) -> Episode {
    Episode {
        start_us: NOW + start_min * M,
        end_us: NOW + end_min * M,
        value: Some(value),
        qualified,
        resolved,
    }
}

fn input<'a>(rule: &'a Rule, episodes: Vec<Episode>, alerts: Vec<Current>) -> Input<'a> {
    Input {
        rule,
        patient: "p1",
        episodes,
        alerts,
        retired: HashSet::new(),
        team: Some("north".into()),
        now: NOW + 60 * M,
    }
}

fn events(o: &Outcome) -> Vec<Event> {
    o.out.iter().map(|t| t.event).collect()
}

/// The alert a first reconcile of `e` raises.
fn raised(rule: &Rule, e: Episode) -> Current {
    let o = reconcile(input(rule, vec![e], vec![]));
    o.touched.into_iter().next().expect("raised")
}

#[test]
fn a_new_qualified_episode_raises_pending_then_firing() {
    let rule = fever();
    let o = reconcile(input(&rule, vec![ep(0, 10, 38.6, true, false)], vec![]));
    assert_eq!(events(&o), vec![Event::Pending, Event::Firing]);
    assert_eq!(
        o.out[0].at_us, NOW,
        "pending dates from the episode's start"
    );
    assert_eq!(o.out[1].at_us, NOW + 60 * M, "firing dates from now");
    let a = &o.touched[0];
    assert_eq!(a.alert_id, fingerprint("fever", "p1", NOW));
    assert_eq!(
        (a.status, a.care_team.as_deref()),
        (Status::Firing, Some("north"))
    );
    assert_eq!(o.pending, None);
}

#[test]
fn an_episode_already_over_is_raised_and_resolved_at_once() {
    let rule = fever();
    let o = reconcile(input(&rule, vec![ep(0, 10, 38.6, true, true)], vec![]));
    assert_eq!(
        events(&o),
        vec![Event::Pending, Event::Firing, Event::Resolved]
    );
    assert_eq!(o.touched[0].status, Status::Resolved);
}

#[test]
fn an_overlapping_episode_extends_its_alert_without_a_transition() {
    let rule = fever();
    let a = raised(&rule, ep(0, 10, 38.6, true, false));
    let o = reconcile(input(
        &rule,
        vec![ep(0, 25, 39.4, true, false)],
        vec![a.clone()],
    ));
    assert!(
        o.out.is_empty(),
        "an extension is not a transition: {:?}",
        events(&o)
    );
    let b = &o.touched[0];
    assert_eq!(b.alert_id, a.alert_id);
    assert_eq!(b.episode_end_us, NOW + 25 * M);
    assert_eq!(b.value, Some(39.4));
    assert_ne!(b.message, a.message, "the message follows the worst value");
}

#[test]
fn the_end_of_the_episode_resolves_its_alert_once() {
    let rule = fever();
    let a = raised(&rule, ep(0, 10, 38.6, true, false));
    let o = reconcile(input(&rule, vec![ep(0, 12, 38.6, true, true)], vec![a]));
    assert_eq!(events(&o), vec![Event::Resolved]);
    let resolved = o.touched[0].clone();
    let again = reconcile(input(
        &rule,
        vec![ep(0, 12, 38.6, true, true)],
        vec![resolved],
    ));
    assert!(again.out.is_empty(), "resolved twice: {:?}", events(&again));
}

#[test]
fn a_retired_alert_is_never_raised_again() {
    let rule = fever();
    let e = ep(0, 10, 38.6, true, true);
    let mut i = input(&rule, vec![e], vec![]);
    i.retired.insert(fingerprint("fever", "p1", NOW));
    let o = reconcile(i);
    assert!(o.out.is_empty() && o.touched.is_empty());
}

#[test]
fn a_short_episode_is_pending_under_the_id_it_will_have() {
    let rule = fever();
    let o = reconcile(input(&rule, vec![ep(5, 7, 38.2, false, false)], vec![]));
    assert!(o.out.is_empty());
    let (e, id) = o.pending.expect("pending");
    assert_eq!(e.start_us, NOW + 5 * M);
    assert_eq!(id, fingerprint("fever", "p1", NOW + 5 * M));
    let cleared = reconcile(input(&rule, vec![ep(5, 7, 38.2, false, true)], vec![]));
    assert_eq!(cleared.pending, None, "a short run that cleared is nothing");
}

#[test]
fn separate_episodes_raise_separate_alerts_and_leave_others_untouched() {
    let rule = fever();
    let old = raised(&rule, ep(-300, -200, 38.9, true, true));
    let o = reconcile(input(
        &rule,
        vec![ep(0, 10, 38.6, true, false), ep(30, 45, 39.0, true, false)],
        vec![old.clone()],
    ));
    assert_eq!(
        events(&o),
        vec![Event::Pending, Event::Firing, Event::Pending, Event::Firing]
    );
    let ids: Vec<&str> = o.touched.iter().map(|a| a.alert_id.as_str()).collect();
    assert_eq!(ids.len(), 2);
    assert!(
        !ids.contains(&old.alert_id.as_str()),
        "an alert no episode matched is not touched"
    );
}

#[test]
fn the_same_input_gives_the_same_outcome() {
    let rule = fever();
    let a = raised(&rule, ep(0, 10, 38.6, true, false));
    let run = || {
        reconcile(input(
            &rule,
            vec![ep(0, 20, 39.1, true, true), ep(40, 41, 38.1, false, false)],
            vec![a.clone()],
        ))
    };
    assert_eq!(run(), run());
}

fn with(extra: &str) -> Rule {
    let text = include_str!("../../../rules/fever.toml");
    Rule::parse("fever.toml", &format!("{text}\n{extra}")).expect("rule")
}

#[test]
fn an_expected_condition_is_raised_at_level_info_and_held_for_good() {
    let rule = with("[overrides.p1]\nexpected = true\n");
    let o = reconcile(input(&rule, vec![ep(0, 10, 38.6, true, false)], vec![]));
    assert!(o.out.iter().all(|t| t.held.as_deref() == Some("expected")
        && t.held_until_us.is_none()
        && t.level == Level::Info));
}

#[test]
fn a_new_episode_inside_the_realert_gap_is_held_until_the_gap_ends() {
    let rule = with("[overrides.p1]\nrealert_gap_minutes = 30\n");
    let old = raised(&rule, ep(-20, -10, 38.9, true, true));
    assert_eq!(old.held, None, "the first episode is told");
    let mut soon = input(&rule, vec![ep(0, 5, 38.6, true, false)], vec![old.clone()]);
    soon.now = NOW + 6 * M;
    let o = reconcile(soon);
    let a = &o
        .touched
        .iter()
        .find(|a| a.alert_id != old.alert_id)
        .expect("new");
    assert_eq!(
        (a.held.as_deref(), a.held_until_us),
        (Some("realert_gap"), Some(NOW + 20 * M))
    );
    // Outside the gap (or once it has passed by the clock), told at once.
    let mut late = input(&rule, vec![ep(0, 5, 38.6, true, false)], vec![old]);
    late.now = NOW + 20 * M;
    let o = reconcile(late);
    assert!(o.out.iter().all(|t| t.held.is_none()));
}

#[test]
fn quiet_periods_hold_warnings_but_not_urgent_alerts() {
    // NOW + 60 min is 01:00 UTC.
    let q = "quiet = [\"00:30-06:00\"]\n";
    let rule = with(&format!("[overrides.p1]\n{q}"));
    let o = reconcile(input(&rule, vec![ep(0, 10, 38.6, true, false)], vec![]));
    let f = &o.out[1];
    assert_eq!(
        (f.held.as_deref(), f.held_until_us),
        (Some("quiet"), Some(NOW + 6 * 60 * M))
    );
    let urgent = with(&format!("[overrides.p1]\n{q}level = \"urgent\"\n"));
    let o = reconcile(input(&urgent, vec![ep(0, 10, 38.6, true, false)], vec![]));
    assert!(
        o.out
            .iter()
            .all(|t| t.held.is_none() && t.level == Level::Urgent)
    );
}
