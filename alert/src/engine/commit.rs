//! Commit: every change to the alerts — an evaluation run, a re-routing, an acknowledgement —
//! goes through one path. Writers take the writer lock (so what a writer decided from a
//! snapshot still holds when it is applied); the transitions are written and fsynced with no
//! state lock held (on a runtime worker, under `block_in_place`); then the change is applied
//! under a brief state lock and published. Readers never wait for a disk.

use std::collections::HashSet;
use std::sync::{Arc, MutexGuard};

use crate::episodes::Episode;
use crate::history::{Event, Status, Transition};
use crate::rules::Rule;

use super::reconcile::{Input, reconcile};
use super::samples::Work;
use super::state::{Current, Key, State, fingerprint};
use super::{AlertEngine, lock};

/// Holding it makes the caller the only writer of the alerts.
pub(super) struct Writer<'a>(#[allow(dead_code)] MutexGuard<'a, ()>);

/// A change to the alerts: transitions to write, and what is applied in memory with them.
#[derive(Debug, Default)]
pub(super) struct Change {
    pub(super) out: Vec<Transition>,
    /// Alerts whose episode fields moved (applied before the transitions).
    pub(super) updated: Vec<Current>,
    /// Pending episodes per (rule, patient): set, or cleared with `None`.
    pub(super) pending: Vec<(Key, Option<(Episode, String)>)>,
    /// Resolved alerts resolved before this (wall clock, UTC µs) leave memory.
    pub(super) retire_before: Option<i64>,
}

impl AlertEngine {
    /// Becomes the only writer until the guard is dropped.
    pub(super) fn writer(&self) -> Writer<'_> {
        Writer(lock(&self.inner.writer))
    }

    /// Writes `change`'s transitions durably, then applies the change. Nothing is applied when
    /// the write fails.
    pub(super) fn commit(
        &self,
        _writer: &Writer<'_>,
        change: Change,
    ) -> std::io::Result<Vec<Arc<Transition>>> {
        let Change {
            out,
            updated,
            pending,
            retire_before,
        } = change;
        let written = self.inner.history.append_from_async(out)?;
        let mut st = lock(&self.inner.state);
        for a in updated {
            if let Some(cur) = st.alerts.get_mut(&a.alert_id) {
                cur.episode_end_us = a.episode_end_us;
                cur.episode_start_us = a.episode_start_us;
                cur.value = a.value;
                cur.message = a.message;
            }
        }
        for t in &written {
            st.apply(t);
        }
        for (key, p) in pending {
            match p {
                Some(p) => st.pending.insert(key, p),
                None => st.pending.remove(&key),
            };
        }
        if let Some(before) = retire_before {
            st.retire(before);
        }
        Ok(written)
    }

    /// An evaluation run's commit: each (rule, patient) reconciled (a pure function over a
    /// snapshot of its alerts), escalations of unacknowledged firing alerts, snoozes that ran
    /// out, and the horizon.
    pub(super) fn commit_run(
        &self,
        rules: &[Rule],
        work: Vec<Work>,
        now: i64,
    ) -> std::io::Result<Vec<Arc<Transition>>> {
        // The registry is read before the state lock is taken, never under it.
        let teams: Vec<Option<String>> = work.iter().map(|w| self.team_of(&w.patient)).collect();
        let writer = self.writer();
        let (known, due, awake) = {
            let st = lock(&self.inner.state);
            let known: Vec<(Vec<Current>, HashSet<String>)> = work
                .iter()
                .map(|w| snapshot(&st, &rules[w.rule], w))
                .collect();
            let awake: Vec<Current> = st
                .alerts
                .values()
                .filter(|a| {
                    a.status == Status::Snoozed && a.snoozed_until_us.is_some_and(|u| u <= now)
                })
                .cloned()
                .collect();
            (known, self.due_for_escalation(&st, now), awake)
        };
        let mut change = Change::default();
        let mut seen = HashSet::new();
        for ((w, team), (alerts, retired)) in work.into_iter().zip(teams).zip(known) {
            let rule = &rules[w.rule];
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
            seen.extend(o.touched.iter().map(|a| a.alert_id.clone()));
            change.updated.extend(o.touched);
            change
                .pending
                .push(((rule.id.clone(), w.patient), o.pending));
        }
        for (mut a, notified) in due.into_iter().filter(|d| !seen.contains(&d.0.alert_id)) {
            a.escalation_level += 1;
            let mut t = a.transition(Event::Escalated, now);
            t.notified = notified;
            change.out.push(t);
        }
        // Snoozes that ran out (an alert this run touched is taken as the run left it).
        for a in awake {
            let mut a = match change.updated.iter().find(|u| u.alert_id == a.alert_id) {
                Some(u) if u.status != Status::Snoozed => continue,
                Some(u) => u.clone(),
                None => a,
            };
            change.out.push(a.unsnooze("expired", now));
        }
        let horizon = self.inner.config.resolved_horizon.as_micros() as i64;
        change.retire_before = Some(now.saturating_sub(horizon));
        self.commit(&writer, change)
    }

    /// Firing alerts nobody acknowledged since their last notification, past the escalation
    /// delay — their team's next chain step's, or `escalate_after` below `max_escalations` for
    /// a team without a chain — with who the step tells.
    fn due_for_escalation(&self, st: &State, now: i64) -> Vec<(Current, Option<String>)> {
        let c = &self.inner.config;
        let esc = c.escalate_after.as_micros() as i64;
        let mut due = Vec::new();
        for a in st.alerts.values().filter(|a| a.status == Status::Firing) {
            let since = now - a.last_notified_us;
            let chain = a.care_team.as_ref().and_then(|t| c.chains.get(t));
            match chain.filter(|ch| !ch.is_empty()) {
                Some(ch) => {
                    let next = a.escalation_level + 1;
                    let Some(delay) = ch.delay(next) else {
                        continue;
                    };
                    if since >= delay.as_micros() as i64 {
                        let who = ch.contact(next, now).map(|c| c.who);
                        let who = who.unwrap_or_else(|| "nobody on call".into());
                        due.push((a.clone(), Some(who)));
                    }
                }
                None if a.escalation_level < c.max_escalations && since >= esc => {
                    due.push((a.clone(), None));
                }
                None => {}
            }
        }
        due
    }
}

/// A (rule, patient)'s alerts and which of its episodes' ids are retired.
fn snapshot(st: &State, rule: &Rule, w: &Work) -> (Vec<Current>, HashSet<String>) {
    let alerts = st.of_key(&(rule.id.clone(), w.patient.clone()));
    let retired = w
        .episodes
        .iter()
        .map(|e| fingerprint(&rule.id, &w.patient, e.start_us))
        .filter(|id| st.retired.contains(id))
        .collect();
    (alerts, retired)
}
