//! Burden controls: how often an open alert is told again (per [`Level`]), and a patient's
//! quiet periods. Pure values and functions of the engine's clock, shared by live evaluation
//! and the backtest's replay.
//!
//! - Repeat: an open alert nobody acknowledged or snoozed is told again (`repeated`) every
//!   `repeat` of its level since it was last told (default urgent 15 min, warning 60 min, info
//!   never).
//! - Quiet periods (`quiet = ["22:00-07:00"]`, `timezone = "Europe/London"` in a rule's
//!   `[overrides.<patient>]`): while one lasts, the rule's warning and info alerts of that
//!   patient push nothing (their firing is held and released when it ends; repeats and
//!   escalations wait); urgent alerts always break through.

use std::time::Duration;

use chrono::{NaiveTime, TimeZone, Timelike};

use crate::rules::{Param, Params, Severity};

/// How urgently people are told: `urgent` (now, day or night), `warning` (soon), `info` (for
/// the record). Per rule (`level = "…"`, default from the severity: critical and high are
/// urgent, warning is warning, info is info) and per patient (`level` in `[overrides.<patient>]`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// For the record: shown, not pushed again.
    Info,
    /// Look soon.
    Warning,
    /// Look now.
    Urgent,
}

impl Level {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Urgent => "urgent",
        }
    }
    /// Parses a name.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "info" => Some(Level::Info),
            "warning" => Some(Level::Warning),
            "urgent" => Some(Level::Urgent),
            _ => None,
        }
    }
    /// The level a rule of this severity has unless it says otherwise.
    pub fn of_severity(s: Severity) -> Level {
        match s {
            Severity::Critical | Severity::High => Level::Urgent,
            Severity::Warning => Level::Warning,
            Severity::Info => Level::Info,
        }
    }
}

/// Parameters every rule has without declaring them (burden controls), overridable per
/// patient: `realert_gap_minutes` (after an alert resolves, a new episode starting within this
/// many minutes of its end is held, not told, until the gap has passed; default 0) and
/// `expected` (a known condition: the alert is recorded at level info and never told; default
/// false).
pub const RESERVED: &[&str] = &["realert_gap_minutes", "expected"];

/// The reserved parameters' values: (re-alert gap µs, expected).
pub(crate) fn burden(p: &Params) -> Result<(i64, bool), String> {
    let gap = match p.get("realert_gap_minutes") {
        None => 0,
        Some(v) => v
            .as_f64()
            .filter(|m| (0.0..=1440.0).contains(m))
            .map(|m| (m * 60_000_000.0) as i64)
            .ok_or("realert_gap_minutes must be a number of minutes from 0 to 1440")?,
    };
    let expected = match p.get("expected") {
        None => false,
        Some(Param::Bool(b)) => *b,
        Some(_) => return Err("expected must be true or false".into()),
    };
    Ok((gap, expected))
}

/// Repeat intervals per level (`[alerts.levels.<level>] repeat_minutes`; 0 = never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Levels {
    /// Urgent alerts (default 15 min).
    pub urgent: Option<Duration>,
    /// Warning alerts (default 60 min).
    pub warning: Option<Duration>,
    /// Info alerts (default never).
    pub info: Option<Duration>,
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            urgent: Some(Duration::from_secs(15 * 60)),
            warning: Some(Duration::from_secs(60 * 60)),
            info: None,
        }
    }
}

impl Levels {
    /// The repeat interval of a level, µs (`None`: never repeated).
    pub fn repeat_us(&self, l: Level) -> Option<i64> {
        let d = match l {
            Level::Urgent => self.urgent,
            Level::Warning => self.warning,
            Level::Info => self.info,
        }?;
        Some(d.as_micros() as i64).filter(|us| *us > 0)
    }
}

