//! Gather: each enabled rule's SQL over what changed since its last successful run — the
//! patients and time ranges the store reported (plus the look-back where samples are
//! missing), or everything in the look-back window on a catch-up run.
//!
//! A rule is bounded by `Config::rule_timeout` (the query future, and with it the stream, is
//! dropped) and fails alone: its failure is counted, the other rules go on, and the ranges it
//! took (and its catch-up, if it owed one) are put back for its next run, merged with whatever
//! arrived meanwhile. The same happens to every rule's ranges when the run cannot be committed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::episodes::Sample;
use crate::rules::{Params, Rule};

use super::series::{Pid, Series};
use super::{AlertEngine, floor, for_each_row, lock, lookback_us, rule_batches, scope_sql};

/// Per patient: earliest and latest effective time added, UTC µs.
pub(super) type Dirty = HashMap<String, (i64, i64)>;

/// What one query found: the rule (its index in the run's rules), the patients it covered
/// from `from` on, and its rows.
#[derive(Debug)]
pub(super) struct Found {
    pub(super) rule: usize,
    pub(super) members: Vec<Pid>,
    pub(super) from: i64,
    pub(super) rows: Vec<(Pid, i64, Sample)>,
    /// Patients of a contiguous rule whose open bucket is left for a later run (`Some`: its
    /// start) — to be touched (their watermark moved) whether or not they were queried.
    pub(super) defer: Vec<(Pid, Option<i64>)>,
    /// Patients whose closed buckets were left for a later run (the run's read limit).
    pub(super) carry: Vec<Span>,
}

/// Dirty patients (by id) and their ranges.
type Members = [(Pid, i64, i64)];

/// What to read of one patient for a rule: buckets `[start, end)` (or, carried, the patient's
/// new data `[a, z]`).
pub(super) type Span = (Pid, i64, i64);

/// A query over more patients than this names them by an open [`crate::minutes::Scope`]
/// instead of an `IN` list.
const IN_LIST_MAX: usize = 1000;

/// Which buckets of rule `rule` (the patient's series `s`, watermark `w`) to read for new data
/// in `[a, z]`, and the bucket left for later. A contiguous rule counts a bucket only once it
/// is closed (the patient has data at or past its end), so the open bucket — the one of the
/// patient's newest data — is read once, after it closes, instead of at every run while it
/// fills; an absence rule needs only whether a bucket has data, so buckets known to have some
/// are not read again (`(None, None)`).
fn span(
    rule: &Rule,
    s: &Series,
    w: Option<i64>,
    a: i64,
    z: i64,
) -> (Option<(i64, i64)>, Option<i64>) {
    let b = rule.bucket_us;
    let (fa, fz) = (floor(a, b), floor(z, b));
    if rule.absence {
        let known = (fz - fa) / b < 120 && (0..=(fz - fa) / b).all(|k| s.has(fa + k * b));
        return (if known { None } else { Some((fa, fz + b)) }, None);
    }
    if !rule.contiguous {
        return (Some((fa, fz + b)), None);
    }
    let open = floor(w.unwrap_or(z).max(z), b);
    let start = fa.min(s.deferred.unwrap_or(i64::MAX));
    let end = if s.deferred.is_some() {
        open
    } else {
        (fz + b).min(open)
    };
    let defer = (s.deferred.is_some() || fz + b > open).then_some(open);
    ((start < end).then_some((start, end)), defer)
}

/// Dirty patients sharing one parameter set: `(override patient, [(patient, from, to)])`.
type Group = (Option<String>, Vec<(Pid, i64, i64)>);

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

