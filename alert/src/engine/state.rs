//! The alerts' state in memory: each alert as it stands ([`Current`], the fold of its
//! transitions), the ids by (rule, patient), pending episodes, and the ids of resolved alerts
//! that left memory. Readers (`/v1/alerts`, `/v1/patients`, SSE catch-up) take the state lock
//! briefly; writers serialise on the engine's writer lock and only apply under it
//! ([`super::commit`]). The rules' samples live apart ([`super::series`]): only evaluation
//! uses them.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::episodes::Episode;
use crate::history::{Event, Status, Transition};
use crate::rules::{Level, Severity};

/// An alert as it stands now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Current {
    /// Stable id (fingerprint).
    pub alert_id: String,
    /// Rule id.
    pub rule: String,
    /// Rule title.
    pub title: String,
    /// Severity.
    pub severity: Severity,
    /// Level (urgent, warning, info).
    pub level: Level,
    /// Patient.
    pub patient_id: String,
    /// The care team the alert belongs to (the patient's team now, in API answers; in the
    /// engine's memory, as of the last transition).
    pub care_team: Option<String>,
    /// Status.
    pub status: Status,
    /// Episode start, UTC µs.
    pub episode_start_us: i64,
    /// Episode end so far, UTC µs.
    pub episode_end_us: i64,
    /// Worst value.
    pub value: Option<f64>,
    /// Message.
    pub message: String,
    /// Escalations so far.
    pub escalation_level: u32,
    /// Last time someone was told (firing or escalation), UTC µs.
    pub last_notified_us: i64,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// The person it is assigned to.
    pub assignee: Option<String>,
    /// While snoozed: until when, UTC µs.
    pub snoozed_until_us: Option<i64>,
    /// Why it is held (not pushed): `quiet`, `realert_gap`, `expected`.
    pub held: Option<String>,
    /// Until when it is held (`None` with `held`: for good), UTC µs.
    pub held_until_us: Option<i64>,
    /// Last `repeated` transition, UTC µs (0: none).
    #[serde(skip)]
    pub last_repeated_us: i64,
}

impl Current {
    pub(super) fn from_transition(t: &Transition, previous: Option<&Current>) -> Current {
        let last_notified_us = match t.event {
            Event::Firing
            | Event::Escalated
            | Event::Reassigned
            | Event::Unsnoozed
            | Event::Released => t.at_us,
            _ => previous.map_or(t.at_us, |p| p.last_notified_us),
        };
        let last_repeated_us = match t.event {
            Event::Repeated => t.at_us,
            _ => previous.map_or(0, |p| p.last_repeated_us),
        };
        Current {
            alert_id: t.alert_id.clone(),
            rule: t.rule.clone(),
            title: t.title.clone(),
            severity: t.severity,
            level: t.level,
            patient_id: t.patient_id.clone(),
            care_team: t.care_team.clone(),
            status: t.status,
            episode_start_us: t.episode_start_us,
            episode_end_us: t.episode_end_us,
            value: t.value,
            message: t.message.clone(),
            escalation_level: t.escalation_level,
            last_notified_us,
            acknowledged_by: t.acknowledged_by.clone(),
            assignee: t.assignee.clone(),
            snoozed_until_us: t.snoozed_until_us,
            held: t.held.clone(),
            held_until_us: t.held_until_us,
            last_repeated_us,
        }
    }

    pub(super) fn transition(&self, event: Event, at_us: i64) -> Transition {
        Transition {
            seq: 0,
            at_us,
            alert_id: self.alert_id.clone(),
            rule: self.rule.clone(),
            title: self.title.clone(),
            severity: self.severity,
            level: self.level,
            patient_id: self.patient_id.clone(),
            care_team: self.care_team.clone(),
            status: self.status,
            event,
            episode_start_us: self.episode_start_us,
            episode_end_us: self.episode_end_us,
            value: self.value,
            message: self.message.clone(),
            escalation_level: self.escalation_level,
            acknowledged_by: self.acknowledged_by.clone(),
            previous_care_team: None,
            assignee: self.assignee.clone(),
            snoozed_until_us: self.snoozed_until_us,
            note: None,
            reason: None,
            actor: None,
            notified: None,
            held: self.held.clone(),
            held_until_us: self.held_until_us,
        }
    }
}

