//! What a person does with an alert: acknowledge, assign (or claim, or hand off), note, snooze,
//! resolve with a reason. Each is one transition in the history, naming the person (`actor`),
//! written through the one commit path and published like every other transition (webhook,
//! SSE, MQTT). Who may act is who may see the alert: its patient's care team now, admins.
//!
//! A snoozed alert stays open and visible; escalation and repeats pause until `snoozed_until`,
//! when the next evaluation run brings it back (`unsnoozed`, reason `expired`), or until a worse
//! reading breaks through (`worse_reading`, from the reconcile). A resolved alert stays resolved
//! however long its episode lasts: it is matched to the episode and never raised again.

use carewatch_store::registry::Principal;

use super::commit::Change;
use super::state::Current;
use super::{ActionError, AlertEngine, lock, may_see, now_us};
use crate::history::{Event, Status, Transition};

/// The reasons a person may give for resolving an alert.
pub const RESOLVE_REASONS: &[&str] = &[
    "false_alarm",
    "contacted_patient",
    "escalated_to_physician",
    "device_problem",
    "condition_resolved",
    "other",
];

/// The longest snooze, minutes (a day).
const MAX_SNOOZE_MIN: u32 = 24 * 60;
/// The longest note or assignee name, bytes.
const MAX_NOTE: usize = 4000;
const MAX_NAME: usize = 200;

/// An action on an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take it: no more escalation.
    Acknowledge,
    /// Give it to a person (`None`: the caller claims it).
    Assign(Option<String>),
    /// Add a note.
    Note(String),
    /// Snooze it for this many minutes.
    Snooze(u32),
    /// Resolve it, with one of [`RESOLVE_REASONS`].
    Resolve(String),
}

impl Action {
    /// Checks the action's own input.
    pub(crate) fn validate(&self) -> Result<(), ActionError> {
        let printable = |s: &str| !s.trim().is_empty() && !s.chars().any(char::is_control);
        match self {
            Action::Assign(Some(to)) if !printable(to) || to.len() > MAX_NAME => Err(
                ActionError::Invalid("`to` names a person: 1 to 200 printable characters"),
            ),
            Action::Note(t) if t.trim().is_empty() || t.len() > MAX_NOTE => {
                Err(ActionError::Invalid("`text` is 1 to 4000 characters"))
            }
            Action::Snooze(m) if *m == 0 || *m > MAX_SNOOZE_MIN => {
                Err(ActionError::Invalid("`minutes` is 1 to 1440"))
            }
            Action::Resolve(r) if !RESOLVE_REASONS.contains(&r.as_str()) => {
                Err(ActionError::Invalid(
                    "`reason` is false_alarm, contacted_patient, escalated_to_physician, device_problem, condition_resolved or other",
                ))
            }
            _ => Ok(()),
        }
    }

    /// The transition this action makes of alert `a` (after any re-routing), or `None` when
    /// it changes nothing (acknowledging an acknowledged alert).
    pub(crate) fn apply(
        &self,
        a: &Current,
        who: &Principal,
        now: i64,
    ) -> Result<Option<Transition>, ActionError> {
        let closed = a.status == Status::Resolved;
        if closed && !matches!(self, Action::Note(_)) {
            return Err(ActionError::Resolved);
        }
        let mut n = a.clone();
        let (event, note, reason) = match self {
            Action::Acknowledge => {
                if n.status == Status::Acknowledged {
                    return Ok(None);
                }
                n.status = Status::Acknowledged;
                n.snoozed_until_us = None;
                n.acknowledged_by = Some(who.actor());
                (Event::Acknowledged, None, None)
            }
            Action::Assign(to) => {
                n.assignee = Some(to.clone().unwrap_or_else(|| who.actor()));
                (Event::Assigned, None, None)
            }
            Action::Note(text) => (Event::Noted, Some(text.clone()), None),
            Action::Snooze(min) => {
                n.status = Status::Snoozed;
                n.snoozed_until_us = Some(now + i64::from(*min) * 60_000_000);
                (Event::Snoozed, None, None)
            }
            Action::Resolve(why) => {
                n.status = Status::Resolved;
                n.snoozed_until_us = None;
                (Event::Resolved, None, Some(why.clone()))
            }
        };
        let mut t = n.transition(event, now);
        t.note = note;
        t.reason = reason;
        t.actor = Some(who.actor());
        Ok(Some(t))
    }
}

impl AlertEngine {
    /// Acknowledges an alert for the caller ([`AlertEngine::act`] with [`Action::Acknowledge`]).
    pub fn acknowledge(&self, id: &str, who: &Principal) -> Result<Current, ActionError> {
        self.act(id, who, &Action::Acknowledge)
    }

    /// Does `action` on alert `id` for `who` and returns the alert as it stands after. An alert
    /// whose patient moved is first reassigned (in the same history append), so the action is
    /// the new team's. Blocking (it writes the history): call from a blocking thread.
    pub fn act(&self, id: &str, who: &Principal, action: &Action) -> Result<Current, ActionError> {
        self.act_at(id, who, action, now_us())
    }

    /// [`AlertEngine::act`] at engine time `now` (UTC µs): what tests and scripted actions use
    /// with the clock they evaluate at.
    pub fn act_at(
        &self,
        id: &str,
        who: &Principal,
        action: &Action,
        now: i64,
    ) -> Result<Current, ActionError> {
        action.validate()?;
        let patient = lock(&self.inner.state)
            .alerts
            .get(id)
            .map(|a| a.patient_id.clone())
            .ok_or(ActionError::NotFound)?;
        // The registry is read before the state lock is taken, never under it.
        let team = self.team_of(&patient);
        if !may_see(who, team.as_deref()) {
            return Err(ActionError::NotFound);
        }
        let writer = self.writer();
        let a = lock(&self.inner.state)
            .alerts
            .get(id)
            .cloned()
            .ok_or(ActionError::NotFound)?;
        let mut out = Vec::new();
        let n = match a.moved(team.as_deref(), now) {
            Some(t) => {
                let n = Current::from_transition(&t, Some(&a));
                out.push(t);
                n
            }
            None => a,
        };
        match action.apply(&n, who, now)? {
            Some(t) => out.push(t),
            None if out.is_empty() => return Ok(n),
            None => {}
        }
        let change = Change {
            out,
            ..Change::default()
        };
        let written = self.commit(&writer, change).map_err(|_| ActionError::Io)?;
        drop(writer);
        let cur = lock(&self.inner.state)
            .alerts
            .get(id)
            .cloned()
            .ok_or(ActionError::NotFound);
        self.publish(written);
        cur
    }
}