/// A patient's quiet periods: daily windows of local time.
#[derive(Debug, Clone, PartialEq)]
pub struct Quiet {
    /// `(start, end)` minutes after local midnight; `start > end` wraps past midnight.
    pub windows: Vec<(u32, u32)>,
    /// The patient's time zone.
    pub tz: chrono_tz::Tz,
}

fn hhmm(s: &str) -> Option<u32> {
    let t = NaiveTime::parse_from_str(s.trim(), "%H:%M").ok()?;
    Some(t.hour() * 60 + t.minute())
}

impl Quiet {
    /// Parses `["22:00-07:00", …]` and an IANA time zone (default UTC).
    pub fn parse(windows: &[String], tz: Option<&str>) -> Result<Quiet, String> {
        let tz = match tz {
            None => chrono_tz::UTC,
            Some(z) => z
                .parse::<chrono_tz::Tz>()
                .map_err(|_| format!("timezone {z:?} is not an IANA time zone"))?,
        };
        let windows = windows
            .iter()
            .map(|w| {
                let (a, b) = w.split_once('-').unwrap_or((w, ""));
                match (hhmm(a), hhmm(b)) {
                    (Some(a), Some(b)) if a != b => Ok((a, b)),
                    _ => Err(format!(
                        "quiet period {w:?}: use \"HH:MM-HH:MM\" with two different times"
                    )),
                }
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Quiet { windows, tz })
    }

    /// When the quiet period that `now_us` falls in ends (UTC µs), or `None` outside them.
    pub fn end_of(&self, now_us: i64) -> Option<i64> {
        let utc = chrono::DateTime::from_timestamp_micros(now_us)?;
        let local = utc.with_timezone(&self.tz);
        let minute = local.hour() * 60 + local.minute();
        let today = local.date_naive();
        let ends = self.windows.iter().filter_map(|&(a, b)| {
            let day = if a < b {
                (a..b).contains(&minute).then_some(today)?
            } else if minute >= a {
                today.succ_opt()?
            } else if minute < b {
                today
            } else {
                return None;
            };
            let at = day.and_hms_opt(b / 60, b % 60, 0)?;
            // A wall time skipped by a DST change ends the period an hour later.
            let end = self.tz.from_local_datetime(&at).earliest().or_else(|| {
                self.tz
                    .from_local_datetime(&(at + chrono::Duration::hours(1)))
                    .earliest()
            })?;
            Some(end.timestamp_micros())
        });
        ends.max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_571_200_000_000; // 2026-01-05T00:00:00Z, a Monday
    const H: i64 = 3_600_000_000;

    #[test]
    fn quiet_periods_wrap_midnight_in_the_patients_zone() {
        let q = Quiet::parse(&["22:00-07:00".into()], Some("America/New_York")).expect("q");
        // 00:00Z is 19:00 in New York (UTC−5): not quiet; 03:00Z is 22:00: quiet until 12:00Z.
        assert_eq!(q.end_of(T0), None);
        assert_eq!(q.end_of(T0 + 3 * H), Some(T0 + 12 * H));
        assert_eq!(q.end_of(T0 + 11 * H), Some(T0 + 12 * H));
        assert_eq!(q.end_of(T0 + 12 * H), None);
        let day = Quiet::parse(&["13:00-14:30".into()], None).expect("q");
        assert_eq!(day.end_of(T0 + 13 * H + 5), Some(T0 + 14 * H + H / 2));
        assert!(Quiet::parse(&["22-7".into()], None).is_err());
        assert!(Quiet::parse(&["07:00-07:00".into()], None).is_err());
        assert!(Quiet::parse(&[], Some("Mars/Base")).is_err());
    }

    #[test]
    fn levels_repeat_at_their_interval_and_info_never() {
        let l = Levels::default();
        assert_eq!(l.repeat_us(Level::Urgent), Some(15 * 60_000_000));
        assert_eq!(l.repeat_us(Level::Warning), Some(60 * 60_000_000));
        assert_eq!(l.repeat_us(Level::Info), None);
    }
}
