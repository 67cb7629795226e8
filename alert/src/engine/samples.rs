//! Absorb: a run's query results join the samples kept per (rule, patient) ([`super::series`]);
//! the pairs that got rows (and, for device-silent rules, every patient with samples) have
//! their episodes computed, and those that may change an alert go to the reconcile; the
//! series the run touched are pruned (all of them once a minute). Only the evaluation loop
//! takes the samples lock, so none of this delays a reader.
//!
//! The work is proportional to the rows a run gathered, not to the patients held: a pair
//! whose samples hold no hit (and whose last episodes were none) has no episode and is not
//! reconciled — the reconcile of no episodes changes nothing unless there were some before
//! (it clears the pending one), so that pair goes once more.

use std::sync::atomic::Ordering;

use crate::episodes::{Episode, Shape, episodes};
use crate::rules::Rule;

use super::gather::Found;
use super::series::{Pid, Samples, Series};
use super::{AlertEngine, lock};

/// One (rule, patient) to reconcile and its episodes as of this run.
#[derive(Debug)]
pub(crate) struct Work {
    /// Index of the rule in the run's rules.
    pub(crate) rule: usize,
    pub(crate) patient: String,
    pub(crate) episodes: Vec<Episode>,
}

impl AlertEngine {
    /// Adds `found` to the samples and returns the (rule, patient) pairs to reconcile, in
    /// (rule id, patient) order.
    pub(super) fn absorb(&self, rules: &[Rule], found: Vec<Found>, now: i64) -> Vec<Work> {
        let mut sm = lock(&self.inner.samples);
        let mut touched: Vec<(usize, Pid)> = Vec::new();
        for f in found {
            for (p, t, sample) in f.rows {
                sm.series_mut(f.rule, p).insert(t, sample);
                // A catch-up (perhaps a retried one) learns the watermark from its rows.
                sm.raise(p, t);
                touched.push((f.rule, p));
            }
            for &p in &f.members {
                let s = sm.series_mut(f.rule, p);
                // Covered already, no samples (no rows now either), no episodes last run:
                // covering and reconciling it again would change nothing.
                if s.complete_from(f.from) && s.samples().is_empty() && s.quiet {
                    continue;
                }
                s.cover(f.from);
                touched.push((f.rule, p));
            }
            if !f.carry.is_empty() {
                sm.carry(f.rule, f.carry);
            }
            for &(p, later) in &f.defer {
                let s = sm.series_mut(f.rule, p);
                // The same open bucket as last run and no hit held: no episode either way (the
                // once-a-minute sweep prunes it).
                if s.deferred == later && s.no_hits() && s.quiet {
                    continue;
                }
                s.deferred = later;
                touched.push((f.rule, p));
            }
        }
        // Device-silent rules advance with the clock for every patient with samples: those
        // whose silence may have begun or ended (not quiet last run, or the gap from their
        // newest bucket to now has reached the rule's `for`).
        for (i, rule) in rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.enabled && r.absence)
        {
            let shape = rule.shape(&rule.params).ok();
            let all: Vec<Pid> = sm
                .with_samples(i)
                .filter(|&p| {
                    let s = sm.series(i, p);
                    !s.quiet
                        || !rule.overrides.is_empty()
                        || shape.is_none_or(|sh| silence_may_start(s, &sh, now))
                })
                .collect();
            touched.extend(all.into_iter().map(|p| (i, p)));
        }
        touched.sort_unstable();
        touched.dedup();
        // The shape with the default parameters, once per rule (most patients have no override).
        let shapes: Vec<Option<Shape>> = rules.iter().map(|r| r.shape(&r.params).ok()).collect();
        let mut work = Vec::new();
        for (i, p) in touched {
            let rule = &rules[i];
            let name = sm.name(p);
            let shape = if rule.overrides.contains_key(&**name) {
                rule.shape(&rule.params_for(Some(name))).ok()
            } else {
                shapes[i]
            };
            let Some(shape) = shape else { continue };
            let closed_until = if rule.absence {
                now
            } else {
                sm.watermark(p).unwrap_or(i64::MIN / 2)
            };
            if let Some(episodes) = changed(sm.series_mut(i, p), &shape, closed_until) {
                work.push(Work {
                    rule: i,
                    patient: sm.name(p).to_string(),
                    episodes,
                });
            }
            sm.prune(i, p, now);
        }
        let stale = sm.sweep(now);
        if !stale.is_empty() {
            let st = lock(&self.inner.state);
            let gone: Vec<Pid> = stale
                .into_iter()
                .filter(|p| !st.open_for(rules, sm.name(*p)))
                .collect();
            drop(st);
            sm.forget_all(&gone);
        }
        if let Some(held) = sm.held_at_sweep() {
            self.inner.samples_held.store(held, Ordering::Relaxed);
        }
        work.sort_by(|a, b| (&rules[a.rule].id, &a.patient).cmp(&(&rules[b.rule].id, &b.patient)));
        work
    }

    /// Patients whose closed buckets are carried to a later run, over every rule.
    pub fn carried(&self) -> usize {
        lock(&self.inner.samples).carried()
    }

    /// Reads at most `n` patients' closed buckets per contiguous or absence rule and run
    /// (default 20,000), carrying the rest to the next run.
    pub fn set_carry_limit(&self, n: usize) {
        lock(&self.inner.samples).set_carry_limit(n);
    }

    /// Patients and samples held by the rules (for the benchmarks' memory figures).
    pub fn samples_size(&self) -> (usize, usize) {
        let sm = lock(&self.inner.samples);
        (sm.patients(), sm.held())
    }

    /// Samples held by the rules as of the last once-a-minute sweep (without the samples'
    /// lock, for `/metrics`); 0 before the first.
    pub fn samples_held(&self) -> usize {
        self.inner.samples_held.load(Ordering::Relaxed)
    }
}

