//! Per (patient, vital code) minute bins — count, sum, min and max of the values whose effective
//! time falls in the minute (a step count's bin sum is the minute's steps) — the `vital_minutes`
//! table the shipped rules read instead of the raw `observations`.
//!
//! Live ([`MinuteBins`]), the bins are folded at append time from the store's post-append
//! notification ([`MinuteBins::add`], before the engine marks the patients dirty, so an
//! evaluation that sees the dirty mark sees the bins too) and kept in memory for the minutes
//! from the *horizon* on: `max(first whole minute after start, now − window)` (never moving back).
//! Older minutes — late data from before the horizon, the 24 h catch-up of the device-silent
//! rule, everything before a restart — are folded at scan time from `observations` by the same
//! [`fold`], which is also all the backtest's `vital_minutes` does ([`table::VitalMinutes`]
//! without live bins). One fold, one table name: backtest == live.
//!
//! In memory ([`bins`]) patients are interned per shard and codes globally, a patient's bins of a
//! code sorted by minute, and each code knows the patients holding it, so a read touches only
//! the bins it returns (plus one lookup per patient it names). A rule query over more patients
//! than an `IN` list should name passes them as a [`Scope`] (`rule_scope(patient_id, id)`).
//!
//! Bound: per patient, one bin per (code, minute) for the minutes in
//! `[horizon, now + 5 min future skew]`, in a ring that grows to at most `window + 6` slots of
//! 20 bytes (a code whose sums, minima and maxima are all exact in an `f32`: integer vitals) or
//! 32 — 3 integer vitals and the shipped rules' 77-minute window
//! ([`crate::engine::bins_window_for`]): 3 × 83 × 20 B ≈ 5 KB (8 KB at 32 B) — plus the patient's interned id (its name, a map entry and a holder
//! entry per code, ~250 B). Bins are pruned when the horizon passes a minute; a patient without
//! bins left is forgotten.

mod bins;
mod ring;
pub mod scope;
pub mod table;

pub use bins::{BinRow, MinuteBins};
pub use ring::{NARROW_SLOT_BYTES, SLOT_BYTES};
pub use scope::{Scope, ScopeGuard};

/// One minute.
pub const MINUTE_US: i64 = 60_000_000;

/// The table's name in the rules' sessions.
pub const TABLE: &str = "vital_minutes";

/// The aggregate of one (patient, code, minute).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bin {
    /// Readings.
    pub count: u32,
    /// Sum of their values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Bin {
    /// A bin of one value.
    pub fn of(v: f64) -> Bin {
        let mut b = Bin {
            count: 0,
            sum: 0.0,
            min: v,
            max: v,
        };
        b.add(v);
        b
    }
    /// Adds a value.
    pub fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// Start of the minute holding `t` (UTC µs).
pub fn minute_of(t: i64) -> i64 {
    t.div_euclid(MINUTE_US) * MINUTE_US
}

/// Folds readings into bins keyed by (patient, code, minute start): the one aggregation both the
/// live bins and the scan-time path use.
pub fn fold(
    into: &mut std::collections::BTreeMap<(String, String, i64), Bin>,
    p: &str,
    code: &str,
    t: i64,
    v: f64,
) {
    let key = (p.to_owned(), code.to_owned(), minute_of(t));
    match into.get_mut(&key) {
        Some(b) => b.add(v),
        None => {
            into.insert(key, Bin::of(v));
        }
    }
}

/// The live bins for an engine evaluating on `ctx`: registered there as `vital_minutes` (in place
/// of a history-only one), complete from the store's first reading when the store is empty, else
/// from the next whole minute.
pub fn live(
    ctx: &datafusion::prelude::SessionContext,
    store: &carewatch_store::Store,
    window: std::time::Duration,
) -> std::sync::Arc<MinuteBins> {
    let snap = store.snapshot();
    let empty = snap.files.is_empty() && snap.observations.iter().all(|b| b.num_rows() == 0);
    let from = if empty {
        i64::MIN
    } else {
        minute_of(chrono::Utc::now().timestamp_micros()) + MINUTE_US
    };
    let bins = std::sync::Arc::new(MinuteBins::new(window, from));
    let obs = std::sync::Arc::new(carewatch_query::table::StoreTable::new(
        store.clone(),
        carewatch_store::Table::Observations,
    ));
    let provider = table::VitalMinutes::new(obs, Some(bins.clone()));
    scope::register_udf(ctx, &bins);
    let _ = ctx.deregister_table(TABLE);
    if let Err(e) = ctx.register_table(TABLE, std::sync::Arc::new(provider)) {
        tracing::warn!(error = %e, "vital_minutes not registered; rules reading it will fail");
    }
    bins
}

#[cfg(test)]
mod tests;
