//! Gather: each enabled rule's SQL over what changed since its last successful run — the
//! patients and time ranges the store reported (plus the look-back where samples are
//! missing), or everything in the look-back window on a catch-up run.
//!
//! A rule is bounded by `Config::rule_timeout` (the query future, and with it the stream, is
//! dropped) and fails alone: its failure is counted, the other rules go on, and the ranges it
//! took (and its catch-up, if it owed one) are put back for its next run, merged with whatever
//! arrived meanwhile. The same happens to every rule's ranges when the run cannot be committed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use crate::episodes::Sample;
use crate::rules::Rule;

use super::{AlertEngine, floor, lock, lookback_us, run_rule_sql, scope_sql};

/// Per patient: earliest and latest effective time added, UTC µs.
pub(super) type Dirty = HashMap<String, (i64, i64)>;

/// `(rule, patients covered, from, rows)` of one query.
pub(super) type Found = (String, HashSet<String>, i64, Vec<(String, i64, Sample)>);

/// Dirty patients sharing one parameter set: `(override patient, [(patient, from, to)])`.
type Group<'a> = (Option<&'a str>, Vec<(&'a str, i64, i64)>);

/// What a rule still owes after a failed run.
#[derive(Debug, Default)]
pub(super) struct Owed {
    pub(super) dirty: Dirty,
    pub(super) catch_up: bool,
}

/// The results of a run and, per rule that succeeded, what it covered.
#[derive(Debug, Default)]
pub(super) struct Gathered {
    pub(super) found: Vec<Found>,
    pub(super) covered: Vec<(String, Owed)>,
}

/// Rule failures by kind (the metric's fixed label vocabulary).
#[derive(Debug, Default)]
pub(super) struct FailureCounts {
    pub(super) error: std::sync::atomic::AtomicU64,
    pub(super) timeout: std::sync::atomic::AtomicU64,
}

/// Rule failures so far: `carewatch_rule_failures_total{reason="error"|"timeout"}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleFailures {
    /// The query failed (bad plan, execution or memory error).
    pub error: u64,
    /// The query ran past the rule timeout and was cancelled.
    pub timeout: u64,
}

pub(super) fn merge(into: &mut Dirty, from: &Dirty) {
    for (p, (a, b)) in from {
        let e = into.entry(p.clone()).or_insert((*a, *b));
        e.0 = e.0.min(*a);
        e.1 = e.1.max(*b);
    }
}

impl AlertEngine {
    /// Rule failures so far, by kind.
    pub fn rule_failures(&self) -> RuleFailures {
        let f = &self.inner.failures;
        RuleFailures {
            error: f.error.load(Ordering::Relaxed),
            timeout: f.timeout.load(Ordering::Relaxed),
        }
    }

    /// Puts `owed` back for `rule`'s next run (merged with what it already owes).
    pub(super) fn owe(&self, rule: &str, owed: Owed) {
        let mut r = lock(&self.inner.retry);
        let e = r.entry(rule.to_owned()).or_default();
        merge(&mut e.dirty, &owed.dirty);
        e.catch_up |= owed.catch_up;
    }

    /// Runs every enabled rule over `fresh` (plus what it owes), each within the timeout.
    pub(super) async fn gather(
        &self,
        rules: &[Rule],
        fresh: &Dirty,
        catch_up: bool,
        now: i64,
    ) -> Gathered {
        let mut out = Gathered::default();
        let limit = self.inner.config.rule_timeout;
        for rule in rules.iter().filter(|r| r.enabled) {
            let mut owed = lock(&self.inner.retry).remove(&rule.id).unwrap_or_default();
            merge(&mut owed.dirty, fresh);
            owed.catch_up |= catch_up;
            let run = self.rule_queries(rule, &owed, now);
            let failed = match tokio::time::timeout(limit, run).await {
                Ok(Ok(mut found)) => {
                    out.found.append(&mut found);
                    out.covered.push((rule.id.clone(), owed));
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::debug!(rule = %rule.id, error = %e, "rule evaluation error");
                    tracing::warn!(rule = %rule.id, "rule evaluation failed; retrying its ranges next run");
                    &self.inner.failures.error
                }
                Err(_) => {
                    tracing::warn!(rule = %rule.id, timeout_ms = limit.as_millis() as u64, "rule evaluation timed out; retrying its ranges next run");
                    &self.inner.failures.timeout
                }
            };
            failed.fetch_add(1, Ordering::Relaxed);
            self.owe(&rule.id, owed);
        }
        out
    }

