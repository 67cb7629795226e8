//! Counters for metrics and tests, and what an append tells its observers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::Row;

/// Counters for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Rows in the buffer.
    pub buffered_rows: usize,
    /// Persisted files per table.
    pub files: usize,
    /// WAL frames replayed at open.
    pub replayed_frames: usize,
    /// WAL damage found at open (torn or corrupt tails cut).
    pub wal_damage: Vec<String>,
    /// Group commits done.
    pub commits: u64,
    /// Persists done.
    pub persists: u64,
    /// Compactions done.
    pub compactions: u64,
    /// Rows acknowledged since open.
    pub rows_appended: u64,
    /// Dead letters acknowledged since open.
    pub dead_appended: u64,
    /// Rows acknowledged since open, per source (`http`, `mqtt`, `replay`).
    pub rows_by_source: BTreeMap<&'static str, u64>,
    /// Dead letters acknowledged since open, per (source, reason code).
    pub dead_by_reason: BTreeMap<(&'static str, &'static str), u64>,
    /// WAL group commit (write + fsync) durations.
    pub commit_seconds: Histogram,
    /// Persist (buffer to Parquet + checkpoint) durations.
    pub persist_seconds: Histogram,
    /// Shared tables: following other nodes' commits (refresh the logs, read the files they
    /// added and tell the observers) — a stage of a reading's way to its patient's owner.
    pub follow_seconds: Histogram,
}

/// A latency histogram with fixed bucket bounds (seconds), Prometheus-style cumulative on output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    /// Count per bucket (not cumulative), one more than [`Histogram::BOUNDS`] for +Inf.
    pub counts: Vec<u64>,
    /// Sum of observations, microseconds.
    pub sum_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; Self::BOUNDS.len() + 1],
            sum_us: 0,
        }
    }
}

impl Histogram {
    /// Upper bounds, seconds.
    pub const BOUNDS: [f64; 12] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    ];
    /// Records one duration.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = Self::BOUNDS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(Self::BOUNDS.len());
        self.counts[i] += 1;
        self.sum_us += d.as_micros() as u64;
    }
    /// Observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What one durable append added, for observers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppendSummary {
    /// Per patient: (patient, earliest, latest effective time), UTC µs.
    pub patients: Vec<(String, i64, i64)>,
    /// Per (patient, code): the reading with the latest effective time (patient, code, time,
    /// value).
    pub latest: Vec<(String, &'static str, i64, f64)>,
    /// Every reading of the append: (index into `patients`, code, effective time, value), for
    /// observers that aggregate values (the alert engine's minute bins).
    pub readings: Vec<(u32, &'static str, i64, f64)>,
}

/// Called after each durable append with an [`AppendSummary`]. Rows without a patient are not
/// reported.
pub type AppendObserver = Arc<dyn Fn(&AppendSummary) + Send + Sync>;

pub(super) fn summarise(rows: &[Row]) -> AppendSummary {
    summarise_readings(rows.iter().filter_map(|r| {
        let p = r.reading.patient_id.as_deref()?;
        Some((p, r.reading.code(), r.reading.effective_us, r.reading.value))
    }))
}

/// The summary of readings `(patient, code, effective time, value)`.
pub(super) fn summarise_readings<'a>(
    rows: impl Iterator<Item = (&'a str, &'static str, i64, f64)>,
) -> AppendSummary {
    // Per patient: (its index in `patients`, earliest, latest).
    let mut m: std::collections::HashMap<&str, (u32, i64, i64)> = std::collections::HashMap::new();
    let mut latest: std::collections::HashMap<(&str, &'static str), (i64, f64)> =
        std::collections::HashMap::new();
    let mut patients: Vec<(String, i64, i64)> = Vec::new();
    let mut readings = Vec::with_capacity(rows.size_hint().0);
    for (p, code, t, value) in rows {
        let e = m.entry(p).or_insert_with(|| {
            patients.push((p.to_owned(), t, t));
            (patients.len() as u32 - 1, t, t)
        });
        e.1 = e.1.min(t);
        e.2 = e.2.max(t);
        readings.push((e.0, code, t, value));
        let l = latest.entry((p, code)).or_insert((t, value));
        if t >= l.0 {
            *l = (t, value);
        }
    }
    for (i, a, b) in m.into_values() {
        let e = &mut patients[i as usize];
        (e.1, e.2) = (a, b);
    }
    AppendSummary {
        patients,
        readings,
        latest: latest
            .into_iter()
            .map(|((p, c), (t, v))| (p.to_owned(), c, t, v))
            .collect(),
    }
}
