//! Per-patient baselines: each patient's own resting heart rate, SpO2 and body temperature,
//! learned from their history at rest and used by rules relative to it (`hr_above_baseline`).
//!
//! The baseline of a vital for patient `p` on UTC day `D` is the **median of `p`'s rest-minute
//! means over the `window_days` days before `D`** (`[D - window, D)`): data of day `D` itself,
//! or later, never enters it (no look-ahead), so the same minute sees the same baseline live
//! and in a backtest. A rest minute is a minute whose step count is known and at most
//! `max_steps` (heart rate); SpO2 and temperature are mostly spot readings from patients
//! without a step counter, so for them a minute without a step record counts as rest too,
//! unless steps above `max_steps` were recorded in it. A baseline needs at least
//! [`Vital::min_minutes`] rest minutes in the window; below that it is absent (and rules
//! relative to it stay silent). A per-patient override (a clinician's value) replaces the
//! learned one on every day.
//!
//! Baselines are computed per day, on demand, and kept: the `baselines` table
//! ([`table::register`]) computes at each scan the days it has been asked for that are not
//! known yet — days that received data (the store's append observer, [`Baselines::watch`]),
//! today, or the range a backtest [`Baselines::prepare`]s — so they are refreshed daily. Late
//! data for a day re-computes, for that patient, the later days whose window contains it.
//!
//! Modules: [`compute`] (the SQL over `observations` and the medians), [`table`] (the
//! `baselines` table), [`http`] (`GET`/`PUT /v1/patients/{id}/baselines`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use carewatch_store::Store;

pub mod compute;
pub mod http;
pub mod table;

pub use table::register;

/// One UTC day, microseconds.
pub const DAY: i64 = 86_400_000_000;

/// A vital with a learned baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vital {
    /// Our key (`heart_rate`).
    pub key: &'static str,
    /// LOINC code.
    pub code: &'static str,
    /// Only minutes with a known step count (≤ `max_steps`) are rest minutes.
    pub needs_steps: bool,
    /// Rest minutes needed in the window for a baseline.
    pub min_minutes: usize,
}

/// The vitals that get a baseline.
pub const VITALS: [Vital; 3] = [
    Vital {
        key: "heart_rate",
        code: "8867-4",
        needs_steps: true,
        min_minutes: 60,
    },
    Vital {
        key: "spo2",
        code: "2708-6",
        needs_steps: false,
        min_minutes: 5,
    },
    Vital {
        key: "body_temperature",
        code: "8310-5",
        needs_steps: false,
        min_minutes: 3,
    },
];

/// The vital with this key or LOINC code.
pub fn vital(key_or_code: &str) -> Option<&'static Vital> {
    VITALS
        .iter()
        .find(|v| v.key == key_or_code || v.code == key_or_code)
}

/// How baselines are learned (`[baselines]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// Days of history before each day that its baseline is learned from.
    pub window_days: u32,
    /// A minute with at most this many steps is a rest minute.
    pub max_steps: f64,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            window_days: 14,
            max_steps: 0.0,
        }
    }
}

impl BaselineConfig {
    /// Checks the values (once, at start).
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=365).contains(&self.window_days) {
            return Err(format!(
                "baselines window_days = {}: use 1 to 365 days",
                self.window_days
            ));
        }
        if !self.max_steps.is_finite() || self.max_steps < 0.0 {
            return Err("baselines max_steps must be a number ≥ 0".into());
        }
        Ok(())
    }

    fn window_us(&self) -> i64 {
        i64::from(self.window_days) * DAY
    }
}

/// What was learned for one (patient, vital) on one day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Learned {
    /// The median of the rest minutes, when there were enough of them.
    pub value: Option<f64>,
    /// Rest minutes in the window.
    pub minutes: usize,
}

/// Per patient, per LOINC code: the clinician's value.
pub type Overrides = BTreeMap<String, BTreeMap<String, f64>>;

/// One row of the `baselines` table / one vital in the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    /// Patient.
    pub patient_id: String,
    /// Vital key.
    pub vital: &'static str,
    /// LOINC code.
    pub code: &'static str,
    /// UTC day start it applies to, µs.
    #[serde(skip)]
    pub day_us: i64,
    /// What rules use: the override, else the learned value.
    pub baseline: Option<f64>,
    /// The learned median.
    pub learned: Option<f64>,
    /// The clinician's override.
    pub override_value: Option<f64>,
    /// Rest minutes the learned value comes from.
    pub rest_minutes: usize,
    /// `override`, `learned` or `insufficient`.
    pub source: &'static str,
}

