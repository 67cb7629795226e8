//! The alert history: every transition of every alert, appended to
//! `alerts/_carewatch/history.jsonl` in the data directory (fsynced before anyone is told) and served as the `alerts` table. The
//! current state of each alert is the fold of its transitions, so a restart rebuilds it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::rules::{Level, Severity};

mod export;
mod files;
mod shared;
mod table;
pub use export::{EXPORT_EVERY, export_loop, export_once};
pub use shared::ForeignListener;
pub use table::{AlertsTable, register};

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The condition holds but not yet for long enough.
    Pending,
    /// Raised; the care team is being told.
    Firing,
    /// Someone took it; no more escalation.
    Acknowledged,
    /// Someone snoozed it: still open and visible, not escalated or repeated until
    /// `snoozed_until` (or a worse reading) brings it back.
    Snoozed,
    /// The condition cleared, or someone resolved it with a reason.
    Resolved,
}

impl Status {
    /// Name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Firing => "firing",
            Status::Acknowledged => "acknowledged",
            Status::Snoozed => "snoozed",
            Status::Resolved => "resolved",
        }
    }
    /// Parses a name.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "pending" => Some(Status::Pending),
            "firing" => Some(Status::Firing),
            "acknowledged" => Some(Status::Acknowledged),
            "snoozed" => Some(Status::Snoozed),
            "resolved" => Some(Status::Resolved),
            _ => None,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The episode started (recorded when it fires, with the episode's start time).
    Pending,
    /// It lasted long enough: raised.
    Firing,
    /// Still firing and unacknowledged: told again.
    Escalated,
    /// Taken by someone.
    Acknowledged,
    /// The condition cleared.
    Resolved,
    /// The patient moved to another care team (or lost theirs) while the alert was open: the
    /// alert now belongs to the new team (`care_team`; the old one in `previous_care_team`)
    /// and is `firing` again until someone there acknowledges it.
    Reassigned,
    /// Given to a person (`assignee`; claimed when it is the actor).
    Assigned,
    /// Someone added a note (`note`).
    Noted,
    /// Snoozed until `snoozed_until`.
    Snoozed,
    /// Back from a snooze: it ran out (`reason` `expired`) or a worse reading broke through
    /// (`worse_reading`). Told again.
    Unsnoozed,
    /// Still firing, nobody acknowledged or snoozed it: told again at its level's interval.
    Repeated,
    /// Raised while held (`reason` `quiet` or `realert_gap`) and still firing when the hold
    /// ended: told now.
    Released,
}

impl Event {
    /// Name.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Pending => "pending",
            Event::Firing => "firing",
            Event::Escalated => "escalated",
            Event::Acknowledged => "acknowledged",
            Event::Resolved => "resolved",
            Event::Reassigned => "reassigned",
            Event::Assigned => "assigned",
            Event::Noted => "noted",
            Event::Snoozed => "snoozed",
            Event::Unsnoozed => "unsnoozed",
            Event::Repeated => "repeated",
            Event::Released => "released",
        }
    }
}

