//! Rule files: `rules/*.toml`, each one rule — SQL over `observations` or its minute bins
//! `vital_minutes` ([`crate::minutes`], what the shipped rules read) and the registry tables —
//! answering per patient and time bucket whether the condition held, with its parameters,
//! severity, message and episode shape. Per-patient overrides change parameters for some.
//!
//! ```toml
//! title = "Elevated heart rate at rest"
//! severity = "high"
//! message = "Heart rate above {threshold}/min for {minutes} min at rest (peak {value})"
//! bucket = "1m"
//! contiguous = true
//! sql = """SELECT patient_id, date_bin({bucket}, effective_time) AS t, avg(value) > {threshold} AS hit, …"""
//! [params]
//! threshold = 100
//! for_minutes = 10
//! clear_minutes = 5
//! [overrides."patient-17"]
//! threshold = 120
//! ```
//!
//! The SQL must return `patient_id`, `t` (bucket start), `hit` (boolean) and `value` (double),
//! and must filter every scan of `observations` (or `vital_minutes`) with `{scope}` (the time
//! range and patients being evaluated). `{bucket}` is the bucket as an SQL interval; `{name}` is a parameter.
//! `for_minutes` (minimum duration) and `clear_minutes` (hysteresis) are parameters too, so
//! they can be overridden per patient.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::episodes::Shape;

/// Shipped default rules (used when no rules directory is configured).
pub const DEFAULTS: &[(&str, &str)] = &[
    (
        "hr_high_at_rest.toml",
        include_str!("../rules/hr_high_at_rest.toml"),
    ),
    (
        "hr_above_baseline.toml",
        include_str!("../rules/hr_above_baseline.toml"),
    ),
    ("hr_low.toml", include_str!("../rules/hr_low.toml")),
    ("spo2_low.toml", include_str!("../rules/spo2_low.toml")),
    ("fever.toml", include_str!("../rules/fever.toml")),
    (
        "hypertensive.toml",
        include_str!("../rules/hypertensive.toml"),
    ),
    ("news2.toml", include_str!("../rules/news2.toml")),
    (
        "device_silent.toml",
        include_str!("../rules/device_silent.toml"),
    ),
];

/// A rule that failed to load: where and why.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {message}")]
pub struct RuleError {
    /// The rule file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Alert severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For the record.
    Info,
    /// Look when convenient.
    Warning,
    /// Look now.
    High,
    /// Act now.
    Critical,
}

impl Severity {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

pub use crate::policy::Level;

mod param;
pub use param::Param;

/// Parameters by name.
pub type Params = BTreeMap<String, Param>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    id: Option<String>,
    title: String,
    severity: Severity,
    level: Option<Level>,
    message: String,
    #[serde(default = "default_bucket")]
    bucket: String,
    #[serde(default = "yes")]
    contiguous: bool,
    #[serde(default)]
    absence: bool,
    #[serde(default)]
    lowest: bool,
    #[serde(default = "yes")]
    enabled: bool,
    sql: String,
    #[serde(default)]
    params: Params,
    #[serde(default)]
    overrides: BTreeMap<String, OverrideFile>,
}

/// `[overrides.<patient>]`: the patient's level, quiet periods and parameters.
#[derive(Debug, Deserialize)]
struct OverrideFile {
    level: Option<Level>,
    quiet: Option<Vec<String>>,
    timezone: Option<String>,
    #[serde(flatten)]
    params: Params,
}

pub use crate::policy::RESERVED;
use crate::policy::burden;

fn default_bucket() -> String {
    "1m".into()
}
fn yes() -> bool {
    true
}

