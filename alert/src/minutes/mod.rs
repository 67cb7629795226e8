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
//! Bound: per patient, one 32-byte bin per (code, minute) for the minutes in
//! `[horizon, now + 5 min future skew]`, i.e. at most `codes × (window + 5)` bins — 3 vitals and a
//! 2 h window: 3 × 125 × 32 B ≈ 12 KB. Bins are pruned when the horizon passes a minute; a
//! patient without bins left is forgotten.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use carewatch_store::AppendSummary;

pub mod table;

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

/// One bin in memory: minute (minutes since the epoch) and aggregate; 32 bytes.
#[derive(Debug, Clone, Copy)]
struct Slot {
    minute: i32,
    count: u32,
    sum: f64,
    min: f64,
    max: f64,
}

impl Slot {
    fn bin(&self) -> Bin {
        Bin {
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
        }
    }
}

fn add_slot(codes: &mut Patient, code: &'static str, t: i64, v: f64) {
    let slots = match codes.iter().position(|(c, _)| *c == code) {
        Some(i) => &mut codes[i].1,
        None => {
            codes.push((code, Vec::new()));
            let last = codes.len() - 1;
            &mut codes[last].1
        }
    };
    let m = t.div_euclid(MINUTE_US) as i32;
    let at = slots.partition_point(|s| s.minute < m);
    let bin = match slots.get(at) {
        Some(s) if s.minute == m => {
            let mut b = s.bin();
            b.add(v);
            b
        }
        _ => {
            let b = Bin::of(v);
            let s = Slot {
                minute: m,
                count: b.count,
                sum: b.sum,
                min: b.min,
                max: b.max,
            };
            slots.insert(at, s);
            return;
        }
    };
    let s = &mut slots[at];
    (s.count, s.sum, s.min, s.max) = (bin.count, bin.sum, bin.min, bin.max);
}

/// A patient's bins: per code, slots sorted by minute.
type Patient = Vec<(&'static str, Vec<Slot>)>;

const SHARDS: usize = 16;

/// The live bins (see the module docs).
#[derive(Debug)]
pub struct MinuteBins {
    shards: Vec<Mutex<HashMap<String, Patient>>>,
    /// Minutes before this (UTC µs, a minute start) are not kept; never decreases.
    horizon: AtomicI64,
    /// The first minute every append of which was seen.
    from_us: i64,
    window_us: i64,
}

/// A bin read out: (patient, code, minute start µs, bin).
pub type BinRow = (String, String, i64, Bin);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn shard_of(p: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

impl MinuteBins {
    /// Empty bins keeping `window` of minutes before "now". `from_us`: the first minute all of
    /// whose readings will be told to [`MinuteBins::add`] (`i64::MIN` when the store is empty).
    pub fn new(window: std::time::Duration, from_us: i64) -> MinuteBins {
        let from = if from_us == i64::MIN {
            i64::MIN
        } else {
            minute_of(from_us)
        };
        MinuteBins {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            horizon: AtomicI64::new(from),
            from_us: from,
            window_us: (window.as_micros() as i64).max(MINUTE_US),
        }
    }

    /// Minutes from this one on are answered from memory.
    pub fn horizon(&self) -> i64 {
        self.horizon.load(Ordering::SeqCst)
    }

    /// Folds the readings of one durable append (those before the horizon are left to the
    /// scan-time fold over `observations`).
    pub fn add(&self, sum: &AppendSummary) {
        let h = self.horizon();
        let keep = |t: i64| t >= h && t < i64::from(i32::MAX) * MINUTE_US;
        let r = &sum.readings;
        let mut i = 0;
        while i < r.len() {
            // Readings of one patient (an append lists them together) under one lock.
            let pi = r[i].0;
            let j = i + r[i..].iter().take_while(|x| x.0 == pi).count();
            let run = &r[i..j];
            i = j;
            let Some((p, _, _)) = sum.patients.get(pi as usize) else {
                continue;
            };
            if !run.iter().any(|x| keep(x.2)) {
                continue;
            }
            let mut g = lock(&self.shards[shard_of(p)]);
            if !g.contains_key(p.as_str()) {
                g.insert(p.clone(), Vec::new());
            }
            let Some(codes) = g.get_mut(p.as_str()) else {
                continue;
            };
            for &(_, code, t, v) in run.iter().filter(|x| keep(x.2)) {
                add_slot(codes, code, t, v);
            }
        }
    }

    /// Moves the horizon to `now − window` (not before the start) and prunes what fell behind
    /// it. Called at each evaluation with the engine's clock.
    pub fn advance(&self, now_us: i64) {
        let h = self.from_us.max(minute_of(now_us) - self.window_us);
        if self.horizon.fetch_max(h, Ordering::SeqCst) >= h {
            return;
        }
        let h = self.horizon();
        let hm = h
            .div_euclid(MINUTE_US)
            .clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        for s in &self.shards {
            lock(s).retain(|_, codes| {
                codes.retain_mut(|(_, slots)| {
                    let cut = slots.partition_point(|s| s.minute < hm);
                    slots.drain(..cut);
                    !slots.is_empty()
                });
                !codes.is_empty()
            });
        }
    }

    /// The bins in memory for minutes in `[from, to)` (and not before the horizon), of the
    /// given patients and codes (`None`: all).
    pub fn read(
        &self,
        patients: Option<&[String]>,
        codes: Option<&[String]>,
        from_us: i64,
        to_us: i64,
    ) -> Vec<BinRow> {
        let lo = from_us.max(self.horizon());
        let mut out = Vec::new();
        let mut one = |p: &str, codes_of: &Patient| {
            for (c, slots) in codes_of {
                if codes.is_some_and(|cs| !cs.iter().any(|x| x == c)) {
                    continue;
                }
                // Slots are sorted by minute: only those in the range are looked at (a run
                // reads a minute or two of a two-hour window).
                let a = slots.partition_point(|s| i64::from(s.minute) * MINUTE_US < lo);
                for s in &slots[a..] {
                    let t = i64::from(s.minute) * MINUTE_US;
                    if t >= to_us {
                        break;
                    }
                    out.push((p.to_owned(), (*c).to_owned(), t, s.bin()));
                }
            }
        };
        match patients {
            Some(ps) => {
                for p in ps {
                    if let Some(c) = lock(&self.shards[shard_of(p)]).get(p.as_str()) {
                        one(p, c);
                    }
                }
            }
            None => {
                for s in &self.shards {
                    for (p, c) in lock(s).iter() {
                        one(p, c);
                    }
                }
            }
        }
        out
    }

    /// Patients and bins held (for the memory figures).
    pub fn size(&self) -> (usize, usize) {
        let mut n = (0, 0);
        for s in &self.shards {
            let g = lock(s);
            n.0 += g.len();
            n.1 += g
                .values()
                .map(|c| c.iter().map(|(_, s)| s.len()).sum::<usize>())
                .sum::<usize>();
        }
        n
    }
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
    let _ = ctx.deregister_table(TABLE);
    if let Err(e) = ctx.register_table(TABLE, std::sync::Arc::new(provider)) {
        tracing::warn!(error = %e, "vital_minutes not registered; rules reading it will fail");
    }
    bins
}

#[cfg(test)]
mod tests;
