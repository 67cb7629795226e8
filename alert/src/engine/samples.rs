//! Absorb: a run's query results join the samples kept per (rule, patient); every pair that
//! got rows (and, for device-silent rules, every monitored patient) has its episodes computed
//! for the reconcile; samples older than any rule's look-back before the watermark are pruned.
//! Only the evaluation loop takes the samples lock, so none of this delays a reader.

use std::collections::{BTreeSet, HashMap};

use crate::episodes::{Episode, episodes};
use crate::rules::Rule;

use super::gather::{Dirty, Found};
use super::state::{Key, Samples};
use super::{AlertEngine, lock, lookback_us, monitored};

/// One (rule, patient) to reconcile and its episodes as of this run.
#[derive(Debug)]
pub(crate) struct Work {
    /// Index of the rule in the run's rules.
    pub(crate) rule: usize,
    pub(crate) patient: String,
    pub(crate) episodes: Vec<Episode>,
}

impl AlertEngine {
    /// Raises the patients' watermarks to the newest data the store reported.
    pub(super) fn raise_watermarks(&self, dirty: &Dirty) {
        let mut sm = lock(&self.inner.samples);
        for (p, (_, b)) in dirty {
            let w = sm.watermark.entry(p.clone()).or_insert(*b);
            *w = (*w).max(*b);
        }
    }

    /// Adds `found` to the samples and returns the (rule, patient) pairs to reconcile.
    pub(super) fn absorb(&self, rules: &[Rule], found: Vec<Found>, now: i64) -> Vec<Work> {
        let watched = monitored(&self.inner.registry, now);
        let mut sm = lock(&self.inner.samples);
        let mut touched: BTreeSet<Key> = BTreeSet::new();
        for (rule, pats, from, rows) in found {
            for p in &pats {
                let s = sm.series.entry((rule.clone(), p.clone())).or_default();
                if s.samples.is_empty() || from < s.from_us {
                    s.from_us = from;
                }
                touched.insert((rule.clone(), p.clone()));
            }
            for (p, t, sample) in rows {
                let s = sm.series.entry((rule.clone(), p.clone())).or_default();
                s.samples.insert(t, sample);
                // A catch-up (perhaps a retried one) learns the watermark from its rows.
                let w = sm.watermark.entry(p).or_insert(t);
                *w = (*w).max(t);
            }
        }
        // Device-silent rules advance with the clock for every monitored patient.
        for rule in rules.iter().filter(|r| r.enabled && r.absence) {
            for p in &watched {
                touched.insert((rule.id.clone(), p.clone()));
            }
            for (r, p) in sm.series.keys() {
                if r == &rule.id {
                    touched.insert((r.clone(), p.clone()));
                }
            }
        }
        // The shape with the default parameters, once per rule (most patients have no override).
        let shapes: Vec<Option<crate::episodes::Shape>> =
            rules.iter().map(|r| r.shape(&r.params).ok()).collect();
        let work = touched
            .into_iter()
            .filter_map(|(rule_id, patient)| {
                let i = rules.iter().position(|r| r.id == rule_id)?;
                let rule = &rules[i];
                let shape = if rule.overrides.contains_key(&patient) {
                    rule.shape(&rule.params_for(Some(&patient))).ok()?
                } else {
                    shapes[i]?
                };
                let episodes = episodes_of(&sm, rule, &shape, &patient, now);
                Some(Work {
                    rule: i,
                    patient,
                    episodes,
                })
            })
            .collect();
        prune(&mut sm, rules, now);
        work
    }
}

/// The episodes of `rule` (of `shape` for this patient) for `patient` in the samples.
fn episodes_of(
    sm: &Samples,
    rule: &Rule,
    shape: &crate::episodes::Shape,
    patient: &str,
    now: i64,
) -> Vec<Episode> {
    let closed_until = if rule.absence {
        now
    } else {
        sm.watermark.get(patient).copied().unwrap_or(i64::MIN / 2)
    };
    // A monitored patient with nothing in the window has no samples: no episode.
    sm.series
        .get(&(rule.id.clone(), patient.to_owned()))
        .map(|s| episodes(&s.samples, shape, closed_until))
        .unwrap_or_default()
}

/// Drops samples nobody needs: older than a rule's look-back before the patient's watermark.
fn prune(sm: &mut Samples, rules: &[Rule], now: i64) {
    let retain: HashMap<&str, i64> = rules
        .iter()
        .map(|r| {
            let lb = std::iter::once(lookback_us(r, &r.params))
                .chain(
                    r.overrides
                        .keys()
                        .map(|p| lookback_us(r, &r.params_for(Some(p)))),
                )
                .max()
                .unwrap_or(0);
            (r.id.as_str(), lb + r.bucket_us)
        })
        .collect();
    let Samples { watermark, series } = sm;
    for ((rule, p), s) in series.iter_mut() {
        let keep = retain.get(rule.as_str()).copied().unwrap_or(3_600_000_000);
        let edge = watermark.get(p).copied().unwrap_or(now).min(now) - keep;
        if s.samples.first_key_value().is_some_and(|(t, _)| *t < edge) {
            s.samples = s.samples.split_off(&edge);
            s.from_us = s.from_us.max(edge);
        }
    }
}
