//! Authorization follows the patient. Who may see or acknowledge an alert is decided by the
//! patient's care team *now* (`Registry::care_team`), never by the team stored when the alert
//! was raised; `unassigned` (or an empty name) is not a team, so such alerts are for admins and
//! analysts only.
//!
//! A move re-routes the patient's open alerts: the next evaluation run (or an acknowledgement,
//! whichever comes first) writes a `reassigned` transition with the new team and the previous
//! one, so the history shows the move and the new team's webhook, MQTT topic and SSE streams
//! hear of the open alert. Nobody on the new team has taken it yet, so an acknowledged alert
//! returns to `firing` and its escalation starts over.

use std::collections::HashSet;

use carewatch_auth::access;
use carewatch_store::registry::{Principal, Registry, valid_team};

use super::commit::Change;
use super::{AlertEngine, Current, lock};
use crate::history::{Event, Status, Transition};

/// The patient's care team now, if it is one.
pub(crate) fn team_now(registry: &Registry, patient: &str) -> Option<String> {
    registry.care_team(patient).filter(|t| valid_team(t))
}

/// May `who` see an alert of a patient whose care team is `team` now? Admins and analysts see
/// all; a care manager only their own (valid) team's — the rule of `carewatch_auth::access`.
pub fn may_see(who: &Principal, team: Option<&str>) -> bool {
    access::sees_all_patients(who) || team.is_some_and(|t| access::in_team(who, t))
}

impl Current {
    /// The `reassigned` transition of an open alert whose patient's team is no longer its own.
    pub(super) fn moved(&self, team: Option<&str>, at_us: i64) -> Option<Transition> {
        let open = matches!(
            self.status,
            Status::Firing | Status::Acknowledged | Status::Snoozed
        );
        if !open || self.care_team.as_deref() == team {
            return None;
        }
        let mut n = self.clone();
        n.care_team = team.map(str::to_owned);
        n.status = Status::Firing;
        n.acknowledged_by = None;
        n.snoozed_until_us = None;
        n.escalation_level = 0;
        let mut t = n.transition(Event::Reassigned, at_us);
        t.previous_care_team = self.care_team.clone();
        Some(t)
    }
}

impl AlertEngine {
    /// The patient's care team now (none when unassigned).
    pub fn team_of(&self, patient: &str) -> Option<String> {
        team_now(&self.inner.registry, patient)
    }

    /// The patients whose alerts `who` may see (`None`: all). A pre-filter only: the registry
    /// is read before the state lock is taken, never under it.
    fn scope(&self, who: &Principal) -> Option<HashSet<String>> {
        if access::sees_all_patients(who) {
            return None;
        }
        Some(
            self.inner
                .registry
                .care_teams()
                .into_iter()
                .filter(|(_, t)| access::in_team(who, t))
                .map(|(p, _)| p)
                .chain(access::break_glass_patients(who).iter().cloned())
                .collect(),
        )
    }

    /// Sets each alert's team to its patient's team now and keeps those `who` may see.
    fn finish(&self, who: &Principal, mut v: Vec<Current>) -> Vec<Current> {
        for a in &mut v {
            a.care_team = self.team_of(&a.patient_id);
        }
        v.retain(|a| {
            may_see(who, a.care_team.as_deref()) || access::by_break_glass(who, &a.patient_id)
        });
        v.sort_by_key(|a| std::cmp::Reverse(a.episode_start_us));
        v
    }

    /// Alerts as they stand (not pending ones) that the caller may see, newest first.
    pub fn current(&self, who: &Principal) -> Vec<Current> {
        let scope = self.scope(who);
        let v: Vec<Current> = lock(&self.inner.state)
            .alerts
            .values()
            .filter(|a| scope.as_ref().is_none_or(|s| s.contains(&a.patient_id)))
            .cloned()
            .collect();
        self.finish(who, v)
    }

    /// Pending episodes (not yet long enough) the caller may see, as alerts with status pending.
    pub fn pending(&self, who: &Principal) -> Vec<Current> {
        let scope = self.scope(who);
        let rules = self.rules();
        let st = lock(&self.inner.state);
        let mut v = Vec::new();
        for ((rule, patient), (e, id)) in &st.pending {
            if scope.as_ref().is_some_and(|s| !s.contains(patient)) {
                continue;
            }
            let Some(r) = rules.iter().find(|r| &r.id == rule) else {
                continue;
            };
            let params = r.params_for(Some(patient));
            v.push(Current {
                alert_id: id.clone(),
                rule: rule.clone(),
                title: r.title.clone(),
                severity: r.severity,
                level: r.level_for(patient),
                patient_id: patient.clone(),
                care_team: None,
                status: Status::Pending,
                episode_start_us: e.start_us,
                episode_end_us: e.end_us,
                value: e.value,
                message: r.message_for(&params, e.value, e.minutes()),
                escalation_level: 0,
                last_notified_us: 0,
                acknowledged_by: None,
                assignee: None,
                snoozed_until_us: None,
                held: None,
                held_until_us: None,
                last_repeated_us: 0,
            });
        }
        drop(st);
        self.finish(who, v)
    }

    /// Writes a `reassigned` transition for every open alert whose patient moved to another
    /// team (or lost theirs) since; returns how many. Called at the start of each run.
    pub(super) fn reassign_moved(&self, owned: &super::Owned, now: i64) -> Result<usize, String> {
        let open: Vec<(String, String)> = lock(&self.inner.state)
            .alerts
            .values()
            .filter(|a| {
                matches!(
                    a.status,
                    Status::Firing | Status::Acknowledged | Status::Snoozed
                ) && owned.owns(&a.patient_id)
            })
            .map(|a| (a.alert_id.clone(), a.patient_id.clone()))
            .collect();
        if open.is_empty() {
            return Ok(0);
        }
        let teams: Vec<(String, Option<String>)> = open
            .into_iter()
            .map(|(id, p)| {
                let t = self.team_of(&p);
                (id, t)
            })
            .collect();
        let writer = self.writer();
        let out: Vec<Transition> = {
            let st = lock(&self.inner.state);
            teams
                .iter()
                .filter_map(|(id, t)| st.alerts.get(id)?.moved(t.as_deref(), now))
                .collect()
        };
        if out.is_empty() {
            return Ok(0);
        }
        let n = out.len();
        let change = Change {
            out,
            ..Change::default()
        };
        let written = self
            .commit(&writer, change)
            .map_err(|e| format!("alert history: {e}"))?;
        drop(writer);
        self.publish(written);
        Ok(n)
    }
}
