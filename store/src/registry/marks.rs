//! Last uses and last sightings: kept in memory at every authentication or stored reading, and
//! queued for the registry log at most once a grain (a minute) per credential or device, so
//! writing them costs nothing per request and never scans the fleet under a lock.

use std::collections::HashMap;

/// Marks are queued for writing at most this often per key.
pub(crate) const GRAIN_US: i64 = 60_000_000;

/// Live times by key (credential id or device id) and the ones due to be written.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    /// key -> (latest time, time last queued).
    live: HashMap<String, (i64, i64)>,
    /// key -> time, waiting for the next registry write.
    due: HashMap<String, i64>,
}

impl Marks {
    /// Notes `key` at `t`; queues it if it is new or a grain past its last queued time.
    pub fn note(&mut self, key: &str, t: i64) {
        match self.live.get_mut(key) {
            Some((live, queued)) => {
                *live = (*live).max(t);
                if let Some(d) = self.due.get_mut(key) {
                    // Still waiting: it goes out with the latest time.
                    *d = *live;
                } else if *live >= *queued + GRAIN_US {
                    *queued = *live;
                    self.due.insert(key.to_owned(), *live);
                }
            }
            None => {
                self.live.insert(key.to_owned(), (t, t));
                self.due.insert(key.to_owned(), t);
            }
        }
    }

    /// The latest time of `key`.
    pub fn get(&self, key: &str) -> Option<i64> {
        self.live.get(key).map(|(t, _)| *t)
    }

    /// Everything due, leaving nothing due.
    pub fn take_due(&mut self) -> HashMap<String, i64> {
        std::mem::take(&mut self.due)
    }

    /// Every latest time (listing credentials).
    pub fn latest(&self) -> HashMap<String, i64> {
        self.live
            .iter()
            .map(|(k, (t, _))| (k.clone(), *t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_due_when_new_and_then_once_a_grain() {
        let mut m = Marks::default();
        m.note("a", 10);
        m.note("a", 20);
        assert_eq!(m.take_due(), HashMap::from([("a".to_owned(), 20)]));
        m.note("a", 30);
        assert!(m.take_due().is_empty(), "within the grain");
        m.note("a", 10 + GRAIN_US);
        assert_eq!(m.take_due().get("a"), Some(&(10 + GRAIN_US)));
        assert_eq!(m.get("a"), Some(10 + GRAIN_US));
        m.note("a", 5);
        assert_eq!(m.get("a"), Some(10 + GRAIN_US), "never backwards");
    }
}
