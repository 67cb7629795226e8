//! `carewatch rules backtest`: the same rules over stored history. Each rule's SQL runs day by
//! day over the range; the samples feed the same [`crate::episodes::episodes`] as live
//! evaluation, with every bucket in the range closed, so a backtest finds the episodes live
//! evaluation raised over the same data.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::engine::{run_rule_sql, scope_sql};
use crate::episodes::{Sample, episodes};
use crate::rules::Rule;

const DAY: i64 = 86_400_000_000;

/// One episode the rules would have raised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Found {
    /// Rule id.
    pub rule: String,
    /// Patient.
    pub patient_id: String,
    /// Episode start, RFC 3339.
    pub start: String,
    /// Episode end (exclusive), RFC 3339.
    pub end: String,
    /// Minutes.
    pub minutes: i64,
    /// Worst value.
    pub value: Option<f64>,
    /// The condition cleared before the range ended.
    pub resolved: bool,
    /// Message as it would have been sent.
    pub message: String,
}

/// Alarm burden of one rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleSummary {
    /// Rule id.
    pub rule: String,
    /// Alerts raised.
    pub alerts: usize,
    /// Patients with at least one alert.
    pub patients: usize,
    /// Alerts per patient-day with data.
    pub alerts_per_patient_day: f64,
}

/// What a backtest found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Range start, RFC 3339.
    pub from: String,
    /// Range end, RFC 3339.
    pub to: String,
    /// Distinct (patient, UTC day) pairs with data.
    pub patient_days: usize,
    /// Per rule.
    pub rules: Vec<RuleSummary>,
    /// Per patient and day: alerts (`patient_id`, `day`, count).
    pub per_patient_day: Vec<(String, String, usize)>,
    /// Every episode, by rule, patient, start.
    pub alerts: Vec<Found>,
}

pub use crate::iso;

/// Runs `rules` over `[from_us, to_us)`; `progress(done, total)` after each rule-day.
pub async fn backtest(
    ctx: &SessionContext,
    rules: &[Rule],
    from_us: i64,
    to_us: i64,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Report, String> {
    let days: Vec<(i64, i64)> = {
        let mut v = Vec::new();
        let mut d = from_us;
        while d < to_us {
            let e = ((d.div_euclid(DAY) + 1) * DAY).min(to_us);
            v.push((d, e));
            d = e;
        }
        v
    };
    let total = (rules.len() * days.len()) as u64;
    let mut done = 0u64;
    let mut patient_days: BTreeSet<(String, i64)> = BTreeSet::new();
    let mut found = Vec::new();
    for rule in rules {
        let mut series: HashMap<String, BTreeMap<i64, Sample>> = HashMap::new();
        for &(a, z) in &days {
            let sql = rule.render(&rule.params, &scope_sql(a, z, None))?;
            let mut rows = run_rule_sql(ctx, &sql)
                .await
                .map_err(|e| format!("rule {}: {e}", rule.id))?;
            for p in rule.overrides.keys() {
                rows.retain(|r| &r.0 != p);
                let sql = rule.render(
                    &rule.params_for(Some(p)),
                    &scope_sql(a, z, Some(&[p.as_str()])),
                )?;
                rows.extend(
                    run_rule_sql(ctx, &sql)
                        .await
                        .map_err(|e| format!("rule {}: {e}", rule.id))?,
                );
            }
            for (p, t, s) in rows {
                patient_days.insert((p.clone(), t.div_euclid(DAY)));
                series.entry(p).or_default().insert(t, s);
            }
            done += 1;
            progress(done, total);
        }
        let mut pats: Vec<_> = series.into_iter().collect();
        pats.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, samples) in pats {
            let params = rule.params_for(Some(&p));
            let shape = rule.shape(&params)?;
            for e in episodes(&samples, &shape, to_us) {
                if !e.qualified {
                    continue;
                }
                found.push(Found {
                    rule: rule.id.clone(),
                    patient_id: p.clone(),
                    start: iso(e.start_us),
                    end: iso(e.end_us),
                    minutes: e.minutes(),
                    value: e.value,
                    resolved: e.resolved,
                    message: rule.message_for(&params, e.value, e.minutes()),
                });
            }
        }
    }
    let pd = patient_days.len().max(1);
    let summaries = rules
        .iter()
        .map(|r| {
            let mine: Vec<&Found> = found.iter().filter(|f| f.rule == r.id).collect();
            let patients: BTreeSet<&str> = mine.iter().map(|f| f.patient_id.as_str()).collect();
            RuleSummary {
                rule: r.id.clone(),
                alerts: mine.len(),
                patients: patients.len(),
                alerts_per_patient_day: mine.len() as f64 / pd as f64,
            }
        })
        .collect();
    let mut ppd: BTreeMap<(String, String), usize> = BTreeMap::new();
    for f in &found {
        *ppd.entry((f.patient_id.clone(), f.start[..10].to_owned()))
            .or_default() += 1;
    }
    Ok(Report {
        from: iso(from_us),
        to: iso(to_us),
        patient_days: patient_days.len(),
        rules: summaries,
        per_patient_day: ppd.into_iter().map(|((p, d), n)| (p, d, n)).collect(),
        alerts: found,
    })
}
