//! A parameter sweep: one rule backtested over a grid of parameter values (threshold ×
//! duration, say), each cell giving the alerts it would raise per patient-day and how many of the
//! reference episodes — those of the rule as given, the program's clinical definition — it still
//! catches (an alert of the cell overlaps the episode, same patient). Cells sharing their SQL
//! (they differ only in `for_minutes` or `clear_minutes`) share one evaluation.

use std::collections::{BTreeMap, HashMap};

use datafusion::prelude::SessionContext;
use serde::Serialize;

use super::{Found, Series, days_of, found_in, rule_day};
use crate::rules::{Param, Params, Rule};

/// One axis: a parameter and its values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Axis {
    /// Parameter name.
    pub param: String,
    /// Values, in order.
    pub values: Vec<Param>,
}

impl Axis {
    /// Parses `name=v1,v2,…` for `rule` (the parameter must exist; values are numbers or
    /// booleans).
    pub fn parse(rule: &Rule, s: &str) -> Result<Axis, String> {
        let (k, vs) = s
            .split_once('=')
            .ok_or_else(|| format!("--sweep {s:?}: use name=v1,v2,… (threshold=90,100,110)"))?;
        let k = k.trim();
        if !rule.params.contains_key(k) {
            return Err(format!("--sweep: rule {} has no parameter {k:?}", rule.id));
        }
        let values = vs
            .split(',')
            .map(|v| {
                Param::parse(v)
                    .ok_or_else(|| format!("--sweep {k}: {v:?} is not a number or true/false"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if values.is_empty() || values.len() > 20 {
            return Err(format!("--sweep {k}: give 1 to 20 values"));
        }
        Ok(Axis {
            param: k.to_owned(),
            values,
        })
    }
}

/// One cell of the grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// The cell's values, one per axis.
    pub params: BTreeMap<String, Param>,
    /// Alerts raised.
    pub alerts: usize,
    /// Alerts per patient-day with data.
    pub alerts_per_patient_day: f64,
    /// Reference episodes overlapped by an alert of this cell.
    pub caught: usize,
}

/// The grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sweep {
    /// Rule id.
    pub rule: String,
    /// The axes (one or two).
    pub axes: Vec<Axis>,
    /// The rule's parameters as given (the reference).
    pub reference_params: Params,
    /// Episodes of the rule as given.
    pub reference: usize,
    /// Patient-days with data (the denominator).
    pub patient_days: usize,
    /// Cells, the first axis outermost.
    pub cells: Vec<Cell>,
}

/// The grid used when none is given: the threshold (`threshold` or `above`) at its value and
/// one step below and three above (a step is a tenth of it, at least 1), and `for_minutes` at
/// half, one, one and a half and two times its value.
pub fn default_axes(rule: &Rule) -> Vec<Axis> {
    let mut out = Vec::new();
    let num = |k: &str| match rule.params.get(k) {
        Some(Param::Int(i)) => Some(*i as f64),
        Some(Param::Float(f)) => Some(*f),
        _ => None,
    };
    let as_param = |x: f64| {
        if x.fract() == 0.0 {
            Param::Int(x as i64)
        } else {
            Param::Float(x)
        }
    };
    if let Some((k, d)) = ["threshold", "above"]
        .iter()
        .find_map(|k| num(k).map(|d| (*k, d)))
    {
        let step = (d.abs() / 10.0).round().max(1.0);
        out.push(Axis {
            param: k.to_owned(),
            values: (-1..=3)
                .map(|i| as_param(d + f64::from(i) * step))
                .collect(),
        });
    }
    if let Some(d) = num("for_minutes").filter(|d| *d >= 2.0) {
        let mut v: Vec<f64> = [0.5, 1.0, 1.5, 2.0]
            .iter()
            .map(|m| (d * m).round())
            .collect();
        v.dedup();
        out.push(Axis {
            param: "for_minutes".into(),
            values: v.into_iter().map(as_param).collect(),
        });
    }
    out
}

fn cells(axes: &[Axis]) -> Vec<BTreeMap<String, Param>> {
    let mut out = vec![BTreeMap::new()];
    for a in axes {
        out = out
            .into_iter()
            .flat_map(|m| {
                a.values.iter().map(move |v| {
                    let mut m = m.clone();
                    m.insert(a.param.clone(), *v);
                    m
                })
            })
            .collect();
    }
    out
}

/// Counts the reference episodes that an episode in `found` overlaps (same patient).
pub fn caught(reference: &[Found], found: &[Found]) -> usize {
    reference
        .iter()
        .filter(|r| {
            found.iter().any(|f| {
                f.patient_id == r.patient_id && f.start_us < r.end_us && r.start_us < f.end_us
            })
        })
        .count()
}

/// Runs the grid. `reference` is the backtest's episodes of `rule` as given.
#[allow(clippy::too_many_arguments)]
pub async fn sweep(
    ctx: &SessionContext,
    rule: &Rule,
    axes: &[Axis],
    (from_us, to_us): (i64, i64),
    patient_days: usize,
    reference: &[Found],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Sweep, String> {
    if axes.is_empty() || axes.len() > 2 {
        return Err("a sweep has one or two axes".into());
    }
    crate::minutes::table::ensure_registered(ctx).await?;
    let days = days_of(from_us, to_us);
    let grid = cells(axes);
    let mut evaluated: HashMap<String, Series> = HashMap::new();
    let mut out = Vec::new();
    let total = grid.len() as u64;
    for (i, cell) in grid.into_iter().enumerate() {
        let mut params = rule.params.clone();
        params.extend(cell.iter().map(|(k, v)| (k.clone(), *v)));
        rule.shape(&params)?;
        let key = rule.render(&params, "TRUE")?;
        if !evaluated.contains_key(&key) {
            let mut series = Series::new();
            for &day in &days {
                for (p, t, s) in rule_day(ctx, rule, &params, day).await? {
                    series.entry(p).or_default().insert(t, s);
                }
            }
            evaluated.insert(key.clone(), series);
        }
        let found = found_in(rule, &params, &evaluated[&key], to_us)?;
        out.push(Cell {
            params: cell,
            alerts: found.len(),
            alerts_per_patient_day: found.len() as f64 / patient_days.max(1) as f64,
            caught: caught(reference, &found),
        });
        progress(i as u64 + 1, total);
    }
    Ok(Sweep {
        rule: rule.id.clone(),
        axes: axes.to_vec(),
        reference_params: rule.params.clone(),
        reference: reference.len(),
        patient_days,
        cells: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        crate::rules::load(None)
            .expect("rules")
            .into_iter()
            .find(|r| r.id == "hr_high_at_rest")
            .expect("rule")
    }

    #[test]
    fn default_grid_is_threshold_by_duration_around_the_rule() {
        let axes = default_axes(&rule());
        let show: Vec<(String, Vec<String>)> = axes
            .iter()
            .map(|a| {
                (
                    a.param.clone(),
                    a.values.iter().map(|v| v.to_string()).collect(),
                )
            })
            .collect();
        assert_eq!(
            show,
            vec![
                (
                    "threshold".into(),
                    vec!["90", "100", "110", "120", "130"]
                        .into_iter()
                        .map(String::from)
                        .collect()
                ),
                (
                    "for_minutes".into(),
                    vec!["5", "10", "15", "20"]
                        .into_iter()
                        .map(String::from)
                        .collect()
                ),
            ]
        );
        assert_eq!(cells(&axes).len(), 20);
    }

    #[test]
    fn axes_are_checked() {
        let r = rule();
        assert!(Axis::parse(&r, "threshold=90,100").is_ok());
        assert!(Axis::parse(&r, "thresh=90").is_err());
        assert!(Axis::parse(&r, "threshold=9x").is_err());
        assert!(Axis::parse(&r, "threshold").is_err());
    }

    #[test]
    fn caught_counts_reference_episodes_overlapped_by_the_same_patient() {
        let f = |p: &str, a: i64, z: i64| Found {
            rule: "r".into(),
            patient_id: p.into(),
            start: String::new(),
            end: String::new(),
            minutes: 0,
            value: None,
            resolved: true,
            message: String::new(),
            start_us: a,
            end_us: z,
        };
        let reference = [f("p", 0, 10), f("p", 20, 30), f("q", 0, 10)];
        assert_eq!(caught(&reference, &[f("p", 5, 25)]), 2);
        assert_eq!(
            caught(&reference, &[f("p", 10, 20)]),
            0,
            "touching is not overlapping"
        );
    }
}
