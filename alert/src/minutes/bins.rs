//! The live bins' storage: patients sharded by a hash of their id, interned within their shard
//! to dense indexes; per patient and interned vital code, a ring of slots sorted by minute (20
//! bytes while every sum, min and max is exactly an `f32`, as integer vitals' are, else 32);
//! per shard and code, the set of patients holding bins of that code. A read names its codes,
//! minutes and (optionally) patients ([`Scope`]) and touches only those: the holders of a code
//! or the scope's patients, whichever is fewer, and within a patient a binary search of the
//! minute range — no string compares on codes, no walk over every patient for a rare vital.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use carewatch_store::AppendSummary;
use foldhash::{HashMap, HashSet};

use super::ring::Ring;
use super::scope::Scope;
use super::{Bin, MINUTE_US, minute_of};

/// Shards of the patients (each its own lock: an append and a read meet on one at a time).
pub(super) const SHARDS: usize = 16;

/// A patient's bins: per code id, a ring.
type Patient = Vec<(u16, Ring)>;

/// One shard's patients.
#[derive(Debug, Default)]
struct Shard {
    ids: HashMap<Arc<str>, u32>,
    /// By index (`None`: a free index).
    names: Vec<Option<Arc<str>>>,
    bins: Vec<Patient>,
    free: Vec<u32>,
    /// By code id: the patients with bins of that code.
    holders: Vec<HashSet<u32>>,
}

impl Shard {
    fn intern(&mut self, p: &str) -> u32 {
        if let Some(&i) = self.ids.get(p) {
            return i;
        }
        let name: Arc<str> = Arc::from(p);
        let i = match self.free.pop() {
            Some(i) => {
                self.names[i as usize] = Some(name.clone());
                i
            }
            None => {
                self.names.push(Some(name.clone()));
                self.bins.push(Vec::new());
                (self.names.len() - 1) as u32
            }
        };
        self.ids.insert(name, i);
        i
    }

    fn add(&mut self, i: u32, code: u16, m: i32, v: f64, cap: usize) {
        let codes = &mut self.bins[i as usize];
        let k = match codes.iter().position(|(c, _)| *c == code) {
            Some(k) => k,
            None => {
                codes.push((code, Ring::new()));
                if self.holders.len() <= usize::from(code) {
                    self.holders
                        .resize_with(usize::from(code) + 1, HashSet::default);
                }
                self.holders[usize::from(code)].insert(i);
                codes.len() - 1
            }
        };
        codes[k].1.add(m, v, cap);
    }

    /// Drops the slots before minute `hm`; forgets patients left without any.
    fn prune(&mut self, hm: i32) {
        for i in 0..self.bins.len() {
            let holders = &mut self.holders;
            self.bins[i].retain_mut(|(c, ring)| {
                if ring.prune(hm) {
                    holders[usize::from(*c)].remove(&(i as u32));
                    return false;
                }
                true
            });
            if self.bins[i].is_empty()
                && let Some(name) = self.names[i].take()
            {
                self.ids.remove(&name);
                self.bins[i] = Vec::new();
                self.free.push(i as u32);
            }
        }
    }

    /// Calls `f` for patient `i`'s bins of `code` in minutes `[lo, hi)`.
    fn emit(&self, i: u32, code: u16, range: (i32, i32), f: &mut impl FnMut(&str, u16, i64, Bin)) {
        let Some(name) = self.names[i as usize].as_deref() else {
            return;
        };
        let Some((_, ring)) = self.bins[i as usize].iter().find(|(c, _)| *c == code) else {
            return;
        };
        ring.each(range, &mut |m, b| {
            f(name, code, i64::from(m) * MINUTE_US, b)
        });
    }
}

/// The live bins (see the module docs of [`super`]).
#[derive(Debug)]
pub struct MinuteBins {
    shards: Vec<Mutex<Shard>>,
    /// Interned codes (an append's codes are the store's static strings).
    codes: RwLock<Vec<&'static str>>,
    /// Minutes before this (UTC µs, a minute start) are not kept; never decreases.
    horizon: AtomicI64,
    /// The first minute every append of which was seen.
    from_us: i64,
    /// How far before "now" the horizon lies ([`MinuteBins::set_window`]).
    window_us: AtomicI64,
    /// The rules' open patient scopes ([`super::scope`]), by id.
    pub(super) scopes: Mutex<HashMap<u64, Arc<Scope>>>,
    pub(super) next_scope: AtomicU64,
}

/// A bin read out: (patient, code, minute start µs, bin).
pub type BinRow = (String, String, i64, Bin);

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The shard of patient `p`.
pub(super) fn shard_of(p: &str) -> usize {
    (foldhash::fast::FixedState::with_seed(0x5eed).hash_one(p) as usize) % SHARDS
}

/// A window in µs, at least a minute.
fn window_us(window: std::time::Duration) -> i64 {
    (window.as_micros() as i64).max(MINUTE_US)
}