/// The series' episodes, when reconciling them may change something: there are some, or
/// there were some at the last run (`None`: nothing to reconcile).
fn changed(s: &mut Series, shape: &Shape, closed_until: i64) -> Option<Vec<Episode>> {
    let none = if shape.absence {
        no_gap(s, shape, closed_until)
    } else {
        s.no_hits()
    };
    let episodes = if none {
        Vec::new()
    } else {
        episodes(
            s.samples().iter().map(|h| (h.t(), h.sample())),
            shape,
            closed_until,
        )
    };
    let was_quiet = std::mem::replace(&mut s.quiet, episodes.is_empty());
    (!(was_quiet && episodes.is_empty())).then_some(episodes)
}

/// An absence rule's samples without a gap of `for` between data buckets nor from the last
/// one to `now` (what [`episodes`] would find none in), without building a vector.
fn no_gap(s: &Series, shape: &Shape, now: i64) -> bool {
    let b = shape.bucket_us.max(1);
    let min = shape.for_us.max(1);
    let mut prev: Option<i64> = None;
    for t in s.before(now).iter().map(super::series::Held::t) {
        if prev.is_some_and(|p| t - (p + b) >= min) {
            return false;
        }
        prev = Some(t);
    }
    prev.is_none_or(|p| now - (p + b) < min)
}

/// Whether a device-silent series that had no gap last run (`quiet`) may have one now: the
/// time from its newest bucket before `now` to `now` has reached the rule's `for`, or it holds
/// buckets from after `now` (future-skewed data, which the clock reaching them brings into
/// view). Other gaps cannot have appeared without new samples, which touch the series anyway.
fn silence_may_start(s: &Series, shape: &Shape, now: i64) -> bool {
    if s.samples().last().is_some_and(|e| e.t() >= now) {
        return true;
    }
    match s.before(now).last() {
        Some(h) => now - (h.t() + shape.bucket_us.max(1)) >= shape.for_us.max(1),
        None => true,
    }
}

impl Samples {
    /// The patients' ids, interned, with their watermarks raised to the newest data reported.
    pub(super) fn take_dirty(&mut self, dirty: &super::gather::Dirty) -> Vec<(Pid, i64, i64)> {
        dirty
            .iter()
            .map(|(p, (a, b))| {
                let id = self.intern(p);
                self.raise(id, *b);
                (id, *a, *b)
            })
            .collect()
    }
}
