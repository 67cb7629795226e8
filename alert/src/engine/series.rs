//! The rules' samples between runs: per (rule, patient) the per-bucket samples of the rule's
//! look-back window, and per patient the event-time watermark.
//!
//! Patients are interned to small integer ids ([`Pid`]) once per run (the run's dirty set), so
//! the per-(rule, patient) work of a run is indexing, not hashing and comparing strings; rules
//! are indexed by their position in the rule set the samples were built for (another rule set —
//! a reload — starts them afresh).
//!
//! Bounds, per patient: one [`Series`] per rule (its samples at most the rule's look-back plus a
//! bucket behind the patient's watermark — `prune`, on every series a run touched and on all of
//! them once a minute) and a watermark. A patient with no new data for [`FORGET_US`] (and at
//! least every rule's look-back) and no open alert or pending episode is forgotten, its id
//! reused: a restart would not have its samples either (the catch-up reaches back at most that
//! far). One with an open alert is kept, so that its data coming back resolves it as before.

use std::sync::Arc;

use crate::episodes::Sample;
use crate::rules::Rule;

/// A patient's id in the samples (valid while the samples' patient is not forgotten).
pub(super) type Pid = u32;

/// A patient whose newest data is this much older than the clock is forgotten (24 h: the
/// device-silent catch-up's reach).
pub(super) const FORGET_US: i64 = 24 * 3_600_000_000;

/// A sample as a series holds it, in 16 bytes (a `(i64, Sample)` takes 32: the `Option<f64>`
/// and the flag each pad to 8): the bucket start doubled plus the hit flag, and the value's
/// bits with one NaN standing for "no value".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    key: i64,
    value: u64,
}

/// The bits of "no value": a NaN with a payload no arithmetic gives (a computed NaN is kept
/// as its own bits, so it stays a value).
const NO_VALUE: u64 = 0x7ff8_c0de_0000_0001;

impl Held {
    fn new(t: i64, s: Sample) -> Held {
        Held {
            // Bucket starts are within ±2^62 µs (146,000 years) of 1970; beyond, the order of
            // the extremes is lost, never a panic.
            key: t.saturating_mul(2) | i64::from(s.hit),
            value: s.value.map_or(NO_VALUE, f64::to_bits),
        }
    }

    /// The bucket's start.
    pub(super) fn t(&self) -> i64 {
        self.key >> 1
    }

    /// The bucket's condition.
    pub(super) fn sample(&self) -> Sample {
        Sample {
            hit: self.key & 1 == 1,
            value: (self.value != NO_VALUE).then(|| f64::from_bits(self.value)),
        }
    }
}

/// One (rule, patient)'s samples.
#[derive(Debug, Default)]
pub(super) struct Series {
    /// By bucket start, sorted: a vector of 16-byte samples (a B-tree of `(i64, Sample)` took
    /// 50–75 bytes a sample with its nodes' slack, for series of 5 to 63 samples); samples
    /// arrive in time order but for late data, and pruning drops a prefix.
    samples: Vec<Held>,
    /// Samples are complete from here on (earlier ones may have been pruned or never loaded);
    /// meaningful once `covered`.
    pub(super) from_us: i64,
    /// A query has covered this (rule, patient) since the series was made.
    covered: bool,
    /// Hit samples held.
    hits: u32,
    /// The episodes last computed were empty (a fresh series is not: its first run reconciles).
    pub(super) quiet: bool,
    /// A contiguous rule's open bucket not read yet (its start): read once it closes.
    pub(super) deferred: Option<i64>,
}

impl Series {
    /// The samples, by bucket start.
    pub(super) fn samples(&self) -> &[Held] {
        &self.samples
    }

    /// The samples of buckets starting before `t`.
    pub(super) fn before(&self, t: i64) -> &[Held] {
        &self.samples[..self.samples.partition_point(|e| e.t() < t)]
    }

    /// Does `[from, …)` now count as covered (the series is complete from the earliest start
    /// a query covered)?
    pub(super) fn cover(&mut self, from: i64) {
        if !self.covered || from < self.from_us {
            self.from_us = from;
        }
        self.covered = true;
    }

    /// Does bucket `t` have a sample?
    pub(super) fn has(&self, t: i64) -> bool {
        self.samples.binary_search_by_key(&t, Held::t).is_ok()
    }

    /// Is the series complete from `at` on?
    pub(super) fn complete_from(&self, at: i64) -> bool {
        self.covered && self.from_us <= at
    }