/// Minutes since the epoch of minute start `t`, clamped to the slots' range.
fn minute_index(t: i64) -> i32 {
    t.div_euclid(MINUTE_US)
        .clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
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
            codes: RwLock::default(),
            horizon: AtomicI64::new(from),
            from_us: from,
            window_us: AtomicI64::new(window_us(window)),
            scopes: Mutex::default(),
            next_scope: AtomicU64::new(1),
        }
    }

    /// Keeps `window` before "now" from the next [`MinuteBins::advance`] on (a rule reload
    /// changed the longest look-back). A wider window fills as time passes: the horizon never
    /// moves back, minutes already dropped are read from `observations`.
    pub fn set_window(&self, window: std::time::Duration) {
        self.window_us.store(window_us(window), Ordering::SeqCst);
    }

    /// Most slots a ring of one patient's code grows to: the window's minutes, the one being
    /// filled and 5 of future skew.
    fn ring_cap(&self) -> usize {
        (self.window_us.load(Ordering::Relaxed) / MINUTE_US) as usize + 6
    }

    /// Minutes from this one on are answered from memory.
    pub fn horizon(&self) -> i64 {
        self.horizon.load(Ordering::SeqCst)
    }

    /// The id of `code`, interned if new.
    fn code_id(&self, code: &'static str) -> u16 {
        let known = |cs: &[&'static str]| cs.iter().position(|c| *c == code);
        let r = self
            .codes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = known(&r) {
            return i as u16;
        }
        drop(r);
        let mut w = self
            .codes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = known(&w) {
            return i as u16;
        }
        w.push(code);
        (w.len() - 1) as u16
    }

    /// Folds the readings of one durable append (those before the horizon are left to the
    /// scan-time fold over `observations`).
    pub fn add(&self, sum: &AppendSummary) {
        let h = self.horizon();
        let cap = self.ring_cap();
        let keep = |t: i64| t >= h && t < i64::from(i32::MAX) * MINUTE_US;
        // The append's codes, interned once (an append has a handful).
        let mut seen: Vec<(&'static str, u16)> = Vec::new();
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
            let mut codes = Vec::with_capacity(run.len());
            for &(_, code, _, _) in run.iter().filter(|x| keep(x.2)) {
                let id = match seen.iter().find(|(c, _)| std::ptr::eq(*c, code)) {
                    Some(&(_, id)) => id,
                    None => {
                        let id = self.code_id(code);
                        seen.push((code, id));
                        id
                    }
                };
                codes.push(id);
            }
            let mut g = lock(&self.shards[shard_of(p)]);
            let id = g.intern(p);
            for (&(_, _, t, v), c) in run.iter().filter(|x| keep(x.2)).zip(codes) {
                g.add(id, c, minute_index(t), v, cap);
            }
        }
    }

    /// Moves the horizon to `now − window` (not before the start) and prunes what fell behind
    /// it. Called at each evaluation with the engine's clock.
    pub fn advance(&self, now_us: i64) {
        let h = self
            .from_us
            .max(minute_of(now_us) - self.window_us.load(Ordering::SeqCst));
        if self.horizon.fetch_max(h, Ordering::SeqCst) >= h {
            return;
        }
        let hm = minute_index(self.horizon());
        for s in &self.shards {
            lock(s).prune(hm);
        }
    }

    /// Calls `f(patient, code, minute start µs, bin)` for the bins in memory of minutes in
    /// `[from, to)` (and not before the horizon), of the `scope`'s patients (`None`: all) and
    /// the given codes (`None`: all).
    pub fn read_with(
        &self,
        scope: Option<&Scope>,
        codes: Option<&[String]>,
        (from_us, to_us): (i64, i64),
        mut f: impl FnMut(&str, &'static str, i64, Bin),
    ) {
        let lo = from_us.max(self.horizon());
        if lo >= to_us {
            return;
        }
        let range = (
            minute_index(lo.saturating_add(MINUTE_US - 1)),
            minute_index(to_us.saturating_add(MINUTE_US - 1)),
        );
        let all: Vec<&'static str> = self
            .codes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let wanted: Vec<u16> = (0..all.len() as u16)
            .filter(|&i| codes.is_none_or(|cs| cs.iter().any(|c| c == all[usize::from(i)])))
            .collect();
        let mut emit = |p: &str, c: u16, t: i64, b: Bin| f(p, all[usize::from(c)], t, b);
        for (k, s) in self.shards.iter().enumerate() {
            let g = lock(s);
            for &c in &wanted {
                let Some(holders) = g.holders.get(usize::from(c)) else {
                    continue;
                };
                match scope {
                    // Fewer patients in scope than holders: look each up.
                    Some(sc) if sc.in_shard(k).len() < holders.len() => {
                        for p in sc.in_shard(k) {
                            if let Some(&i) = g.ids.get(&**p) {
                                g.emit(i, c, range, &mut emit);
                            }
                        }
                    }
                    _ => {
                        for &i in holders {
                            let inside = match (scope, g.names[i as usize].as_deref()) {
                                (Some(sc), Some(p)) => sc.contains(p),
                                (None, Some(_)) => true,
                                (_, None) => false,
                            };
                            if inside {
                                g.emit(i, c, range, &mut emit);
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`MinuteBins::read_with`] into rows, for the given patients (`None`: all).
    pub fn read(
        &self,
        patients: Option<&[String]>,
        codes: Option<&[String]>,
        from_us: i64,
        to_us: i64,
    ) -> Vec<BinRow> {
        let scope = patients.map(|ps| Scope::new(ps.iter().map(|p| Arc::from(p.as_str()))));
        let mut out = Vec::new();
        self.read_with(scope.as_ref(), codes, (from_us, to_us), |p, c, t, b| {
            out.push((p.to_owned(), c.to_owned(), t, b));
        });
        out
    }

    /// Patients and bins held (for the memory figures).
    pub fn size(&self) -> (usize, usize) {
        let (p, bins, _) = self.footprint();
        (p, bins)
    }

    /// Patients, bins held and bytes of the slots allocated (20 or 32 a slot): what the rings
    /// take, for the bytes-per-patient figure.
    pub fn footprint(&self) -> (usize, usize, usize) {
        let mut n = (0, 0, 0);
        for s in &self.shards {
            let g = lock(s);
            n.0 += g.ids.len();
            for c in &g.bins {
                for (_, ring) in c {
                    let (held, bytes) = ring.footprint();
                    n.1 += held;
                    n.2 += bytes;
                }
            }
        }
        n
    }
}
