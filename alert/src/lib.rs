//! `carewatch-alert`: SQL rules in event time, the alert lifecycle, and delivery.
//!
//! - [`rules`]: rule files (`rules/*.toml`) — SQL giving a per-bucket condition, parameters,
//!   per-patient overrides, severity, message — loaded and planned at start.
//! - [`episodes`]: the pure function from per-bucket samples to episodes (duration, gaps,
//!   hysteresis), shared by live evaluation and the backtest.
//! - [`engine`]: live evaluation over the buckets that changed, alert state, escalation.
//! - [`history`]: the durable transition log and the `alerts` table.
//! - [`notify`]: webhook delivery with retries; [`http`]: list, acknowledge, SSE.
//! - [`baselines`]: each patient's resting heart rate, SpO2 and temperature, learned per day
//!   from the days before (no look-ahead), as the `baselines` table rules join.
//! - [`minutes`]: per (patient, vital) minute bins kept at append time, the `vital_minutes`
//!   table the shipped rules read (folded from `observations` for the backtest and old minutes).
//! - [`policy`]: burden controls — repeat intervals per level, quiet periods.
//! - [`backtest`]: the rules over stored history, with alarm burden, and the replay of the
//!   alert lifecycle over it.
//!
//! What it must not do: write observations, or hold its state lock across a query.

pub mod backtest;
pub mod baselines;
pub mod chain;
pub mod engine;
pub mod episodes;
pub mod history;
pub mod http;
pub mod minutes;
pub mod notify;
pub mod policy;
pub mod rules;

pub use datafusion::prelude::SessionContext;
pub use engine::{AlertEngine, Config};

/// RFC 3339 in UTC, whole seconds, `Z` (API, webhook and backtest times).
pub fn iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
