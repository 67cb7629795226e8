//! Reconcile: one (rule, patient)'s episodes against the alerts already raised for it — by
//! time overlap an episode extends (or resolves) its alert; a new one gets
//! `fingerprint(rule, patient, first start)` and `pending` + `firing` transitions. Retired ids
//! are never raised again. Nothing here is written: transitions are staged for the commit.

use std::collections::HashMap;

use carewatch_store::registry::{Registry, valid_team};

use crate::episodes::{Episode, episodes};
use crate::history::{Event, Status, Transition};
use crate::rules::{Params, Rule};

use super::{Current, State, fingerprint};

/// Transitions to write and alerts changed in this run.
#[derive(Debug, Default)]
pub(super) struct Staging {
    pub(super) out: Vec<Transition>,
    pub(super) staged: HashMap<String, Current>,
}

/// Reconciles `rule`'s episodes of `patient` with its alerts.
pub(super) fn reconcile(
    st: &mut State,
    registry: &Registry,
    rule: &Rule,
    patient: &str,
    now: i64,
    stg: &mut Staging,
) {
    let params = rule.params_for(Some(patient));
    let Ok(shape) = rule.shape(&params) else {
        return;
    };
    let closed_until = if rule.absence {
        now
    } else {
        st.watermark.get(patient).copied().unwrap_or(i64::MIN / 2)
    };
    let key = (rule.id.clone(), patient.to_owned());
    // A monitored patient with nothing in the window has no samples: no episode.
    let eps = st
        .series
        .get(&key)
        .map(|s| episodes(&s.samples, &shape, closed_until))
        .unwrap_or_default();
    let team = registry.care_team(patient).filter(|t| valid_team(t));
    let mut pending = None;
    for e in eps {
        if !e.qualified {
            if !e.resolved {
                pending = Some(e);
            }
            continue;
        }
        let existing = st
            .by_key
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|id| stg.staged.get(id).or_else(|| st.alerts.get(id)))
            .find(|a| {
                a.episode_start_us == e.start_us
                    || (a.episode_start_us < e.end_us.max(e.start_us + 1)
                        && e.start_us < a.episode_end_us.max(a.episode_start_us + 1))
            })
            .cloned();
        match existing {
            Some(a) => extend(a, &e, rule, &params, now, stg),
            None => raise(st, &e, rule, &params, patient, team.clone(), now, stg),
        }
    }
    match pending {
        Some(e) => {
            let id = fingerprint(&rule.id, patient, e.start_us);
            st.pending.insert(key, (e, id));
        }
        None => {
            st.pending.remove(&key);
        }
    }
}

/// An episode that overlaps an existing alert: extend it, resolve it when the episode is over.
fn extend(mut a: Current, e: &Episode, rule: &Rule, params: &Params, now: i64, stg: &mut Staging) {
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
        stg.out.push(a.transition(Event::Resolved, now));
    }
    stg.staged.insert(a.alert_id.clone(), a);
}

/// A new episode: a new alert, `pending` at its start and `firing` now (resolved at once if
/// the episode is already over).
#[allow(clippy::too_many_arguments)]
fn raise(
    st: &State,
    e: &Episode,
    rule: &Rule,
    params: &Params,
    patient: &str,
    team: Option<String>,
    now: i64,
    stg: &mut Staging,
) {
    let id = fingerprint(&rule.id, patient, e.start_us);
    if st.alerts.contains_key(&id) || stg.staged.contains_key(&id) || st.retired.contains(&id) {
        return;
    }
    let mut a = Current {
        alert_id: id.clone(),
        rule: rule.id.clone(),
        title: rule.title.clone(),
        severity: rule.severity,
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
    };
    stg.out.push(a.transition(Event::Pending, e.start_us));
    a.status = Status::Firing;
    stg.out.push(a.transition(Event::Firing, now));
    if e.resolved {
        a.status = Status::Resolved;
        stg.out.push(a.transition(Event::Resolved, now));
    }
    stg.staged.insert(id, a);
}