    pub(super) fn insert(&mut self, t: i64, s: Sample) {
        let was = match self.samples.binary_search_by_key(&t, Held::t) {
            Ok(i) => {
                std::mem::replace(&mut self.samples[i], Held::new(t, s))
                    .sample()
                    .hit
            }
            Err(i) => {
                // Grow by a quarter (a doubling would leave an 18-sample series 14 slots of
                // slack; series are short, so the extra copies are cheap).
                if self.samples.len() == self.samples.capacity() {
                    self.samples.reserve_exact((self.samples.len() / 4).max(4));
                }
                self.samples.insert(i, Held::new(t, s));
                false
            }
        };
        self.hits = self.hits + u32::from(s.hit) - u32::from(was);
    }

    /// No hit held: a rule that is not an absence rule has no episode here.
    pub(super) fn no_hits(&self) -> bool {
        self.hits == 0
    }

    /// Drops the samples before `edge`.
    fn prune(&mut self, edge: i64) {
        let gone = self.samples.partition_point(|e| e.t() < edge);
        if gone > 0 {
            self.samples.drain(..gone);
            self.hits = self.samples.iter().filter(|e| e.sample().hit).count() as u32;
            self.from_us = self.from_us.max(edge);
        }
    }
}

/// What evaluation keeps between runs. Only the evaluation loop touches it (a rule reload
/// clears the series).
#[derive(Debug, Default)]
pub(super) struct Samples {
    ids: foldhash::HashMap<Arc<str>, Pid>,
    names: Vec<Arc<str>>,
    free: Vec<Pid>,
    /// Per patient id: the newest effective time seen (`None`: a free id).
    watermark: Vec<Option<i64>>,
    /// The rule set `series` is indexed by.
    rules: Option<Arc<Vec<Rule>>>,
    /// `series[rule][pid]`.
    series: Vec<Vec<Series>>,
    /// Per rule: how long samples are kept behind the watermark.
    keep: Vec<i64>,
    /// When every series was last pruned (wall clock, UTC µs).
    swept_us: i64,
    /// Samples held right after the last sweep, until read ([`Samples::held_at_sweep`]).
    swept_held: Option<usize>,
    /// Per rule: patients whose closed buckets a run left for the next (`[a, z]` of their new
    /// data), read first by the next run.
    carried: Vec<Vec<(Pid, i64, i64)>>,
    /// At most this many patients' closed buckets are read per rule and run (`None`:
    /// [`CARRY_LIMIT`]).
    limit: Option<usize>,
    /// The last scope made for a query of many patients, by their ids: the spot rules of one
    /// run query the same dirty set (ids stay a patient's until it is forgotten, which clears
    /// this).
    scope: Option<(Vec<Pid>, Arc<crate::minutes::Scope>)>,
}

/// Patients whose closed buckets one run reads per contiguous or absence rule; the others
/// are carried to the next run, so that a minute boundary (every patient's minute closing at
/// once) is spread over a few runs and a fever arriving meanwhile is not held up by all of it.
pub(super) const CARRY_LIMIT: usize = 20_000;

impl Samples {
    /// Makes the samples those of `rules` (a new rule set starts with no series).
    pub(super) fn use_rules(&mut self, rules: &Arc<Vec<Rule>>) {
        if self.rules.as_ref().is_some_and(|r| Arc::ptr_eq(r, rules)) {
            return;
        }
        self.rules = Some(rules.clone());
        self.keep = rules.iter().map(keep_us).collect();
        self.carried = vec![Vec::new(); rules.len()];
        self.series = rules
            .iter()
            .map(|_| {
                std::iter::repeat_with(Series::default)
                    .take(self.names.len())
                    .collect()
            })
            .collect();
    }

    /// Forgets every series (a rule reload: a catch-up rebuilds them).
    pub(super) fn clear_series(&mut self) {
        self.rules = None;
        self.series.clear();
        self.carried.clear();
        self.scope = None;
    }

