//! Replay: the alert lifecycle over stored history, through the live engine's own decisions.
//! A clock steps through the range a minute at a time; at each step the data that arrived by
//! then (event time = arrival: the history as if every reading came on time) joins each rule's
//! samples, the same [`crate::episodes::episodes`] runs with the patient's watermark, and the
//! same [`crate::engine::plan`] — reconcile, holds, releases, repeats, escalations, snoozes
//! running out — decides the transitions, applied to an in-memory [`State`] the way live
//! evaluation applies them after writing. So a replay gives the transitions a live engine
//! evaluating once a minute would have written.
//!
//! People's actions cannot be inferred from data: a replay takes them as a script
//! ([`Scripted`]: at a time, on the open alert of a (rule, patient), an [`Action`]), applied
//! after the step at that time through the same [`Action`] code as `POST /v1/alerts/{id}/…`.
//! Without a script nobody acknowledges anything: the burden is the unanswered worst case.
//!
//! Limits: a bucket longer than a minute is seen with its final value from its first minute
//! (a live engine sees it fill); device-silent rules watch every patient seen so far (live:
//! every patient with a device assigned).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use carewatch_store::registry::{Principal, Role};

use super::Series;
use crate::engine::{Action, Config, State, Work, plan};
use crate::episodes::{Sample, episodes};
use crate::history::{Status, Transition};
use crate::rules::Rule;

const MINUTE: i64 = 60_000_000;

/// A person's action in a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scripted {
    /// When (engine time, UTC µs; applied after the step at or just before it).
    pub at_us: i64,
    /// The rule of the alert.
    pub rule: String,
    /// The patient of the alert (its newest open alert for the rule).
    pub patient_id: String,
    /// Who does it (the `actor` of the transition).
    pub actor: String,
    /// What they do.
    pub action: Action,
}

/// What a replay runs over: the rules' samples per patient (by rule index), and per patient
/// the newest reading time in each minute.
#[derive(Debug)]
pub struct Data {
    /// `series[i]`: rule `i`'s samples.
    pub(crate) series: Vec<Series>,
    /// Per patient: minute start → newest reading time in it.
    pub(crate) readings: HashMap<String, BTreeMap<i64, i64>>,
}

/// The patients' care teams (a registry lookup).
pub type Teams<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// Per (rule index, patient): the samples seen so far, and how far the series has been read.
#[derive(Default)]
struct Seen {
    samples: BTreeMap<i64, Sample>,
    read_to: Option<i64>,
}

/// Replays `[from_us, to_us]` (steps at each minute after `from_us`, up to `to_us`).
pub(crate) fn replay(
    rules: &[Rule],
    config: &Config,
    data: &Data,
    (from_us, to_us): (i64, i64),
    teams: Teams<'_>,
    script: &[Scripted],
) -> Vec<Transition> {
    let mut st = State::default();
    let mut out: Vec<Transition> = Vec::new();
    let mut watermark: HashMap<&str, i64> = HashMap::new();
    let mut seen: HashMap<(usize, &str), Seen> = HashMap::new();
    let mut script: Vec<&Scripted> = script.iter().collect();
    script.sort_by_key(|s| s.at_us);
    let mut next_action = 0;
    // As live evaluation keeps them.
    let keep: Vec<i64> = rules.iter().map(crate::engine::keep_us).collect();
    let horizon = config.resolved_horizon.as_micros() as i64;
    let mut now = from_us.div_euclid(MINUTE) * MINUTE;
    while now < to_us {
        let prev = now;
        now = (now + MINUTE).min(to_us);
        // Patients with readings in [prev, now): their watermark moves.
        let mut dirty: Vec<&str> = Vec::new();
        for (p, mins) in &data.readings {
            if let Some((_, last)) = mins
                .range(prev.div_euclid(MINUTE) * MINUTE..now)
                .next_back()
            {
                let w = watermark.entry(p.as_str()).or_insert(*last);
                *w = (*w).max(*last);
                dirty.push(p.as_str());
            }
        }
        dirty.sort_unstable();
        let mut work = Vec::new();
        for (i, rule) in rules.iter().enumerate().filter(|(_, r)| r.enabled) {
            let pats: Vec<&str> = if rule.absence {
                watermark.keys().copied().collect()
            } else {
                dirty.clone()
            };
            for p in pats {
                let s = seen.entry((i, p)).or_default();
                if let Some(all) = data.series[i].get(p) {
                    let from = s.read_to.unwrap_or(i64::MIN);
                    s.samples
                        .extend(all.range(from..now).map(|(t, v)| (*t, *v)));
                    s.read_to = Some(now);
                }
                let Ok(shape) = rule.shape(&rule.params_for(Some(p))) else {
                    continue;
                };
                let w = watermark.get(p).copied().unwrap_or(i64::MIN / 2);
                let closed = if rule.absence { now } else { w };
                let eps = episodes(&s.samples, &shape, closed);
                // Samples nobody needs any more (as live evaluation prunes them).
                let edge = w.min(now) - keep[i];
                if s.samples.first_key_value().is_some_and(|(t, _)| *t < edge) {
                    s.samples = s.samples.split_off(&edge);
                }
                work.push((
                    Work {
                        rule: i,
                        patient: p.to_owned(),
                        episodes: eps,
                    },
                    teams(p),
                ));
            }
        }
        let idle = work.is_empty() && st.alerts.values().all(|a| a.status == Status::Resolved);
        if !idle {
            let mut change = plan(&st, rules, config, work, &|_| true, now);
            change.retire_before = Some(now.saturating_sub(horizon));
            let written = number(&mut out, change.out);
            st.apply_change(
                change.updated,
                &written,
                change.pending,
                change.retire_before,
            );
        }
        while let Some(s) = script.get(next_action).filter(|s| s.at_us <= now) {
            next_action += 1;
            if let Some(t) = act(&st, s, now) {
                let written = number(&mut out, vec![t]);
                st.apply_change(Vec::new(), &written, Vec::new(), None);
            }
        }
    }
    out
}

/// Numbers transitions after `out`'s and appends them; returns them as written.
fn number(out: &mut Vec<Transition>, ts: Vec<Transition>) -> Vec<Arc<Transition>> {
    let mut written = Vec::with_capacity(ts.len());
    for mut t in ts {
        t.seq = out.len() as u64;
        out.push(t.clone());
        written.push(Arc::new(t));
    }
    written
}

/// A scripted action on the newest open alert of its (rule, patient), as `act` does it live.
fn act(st: &State, s: &Scripted, now: i64) -> Option<Transition> {
    s.action.validate().ok()?;
    let a = st
        .of_key(&(s.rule.clone(), s.patient_id.clone()))
        .into_iter()
        .filter(|a| a.status != Status::Resolved)
        .max_by_key(|a| a.episode_start_us)?;
    let who = Principal {
        id: s.actor.clone(),
        role: Role::Admin,
        subject: None,
        person: None,
    };
    s.action.apply(&a, &who, now).ok().flatten()
}