/// A loaded rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Stable id (the file stem unless set).
    pub id: String,
    /// Where it came from.
    pub file: String,
    /// Line of `sql` in the file (for errors found when planning).
    pub sql_line: usize,
    /// Short human title.
    pub title: String,
    /// Severity.
    pub severity: Severity,
    /// Level (see [`Level`]); [`Rule::level_for`] gives a patient's.
    pub level: Level,
    /// Per-patient levels (`level` in `[overrides.<patient>]`).
    pub patient_levels: BTreeMap<String, Level>,
    /// Per-patient quiet periods (`quiet`, `timezone` in `[overrides.<patient>]`).
    pub quiet: BTreeMap<String, crate::policy::Quiet>,
    /// Message template.
    pub message: String,
    /// Bucket length, microseconds.
    pub bucket_us: i64,
    /// A bucket without data breaks a run.
    pub contiguous: bool,
    /// Device-silent style rule.
    pub absence: bool,
    /// The episode value is the lowest.
    pub lowest: bool,
    /// Disabled rules are loaded and checked but not run.
    pub enabled: bool,
    /// SQL template.
    pub sql: String,
    /// Default parameters.
    pub params: Params,
    /// Per-patient parameter overrides.
    pub overrides: BTreeMap<String, Params>,
}

/// Parses `30s`, `1m`, `15m`, `1h`.
pub fn parse_duration_us(s: &str) -> Option<i64> {
    let s = s.trim();
    let (n, mult) = if let Some(n) = s.strip_suffix('s') {
        (n, 1_000_000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000_000)
    } else {
        return None;
    };
    n.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| n * mult)
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

