//! Break-glass: a person's emergency access to one patient outside their care teams — with a
//! reason, for a limited time (default 60 minutes, at most 4 hours), recorded in the audit trail
//! by the route that grants it (`POST /v1/break-glass`, in `carewatch-web`) and listed for the
//! patient's team (`GET /v1/break-glass`, and a `break_glass` event on their live streams). Only people signed in through the identity provider
//! may break the glass: a shared team token cannot say who did.
//!
//! Grants live in memory (they end with the process, like dashboard sessions); the
//! [`crate::Authenticator`] copies a person's live grants into their `Person::break_glass` on
//! every login, so every access check ([`crate::access::may_see_patient`]) sees them.

use std::collections::HashMap;
use std::sync::Mutex;

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who (the person's subject at the issuer).
    pub sub: String,
    /// Their display name.
    pub name: String,
    /// The patient opened.
    pub patient: String,
    /// Why, in their words.
    pub reason: String,
    /// When it was granted, µs since the epoch.
    pub at_us: i64,
    /// When it ends, µs since the epoch.
    pub until_us: i64,
}

/// Grants, by person; each new grant is also announced to subscribers (the patient's team's
/// live dashboards).
#[derive(Debug)]
pub struct BreakGlass {
    grants: Mutex<HashMap<String, Vec<Grant>>>,
    events: tokio::sync::broadcast::Sender<Grant>,
}

impl Default for BreakGlass {
    fn default() -> Self {
        BreakGlass {
            grants: Mutex::default(),
            events: tokio::sync::broadcast::channel(64).0,
        }
    }
}

/// Longest grant, minutes.
pub const MAX_MINUTES: u32 = 240;
/// Shortest reason accepted, characters.
pub const MIN_REASON: usize = 10;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl BreakGlass {
    /// Records a grant (replacing an earlier one of the same person for the same patient).
    pub fn grant(&self, g: Grant) {
        let mut all = lock(&self.grants);
        let mine = all.entry(g.sub.clone()).or_default();
        mine.retain(|x| x.patient != g.patient && x.until_us > g.at_us);
        mine.push(g.clone());
        drop(all);
        let _ = self.events.send(g); // nobody listening is fine
    }

    /// New grants as they are made.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Grant> {
        self.events.subscribe()
    }

    /// The patients `sub` holds a live grant for at `now_us`.
    pub fn patients(&self, sub: &str, now_us: i64) -> Vec<String> {
        let mut all = lock(&self.grants);
        let Some(mine) = all.get_mut(sub) else {
            return Vec::new();
        };
        mine.retain(|g| g.until_us > now_us);
        let out = mine.iter().map(|g| g.patient.clone()).collect();
        if mine.is_empty() {
            all.remove(sub);
        }
        out
    }

    /// Every live grant, for the patients `keep` accepts, newest first.
    pub fn live(&self, now_us: i64, keep: impl Fn(&str) -> bool) -> Vec<Grant> {
        let mut v: Vec<Grant> = lock(&self.grants)
            .values()
            .flatten()
            .filter(|g| g.until_us > now_us && keep(&g.patient))
            .cloned()
            .collect();
        v.sort_by_key(|g| std::cmp::Reverse(g.at_us));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(patient: &str, at: i64, until: i64) -> Grant {
        Grant {
            sub: "a".into(),
            name: "A".into(),
            patient: patient.into(),
            reason: "unconscious patient in ED".into(),
            at_us: at,
            until_us: until,
        }
    }

    #[test]
    fn grants_end_when_their_time_is_up() {
        let b = BreakGlass::default();
        b.grant(g("p1", 0, 100));
        b.grant(g("p2", 10, 50));
        assert_eq!(b.patients("a", 20), vec!["p1", "p2"]);
        assert_eq!(b.patients("a", 60), vec!["p1"]);
        assert!(b.patients("a", 100).is_empty());
        assert!(b.patients("nobody", 0).is_empty());
        b.grant(g("p1", 200, 300));
        b.grant(g("p1", 210, 400));
        assert_eq!(b.live(250, |_| true).len(), 1, "a renewal replaces");
        assert!(b.live(250, |p| p != "p1").is_empty());
    }
}