type Days = BTreeMap<i64, BTreeMap<(String, &'static str), Learned>>;

#[derive(Debug, Default)]
struct Cache {
    /// Computed days: per (patient, code).
    days: Days,
    /// Days asked for and not computed yet.
    wanted: BTreeSet<i64>,
    /// Computed days to re-compute for some patients (late data in their window).
    stale: BTreeMap<i64, BTreeSet<String>>,
    /// Live: when each day was last asked for (a counter), to drop the least recent.
    used: BTreeMap<i64, u64>,
    generation: u64,
}

/// Live: at most this many days are kept (the least recently asked for leave first).
const LIVE_DAYS: usize = 32;

impl Cache {
    fn want(&mut self, day: i64) {
        self.generation += 1;
        self.used.insert(day, self.generation);
        if !self.days.contains_key(&day) {
            self.wanted.insert(day);
        }
    }

    fn prune(&mut self) {
        while self.days.len() > LIVE_DAYS {
            let Some(old) = self
                .days
                .keys()
                .min_by_key(|d| self.used.get(d).copied().unwrap_or(0))
                .copied()
            else {
                break;
            };
            self.days.remove(&old);
            self.used.remove(&old);
        }
    }
}

struct Inner {
    config: BaselineConfig,
    ctx: SessionContext,
    overrides_path: Option<PathBuf>,
    overrides: Mutex<Overrides>,
    cache: Mutex<Cache>,
    /// One computation at a time (a second scan waits and finds the days known).
    computing: tokio::sync::Mutex<()>,
    /// Live: today (wall clock) is always wanted and days far behind are dropped.
    live: std::sync::atomic::AtomicBool,
}

/// The baselines of every patient (cheap to clone).
#[derive(Clone)]
pub struct Baselines {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Baselines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Baselines")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The UTC day start of an instant.
pub fn day_of(us: i64) -> i64 {
    us.div_euclid(DAY) * DAY
}

impl Baselines {
    /// Baselines over `store`'s observations, with the overrides kept in
    /// `<data_dir>/baselines/overrides.json` (`data_dir` `None`: no overrides, none saved).
    pub fn open(
        store: &Store,
        data_dir: Option<&Path>,
        config: BaselineConfig,
    ) -> Result<Baselines, String> {
        config.validate()?;
        let overrides_path = data_dir.map(|d| d.join("baselines").join("overrides.json"));
        let overrides = match &overrides_path {
            Some(p) => read_overrides(p)?,
            None => Overrides::new(),
        };
        Ok(Baselines {
            inner: Arc::new(Inner {
                config,
                ctx: compute::context(store)?,
                overrides_path,
                overrides: Mutex::new(overrides),
                cache: Mutex::new(Cache::default()),
                computing: tokio::sync::Mutex::new(()),
                live: false.into(),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> BaselineConfig {
        self.inner.config
    }

    /// Live use: every durable append of `store` asks for the days it touched (and marks the
    /// later days whose window it falls in for re-computation); today is always wanted.
    pub fn watch(&self, store: &Store) {
        use std::sync::atomic::Ordering;
        self.inner.live.store(true, Ordering::Relaxed);
        let me = Arc::downgrade(&self.inner);
        store.observe_appends(Arc::new(move |s| {
            if let Some(inner) = me.upgrade() {
                let b = Baselines { inner };
                for (p, a, z) in &s.patients {
                    b.touched(p, *a, *z);
                }
            }
        }));
    }

    /// Data of `patient` between `from_us` and `to_us` arrived.
    fn touched(&self, patient: &str, from_us: i64, to_us: i64) {
        let w = self.inner.config.window_us();
        let (a, z) = (day_of(from_us), day_of(to_us));
        let mut c = lock(&self.inner.cache);
        let mut d = a;
        while d <= z {
            c.want(d);
            d += DAY;
        }
        // Days after the data whose window [day - w, day) contains it.
        let later: Vec<i64> = c.days.range(a + DAY..=z + w).map(|(d, _)| *d).collect();
        for d in later {
            c.stale.entry(d).or_default().insert(patient.to_owned());
        }
    }

    /// Asks for the days of `[from_us, to_us)` (a backtest's range); computed at the next
    /// [`Self::ensure`] or scan.
    pub fn prepare(&self, from_us: i64, to_us: i64) {
        let mut c = lock(&self.inner.cache);
        let mut d = day_of(from_us);
        while d < to_us {
            c.want(d);
            d += DAY;
        }
    }

    /// Offline and asked for nothing yet.
    fn idle(&self) -> bool {
        if self.inner.live.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let c = lock(&self.inner.cache);
        c.days.is_empty() && c.wanted.is_empty()
    }

    /// Computes every day asked for and not known yet, and re-computes stale ones.
    pub async fn ensure(&self) -> Result<(), String> {
        let _one = self.inner.computing.lock().await;
        if self.inner.live.load(std::sync::atomic::Ordering::Relaxed) {
            let today = day_of(chrono::Utc::now().timestamp_micros());
            lock(&self.inner.cache).want(today);
        }
        let (wanted, stale) = {
            let mut c = lock(&self.inner.cache);
            (std::mem::take(&mut c.wanted), std::mem::take(&mut c.stale))
        };
        let result = self.compute_all(&wanted, &stale).await;
        if result.is_err() {
            // Asked again at the next scan.
            let mut c = lock(&self.inner.cache);
            c.wanted.extend(wanted);
            for (d, ps) in stale {
                c.stale.entry(d).or_default().extend(ps);
            }
        }
        result
    }

    async fn compute_all(
        &self,
        wanted: &BTreeSet<i64>,
        stale: &BTreeMap<i64, BTreeSet<String>>,
    ) -> Result<(), String> {
        let cfg = self.inner.config;
        for days in compute::clusters(wanted, cfg.window_us()) {
            let got = compute::learn(&self.inner.ctx, &cfg, &days, None).await?;
            let mut c = lock(&self.inner.cache);
            for d in days {
                c.days.insert(d, got.get(&d).cloned().unwrap_or_default());
            }
        }
        for (d, patients) in stale {
            let names: Vec<&str> = patients.iter().map(String::as_str).collect();
            let got = compute::learn(&self.inner.ctx, &cfg, &[*d], Some(&names)).await?;
            let mut c = lock(&self.inner.cache);
            let day = c.days.entry(*d).or_default();
            day.retain(|(p, _), _| !patients.contains(p));
            day.extend(got.get(d).cloned().unwrap_or_default());
        }
        if self.inner.live.load(std::sync::atomic::Ordering::Relaxed) {
            // Live rules look at the days that receive data; a day dropped here is computed
            // again when data for it arrives.
            lock(&self.inner.cache).prune();
        }
        Ok(())
    }

    /// Every known day's rows (computed days × patients, and the overrides on those days).
    pub fn rows(&self) -> Vec<Baseline> {
        let overrides = lock(&self.inner.overrides).clone();
        let c = lock(&self.inner.cache);
        let mut out = Vec::new();
        for (day, learned) in &c.days {
            let mut keys: BTreeSet<(String, &'static str)> = learned.keys().cloned().collect();
            for (p, codes) in &overrides {
                for code in codes.keys() {
                    if let Some(v) = vital(code) {
                        keys.insert((p.clone(), v.code));
                    }
                }
            }
            for (p, code) in keys {
                let l = learned.get(&(p.clone(), code)).copied();
                let o = overrides.get(&p).and_then(|m| m.get(code)).copied();
                out.push(row(p, code, *day, l, o));
            }
        }
        out
    }

    /// One patient's baselines on `day_us` (computed now if not known yet).
    pub async fn for_patient(&self, patient: &str, day_us: i64) -> Result<Vec<Baseline>, String> {
        let day = day_of(day_us);
        self.prepare(day, day + 1);
        self.ensure().await?;
        let overrides = lock(&self.inner.overrides).get(patient).cloned();
        let c = lock(&self.inner.cache);
        let learned = c.days.get(&day);
        Ok(VITALS
            .iter()
            .map(|v| {
                let l = learned.and_then(|m| m.get(&(patient.to_owned(), v.code)).copied());
                let o = overrides.as_ref().and_then(|m| m.get(v.code)).copied();
                row(patient.to_owned(), v.code, day, l, o)
            })
            .collect())
    }

    /// Sets (`Some`) or clears (`None`) a patient's override of a vital's baseline, durably.
    pub fn set_override(
        &self,
        patient: &str,
        code: &str,
        value: Option<f64>,
    ) -> Result<(), String> {
        let Some(path) = &self.inner.overrides_path else {
            return Err("baseline overrides are read-only here".into());
        };
        let mut o = lock(&self.inner.overrides);
        let mut next = o.clone();
        match value {
            Some(v) => {
                next.entry(patient.to_owned())
                    .or_default()
                    .insert(code.to_owned(), v);
            }
            None => {
                if let Some(m) = next.get_mut(patient) {
                    m.remove(code);
                    if m.is_empty() {
                        next.remove(patient);
                    }
                }
            }
        }
        write_overrides(path, &next)?;
        *o = next;
        Ok(())
    }
}

fn row(
    patient_id: String,
    code: &'static str,
    day_us: i64,
    learned: Option<Learned>,
    override_value: Option<f64>,
) -> Baseline {
    let key = vital(code).map_or(code, |v| v.key);
    let learned_value = learned.and_then(|l| l.value);
    Baseline {
        patient_id,
        vital: key,
        code,
        day_us,
        baseline: override_value.or(learned_value),
        learned: learned_value,
        override_value,
        rest_minutes: learned.map_or(0, |l| l.minutes),
        source: match (override_value, learned_value) {
            (Some(_), _) => "override",
            (None, Some(_)) => "learned",
            (None, None) => "insufficient",
        },
    }
}

fn read_overrides(path: &Path) -> Result<Overrides, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not a baseline overrides file: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overrides::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes the overrides atomically (temporary file, fsync, rename, fsync of the directory).
fn write_overrides(path: &Path, o: &Overrides) -> Result<(), String> {
    use std::io::Write;
    let dir = path.parent().ok_or("no directory for the overrides")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("baselines directory: {e}"))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(o).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("overrides: {e}"))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("overrides: {e}"))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("overrides: {e}"))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("overrides: {e}"))
}
