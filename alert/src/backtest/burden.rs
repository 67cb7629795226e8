//! Alarm burden of a backtest: who produces the alerts and when. Alert fatigue concentrates on
//! few patients (Lansdowne et al., BMC Nursing 2016: the top 10 % of patients produce 57–82 % of
//! alarms), so the report ranks patients and says what share the top tenth produce.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{DAY, Found};
use crate::rules::Rule;

/// One patient's alerts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatientBurden {
    /// Patient.
    pub patient_id: String,
    /// Alerts (all rules).
    pub alerts: usize,
    /// Days with data.
    pub patient_days: usize,
    /// Alerts per day with data.
    pub alerts_per_patient_day: f64,
    /// Share of all alerts, 0..1.
    pub share: f64,
    /// Alerts per rule.
    pub by_rule: BTreeMap<String, usize>,
}

/// One rule's alerts by UTC hour of the episode start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hours {
    /// Rule id.
    pub rule: String,
    /// 24 counts, hour 0 first.
    pub counts: Vec<usize>,
}

/// Who and when.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Burden {
    /// Every patient with data, most alerts first (ties by id).
    pub patients: Vec<PatientBurden>,
    /// Share of the alerts produced by the top tenth of patients (at least one patient), 0..1.
    pub top_tenth_share: f64,
    /// Per rule, alerts by UTC hour of day.
    pub hours: Vec<Hours>,
    /// All rules, by UTC hour of day.
    pub hours_total: Vec<usize>,
}

/// The UTC hour of an instant.
pub fn hour_of(us: i64) -> usize {
    (us.rem_euclid(DAY) / 3_600_000_000) as usize
}

impl Burden {
    /// The burden of `found` over patients with data on `patient_days`.
    pub fn of(rules: &[Rule], patient_days: &BTreeSet<(String, i64)>, found: &[Found]) -> Burden {
        let mut days: BTreeMap<&str, usize> = BTreeMap::new();
        for (p, _) in patient_days {
            *days.entry(p.as_str()).or_default() += 1;
        }
        for f in found {
            days.entry(f.patient_id.as_str()).or_default();
        }
        let total = found.len();
        let mut patients: Vec<PatientBurden> = days
            .into_iter()
            .map(|(p, d)| {
                let mut by_rule = BTreeMap::new();
                for f in found.iter().filter(|f| f.patient_id == p) {
                    *by_rule.entry(f.rule.clone()).or_default() += 1;
                }
                let alerts: usize = by_rule.values().sum();
                PatientBurden {
                    patient_id: p.to_owned(),
                    alerts,
                    patient_days: d,
                    alerts_per_patient_day: alerts as f64 / d.max(1) as f64,
                    share: if total == 0 {
                        0.0
                    } else {
                        alerts as f64 / total as f64
                    },
                    by_rule,
                }
            })
            .collect();
        patients.sort_by(|a, b| {
            b.alerts
                .cmp(&a.alerts)
                .then(a.patient_id.cmp(&b.patient_id))
        });
        let tenth = patients.len().div_ceil(10);
        let top_tenth_share = patients.iter().take(tenth).map(|p| p.share).sum();
        let mut hours_total = vec![0; 24];
        let hours = rules
            .iter()
            .map(|r| {
                let mut counts = vec![0; 24];
                for f in found.iter().filter(|f| f.rule == r.id) {
                    counts[hour_of(f.start_us)] += 1;
                    hours_total[hour_of(f.start_us)] += 1;
                }
                Hours {
                    rule: r.id.clone(),
                    counts,
                }
            })
            .collect();
        Burden {
            patients,
            top_tenth_share,
            hours,
            hours_total,
        }
    }
}
