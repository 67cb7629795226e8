//! Reconcile: one (rule, patient)'s episodes against the alerts already raised for it — by
//! time overlap an episode extends (or resolves) its alert; a new one gets
//! `fingerprint(rule, patient, first start)` and `pending` + `firing` transitions. Retired ids
//! are never raised again.
//!
//! A new alert may be raised *held* (recorded and shown, not pushed): `expected` for the
//! patient (level info, for good), `realert_gap` (it starts within `realert_gap_minutes` of
//! the end of the key's last resolved alert: held until the gap has passed), or `quiet` (a
//! warning or info alert in the patient's quiet period: held until it ends).
//!
//! A pure function: everything it needs comes in [`Input`], everything it decides goes out in
//! [`Outcome`]; nothing is locked, read from elsewhere or written. The commit phase
//! ([`super::commit`]) writes and applies the outcome.

use std::collections::HashSet;

use crate::episodes::Episode;
use crate::history::{Event, Status, Transition};
use crate::rules::{Level, Params, Rule};

use super::state::{Current, fingerprint};

/// What reconciling one (rule, patient) needs to know.
#[derive(Debug)]
pub(super) struct Input<'a> {
    pub(super) rule: &'a Rule,
    pub(super) patient: &'a str,
    /// The patient's episodes for the rule, from its samples.
    pub(super) episodes: Vec<Episode>,
    /// The alerts already raised for (rule, patient), as they stand.
    pub(super) alerts: Vec<Current>,
    /// Ids among this key's possible alerts that left memory after resolving (never reused).
    pub(super) retired: HashSet<String>,
    /// The patient's care team now (a new alert belongs to it).
    pub(super) team: Option<String>,
    /// Wall clock, UTC µs.
    pub(super) now: i64,
}

/// What reconciling decided.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Outcome {
    /// Transitions to write, in order.
    pub(super) out: Vec<Transition>,
    /// Every alert an episode matched or raised, with its episode fields brought up to date
    /// (an extension without a status change is applied in memory only).
    pub(super) touched: Vec<Current>,
    /// The episode still short of `for`, with the id it will have.
    pub(super) pending: Option<(Episode, String)>,
}

/// Reconciles `input.rule`'s episodes of `input.patient` with its alerts.
pub(super) fn reconcile(input: Input<'_>) -> Outcome {
    let Input {
        rule,
        patient,
        episodes,
        mut alerts,
        retired,
        team,
        now,
    } = input;
    let mut outcome = Outcome::default();
    let params = rule.params_for(Some(patient));
    let mut touched = vec![false; alerts.len()];
    for e in episodes {
        if !e.qualified {
            if !e.resolved {
                outcome.pending = Some((e, String::new()));
            }
            continue;
        }
        match alerts.iter().position(|a| overlaps(a, &e)) {
            Some(i) => {
                extend(&mut alerts[i], &e, rule, &params, now, &mut outcome.out);
                touched[i] = true;
            }
            None => {
                let id = fingerprint(&rule.id, patient, e.start_us);
                if retired.contains(&id) || alerts.iter().any(|a| a.alert_id == id) {
                    continue;
                }
                let hold = hold_for(rule, patient, &e, &alerts, now);
                let a = raise(
                    id,
                    &e,
                    (rule, &params, patient),
                    hold,
                    team.clone(),
                    now,
                    &mut outcome.out,
                );
                alerts.push(a);
                touched.push(true);
            }
        }
    }
    if let Some((e, id)) = &mut outcome.pending {
        *id = fingerprint(&rule.id, patient, e.start_us);
    }
    outcome.touched = alerts
        .into_iter()
        .zip(touched)
        .filter_map(|(a, t)| t.then_some(a))
        .collect();
    outcome
}

/// Does alert `a` stand for episode `e` (same start, or overlapping in time)?
fn overlaps(a: &Current, e: &Episode) -> bool {
    a.episode_start_us == e.start_us
        || (a.episode_start_us < e.end_us.max(e.start_us + 1)
            && e.start_us < a.episode_end_us.max(a.episode_start_us + 1))
}

