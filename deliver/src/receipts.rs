//! Delivery receipts: the server's answer for every Observation a destination stored or refused,
//! kept so that `carewatch trace` can show it after a restart.
//!
//! `<data-dir>/fhir/receipts-<hash>.jsonl` (the hash of the destination's state file), one JSON
//! line per entry, appended and fsynced on the blocking pool at the end of each cycle, before
//! the position moves (a crash in between writes the cycle's receipts again when it is
//! delivered again: both answers are true). When the file passes [`MAX_BYTES`] it becomes
//! `…jsonl.1` (replacing the previous one), so receipts take at most twice that; older
//! deliveries are still known as delivered from the position, without the server's words.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::Answer;

/// A receipts file is rotated past this size.
pub const MAX_BYTES: u64 = 64 << 20;

/// One entry's fate at the destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// Observation id (hash of the natural key).
    pub observation: String,
    /// Device.
    pub device: String,
    /// Received time of the rows sent (UTC micros).
    pub received_us: i64,
    /// When the server answered (UTC micros).
    pub at_us: i64,
    /// The server's answer (for a refusal, its status; the OperationOutcome is in the dead
    /// letter).
    pub answer: Answer,
    /// Refused (a dead letter `destination_rejected`) rather than stored.
    #[serde(default)]
    pub refused: bool,
}

/// The receipts file of a destination whose state lives at `state_path`.
pub fn path(state_path: &Path) -> PathBuf {
    let name = state_path
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or("destination")
        .replacen("destination-", "receipts-", 1);
    state_path.with_file_name(format!("{name}.jsonl"))
}

/// Appends receipts durably, rotating a full file first (blocking: the blocking pool only).
pub fn append(path: &Path, rs: &[Receipt]) -> std::io::Result<()> {
    if rs.is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= MAX_BYTES) {
        std::fs::rename(path, rotated(path))?;
    }
    append_lines(path, rs)
}

/// Appends one JSON line per item to `path` (its directory made first) and fsyncs it
/// (blocking: the blocking pool only). Shared by the receipts and the identity journal.
pub(crate) fn append_lines<T: Serialize>(path: &Path, items: &[T]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let mut body = Vec::new();
    for r in items {
        serde_json::to_writer(&mut body, r).map_err(std::io::Error::other)?;
        body.push(b'\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(&body)?;
    f.sync_data()
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// The receipts of `device` kept for the destination (older file first; torn lines skipped).
pub fn of_device(path: &Path, device: &str) -> std::io::Result<Vec<Receipt>> {
    let mut out = Vec::new();
    for p in [rotated(path), path.to_owned()] {
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // Cheap filter before parsing: the device id appears JSON-escaped in its lines.
        let needle = serde_json::to_string(device).map_err(std::io::Error::other)?;
        out.extend(
            text.lines()
                .filter(|l| l.contains(&needle))
                .filter_map(|l| serde_json::from_str::<Receipt>(l).ok())
                .filter(|r| r.device == device),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(&dir.path().join("fhir").join("destination-abc.json"));
        assert!(p.ends_with("fhir/receipts-abc.jsonl"));
        let r = |d: &str| Receipt {
            observation: "o1".into(),
            device: d.into(),
            received_us: 1,
            at_us: 2,
            answer: Answer {
                status: "201 Created".into(),
                ..Answer::default()
            },
            refused: false,
        };
        append(&p, &[r("a"), r("b")]).unwrap();
        append(&p, &[r("a")]).unwrap();
        assert_eq!(of_device(&p, "a").unwrap().len(), 2);
        assert_eq!(of_device(&p, "b").unwrap(), vec![r("b")]);
        assert!(of_device(&p, "c").unwrap().is_empty());
    }
}
