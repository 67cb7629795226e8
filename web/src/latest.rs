//! The in-memory latest-value cache behind `GET /v1/patients`: per patient and vital, the
//! latest reading and per-minute means of the last hour (sparklines). Fed by the store's
//! append observer (after durability), warmed at start from the last day of observations.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use serde::Serialize;

use carewatch_store::AppendSummary;

const MINUTE: i64 = 60_000_000;
/// Minutes of sparkline kept.
pub const SPARK_MINUTES: usize = 60;

/// One vital of one patient.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VitalState {
    /// Latest value.
    pub value: f64,
    /// Its effective time, UTC µs.
    pub time_us: i64,
    /// Per-minute (minute start µs, sum, count), oldest first.
    #[serde(skip)]
    minutes: VecDeque<(i64, f64, u32)>,
}

impl VitalState {
    /// Per-minute means of the last hour, oldest first.
    pub fn spark(&self) -> Vec<f64> {
        self.minutes
            .iter()
            .map(|(_, s, n)| s / f64::from((*n).max(1)))
            .collect()
    }

    fn add(&mut self, t: i64, v: f64) {
        if t >= self.time_us {
            self.time_us = t;
            self.value = v;
        }
        let m = t.div_euclid(MINUTE) * MINUTE;
        match self.minutes.iter_mut().rev().find(|x| x.0 == m) {
            Some(x) => {
                x.1 += v;
                x.2 += 1;
            }
            None => {
                let at = self.minutes.partition_point(|x| x.0 < m);
                self.minutes.insert(at, (m, v, 1));
            }
        }
        let newest = self.minutes.back().map_or(m, |x| x.0);
        while self
            .minutes
            .front()
            .is_some_and(|x| x.0 <= newest - SPARK_MINUTES as i64 * MINUTE)
        {
            self.minutes.pop_front();
        }
    }
}

/// Latest values by patient, then LOINC code.
#[derive(Debug, Default)]
pub struct LatestCache {
    map: RwLock<HashMap<String, BTreeMap<&'static str, VitalState>>>,
    updates: Option<tokio::sync::broadcast::Sender<Arc<AppendSummary>>>,
}

impl LatestCache {
    /// A cache that also re-broadcasts each append (for the SSE vitals stream).
    pub fn new() -> (
        Arc<LatestCache>,
        tokio::sync::broadcast::Sender<Arc<AppendSummary>>,
    ) {
        let (tx, _) = tokio::sync::broadcast::channel(1024);
        (
            Arc::new(LatestCache {
                map: RwLock::default(),
                updates: Some(tx.clone()),
            }),
            tx,
        )
    }

    /// Records an append.
    pub fn apply(&self, sum: &AppendSummary) {
        {
            let mut m = self
                .map
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (p, code, t, v) in &sum.latest {
                m.entry(p.clone())
                    .or_default()
                    .entry(code)
                    .or_default()
                    .add(*t, *v);
            }
        }
        if let Some(tx) = &self.updates
            && tx.receiver_count() > 0
        {
            let _ = tx.send(Arc::new(sum.clone()));
        }
    }

    /// Records one reading (warm-up).
    pub fn seed(&self, patient: &str, code: &'static str, t: i64, v: f64) {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(patient.to_owned())
            .or_default()
            .entry(code)
            .or_default()
            .add(t, v);
    }

    /// A patient's vitals.
    pub fn patient(&self, id: &str) -> BTreeMap<&'static str, VitalState> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every patient with data.
    pub fn patients(&self) -> Vec<String> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_wins_by_effective_time_and_sparks_keep_an_hour() {
        let c = LatestCache::default();
        let sum = |t: i64, v: f64| AppendSummary {
            patients: vec![("p".into(), t, t)],
            latest: vec![("p".into(), "8867-4", t, v)],
            ..AppendSummary::default()
        };
        c.apply(&sum(10 * MINUTE, 80.0));
        c.apply(&sum(5 * MINUTE, 60.0)); // late: not the latest, but in the sparkline
        c.apply(&sum(10 * MINUTE + 1, 90.0));
        let v = &c.patient("p")["8867-4"];
        assert_eq!((v.value, v.time_us), (90.0, 10 * MINUTE + 1));
        assert_eq!(v.spark(), vec![60.0, 85.0]);
        c.apply(&sum(80 * MINUTE, 70.0));
        assert_eq!(c.patient("p")["8867-4"].spark(), vec![70.0]);
    }
}
