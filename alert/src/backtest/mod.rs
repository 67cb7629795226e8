//! `carewatch rules backtest`: the same rules over stored history. Each rule's SQL runs day by
//! day over the range; the samples feed the same [`crate::episodes::episodes`] as live
//! evaluation, with every bucket in the range closed, so a backtest finds the episodes live
//! evaluation raised over the same data. Rules relative to a patient's baseline read the same
//! `baselines` table as live evaluation, each day's learned from the days before it.
//!
//! Modules: [`burden`] (alarm burden: per rule, per patient, time of day), [`sweep`] (a
//! parameter grid against the episodes of the rule as given), [`report`] (the self-contained
//! HTML page and CSV), [`replay`] (the alert lifecycle — levels, holds, repeats, escalations —
//! through the live engine's own decisions, counted per rule in [`Lifecycle`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::engine::{run_rule_sql, scope_sql};
use crate::episodes::{Sample, episodes};
use crate::rules::{Params, Rule};

pub mod burden;
pub mod lifecycle;
pub mod replay;
pub mod report;
pub mod sweep;

pub use lifecycle::Lifecycle;
pub use replay::Scripted;

pub use burden::{Burden, PatientBurden};
pub use sweep::{Cell, Sweep};

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
    /// Episode start, UTC µs.
    #[serde(skip)]
    pub start_us: i64,
    /// Episode end, UTC µs.
    #[serde(skip)]
    pub end_us: i64,
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
    /// Alerts per patient and per UTC hour of day.
    pub burden: Burden,
    /// The parameter sweep, when one was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Sweep>,
    /// Per rule: what the alerts' lifecycle told people, repeated, escalated and held.
    pub lifecycle: Vec<Lifecycle>,
    /// Every transition the replay wrote, in order.
    #[serde(skip)]
    pub transitions: Vec<crate::history::Transition>,
}

/// How the lifecycle is replayed: the engine settings (repeat intervals per level, escalation
/// chains), the patients' care teams, and people's actions.
#[derive(Default)]
pub struct Options<'a> {
    /// Engine settings (`levels`, `chains`, `escalate_after`, `max_escalations`).
    pub config: crate::engine::Config,
    /// The patients' care teams (none when `None`).
    pub teams: Option<replay::Teams<'a>>,
    /// People's actions.
    pub script: Vec<Scripted>,
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("config", &self.config)
            .field("teams", &self.teams.is_some())
            .field("script", &self.script)
            .finish()
    }
}

pub use crate::iso;

/// The range's UTC days, as `[start, end)` pieces.
fn days_of(from_us: i64, to_us: i64) -> Vec<(i64, i64)> {
    let mut v = Vec::new();
    let mut d = from_us;
    while d < to_us {
        let e = ((d.div_euclid(DAY) + 1) * DAY).min(to_us);
        v.push((d, e));
        d = e;
    }
    v
}

/// Per patient: the rule's samples.
pub(crate) type Series = HashMap<String, BTreeMap<i64, Sample>>;

/// One day of one rule's samples under `params` (defaults) and each patient's overrides.
async fn rule_day(
    ctx: &SessionContext,
    rule: &Rule,
    params: &Params,
    (a, z): (i64, i64),
) -> Result<Vec<(String, i64, Sample)>, String> {
    let sql = rule.render(params, &scope_sql(a, z, None))?;
    let mut rows = run_rule_sql(ctx, &sql)
        .await
        .map_err(|e| format!("rule {}: {e}", rule.id))?;
    for (p, o) in &rule.overrides {
        rows.retain(|r| &r.0 != p);
        let mut mine = params.clone();
        mine.extend(o.iter().map(|(k, v)| (k.clone(), *v)));
        let sql = rule.render(&mine, &scope_sql(a, z, Some(&[p.as_str()])))?;
        rows.extend(
            run_rule_sql(ctx, &sql)
                .await
                .map_err(|e| format!("rule {}: {e}", rule.id))?,
        );
    }
    Ok(rows)
}

