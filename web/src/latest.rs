//! The in-memory latest-value cache behind `GET /v1/patients`: per patient and vital, the
//! latest reading and per-minute means of the last hour (sparklines). Fed by the store's
//! append observer (after durability), warmed at start from the last day of observations.
//!
//! Bounded per patient: a vital is its latest value and a ring of 60 minute slots (an `f64`
//! sum and a `u16` count each: 600 bytes, allocated at its first reading), so a patient with
//! heart rate, steps and SpO2 costs about 2 KB whatever their rate. A patient nothing has been
//! received for in [`FORGET_AFTER_US`] (the warm-up's reach: what a restart would rebuild) is
//! forgotten by a sweep at most once a minute.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::Serialize;

use carewatch_store::AppendSummary;

const MINUTE: i64 = 60_000_000;
/// Minutes of sparkline kept.
pub const SPARK_MINUTES: usize = 60;
/// A patient nothing has been received for in this long (wall clock, µs) leaves the cache.
pub const FORGET_AFTER_US: i64 = 86_400_000_000;

/// One vital of one patient.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VitalState {
    /// Latest value.
    pub value: f64,
    /// Its effective time, UTC µs.
    pub time_us: i64,
    #[serde(skip)]
    spark: Spark,
}

/// Per-minute sums and counts of the 60 minutes up to `newest`, at index minute mod 60.
#[derive(Debug, Clone, Default)]
struct Spark {
    /// The newest minute with a reading (µs / [`MINUTE`]).
    newest: i64,
    slots: Option<Box<Slots>>,
}

#[derive(Debug, Clone)]
struct Slots {
    sum: [f64; SPARK_MINUTES],
    count: [u16; SPARK_MINUTES],
}

fn slot(minute: i64) -> usize {
    // rem_euclid of a positive modulus is in 0..60.
    usize::try_from(minute.rem_euclid(SPARK_MINUTES as i64)).unwrap_or(0)
}

impl Spark {
    fn add(&mut self, minute: i64, v: f64) {
        if self.slots.is_none() {
            self.newest = minute;
        }
        let s = self.slots.get_or_insert_with(|| {
            Box::new(Slots {
                sum: [0.0; SPARK_MINUTES],
                count: [0; SPARK_MINUTES],
            })
        });
        let span = SPARK_MINUTES as i64;
        if minute - self.newest >= span {
            s.sum = [0.0; SPARK_MINUTES];
            s.count = [0; SPARK_MINUTES];
            self.newest = minute;
        } else if minute > self.newest {
            // The minutes after the old newest, up to this one, start empty.
            for m in self.newest + 1..=minute {
                s.sum[slot(m)] = 0.0;
                s.count[slot(m)] = 0;
            }
            self.newest = minute;
        } else if minute <= self.newest - span {
            return; // older than the sparkline
        }
        let i = slot(minute);
        // A minute with 65,535 readings keeps the mean of those.
        if s.count[i] < u16::MAX {
            s.sum[i] += v;
            s.count[i] += 1;
        }
    }

    fn means(&self) -> Vec<f64> {
        let Some(s) = &self.slots else {
            return Vec::new();
        };
        (self.newest - SPARK_MINUTES as i64 + 1..=self.newest)
            .map(slot)
            .filter(|i| s.count[*i] > 0)
            .map(|i| s.sum[i] / f64::from(s.count[i]))
            .collect()
    }
}

impl VitalState {
    /// Per-minute means of the last hour (the hour up to this vital's newest minute), oldest
    /// first; minutes without readings are left out.
    pub fn spark(&self) -> Vec<f64> {
        self.spark.means()
    }

    fn add(&mut self, t: i64, v: f64) {
        if t >= self.time_us {
            self.time_us = t;
            self.value = v;
        }
        self.spark.add(t.div_euclid(MINUTE), v);
    }
}

/// One patient: their vitals by code (a few, so a sorted vector) and when the cache last heard
/// of them (wall clock, µs).
#[derive(Debug, Default)]
struct Patient {
    vitals: Vec<(&'static str, VitalState)>,
    seen_us: i64,
}

impl Patient {
    fn add(&mut self, code: &'static str, t: i64, v: f64, now_us: i64) {
        self.seen_us = self.seen_us.max(now_us);
        let at = match self.vitals.binary_search_by(|(c, _)| c.cmp(&code)) {
            Ok(at) => at,
            Err(at) => {
                self.vitals.insert(at, (code, VitalState::default()));
                at
            }
        };
        self.vitals[at].1.add(t, v);
    }
}

#[derive(Debug, Default)]
struct Inner {
    patients: HashMap<Box<str>, Patient>,
    /// When the last forgetting sweep ran (wall clock, µs).
    swept_us: i64,
}

impl Inner {
    fn add(&mut self, patient: &str, code: &'static str, t: i64, v: f64, now_us: i64) {
        match self.patients.get_mut(patient) {
            Some(p) => p.add(code, t, v, now_us),
            None => {
                let mut p = Patient::default();
                p.add(code, t, v, now_us);
                self.patients.insert(patient.into(), p);
            }
        }
    }

