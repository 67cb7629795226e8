//! Partitioned alerting (cluster mode, issue 13): a node evaluates, raises and times only the
//! alerts of the patients whose partition it owns ([`carewatch_store::lease`]); the owner
//! evaluates everything any node acknowledged for them (the store tells every node's engine
//! of other nodes' commits).
//!
//! At the start of each run the engine takes the partitions it owns *now*:
//! - dirty marks of other patients are dropped (their owner has them too);
//! - a catch-up's rows of other patients are dropped;
//! - [`super::plan`] reconciles and times (repeats, escalations, un-snoozes, releases) only
//!   owned patients' alerts, and re-routing after a care-team move covers them only;
//! - when it gained a partition since the last run, every series is cleared and the run is a
//!   catch-up over the rules' look-back: the new owner rebuilds its patients' samples from the
//!   shared tables, and an episode the old owner already raised is matched to its alert (the
//!   shared history told this node of it) instead of firing again.
//!
//! A single node owns everything ([`carewatch_store::lease::Everything`]); then none of this
//! costs anything.

use std::collections::HashMap;

use carewatch_store::lease::{Ownership, PARTITIONS, partition_of};

use super::gather::{Dirty, Found};
use super::series::{Pid, Samples};
use super::{AlertEngine, lock};

/// The partitions owned during one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owned {
    mask: Vec<bool>,
    all: bool,
}

impl Owned {
    /// No partition (a cluster node before its first lease round).
    #[cfg(test)]
    pub(crate) fn nothing() -> Owned {
        Owned {
            mask: vec![false; usize::from(PARTITIONS)],
            all: false,
        }
    }

    /// What `o` owns now.
    pub(crate) fn now(o: &dyn Ownership) -> Owned {
        let mut mask = vec![false; usize::from(PARTITIONS)];
        for p in o.owned() {
            if let Some(m) = mask.get_mut(usize::from(p)) {
                *m = true;
            }
        }
        let all = mask.iter().all(|m| *m);
        Owned { mask, all }
    }

    /// Whether this run alerts for `patient`.
    pub(crate) fn owns(&self, patient: &str) -> bool {
        self.all || self.mask[usize::from(partition_of(patient))]
    }

    /// Whether every partition is owned.
    pub(crate) fn is_everything(&self) -> bool {
        self.all
    }

    /// Whether `self` holds a partition `before` did not.
    pub(crate) fn gained_since(&self, before: &Owned) -> bool {
        self.mask
            .iter()
            .zip(&before.mask)
            .any(|(now, was)| *now && !*was)
    }
}

impl AlertEngine {
    /// The partitions owned for this run; when one was gained since the last run, the
    /// samples are cleared and `true` returned (the run must catch up).
    pub(super) fn ownership_round(&self) -> (Owned, bool) {
        let now = Owned::now(self.inner.config.ownership.as_ref());
        let mut last = lock(&self.inner.owned);
        let gained = now.gained_since(&last);
        if now != *last {
            tracing::info!(
                partitions = now.mask.iter().filter(|m| **m).count(),
                gained,
                "alert partitions owned changed"
            );
            *last = now.clone();
        }
        if gained {
            lock(&self.inner.samples).clear_series();
        }
        (now, gained)
    }
}

/// Drops the dirty marks of patients this run does not own.
pub(super) fn keep_owned_dirty(dirty: &mut Dirty, owned: &Owned) {
    if !owned.is_everything() {
        dirty.retain(|p, _| owned.owns(p));
    }
}

/// Drops what the queries found for patients this run does not own (a catch-up reads
/// everyone in the look-back; a retried range may predate a lost partition).
pub(super) fn keep_owned_found(found: &mut [Found], owned: &Owned, sm: &Samples) {
    if owned.is_everything() {
        return;
    }
    let mut memo: HashMap<Pid, bool> = HashMap::new();
    let mut mine = |p: Pid| *memo.entry(p).or_insert_with(|| owned.owns(sm.name(p)));
    for f in found {
        f.members.retain(|p| mine(*p));
        f.rows.retain(|r| mine(r.0));
        f.defer.retain(|d| mine(d.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Some(Vec<u16>);
    impl Ownership for Some {
        fn owns_partition(&self, p: u16) -> bool {
            self.0.contains(&p)
        }
        fn owned(&self) -> std::collections::BTreeSet<u16> {
            self.0.iter().copied().collect()
        }
    }

    #[test]
    fn a_run_owns_what_the_leases_say_and_notices_a_gain() {
        let a = Owned::now(&Some(vec![partition_of("p1")]));
        assert!(a.owns("p1"));
        let other = (0..1000)
            .map(|i| format!("q{i}"))
            .find(|p| partition_of(p) != partition_of("p1"))
            .expect("another partition");
        assert!(!a.owns(&other));
        assert!(a.gained_since(&Owned::nothing()));
        assert!(!a.gained_since(&a));
        assert!(!Owned::nothing().gained_since(&a), "a loss is not a gain");
        assert!(Owned::now(&carewatch_store::lease::Everything).is_everything());
        assert!(!a.is_everything());
    }
}
