//! What the engine measures of itself, for `/metrics` and the benches: runs, time per phase,
//! run durations, the minute bins' size.

use super::{AlertEngine, lock};

impl AlertEngine {
    /// Evaluation runs so far and the wall time of the last one.
    pub fn runs(&self) -> (u64, i64) {
        (
            self.inner.runs.load(std::sync::atomic::Ordering::Relaxed),
            self.inner
                .last_run_us
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Seconds spent so far in each phase of the evaluation runs: gather (the rules' SQL),
    /// absorb (samples and episodes), commit (plan, history write, apply).
    pub fn phase_seconds(&self) -> [(&'static str, f64); 3] {
        let s = |i: usize| {
            self.inner.phase_us[i].load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6
        };
        [("gather", s(0)), ("absorb", s(1)), ("commit", s(2))]
    }

    /// Adds the time since `since` to phase `i`; returns now.
    pub(super) fn phase(&self, i: usize, since: std::time::Instant) -> std::time::Instant {
        let now = std::time::Instant::now();
        let us = now.duration_since(since).as_micros() as u64;
        self.inner.phase_us[i].fetch_add(us, std::sync::atomic::Ordering::Relaxed);
        now
    }

    /// Durations of evaluation runs.
    pub fn run_seconds(&self) -> carewatch_store::Histogram {
        lock(&self.inner.run_seconds).clone()
    }

    /// The live minute bins (patients, bins held).
    pub fn bins_size(&self) -> (usize, usize) {
        self.inner.bins.size()
    }

    /// The live minute bins' memory: (patients, bytes of their rings' slots).
    pub fn bins_bytes(&self) -> (usize, usize) {
        let (patients, _, bytes) = self.inner.bins.footprint();
        (patients, bytes)
    }
}