    /// The patients carried for rule `rule` (taken: a run reads them or carries them again).
    pub(super) fn take_carry(&mut self, rule: usize) -> Vec<(Pid, i64, i64)> {
        self.carried
            .get_mut(rule)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Carries `more` to rule `rule`'s next run.
    pub(super) fn carry(&mut self, rule: usize, mut more: Vec<(Pid, i64, i64)>) {
        if let Some(c) = self.carried.get_mut(rule) {
            if c.is_empty() {
                *c = more;
            } else {
                c.append(&mut more);
            }
        }
    }

    /// Patients carried over every rule.
    pub(super) fn carried(&self) -> usize {
        self.carried.iter().map(Vec::len).sum()
    }

    /// The scope of patients `ids` (made once for the same ids in a row).
    pub(super) fn scope_of(&mut self, ids: &[Pid]) -> Arc<crate::minutes::Scope> {
        if let Some((k, s)) = &self.scope
            && k.as_slice() == ids
        {
            return s.clone();
        }
        let s = Arc::new(crate::minutes::Scope::new(
            ids.iter().map(|p| self.names[*p as usize].clone()),
        ));
        self.scope = Some((ids.to_vec(), s.clone()));
        s
    }

    /// How many patients' closed buckets a run reads per rule.
    pub(super) fn carry_limit(&self) -> usize {
        self.limit.unwrap_or(CARRY_LIMIT).max(1)
    }

    /// Sets [`Samples::carry_limit`].
    pub(super) fn set_carry_limit(&mut self, n: usize) {
        self.limit = Some(n);
    }

    /// The id of `patient`, interned if new.
    pub(super) fn intern(&mut self, patient: &str) -> Pid {
        if let Some(&id) = self.ids.get(patient) {
            return id;
        }
        let name: Arc<str> = Arc::from(patient);
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = name.clone();
                id
            }
            None => {
                self.names.push(name.clone());
                self.watermark.push(None);
                for s in &mut self.series {
                    s.push(Series::default());
                }
                (self.names.len() - 1) as Pid
            }
        };
        self.ids.insert(name, id);
        id
    }

    /// The id of `patient`, if known.
    pub(super) fn id(&self, patient: &str) -> Option<Pid> {
        self.ids.get(patient).copied()
    }

    pub(super) fn name(&self, id: Pid) -> &Arc<str> {
        &self.names[id as usize]
    }

    /// Raises the patient's watermark to `t`.
    pub(super) fn raise(&mut self, id: Pid, t: i64) {
        let w = &mut self.watermark[id as usize];
        *w = Some(w.map_or(t, |w| w.max(t)));
    }

    pub(super) fn watermark(&self, id: Pid) -> Option<i64> {
        self.watermark[id as usize]
    }

    pub(super) fn series(&self, rule: usize, id: Pid) -> &Series {
        &self.series[rule][id as usize]
    }

    pub(super) fn series_mut(&mut self, rule: usize, id: Pid) -> &mut Series {
        &mut self.series[rule][id as usize]
    }

    /// Patients held (ids in use).
    pub(super) fn patients(&self) -> usize {
        self.ids.len()
    }

    /// Every patient id in use whose (rule) series holds samples.
    pub(super) fn with_samples(&self, rule: usize) -> impl Iterator<Item = Pid> + '_ {
        self.series[rule]
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.samples.is_empty())
            .map(|(i, _)| i as Pid)
    }

    /// Samples held over every series.
    pub(super) fn held(&self) -> usize {
        self.series.iter().flatten().map(|s| s.samples.len()).sum()
    }

    /// Drops the samples of `(rule, id)` that no look-back needs any more.
    pub(super) fn prune(&mut self, rule: usize, id: Pid, now: i64) {
        let edge = self.watermark[id as usize].unwrap_or(now).min(now) - self.keep[rule];
        self.series[rule][id as usize].prune(edge);
    }

    /// Once a minute: prunes every series, and returns the patients whose newest data is
    /// older than [`FORGET_US`] (and every rule's keep): the caller forgets those without an
    /// open alert ([`Samples::forget`]).
    pub(super) fn sweep(&mut self, now: i64) -> Vec<Pid> {
        if now - self.swept_us < 60_000_000 {
            return Vec::new();
        }
        self.swept_us = now;
        let keep = self.keep.iter().copied().max().unwrap_or(0);
        let stale = now - FORGET_US.max(keep);
        let mut old = Vec::new();
        let mut held = 0;
        for id in 0..self.names.len() {
            let Some(w) = self.watermark[id] else {
                continue;
            };
            if w < stale {
                old.push(id as Pid);
            }
            for rule in 0..self.series.len() {
                self.prune(rule, id as Pid, now);
                held += self.series[rule][id].samples.len();
            }
        }
        self.swept_held = Some(held);
        old
    }

    /// Samples held right after the last sweep, once per sweep.
    pub(super) fn held_at_sweep(&mut self) -> Option<usize> {
        self.swept_held.take()
    }

    /// Forgets patients `ids` (their ids are reused; nothing of theirs stays carried).
    pub(super) fn forget_all(&mut self, ids: &[Pid]) {
        if ids.is_empty() {
            return;
        }
        self.scope = None;
        let gone: foldhash::HashSet<Pid> = ids.iter().copied().collect();
        for c in &mut self.carried {
            c.retain(|m| !gone.contains(&m.0));
        }
        ids.iter().for_each(|p| self.forget(*p));
    }

    /// Forgets patient `id` (its id is reused).
    fn forget(&mut self, id: Pid) {
        let i = id as usize;
        let name = std::mem::replace(&mut self.names[i], Arc::from(""));
        self.ids.remove(&name);
        self.watermark[i] = None;
        for s in &mut self.series {
            let gone = std::mem::take(&mut s[i]).samples.len();
            if let Some(held) = &mut self.swept_held {
                *held = held.saturating_sub(gone);
            }
        }
        self.free.push(id);
    }
}

