//! Plan: what one evaluation run changes, decided from the alerts as they stand — a pure
//! function of ([`State`], the run's episodes, the clock) shared by live evaluation
//! ([`super::commit`]) and the backtest's replay ([`crate::backtest::replay`]), so both raise,
//! hold, release, repeat and escalate alike.
//!
//! After each (rule, patient) is reconciled, the clock's due work, per alert in id order (one
//! transition per alert per run; an alert this run already changed waits for the next):
//! a snooze that ran out (`unsnoozed`, `expired`); a held alert whose hold ended (`released`,
//! unless the patient's quiet period holds a warning or info alert on); an unacknowledged
//! firing alert past its escalation delay (`escalated`); past its level's repeat interval since
//! it was last told (`repeated`). Quiet periods hold warning and info escalations and repeats
//! too; urgent alerts break through.

use std::collections::HashSet;

use crate::history::{Event, Status, Transition};
use crate::rules::{Level, Rule};

use super::Config;
use super::commit::Change;
use super::reconcile::{Input, reconcile};
use super::samples::Work;
use super::state::{Current, State, fingerprint};

/// The change one run makes: `work` reconciled (each with its patient's team now), then the
/// clock's due work at `now` — both only for the patients this node alerts for (`mine`).
pub(crate) fn plan(
    st: &State,
    rules: &[Rule],
    config: &Config,
    work: Vec<(Work, Option<String>)>,
    mine: &dyn Fn(&str) -> bool,
    now: i64,
) -> Change {
    let mut change = Change::default();
    for (w, team) in work.into_iter().filter(|(w, _)| mine(&w.patient)) {
        let rule = &rules[w.rule];
        let alerts = st.of_key(&(rule.id.clone(), w.patient.clone()));
        let retired = w
            .episodes
            .iter()
            .map(|e| fingerprint(&rule.id, &w.patient, e.start_us))
            .filter(|id| st.retired.contains(id))
            .collect();
        let o = reconcile(Input {
            rule,
            patient: &w.patient,
            episodes: w.episodes,
            alerts,
            retired,
            team,
            now,
        });
        change.out.extend(o.out);
        change.updated.extend(o.touched);
        change
            .pending
            .push(((rule.id.clone(), w.patient), o.pending));
    }
    let changed: HashSet<String> = change.out.iter().map(|t| t.alert_id.clone()).collect();
    let mut ids: Vec<&String> = st
        .alerts
        .iter()
        .filter(|(id, a)| !changed.contains(*id) && mine(&a.patient_id))
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    for id in ids {
        let a = match change.updated.iter().find(|u| &u.alert_id == id) {
            Some(u) => u,
            None => &st.alerts[id],
        };
        if let Some(t) = due(a, rules, config, now) {
            change.out.push(t);
        }
    }
    change
}

/// Is the patient's quiet period holding this alert's pushes at `now`?
fn quiet(a: &Current, rules: &[Rule], now: i64) -> bool {
    a.level != Level::Urgent
        && rules
            .iter()
            .find(|r| r.id == a.rule)
            .and_then(|r| r.quiet_for(&a.patient_id))
            .is_some_and(|q| q.end_of(now).is_some())
}

/// The clock's transition for alert `a` at `now`, if one is due.
fn due(a: &Current, rules: &[Rule], config: &Config, now: i64) -> Option<Transition> {
    let mut a = a.clone();
    match a.status {
        Status::Snoozed if a.snoozed_until_us.is_some_and(|u| u <= now) => {
            Some(a.unsnooze("expired", now))
        }
        Status::Firing if a.held.is_some() => {
            let ended = a.held_until_us.is_some_and(|u| u <= now);
            if !ended || quiet(&a, rules, now) {
                return None;
            }
            let why = a.held.take();
            a.held_until_us = None;
            let mut t = a.transition(Event::Released, now);
            t.reason = why;
            Some(t)
        }
        Status::Firing if !quiet(&a, rules, now) => {
            if let Some(notified) = escalation(&a, config, now) {
                a.escalation_level += 1;
                let mut t = a.transition(Event::Escalated, now);
                t.notified = notified;
                return Some(t);
            }
            let every = config.levels.repeat_us(a.level)?;
            let last = a.last_notified_us.max(a.last_repeated_us);
            (now - last >= every).then(|| a.transition(Event::Repeated, now))
        }
        _ => None,
    }
}

/// A firing alert nobody acknowledged since its last notification, past the escalation
/// delay — its team's next chain step's, or `escalate_after` below `max_escalations` for a
/// team without a chain: `Some(who the step tells)`.
fn escalation(a: &Current, c: &Config, now: i64) -> Option<Option<String>> {
    let since = now - a.last_notified_us;
    let chain = a.care_team.as_ref().and_then(|t| c.chains.get(t));
    match chain.filter(|ch| !ch.is_empty()) {
        Some(ch) => {
            let next = a.escalation_level + 1;
            let delay = ch.delay(next)?;
            if since < delay.as_micros() as i64 {
                return None;
            }
            let who = ch.contact(next, now).map(|c| c.who);
            Some(Some(who.unwrap_or_else(|| "nobody on call".into())))
        }
        None if a.escalation_level < c.max_escalations
            && since >= c.escalate_after.as_micros() as i64 =>
        {
            Some(None)
        }
        None => None,
    }
}