/// `members` with the patients carried from earlier runs first (their ranges merged with any
/// new data of theirs).
fn with_carried<'a>(carried: &[Span], members: Cow<'a, Members>) -> Cow<'a, Members> {
    if carried.is_empty() {
        return members;
    }
    let mut out: Vec<Span> = carried.to_vec();
    let at: foldhash::HashMap<Pid, usize> = out.iter().enumerate().map(|(k, m)| (m.0, k)).collect();
    for &(p, a, z) in members.iter() {
        match at.get(&p) {
            Some(&k) => (out[k].1, out[k].2) = (out[k].1.min(a), out[k].2.max(z)),
            None => out.push((p, a, z)),
        }
    }
    Cow::Owned(out)
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

    /// Runs every enabled rule over `fresh` (the run's dirty patients, `ids` their interned
    /// form) plus what it owes, each within the timeout. A rule's `covered` holds only what it
    /// owed: on a failed commit the caller adds `fresh` back.
    pub(super) async fn gather(
        &self,
        rules: &[Rule],
        (fresh, ids): (&Dirty, &Members),
        catch_up: bool,
        now: i64,
    ) -> Gathered {
        let mut out = Gathered::default();
        let limit = self.inner.config.rule_timeout;
        for (i, rule) in rules.iter().enumerate().filter(|(_, r)| r.enabled) {
            let mut owed = lock(&self.inner.retry).remove(&rule.id).unwrap_or_default();
            owed.catch_up |= catch_up;
            let carried = lock(&self.inner.samples).take_carry(i);
            let members: Cow<'_, Members> = if owed.dirty.is_empty() {
                Cow::Borrowed(ids)
            } else {
                let mut all = owed.dirty.clone();
                merge(&mut all, fresh);
                Cow::Owned(lock(&self.inner.samples).take_dirty(&all))
            };
            let members = with_carried(&carried, members);
            let run = self.rule_queries(i, rule, owed.catch_up, &members, now);
            let failed = match tokio::time::timeout(limit, run).await {
                Ok(Ok(mut found)) => {
                    // Should the run not commit, the carried patients it read are owed again.
                    let sm = lock(&self.inner.samples);
                    for &(p, a, z) in &carried {
                        let e = owed.dirty.entry(sm.name(p).to_string()).or_insert((a, z));
                        (e.0, e.1) = (e.0.min(a), e.1.max(z));
                    }
                    drop(sm);
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
            lock(&self.inner.samples).carry(i, carried);
            merge(&mut owed.dirty, fresh);
            self.owe(&rule.id, owed);
        }
        out
    }

    /// One rule's queries for this run.
    async fn rule_queries(
        &self,
        i: usize,
        rule: &Rule,
        catch_up: bool,
        members: &Members,
        now: i64,
    ) -> Result<Vec<Found>, String> {
        let mut found = Vec::new();
        if catch_up {
            found.push(self.catch_up_query(i, rule, now).await?);
        }
        if !members.is_empty() {
            found.extend(self.dirty_queries(i, rule, members).await?);
        }
        Ok(found)
    }

    /// Everything in the rule's look-back window, every patient.
    async fn catch_up_query(&self, i: usize, rule: &Rule, now: i64) -> Result<Found, String> {
        let ctx = &self.inner.ctx;
        let lb =
            super::max_lookback_us(rule).max(if rule.absence { 24 * 3_600_000_000 } else { 0 });
        let from = floor(now - lb, rule.bucket_us);
        let err = |e: String| format!("rule {}: {e}", rule.id);
        let sql = rule.render(&rule.params, &scope_sql(from, i64::MAX / 2, None))?;
        let all = rule_batches(ctx, &sql).await.map_err(err)?;
        let mut own = Vec::new();
        for p in rule.overrides.keys() {
            let sql = rule.render(
                &rule.params_for(Some(p)),
                &scope_sql(from, i64::MAX / 2, Some(&[p.as_str()])),
            )?;
            own.push(rule_batches(ctx, &sql).await.map_err(err)?);
        }
        let mut sm = lock(&self.inner.samples);
        let mut rows = Vec::new();
        for_each_row(&all, |p, t, s| {
            if !rule.overrides.contains_key(p) {
                rows.push((sm.intern(p), t, s));
            }
        })
        .map_err(err)?;
        for batches in &own {
            for_each_row(batches, |p, t, s| rows.push((sm.intern(p), t, s))).map_err(err)?;
        }
        let mut members: Vec<Pid> = rows.iter().map(|r| r.0).collect();
        members.sort_unstable();
        members.dedup();
        Ok(Found {
            rule: i,
            members,
            from,
            rows,
            defer: Vec::new(),
            carry: Vec::new(),
        })
    }

    /// The dirty patients and ranges, one query per parameter set (defaults, each override).
    async fn dirty_queries(
        &self,
        i: usize,
        rule: &Rule,
        members: &Members,
    ) -> Result<Vec<Found>, String> {
        let groups: Vec<Group> = if rule.overrides.is_empty() {
            vec![(None, members.to_vec())]
        } else {
            let sm = lock(&self.inner.samples);
            let mut groups: Vec<Group> = vec![(None, Vec::new())];
            for &(p, a, z) in members {
                let name = sm.name(p);
                if rule.overrides.contains_key(&**name) {
                    groups.push((Some(name.to_string()), vec![(p, a, z)]));
                } else {
                    groups[0].1.push((p, a, z));
                }
            }
            groups
        };
        let mut found = Vec::new();
        for (who, members) in groups {
            if !members.is_empty() {
                found.extend(
                    self.group_queries(i, rule, who.as_deref(), &members)
                        .await?,
                );
            }
        }
        Ok(found)
    }

    /// One parameter set's dirty patients: those whose samples reach back far enough need
    /// only their new buckets; the others (new to the rule) get the look-back, in a query of
    /// their own so that they do not stretch everyone's range.
    async fn group_queries(
        &self,
        i: usize,
        rule: &Rule,
        who: Option<&str>,
        members: &Members,
    ) -> Result<Vec<Found>, String> {
        let params = rule.params_for(who);
        let lb = lookback_us(rule, &params);
        let (mut known, mut new, mut defer) = (Vec::new(), Vec::new(), Vec::new());
        let mut carry = Vec::new();
        {
            let sm = lock(&self.inner.samples);
            // Closed buckets of contiguous and absence rules (a minute boundary closes every
            // patient's at once) are read for at most `limit` patients a run, the rest carried
            // to the next; spot rules (a fever) are always read at once.
            let limit = (rule.contiguous || rule.absence).then(|| sm.carry_limit());
            for &(p, a, z) in members {
                let s = sm.series(i, p);
                let (read, later) = span(rule, s, sm.watermark(p), a, z);
                if read.is_some() && limit.is_some_and(|n| known.len() + new.len() >= n) {
                    carry.push((p, a, z));
                    continue;
                }
                if rule.contiguous && !rule.absence {
                    defer.push((p, later));
                }
                let Some((start, end)) = read else { continue };
                if rule.absence || s.complete_from(start - lb) {
                    known.push((p, start, end));
                } else {
                    new.push((p, start, end));
                }
            }
        }
        let mut found = vec![Found {
            rule: i,
            members: Vec::new(),
            from: 0,
            rows: Vec::new(),
            defer,
            carry,
        }];
        for (set, back) in [(known, 0), (new, lb)] {
            if !set.is_empty() {
                found.push(self.range_query(i, rule, &params, &set, back).await?);
            }
        }
        Ok(found)
    }

    /// `members`' buckets from their earliest start (less `back`) to their latest end.
    async fn range_query(
        &self,
        i: usize,
        rule: &Rule,
        params: &Params,
        members: &[Span],
        back: i64,
    ) -> Result<Found, String> {
        let from = members.iter().map(|m| m.1).min().unwrap_or(0) - back;
        let to = members.iter().map(|m| m.2).max().unwrap_or(0);
        let ids: Vec<Pid> = members.iter().map(|m| m.0).collect();
        // Many patients: an open scope the bins read by (an `IN` list that long would cost more
        // to plan than the query); its guard lives until the query has run.
        let (scope, _guard) = if ids.len() <= IN_LIST_MAX {
            let names: Vec<std::sync::Arc<str>> = {
                let sm = lock(&self.inner.samples);
                ids.iter().map(|p| sm.name(*p).clone()).collect()
            };
            let names: Vec<&str> = names.iter().map(|s| &**s).collect();
            (scope_sql(from, to, Some(&names)), None)
        } else {
            let shared = lock(&self.inner.samples).scope_of(&ids);
            let g = self.inner.bins.open_shared_scope(shared);
            (
                format!("{} AND {}", scope_sql(from, to, None), g.sql()),
                Some(g),
            )
        };
        let sql = rule.render(params, &scope)?;
        let err = |e: String| format!("rule {}: {e}", rule.id);
        let batches = rule_batches(&self.inner.ctx, &sql).await.map_err(err)?;
        let set: foldhash::HashSet<Pid> = ids.iter().copied().collect();
        let sm = lock(&self.inner.samples);
        let mut rows = Vec::new();
        for_each_row(&batches, |p, t, s| {
            if let Some(id) = sm.id(p).filter(|id| set.contains(id)) {
                rows.push((id, t, s));
            }
        })
        .map_err(err)?;
        Ok(Found {
            rule: i,
            members: ids,
            from,
            rows,
            defer: Vec::new(),
            carry: Vec::new(),
        })
    }
}
