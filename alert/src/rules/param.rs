//! Rule parameter values.

use serde::Deserialize;

/// A parameter value: numbers and booleans only, so a value can never change a rule's SQL
/// beyond the literal it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum Param {
    /// `true` / `false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A number.
    Float(f64),
}

impl Param {
    /// Parses a command-line value.
    pub fn parse(s: &str) -> Option<Param> {
        match s.trim() {
            "true" => Some(Param::Bool(true)),
            "false" => Some(Param::Bool(false)),
            t => t.parse::<i64>().map(Param::Int).ok().or_else(|| {
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(Param::Float)
            }),
        }
    }
    pub(super) fn sql(&self) -> String {
        match self {
            Param::Bool(b) => b.to_string(),
            Param::Int(i) => i.to_string(),
            Param::Float(f) => format!("{f:?}"),
        }
    }
    pub(crate) fn as_f64(&self) -> Option<f64> {
        match self {
            Param::Bool(_) => None,
            Param::Int(i) => Some(*i as f64),
            Param::Float(f) => Some(*f),
        }
    }
}

impl std::fmt::Display for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Param::Float(x) if x.fract() == 0.0 => write!(f, "{x:.0}"),
            p => f.write_str(&p.sql()),
        }
    }
}