/// One row of the history: an alert as it is after one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Position in the history (0-based).
    pub seq: u64,
    /// When the transition happened (wall clock), UTC µs.
    pub at_us: i64,
    /// The alert: a stable fingerprint of (rule, patient, episode start).
    pub alert_id: String,
    /// Rule id.
    pub rule: String,
    /// Rule title.
    pub title: String,
    /// Severity.
    pub severity: Severity,
    /// Level (urgent, warning, info): the rule's, or the patient's for the rule. History
    /// written before levels existed reads as the severity's default level.
    #[serde(default = "unset_level")]
    pub level: Level,
    /// Patient.
    pub patient_id: String,
    /// The patient's care team when the transition was written (`None`: no team).
    pub care_team: Option<String>,
    /// Status after the event.
    pub status: Status,
    /// The event.
    pub event: Event,
    /// Episode start (event time), UTC µs.
    pub episode_start_us: i64,
    /// Episode end (event time) as known at this transition, UTC µs.
    pub episode_end_us: i64,
    /// Worst value in the episode.
    pub value: Option<f64>,
    /// Human message.
    pub message: String,
    /// 0 until the first escalation.
    pub escalation_level: u32,
    /// Credential id of whoever acknowledged it.
    pub acknowledged_by: Option<String>,
    /// For `reassigned`: the team the alert belonged to before the move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_care_team: Option<String>,
    /// The person the alert is assigned to (kept on every later transition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// While snoozed: until when, UTC µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snoozed_until_us: Option<i64>,
    /// For `noted`: the note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// For a `resolved` by a person, and for `unsnoozed`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who did it, for transitions a person made (acknowledge, assign, note, snooze, resolve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Why the alert is held — recorded, shown, but not pushed to receivers: `quiet` (the
    /// patient's quiet period), `realert_gap` (too soon after the last episode resolved),
    /// `expected` (a known condition; never told).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// Until when it is held (`None` with `held`: for good), UTC µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until_us: Option<i64>,
    /// For `escalated` along a care team's chain: who the step told (a step name or the
    /// person on call; `nobody on call` when the rota had a gap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notified: Option<String>,
}

fn unset_level() -> Level {
    Level::Warning
}

/// Parses one history line; a line from before levels existed gets its severity's level.
fn parse_line(line: &[u8]) -> Option<Transition> {
    let mut t: Transition = serde_json::from_slice(line).ok()?;
    // `"level":` cannot occur inside a JSON string (its quotes would be escaped).
    if !line.windows(8).any(|w| w == b"\"level\":") {
        t.level = Level::of_severity(t.severity);
    }
    Some(t)
}

/// The history file (or, in a cluster, the shared log: [`History::open_shared`]) and its rows
/// in memory.
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
    rows: RwLock<Vec<Arc<Transition>>>,
    shared: Option<shared::Shared>,
}