/// The episodes of `rule` (default parameters `params`) in `series`, closed at `to_us`.
pub(crate) fn found_in(
    rule: &Rule,
    params: &Params,
    series: &Series,
    to_us: i64,
) -> Result<Vec<Found>, String> {
    let mut pats: Vec<_> = series.iter().collect();
    pats.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    for (p, samples) in pats {
        let mut mine = params.clone();
        if let Some(o) = rule.overrides.get(p) {
            mine.extend(o.iter().map(|(k, v)| (k.clone(), *v)));
        }
        let shape = rule.shape(&mine)?;
        for e in episodes(samples, &shape, to_us) {
            if !e.qualified {
                continue;
            }
            out.push(Found {
                rule: rule.id.clone(),
                patient_id: p.clone(),
                start: iso(e.start_us),
                end: iso(e.end_us),
                minutes: e.minutes(),
                value: e.value,
                resolved: e.resolved,
                message: rule.message_for(&mine, e.value, e.minutes()),
                start_us: e.start_us,
                end_us: e.end_us,
            });
        }
    }
    Ok(out)
}

/// Runs `rules` over `[from_us, to_us)`; `progress(done, total)` after each rule-day. The
/// lifecycle is replayed with the default engine settings, no care teams and no actions.
pub async fn backtest(
    ctx: &SessionContext,
    rules: &[Rule],
    from_us: i64,
    to_us: i64,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Report, String> {
    backtest_with(ctx, rules, (from_us, to_us), &Options::default(), progress).await
}

/// [`backtest`] with the lifecycle replayed under `opts`.
pub async fn backtest_with(
    ctx: &SessionContext,
    rules: &[Rule],
    (from_us, to_us): (i64, i64),
    opts: &Options<'_>,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Report, String> {
    crate::minutes::table::ensure_registered(ctx).await?;
    prepare_baselines(ctx, rules, from_us, to_us).await;
    let days = days_of(from_us, to_us);
    let total = (rules.len() * days.len()) as u64;
    let mut done = 0u64;
    let mut patient_days: BTreeSet<(String, i64)> = BTreeSet::new();
    let mut found = Vec::new();
    let mut all = Vec::with_capacity(rules.len());
    for rule in rules {
        let mut series: Series = HashMap::new();
        for &day in &days {
            for (p, t, s) in rule_day(ctx, rule, &rule.params, day).await? {
                patient_days.insert((p.clone(), t.div_euclid(DAY)));
                series.entry(p).or_default().insert(t, s);
            }
            done += 1;
            progress(done, total);
        }
        found.extend(found_in(rule, &rule.params, &series, to_us)?);
        all.push(series);
    }
    let mut readings = HashMap::new();
    for &day in &days {
        lifecycle::reading_minutes(ctx, day, &mut readings).await?;
    }
    let data = replay::Data {
        series: all,
        readings,
    };
    let no_teams = |_: &str| None;
    let teams = opts.teams.unwrap_or(&no_teams);
    let transitions = replay::replay(
        rules,
        &opts.config,
        &data,
        (from_us, to_us),
        teams,
        &opts.script,
    );
    let mut report = summarise(rules, from_us, to_us, &patient_days, found);
    report.lifecycle = Lifecycle::of(rules, &transitions);
    report.transitions = transitions;
    Ok(report)
}

/// Asks the `baselines` table (if the session has one and a rule reads it) for the range.
async fn prepare_baselines(ctx: &SessionContext, rules: &[Rule], from_us: i64, to_us: i64) {
    if rules.iter().any(|r| r.sql.contains("baselines"))
        && let Some(b) = crate::baselines::table::of(ctx).await
    {
        b.prepare(from_us, to_us);
    }
}

fn summarise(
    rules: &[Rule],
    from_us: i64,
    to_us: i64,
    patient_days: &BTreeSet<(String, i64)>,
    found: Vec<Found>,
) -> Report {
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
    Report {
        from: iso(from_us),
        to: iso(to_us),
        patient_days: patient_days.len(),
        rules: summaries,
        per_patient_day: ppd.into_iter().map(|((p, d), n)| (p, d, n)).collect(),
        burden: Burden::of(rules, patient_days, &found),
        alerts: found,
        sweep: None,
        lifecycle: Vec::new(),
        transitions: Vec::new(),
    }
}
