//! Commit: every change to the alerts — an evaluation run, a re-routing, an acknowledgement —
//! goes through one path. Writers take the writer lock (so what a writer decided from a
//! snapshot still holds when it is applied); the transitions are written and fsynced with no
//! state lock held (on a runtime worker, under `block_in_place`); then the change is applied
//! under a brief state lock and published. Readers never wait for a disk.

use std::sync::{Arc, MutexGuard};

use crate::episodes::Episode;
use crate::history::Transition;
use crate::rules::Rule;

use super::plan::plan;
use super::samples::Work;
use super::state::{Current, Key};
use super::{AlertEngine, lock};

/// Holding it makes the caller the only writer of the alerts.
pub(super) struct Writer<'a>(#[allow(dead_code)] MutexGuard<'a, ()>);

/// A change to the alerts: transitions to write, and what is applied in memory with them.
#[derive(Debug, Default)]
pub(crate) struct Change {
    pub(crate) out: Vec<Transition>,
    /// Alerts whose episode fields moved (applied before the transitions).
    pub(crate) updated: Vec<Current>,
    /// Pending episodes per (rule, patient): set, or cleared with `None`.
    pub(crate) pending: Vec<(Key, Option<(Episode, String)>)>,
    /// Resolved alerts resolved before this (wall clock, UTC µs) leave memory.
    pub(crate) retire_before: Option<i64>,
}

impl AlertEngine {
    /// Becomes the only writer until the guard is dropped.
    pub(super) fn writer(&self) -> Writer<'_> {
        let w = Writer(lock(&self.inner.writer));
        self.take_foreign();
        w
    }

    /// Applies what other nodes wrote (a cluster's shared history) and tells this node's
    /// feeds; a writer decides from the alerts as everyone left them.
    fn take_foreign(&self) {
        let ts = std::mem::take(&mut *lock(&self.inner.foreign));
        if ts.is_empty() {
            return;
        }
        {
            let mut st = lock(&self.inner.state);
            for t in &ts {
                st.apply(t);
            }
        }
        self.publish(ts);
    }

    /// Writes `change`'s transitions durably, then applies the change. Nothing is applied when
    /// the write fails.
    pub(super) fn commit(
        &self,
        _writer: &Writer<'_>,
        change: Change,
    ) -> std::io::Result<Vec<Arc<Transition>>> {
        let Change {
            out,
            updated,
            pending,
            retire_before,
        } = change;
        let written = self.inner.history.append_from_async(out)?;
        lock(&self.inner.state).apply_change(updated, &written, pending, retire_before);
        Ok(written)
    }

    /// An evaluation run's commit: the run's [`plan`] (reconcile, then snoozes that ran out,
    /// holds that ended, escalations and repeats) decided under a brief state lock, then
    /// written, with the horizon.
    pub(super) fn commit_run(
        &self,
        rules: &[Rule],
        work: Vec<Work>,
        owned: &super::Owned,
        now: i64,
    ) -> std::io::Result<Vec<Arc<Transition>>> {
        // The registry is read before the state lock is taken, never under it.
        let work: Vec<(Work, Option<String>)> = work
            .into_iter()
            .map(|w| {
                let team = self.team_of(&w.patient);
                (w, team)
            })
            .collect();
        let writer = self.writer();
        let mut change = plan(
            &lock(&self.inner.state),
            rules,
            &self.inner.config,
            work,
            &|p| owned.owns(p),
            now,
        );
        let horizon = self.inner.config.resolved_horizon.as_micros() as i64;
        change.retire_before = Some(now.saturating_sub(horizon));
        self.commit(&writer, change)
    }
}