/// An episode that overlaps an existing alert: extend it, resolve it when the episode is over,
/// bring it back from a snooze when its worst value got worse.
fn extend(
    a: &mut Current,
    e: &Episode,
    rule: &Rule,
    params: &Params,
    now: i64,
    out: &mut Vec<Transition>,
) {
    let worse = match (e.value, a.value) {
        (Some(new), Some(old)) => match rule.shape(params) {
            Ok(s) if s.lowest => new < old,
            _ => new > old,
        },
        (Some(_), None) => true,
        _ => false,
    };
    let mut changed = false;
    if e.end_us > a.episode_end_us {
        a.episode_end_us = e.end_us;
        changed = true;
    }
    if e.start_us < a.episode_start_us {
        a.episode_start_us = e.start_us;
        changed = true;
    }
    if e.value != a.value && e.value.is_some() {
        a.value = e.value;
        changed = true;
    }
    if changed {
        a.message = rule.message_for(
            params,
            a.value,
            (a.episode_end_us - a.episode_start_us) / 60_000_000,
        );
    }
    if e.resolved && a.status != Status::Resolved {
        a.status = Status::Resolved;
        a.snoozed_until_us = None;
        out.push(a.transition(Event::Resolved, now));
    } else if a.status == Status::Snoozed && worse {
        // A worse reading breaks through a snooze.
        out.push(a.unsnooze("worse_reading", now));
    }
}

/// How a new alert is raised: its level, and why and until when it is held.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Hold {
    pub(super) level: Level,
    pub(super) held: Option<String>,
    pub(super) until: Option<i64>,
}

/// The level and hold of a new alert of `rule` for `patient` for episode `e` at `now`, given
/// the key's alerts as they stand.
pub(super) fn hold_for(
    rule: &Rule,
    patient: &str,
    e: &Episode,
    alerts: &[Current],
    now: i64,
) -> Hold {
    let (gap, expected) = rule.burden_for(patient);
    let level = rule.level_for(patient);
    let hold = |level, why: &str, until| Hold {
        level,
        held: Some(why.to_owned()),
        until,
    };
    if expected {
        return hold(Level::Info, "expected", None);
    }
    let last_end = alerts
        .iter()
        .filter(|a| a.status == Status::Resolved && a.episode_end_us <= e.start_us)
        .map(|a| a.episode_end_us)
        .max();
    if let Some(end) = last_end
        && gap > 0
        && e.start_us - end < gap
        && end + gap > now
    {
        return hold(level, "realert_gap", Some(end + gap));
    }
    if level != Level::Urgent
        && let Some(until) = rule.quiet_for(patient).and_then(|q| q.end_of(now))
    {
        return hold(level, "quiet", Some(until));
    }
    Hold {
        level,
        held: None,
        until: None,
    }
}

/// A new episode: a new alert, `pending` at its start and `firing` now (resolved at once if
/// the episode is already over).
fn raise(
    id: String,
    e: &Episode,
    (rule, params, patient): (&Rule, &Params, &str),
    hold: Hold,
    team: Option<String>,
    now: i64,
    out: &mut Vec<Transition>,
) -> Current {
    let mut a = Current {
        alert_id: id,
        rule: rule.id.clone(),
        title: rule.title.clone(),
        severity: rule.severity,
        level: hold.level,
        patient_id: patient.to_owned(),
        care_team: team,
        status: Status::Pending,
        episode_start_us: e.start_us,
        episode_end_us: e.end_us,
        value: e.value,
        message: rule.message_for(params, e.value, e.minutes()),
        escalation_level: 0,
        last_notified_us: now,
        acknowledged_by: None,
        assignee: None,
        snoozed_until_us: None,
        held: hold.held,
        held_until_us: hold.until,
        last_repeated_us: 0,
    };
    out.push(a.transition(Event::Pending, e.start_us));
    a.status = Status::Firing;
    out.push(a.transition(Event::Firing, now));
    if e.resolved {
        a.status = Status::Resolved;
        out.push(a.transition(Event::Resolved, now));
    }
    a
}

#[cfg(test)]
mod tests;