/// How long rule `r` keeps samples behind the watermark: its look-back over every patient's
/// parameters, plus a bucket.
pub(crate) fn keep_us(r: &Rule) -> i64 {
    super::max_lookback_us(r) + r.bucket_us
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(hit: bool) -> Sample {
        Sample {
            hit,
            value: Some(1.0),
        }
    }

    #[test]
    fn a_series_keeps_its_samples_sorted_counts_hits_and_prunes_a_prefix() {
        let mut s = Series::default();
        // Late data lands between the buckets it belongs between; a bucket read again is
        // replaced, with its hit counted once.
        for t in [10, 30, 20, 40, 30] {
            s.insert(t, sample(t >= 30));
        }
        let starts: Vec<i64> = s.samples().iter().map(Held::t).collect();
        assert_eq!(starts, [10, 20, 30, 40]);
        assert_eq!(s.hits, 2);
        s.insert(40, sample(false));
        assert_eq!(s.hits, 1);
        assert!(s.has(20) && !s.has(25));
        assert_eq!(s.before(30).len(), 2);
        assert_eq!(s.before(5).len(), 0);
        s.prune(25);
        let starts: Vec<i64> = s.samples().iter().map(Held::t).collect();
        assert_eq!(starts, [30, 40]);
        assert_eq!((s.hits, s.from_us), (1, 25));
    }

    #[test]
    fn a_held_sample_is_16_bytes_and_gives_back_what_went_in() {
        assert_eq!(size_of::<Held>(), 16);
        let values = [
            None,
            Some(0.0),
            Some(-0.0),
            Some(36.6),
            Some(-1e300),
            Some(f64::INFINITY),
            Some(f64::NAN),
            Some(f64::from_bits(NO_VALUE ^ 1)),
        ];
        let times = [0, 1, -1, 60_000_000, -86_400_000_000, 1 << 61, -(1 << 61)];
        for t in times {
            for value in values {
                for hit in [false, true] {
                    let back = Held::new(t, Sample { hit, value }).sample();
                    assert_eq!(Held::new(t, Sample { hit, value }).t(), t);
                    assert_eq!(back.hit, hit, "{t} {value:?}");
                    // Bits, so that a NaN value compares equal to itself.
                    assert_eq!(back.value.map(f64::to_bits), value.map(f64::to_bits));
                }
            }
        }
        // The order of bucket starts is the order of the keys, whatever the flags.
        let mut keys: Vec<Held> = times
            .iter()
            .map(|t| Held::new(*t, sample(*t % 2 == 0)))
            .collect();
        keys.sort_by_key(|h| h.key);
        let mut sorted = times.to_vec();
        sorted.sort_unstable();
        assert_eq!(keys.iter().map(Held::t).collect::<Vec<_>>(), sorted);
    }

    #[test]
    fn a_series_grows_by_a_quarter_not_a_doubling() {
        let mut s = Series::default();
        for t in 0..18 {
            s.insert(t, sample(false));
        }
        // 4, 8, 12, 16, 20: an 18-sample series (a heart-rate rule's look-back) keeps 2 spare.
        assert_eq!(s.samples.capacity(), 20);
        for t in 18..64 {
            s.insert(t, sample(false));
        }
        assert!(s.samples.capacity() <= 72, "{}", s.samples.capacity());
    }
}