    /// One rule's queries for this run.
    async fn rule_queries(&self, rule: &Rule, owed: &Owed, now: i64) -> Result<Vec<Found>, String> {
        let mut found = Vec::new();
        if owed.catch_up {
            found.push(self.catch_up_query(rule, now).await?);
        }
        if !owed.dirty.is_empty() {
            found.extend(self.dirty_queries(rule, &owed.dirty).await?);
        }
        Ok(found)
    }

    /// Everything in the rule's look-back window, every patient.
    async fn catch_up_query(&self, rule: &Rule, now: i64) -> Result<Found, String> {
        let ctx = &self.inner.ctx;
        let lb = lookback_us(rule, &rule.params)
            .max(if rule.absence { 24 * 3_600_000_000 } else { 0 })
            .max(
                rule.overrides
                    .keys()
                    .map(|p| lookback_us(rule, &rule.params_for(Some(p))))
                    .max()
                    .unwrap_or(0),
            );
        let from = floor(now - lb, rule.bucket_us);
        let sql = rule.render(&rule.params, &scope_sql(from, i64::MAX / 2, None))?;
        let mut rows = run_rule_sql(ctx, &sql)
            .await
            .map_err(|e| format!("rule {}: {e}", rule.id))?;
        for p in rule.overrides.keys() {
            let sql = rule.render(
                &rule.params_for(Some(p)),
                &scope_sql(from, i64::MAX / 2, Some(&[p.as_str()])),
            )?;
            rows.retain(|r| &r.0 != p);
            rows.extend(
                run_rule_sql(ctx, &sql)
                    .await
                    .map_err(|e| format!("rule {}: {e}", rule.id))?,
            );
        }
        let pats: HashSet<String> = rows.iter().map(|r| r.0.clone()).collect();
        Ok((rule.id.clone(), pats, from, rows))
    }

    /// The dirty patients and ranges, one query per parameter set (defaults, each override).
    async fn dirty_queries(&self, rule: &Rule, dirty: &Dirty) -> Result<Vec<Found>, String> {
        let mut groups: Vec<Group<'_>> = vec![(None, Vec::new())];
        for (p, (a, z)) in dirty {
            if rule.overrides.contains_key(p) {
                groups.push((Some(p.as_str()), vec![(p.as_str(), *a, *z)]));
            } else {
                groups[0].1.push((p.as_str(), *a, *z));
            }
        }
        let mut found = Vec::new();
        for (who, members) in groups {
            if !members.is_empty() {
                found.push(self.group_query(rule, who, &members).await?);
            }
        }
        Ok(found)
    }

    async fn group_query(
        &self,
        rule: &Rule,
        who: Option<&str>,
        members: &[(&str, i64, i64)],
    ) -> Result<Found, String> {
        let b = rule.bucket_us;
        let params = rule.params_for(who);
        let lb = lookback_us(rule, &params);
        let (mut from, mut to) = (i64::MAX, i64::MIN);
        {
            let sm = lock(&self.inner.samples);
            for (p, a, z) in members {
                let known = sm
                    .series
                    .get(&(rule.id.clone(), (*p).to_owned()))
                    .is_some_and(|s| s.from_us <= floor(*a, b) - lb);
                let start = if known || rule.absence {
                    floor(*a, b)
                } else {
                    floor(*a, b) - lb
                };
                from = from.min(start);
                to = to.max(floor(*z, b) + b);
            }
        }
        let names: Vec<&str> = members.iter().map(|m| m.0).collect();
        let filter = (names.len() <= 1000).then_some(names.as_slice());
        let sql = rule.render(&params, &scope_sql(from, to, filter))?;
        let rows = run_rule_sql(&self.inner.ctx, &sql)
            .await
            .map_err(|e| format!("rule {}: {e}", rule.id))?;
        let set: HashSet<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let rows = rows.into_iter().filter(|r| set.contains(&r.0)).collect();
        Ok((rule.id.clone(), set, from, rows))
    }
}
