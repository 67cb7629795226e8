//! A subscription's files: `{id}.json` replaced atomically, `{id}.events.jsonl` appended with
//! fsync, cut back to a whole line when a crash tore the last one, and pruned to the
//! [`Retention`] (rewritten atomically). Blocking: call from the blocking pool.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use carewatch_fhir::subscription::{Content, Event};

use super::{Published, Retention, Stored, Sub, lock};

pub(super) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

pub(super) fn load_events(path: &Path) -> std::io::Result<(Vec<Event>, u64)> {
    let mut events = Vec::new();
    let mut good = 0u64;
    if let Ok(f) = std::fs::File::open(path) {
        let mut r = std::io::BufReader::new(f);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if let Ok(e) = serde_json::from_slice::<Event>(&line) {
                events.push(e);
            }
            good += n as u64;
        }
    }
    Ok((events, good))
}

pub(super) fn events_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.events.jsonl"))
}

pub(super) fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

pub(super) fn open_sub(dir: &Path, stored: Stored, keep: Retention) -> std::io::Result<Sub> {
    let path = events_path(dir, &stored.id);
    let (events, good) = load_events(&path)?;
    let file = open_append(&path)?;
    if file.metadata()?.len() != good {
        file.set_len(good)?; // a torn last line from a crash
    }
    let sub = Sub {
        stored: Mutex::new(stored),
        events: Mutex::new(events),
        file: Mutex::new(file),
        wake: Notify::new(),
        gone: CancellationToken::new(),
    };
    prune(dir, &sub, &mut lock(&sub.file), keep)?;
    Ok(sub)
}

fn age_of(e: &Event, now: chrono::DateTime<chrono::Utc>) -> Duration {
    chrono::DateTime::parse_from_rfc3339(&e.timestamp)
        .ok()
        .and_then(|t| (now - t.with_timezone(&chrono::Utc)).to_std().ok())
        .unwrap_or_default()
}

/// Drops events past the retention (keeping the latest), rewriting the events file atomically
/// (blocking: under the subscription's file lock, on the blocking pool).
fn prune(dir: &Path, sub: &Sub, file: &mut std::fs::File, keep: Retention) -> std::io::Result<()> {
    let now = chrono::Utc::now();
    let mut events = lock(&sub.events);
    let slack = (keep.max_events / 4).max(1);
    let too_many = events.len() > keep.max_events + slack;
    let too_old = events
        .first()
        .is_some_and(|e| age_of(e, now) > keep.max_age + keep.max_age / 8);
    if !too_many && !too_old {
        return Ok(());
    }
    let last = events.len().saturating_sub(1);
    let mut from = events.len().saturating_sub(keep.max_events.max(1));
    while from < last && age_of(&events[from], now) > keep.max_age {
        from += 1;
    }
    let mut body = Vec::new();
    for e in &events[from..] {
        serde_json::to_writer(&mut body, e).map_err(std::io::Error::other)?;
        body.push(b'\n');
    }
    let id = lock(&sub.stored).id.clone();
    write_atomic(dir, &format!("{id}.events.jsonl"), &body)?;
    *file = open_append(&events_path(dir, &id))?;
    events.drain(..from);
    Ok(())
}

/// Numbers and keeps one event (blocking: the append is fsynced before anyone is told), then
/// prunes past the retention.
pub(super) fn record(dir: &Path, sub: &Sub, p: Published, keep: Retention) -> std::io::Result<()> {
    let mut file = lock(&sub.file);
    if sub.gone.is_cancelled() {
        return Ok(());
    }
    let number = lock(&sub.events).last().map_or(0, |e| e.number) + 1;
    let content = lock(&sub.stored).spec.content;
    let e = Event {
        number,
        timestamp: p.timestamp,
        focus: p.focus,
        resource: if content == Content::Empty {
            Value::Null
        } else {
            p.resource
        },
    };
    let mut line = serde_json::to_vec(&e).map_err(std::io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)?;
    file.sync_data()?;
    lock(&sub.events).push(e);
    prune(dir, sub, &mut file, keep)
}