impl Rule {
    /// Parses one rule file's text.
    pub fn parse(file: &str, text: &str) -> Result<Rule, RuleError> {
        let err = |line: usize, message: String| RuleError {
            file: file.to_owned(),
            line,
            message,
        };
        let f: RuleFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            err(line, e.message().trim().to_owned())
        })?;
        let stem = Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = f.id.unwrap_or(stem);
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(err(
                key_line(text, "id"),
                format!("rule id {id:?}: use letters, digits, '_' and '-'"),
            ));
        }
        let bucket_us = parse_duration_us(&f.bucket).ok_or_else(|| {
            err(
                key_line(text, "bucket"),
                format!(
                    "bucket {:?}: use a duration like 30s, 1m, 15m, 1h",
                    f.bucket
                ),
            )
        })?;
        let patient_levels = f
            .overrides
            .iter()
            .filter_map(|(p, o)| o.level.map(|l| (p.clone(), l)))
            .collect();
        let mut quiet = BTreeMap::new();
        for (p, o) in &f.overrides {
            if o.quiet.is_none() && o.timezone.is_none() {
                continue;
            }
            let q = crate::policy::Quiet::parse(
                o.quiet.as_deref().unwrap_or_default(),
                o.timezone.as_deref(),
            )
            .map_err(|m| err(key_line(text, "quiet").max(key_line(text, "timezone")), m))?;
            quiet.insert(p.clone(), q);
        }
        let rule = Rule {
            id,
            file: file.to_owned(),
            sql_line: key_line(text, "sql"),
            title: f.title,
            level: f.level.unwrap_or(Level::of_severity(f.severity)),
            severity: f.severity,
            patient_levels,
            quiet,
            message: f.message,
            bucket_us,
            contiguous: f.contiguous,
            absence: f.absence,
            lowest: f.lowest,
            enabled: f.enabled,
            sql: f.sql,
            params: f.params,
            overrides: f
                .overrides
                .into_iter()
                .map(|(p, o)| (p, o.params))
                .collect(),
        };
        if !rule.sql.contains("{scope}") {
            return Err(err(
                rule.sql_line,
                "the SQL must filter observations with {scope}".into(),
            ));
        }
        for (who, p) in std::iter::once((None, &rule.params))
            .chain(rule.overrides.iter().map(|(k, v)| (Some(k), v)))
        {
            for k in p.keys() {
                if who.is_some() && !rule.params.contains_key(k) && !RESERVED.contains(&k.as_str())
                {
                    return Err(err(
                        key_line(text, k),
                        format!("override of unknown parameter {k:?}"),
                    ));
                }
            }
            let merged = rule.params_for(who.map(String::as_str));
            rule.render(&merged, "TRUE")
                .map_err(|m| err(rule.sql_line, m))?;
            rule.shape(&merged)
                .map_err(|m| err(key_line(text, "params"), m))?;
            burden(&merged).map_err(|m| err(key_line(text, "params"), m))?;
        }
        Ok(rule)
    }

    /// The level of this rule's alerts for a patient.
    pub fn level_for(&self, patient: &str) -> Level {
        self.patient_levels
            .get(patient)
            .copied()
            .unwrap_or(self.level)
    }

    /// The parameters for a patient (defaults with that patient's overrides).
    pub fn params_for(&self, patient: Option<&str>) -> Params {
        let mut p = self.params.clone();
        if let Some(o) = patient.and_then(|p| self.overrides.get(p)) {
            p.extend(o.iter().map(|(k, v)| (k.clone(), *v)));
        }
        p
    }

    /// Replaces default parameters (backtest `--param`); unknown names are refused.
    pub fn set_param(&mut self, name: &str, value: Param) -> Result<(), String> {
        match self.params.get_mut(name) {
            Some(v) => {
                *v = value;
                Ok(())
            }
            None if RESERVED.contains(&name) => {
                let mut p = self.params.clone();
                p.insert(name.to_owned(), value);
                burden(&p)?;
                self.params = p;
                Ok(())
            }
            None => Err(format!("rule {} has no parameter {name:?}", self.id)),
        }
    }

    /// The burden controls for a patient: (re-alert gap µs, expected).
    pub fn burden_for(&self, patient: &str) -> (i64, bool) {
        burden(&self.params_for(Some(patient))).unwrap_or((0, false))
    }

    /// The patient's quiet periods for this rule.
    pub fn quiet_for(&self, patient: &str) -> Option<&crate::policy::Quiet> {
        self.quiet.get(patient)
    }

    /// The SQL with parameters and scope filled in.
    pub fn render(&self, params: &Params, scope: &str) -> Result<String, String> {
        let mut out = String::with_capacity(self.sql.len() + scope.len());
        let mut rest = self.sql.as_str();
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let Some(j) = after.find('}') else {
                return Err("unclosed '{' in the SQL".into());
            };
            let name = &after[..j];
            match name {
                "scope" => {
                    out.push('(');
                    out.push_str(scope);
                    out.push(')');
                }
                "bucket" => out.push_str(&format!(
                    "INTERVAL '{} seconds'",
                    self.bucket_us / 1_000_000
                )),
                n => match params.get(n) {
                    Some(v) => out.push_str(&v.sql()),
                    None => return Err(format!("the SQL uses {{{n}}}, which is not a parameter")),
                },
            }
            rest = &after[j + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// How samples become episodes under these parameters.
    pub fn shape(&self, params: &Params) -> Result<Shape, String> {
        let minutes = |k: &str| -> Result<i64, String> {
            match params.get(k) {
                None => Ok(0),
                Some(p) => p
                    .as_f64()
                    .filter(|m| *m >= 0.0)
                    .map(|m| (m * 60_000_000.0) as i64)
                    .ok_or_else(|| format!("{k} must be a number of minutes ≥ 0")),
            }
        };
        Ok(Shape {
            bucket_us: self.bucket_us,
            for_us: minutes("for_minutes")?,
            clear_us: minutes("clear_minutes")?,
            contiguous: self.contiguous,
            absence: self.absence,
            lowest: self.lowest,
        })
    }

    /// The alert message for an episode.
    pub fn message_for(&self, params: &Params, value: Option<f64>, minutes: i64) -> String {
        let mut out = String::new();
        let mut rest = self.message.as_str();
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let Some(j) = after.find('}') else {
                out.push_str(&rest[i..]);
                rest = "";
                break;
            };
            let name = &after[..j];
            match name {
                "value" => match value {
                    Some(v) => out.push_str(&format!("{}", (v * 10.0).round() / 10.0)),
                    None => out.push('?'),
                },
                "minutes" => out.push_str(&minutes.to_string()),
                "title" => out.push_str(&self.title),
                n => match params.get(n) {
                    Some(p) => out.push_str(&p.to_string()),
                    None => out.push_str(&rest[i..i + j + 2]),
                },
            }
            rest = &after[j + 1..];
        }
        out.push_str(rest);
        out
    }
}

mod load;
pub use load::{check, load};

#[cfg(test)]
mod tests;