impl History {
    /// Opens (creating unless `read_only`) `dir/alerts/_carewatch/history.jsonl` (`files`). A torn last line from a
    /// crash (no newline) is ignored (and cut, when writable). A complete line that does not
    /// parse is skipped with a warning and everything after it is kept: one damaged line must
    /// never cost the transitions written after it.
    pub fn open(data_dir: &Path, read_only: bool) -> std::io::Result<History> {
        let path = files::history_path(data_dir, !read_only)?;
        let mut rows = Vec::new();
        let mut good_len = 0u64;
        if let Ok(f) = std::fs::File::open(&path) {
            let mut r = std::io::BufReader::new(f);
            let mut line = Vec::new();
            let mut damaged = 0usize;
            loop {
                line.clear();
                let n = r.read_until(b'\n', &mut line)?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                match parse_line(&line) {
                    Some(t) => rows.push(Arc::new(t)),
                    None => damaged += 1,
                }
                good_len += n as u64;
            }
            if damaged > 0 {
                tracing::warn!(
                    damaged,
                    "alert history: skipped damaged lines, kept the rest"
                );
            }
        }
        let file = if read_only {
            None
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&path)?;
            if f.metadata()?.len() != good_len {
                tracing::warn!("alert history: cutting a torn last line");
                f.set_len(good_len)?;
            }
            Some(f)
        };
        Ok(History {
            path,
            file: Mutex::new(file),
            rows: RwLock::new(rows),
            shared: None,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends transitions durably (numbering them), then makes them visible.
    pub fn append(&self, mut ts: Vec<Transition>) -> std::io::Result<Vec<Arc<Transition>>> {
        if ts.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(s) = &self.shared {
            return self.append_shared(s, ts);
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let Some(f) = file.as_mut() else {
            return Err(std::io::Error::other("alert history is read-only"));
        };
        let mut next = self.len() as u64;
        let mut buf = Vec::new();
        for t in &mut ts {
            t.seq = next;
            next += 1;
            serde_json::to_writer(&mut buf, t).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        // A failed write (disk full) is cut back, so no partial line is left for later appends
        // to follow: the file only ever holds whole lines.
        let before = f.metadata()?.len();
        if let Err(e) = f.write_all(&buf).and_then(|()| f.sync_data()) {
            let _ = f.set_len(before);
            return Err(e);
        }
        Ok(self.visible(ts))
    }

    /// Makes durable transitions visible (after the rows before them).
    fn visible(&self, ts: Vec<Transition>) -> Vec<Arc<Transition>> {
        let out: Vec<Arc<Transition>> = ts.into_iter().map(Arc::new).collect();
        self.rows
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(out.iter().cloned());
        out
    }

    /// [`History::append`] from async code: on a multi-threaded runtime the write and fsync
    /// run under `block_in_place`, so the worker's other tasks move to another thread meanwhile.
    pub fn append_from_async(&self, ts: Vec<Transition>) -> std::io::Result<Vec<Arc<Transition>>> {
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.append(ts))
            }
            _ => self.append(ts),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows from `seq` on.
    pub fn since(&self, seq: u64) -> Vec<Arc<Transition>> {
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        rows.get(seq as usize..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }
}

/// A firing `fever` transition of patient `p1` for unit tests.
#[cfg(test)]
pub(crate) fn sample_transition(alert: &str, at_us: i64) -> Transition {
    Transition {
        seq: 0,
        at_us,
        alert_id: alert.into(),
        rule: "fever".into(),
        title: "Fever".into(),
        severity: crate::rules::Severity::High,
        level: Level::Urgent,
        patient_id: "p1".into(),
        care_team: None,
        status: Status::Firing,
        event: Event::Firing,
        episode_start_us: 1,
        episode_end_us: 2,
        value: Some(38.5),
        message: "m".into(),
        escalation_level: 0,
        acknowledged_by: None,
        previous_care_team: None,
        assignee: None,
        snoozed_until_us: None,
        note: None,
        reason: None,
        actor: None,
        notified: None,
        held: None,
        held_until_us: None,
    }
}

#[cfg(test)]
mod torn_tests {
    use super::*;

    fn transition(alert: &str) -> Transition {
        sample_transition(alert, 1)
    }

    /// A damaged line in the middle cost every later transition (issue #12): the old reader
    /// stopped at it and `open` cut the file there, so this test saw 1 row, not 2.
    #[test]
    fn a_damaged_line_loses_nothing_after_it_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tmp");
        let h = History::open(dir.path(), false).expect("open");
        h.append(vec![transition("a"), transition("b"), transition("c")])
            .expect("append");
        drop(h);
        let path = dir.path().join("alerts/_carewatch/history.jsonl");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        let damaged = format!("{}\n{{\"broken\n{}\n{{\"torn", lines[0], lines[2]);
        std::fs::write(&path, damaged).expect("write");
        let h = History::open(dir.path(), false).expect("reopen");
        let ids: Vec<String> = h.since(0).iter().map(|t| t.alert_id.clone()).collect();
        assert_eq!(
            ids,
            vec!["a", "c"],
            "the line after the damaged one is kept"
        );
        let after = std::fs::read_to_string(&path).expect("read");
        assert!(
            after.ends_with('\n') && !after.contains("\"torn"),
            "torn tail cut"
        );
        assert!(after.contains(lines[2]), "nothing after the damage was cut");
    }

    #[test]
    fn history_from_before_levels_reads_the_severity_level() {
        let mut t = transition("a");
        t.severity = Severity::Warning;
        t.level = Level::Info;
        let line = serde_json::to_string(&t).expect("json");
        assert_eq!(parse_line(line.as_bytes()).expect("t").level, Level::Info);
        let old = line.replace(",\"level\":\"info\"", "");
        assert!(!old.contains("\"level\""), "{old}");
        assert_eq!(parse_line(old.as_bytes()).expect("t").level, Level::Warning);
    }
}