    /// Forgets the patients not heard of for [`FORGET_AFTER_US`], at most once a minute.
    fn sweep(&mut self, now_us: i64) {
        if now_us - self.swept_us < MINUTE {
            return;
        }
        self.swept_us = now_us;
        self.patients
            .retain(|_, p| p.seen_us > now_us - FORGET_AFTER_US);
    }
}

/// Latest values by patient, then LOINC code.
#[derive(Debug, Default)]
pub struct LatestCache {
    inner: RwLock<Inner>,
    updates: Option<tokio::sync::broadcast::Sender<Arc<AppendSummary>>>,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
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
                inner: RwLock::default(),
                updates: Some(tx.clone()),
            }),
            tx,
        )
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an append.
    pub fn apply(&self, sum: &AppendSummary) {
        self.apply_at(sum, now_us());
        if let Some(tx) = &self.updates
            && tx.receiver_count() > 0
        {
            let _ = tx.send(Arc::new(sum.clone()));
        }
    }

    fn apply_at(&self, sum: &AppendSummary, now_us: i64) {
        let mut m = self.write();
        for (p, code, t, v) in &sum.latest {
            m.add(p, code, *t, *v, now_us);
        }
        m.sweep(now_us);
    }

    /// Records one reading (warm-up).
    pub fn seed(&self, patient: &str, code: &'static str, t: i64, v: f64) {
        self.write().add(patient, code, t, v, now_us());
    }

    /// A patient's vitals.
    pub fn patient(&self, id: &str) -> BTreeMap<&'static str, VitalState> {
        self.read()
            .patients
            .get(id)
            .map(|p| p.vitals.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the cache holds `id`.
    pub fn has(&self, id: &str) -> bool {
        self.read().patients.contains_key(id)
    }

    /// Every patient with data.
    pub fn patients(&self) -> Vec<String> {
        self.read().patients.keys().map(|k| k.to_string()).collect()
    }

    /// Patients held, and the bytes their entries and sparklines take (map slots, vitals,
    /// sparkline rings and ids; allocator rounding not included).
    pub fn bytes(&self) -> (usize, usize) {
        let m = self.read();
        let slot = size_of::<(Box<str>, Patient)>();
        let bytes = m.patients.capacity() * slot
            + m.patients
                .iter()
                .map(|(k, p)| {
                    k.len()
                        + p.vitals.capacity() * size_of::<(&str, VitalState)>()
                        + p.vitals
                            .iter()
                            .filter(|(_, v)| v.spark.slots.is_some())
                            .count()
                            * size_of::<Slots>()
                })
                .sum::<usize>();
        (m.patients.len(), bytes)
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

    /// The sparkline as the old cache computed it: every minute with a reading, within the hour
    /// up to the newest minute, mean of its readings.
    fn reference(readings: &[(i64, f64)]) -> Vec<f64> {
        let mut by_minute: BTreeMap<i64, (f64, u32)> = BTreeMap::new();
        for (t, v) in readings {
            let e = by_minute.entry(t.div_euclid(MINUTE)).or_default();
            e.0 += v;
            e.1 += 1;
        }
        let Some(newest) = by_minute.keys().next_back().copied() else {
            return Vec::new();
        };
        by_minute
            .range(newest - SPARK_MINUTES as i64 + 1..)
            .map(|(_, (s, n))| s / f64::from(*n))
            .collect()
    }

    #[test]
    fn the_ring_gives_the_hour_up_to_the_newest_minute_whatever_the_order() {
        // Readings moving forward with gaps of up to two hours, some late by up to 90 minutes
        // (older than the sparkline: dropped), from a fixed pseudo-random sequence.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let c = LatestCache::default();
        let (mut t, mut sent) = (1_000 * MINUTE, Vec::new());
        for i in 0..5_000 {
            let at = match next(20) {
                0 => t + i64::try_from(next(120)).unwrap_or(0) * MINUTE, // a gap
                1 | 2 => t - i64::try_from(next(90)).unwrap_or(0) * MINUTE, // late
                _ => t + i64::try_from(next(20)).unwrap_or(0) * 1_000_000,
            };
            t = t.max(at);
            let v = f64::from(u32::try_from(next(200)).unwrap_or(0)) / 2.0;
            sent.push((at, v));
            let sum = AppendSummary {
                latest: vec![("p".into(), "8867-4", at, v)],
                ..AppendSummary::default()
            };
            c.apply(&sum);
            if i % 97 == 0 {
                assert_eq!(
                    c.patient("p")["8867-4"].spark(),
                    reference(&sent),
                    "after {i}"
                );
            }
        }
        assert_eq!(c.patient("p")["8867-4"].spark(), reference(&sent));
    }

    #[test]
    fn a_patient_not_heard_of_for_a_day_is_forgotten() {
        let c = LatestCache::default();
        let at = |p: &str| AppendSummary {
            latest: vec![(p.into(), "8867-4", 5 * MINUTE, 70.0)],
            ..AppendSummary::default()
        };
        let t0 = 1_000 * MINUTE;
        c.apply_at(&at("gone"), t0);
        c.apply_at(&at("kept"), t0);
        c.apply_at(&at("kept"), t0 + FORGET_AFTER_US - MINUTE);
        assert!(c.has("gone") && c.has("kept"));
        c.apply_at(&at("new"), t0 + FORGET_AFTER_US + MINUTE);
        assert!(!c.has("gone"), "a day without data");
        assert!(c.has("kept") && c.has("new"));
        assert!(c.patient("gone").is_empty());
        let (n, bytes) = c.bytes();
        assert_eq!(n, 2);
        // Both rings counted, and each patient's entry.
        assert!(
            bytes >= 2 * (size_of::<Slots>() + size_of::<(&str, VitalState)>()),
            "{bytes}"
        );
    }
}