impl Current {
    /// Back from a snooze (`reason`: `expired`, `worse_reading`): acknowledged again if someone
    /// had taken it, firing otherwise; the `unsnoozed` transition tells the team again.
    pub(super) fn unsnooze(&mut self, reason: &str, now: i64) -> Transition {
        self.status = if self.acknowledged_by.is_some() {
            Status::Acknowledged
        } else {
            Status::Firing
        };
        self.snoozed_until_us = None;
        let mut t = self.transition(Event::Unsnoozed, now);
        t.reason = Some(reason.to_owned());
        t
    }
}

/// The stable id of an episode: (rule, patient, first start seen).
pub fn fingerprint(rule: &str, patient: &str, start_us: i64) -> String {
    let mut h = Sha256::new();
    h.update(rule.as_bytes());
    h.update([0]);
    h.update(patient.as_bytes());
    h.update([0]);
    h.update(start_us.to_be_bytes());
    let d = h.finalize();
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A (rule, patient) pair.
pub(crate) type Key = (String, String);

/// The alerts as they stand.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) alerts: HashMap<String, Current>,
    pub(super) by_key: HashMap<Key, Vec<String>>,
    pub(super) pending: HashMap<Key, (Episode, String)>,
    /// Ids of resolved alerts that left memory (never reused).
    pub(super) retired: HashSet<String>,
    /// When (wall clock, UTC µs) each resolved alert was resolved: the horizon counts from
    /// there, not from the episode's end in event time (a backfill's episodes ended years ago).
    resolved_at: HashMap<String, i64>,
}

impl State {
    /// The alerts of one (rule, patient), as they stand.
    pub(crate) fn of_key(&self, key: &Key) -> Vec<Current> {
        self.by_key
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.alerts.get(id).cloned())
            .collect()
    }

    /// Has `patient` an alert that is not resolved, or a pending episode, for any of `rules`?
    pub(super) fn open_for(&self, rules: &[crate::rules::Rule], patient: &str) -> bool {
        rules.iter().any(|r| {
            let key = (r.id.clone(), patient.to_owned());
            self.pending.contains_key(&key)
                || self.by_key.get(&key).is_some_and(|ids| {
                    ids.iter()
                        .filter_map(|id| self.alerts.get(id))
                        .any(|a| a.status != Status::Resolved)
                })
        })
    }

    pub(crate) fn apply(&mut self, t: &Transition) {
        if t.status == Status::Resolved {
            self.resolved_at
                .entry(t.alert_id.clone())
                .or_insert(t.at_us);
        } else {
            self.resolved_at.remove(&t.alert_id);
        }
        let prev = self.alerts.get(&t.alert_id);
        let cur = Current::from_transition(t, prev);
        if prev.is_none() {
            self.by_key
                .entry((t.rule.clone(), t.patient_id.clone()))
                .or_default()
                .push(t.alert_id.clone());
        }
        self.alerts.insert(t.alert_id.clone(), cur);
    }

    /// Applies a written change: episode fields first, then the transitions, the pending
    /// episodes and the horizon.
    pub(crate) fn apply_change(
        &mut self,
        updated: Vec<Current>,
        written: &[std::sync::Arc<Transition>],
        pending: Vec<(Key, Option<(Episode, String)>)>,
        retire_before: Option<i64>,
    ) {
        for a in updated {
            if let Some(cur) = self.alerts.get_mut(&a.alert_id) {
                cur.episode_end_us = a.episode_end_us;
                cur.episode_start_us = a.episode_start_us;
                cur.value = a.value;
                cur.message = a.message;
            }
        }
        for t in written {
            self.apply(t);
        }
        for (key, p) in pending {
            match p {
                Some(p) => self.pending.insert(key, p),
                None => self.pending.remove(&key),
            };
        }
        if let Some(before) = retire_before {
            self.retire(before);
        }
    }

    /// Alerts resolved (wall clock) before `before_us` leave memory.
    pub(super) fn retire(&mut self, before_us: i64) {
        let old: Vec<String> = self
            .resolved_at
            .iter()
            .filter(|(_, at)| **at < before_us)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            self.resolved_at.remove(&id);
            if let Some(a) = self.alerts.remove(&id) {
                let key = (a.rule, a.patient_id);
                if let Some(ids) = self.by_key.get_mut(&key) {
                    ids.retain(|i| i != &id);
                    if ids.is_empty() {
                        self.by_key.remove(&key);
                    }
                }
            }
            self.retired.insert(id);
        }
    }
}
