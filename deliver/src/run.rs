//! The delivery loop: follow `observations` by received time from the persisted position,
//! send what is new as Bundles, dead-letter what the server refuses, then move the position.
//!
//! One cycle: `upper` = now − settle, and never at or past the received time of an append
//! still in flight ([`carewatch_store::Store::received_floor`]), so every row received up to
//! `upper` that will ever be stored is already visible. Rows in (position, upper] are read in
//! received-time order, at most a batch's worth (cut at a received-time boundary, so the two
//! rows of a blood pressure stay together), grouped into Observations, sent Bundle by Bundle in
//! that order (so per patient in order), and only when every entry is stored or refused are the
//! dead letters appended (fsynced) and the position written. A transient failure leaves the
//! position where it was: the cycle is repeated after a capped back-off, and what was already
//! accepted is sent again as an update of the same resource.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use carewatch_store::DeadLetter;
use carewatch_transform::schema::{StoredRow, readings_from_batch};
use carewatch_transform::{Reading, Reason, Source, catalogue};

use crate::bundle::{self, Answer, Entry, Kind, Outcome};
use crate::client::SendError;
use crate::receipts::{self, Receipt};
use crate::{Inner, Position, now_us};

/// What one cycle did.
#[derive(Debug, Default)]
struct Tally {
    delivered: u64,
    dead: Vec<DeadLetter>,
    /// The server's answer per entry (kept for `carewatch trace`).
    receipts: Vec<Receipt>,
    /// Observation id -> received time of its rows (the latest).
    received: std::collections::HashMap<String, i64>,
}

/// Runs until shutdown.
pub(crate) async fn run(d: Arc<Inner>, shutdown: CancellationToken) {
    let mut backoff = Duration::ZERO;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        let done = match cycle(&d).await {
            Ok(more) => alert_cycle(&d).await.map(|m| more || m),
            Err(class) => Err(class),
        };
        match done {
            Ok(more) => {
                backoff = Duration::ZERO;
                wait = if more {
                    Duration::ZERO
                } else {
                    d.config.interval
                };
            }
            Err(class) => {
                backoff = (backoff * 2)
                    .max(Duration::from_millis(500))
                    .min(d.config.max_backoff);
                wait = backoff;
                tracing::warn!(
                    destination = %d.label,
                    error = class,
                    retry_in_ms = backoff.as_millis() as u64,
                    "FHIR destination: delivery failed; retrying"
                );
                d.record_error(class).await;
            }
        }
    }
    d.save().await;
}

/// One cycle; `Ok(true)` when more is waiting. `Err` is an error class.
async fn cycle(d: &Inner) -> Result<bool, &'static str> {
    let pos = d.position();
    let mut upper = now_us() - d.config.settle.as_micros() as i64;
    if let Some(f) = d.store.received_floor() {
        upper = upper.min(f - 1);
    }
    if upper <= pos {
        return Ok(false);
    }
    let limit = d.config.batch_size * 2 + 1;
    let mut rows = fetch(d, pos, upper, Some(limit)).await?;
    let mut more = false;
    if rows.len() >= limit {
        more = true;
        let last = rows.last().map_or(upper, |r| r.received_us);
        if rows.first().is_some_and(|r| r.received_us == last) {
            // One append larger than a batch: take all of it (it is sent in several Bundles).
            rows = fetch(d, last - 1, last, None).await?;
            upper = last;
        } else {
            rows.retain(|r| r.received_us < last);
            upper = last - 1;
        }
    }
    d.set_pending(rows.first().map(|r| r.received_us));
    let mut tally = Tally::default();
    for r in &rows {
        let t = tally.received.entry(r.observation_id()).or_default();
        *t = (*t).max(r.received_us);
    }
    let mut readings = to_readings(rows);
    complete_blood_pressures(d, &mut readings).await?;
    let mut entries = Vec::new();
    for g in carewatch_fhir::group(&readings) {
        match bundle::entry(&g, &d.config.identifier_system) {
            Ok(e) => entries.push(e),
            Err(why) => tally.dead.push(d.dead_letter(
                g.first().map(|r| r.device_id.clone()),
                format!("the Observation could not be built for the FHIR destination: {why}"),
                json!({"destination": d.public_url, "error": why}),
            )),
        }
    }
    deliver(d, &entries, tally, Position::Received(upper)).await?;
    if !more {
        d.set_pending(None);
    }
    Ok(more)
}

/// One cycle of alerts: the history transitions after the alert position, each alert's latest
/// as its Communication; `Ok(true)` when more is waiting.
async fn alert_cycle(d: &Inner) -> Result<bool, &'static str> {
    let Some(source) = &d.alerts else {
        return Ok(false);
    };
    let pos = d.lock().alerts_seq;
    let changes = source.since(pos, d.config.batch_size);
    if changes.is_empty() {
        return Ok(false);
    }
    let next = pos + changes.len() as u64;
    let more = changes.len() >= d.config.batch_size;
    let mut found = crate::alerts::latest(changes);
    carewatch_query::fhir_communication::triggering(&d.engine, &mut found)
        .await
        .ok_or("store")?;
    let sys = &d.config.identifier_system;
    let entries: Vec<Entry> = found
        .iter()
        .map(|(a, ..)| crate::alerts::entry(a, sys))
        .collect();
    deliver(d, &entries, Tally::default(), Position::Alerts(next)).await?;
    Ok(more)
}

/// Sends `entries` Bundle by Bundle, then makes the cycle durable: receipts, dead letters
/// (fsynced), and only then the position.
async fn deliver(
    d: &Inner,
    entries: &[Entry],
    mut tally: Tally,
    to: Position,
) -> Result<(), &'static str> {
    for chunk in entries.chunks(d.config.batch_size) {
        send(d, chunk, &mut tally).await.map_err(|e| e.class())?;
    }
    let failed = tally.dead.len() as u64;
    let (path, rs) = (d.receipts.clone(), std::mem::take(&mut tally.receipts));
    match tokio::task::spawn_blocking(move || receipts::append(&path, &rs)).await {
        Ok(Ok(())) => {}
        _ => return Err("store"),
    }
    if !tally.dead.is_empty() {
        d.store
            .append(Vec::new(), std::mem::take(&mut tally.dead))
            .await
            .map_err(|_| "store")?;
    }
    d.advance(to, tally.delivered, failed).await;
    Ok(())
}

/// Reads rows received in (after, upto], in received order, at most `limit`.
async fn fetch(
    d: &Inner,
    after: i64,
    upto: i64,
    limit: Option<usize>,
) -> Result<Vec<StoredRow>, &'static str> {
    let lim = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
    let sql = format!(
        "SELECT * FROM observations WHERE received_time > to_timestamp_micros({after}) \
         AND received_time <= to_timestamp_micros({upto}) \
         ORDER BY received_time, device_id, effective_time, code{lim}"
    );
    let batches: Vec<RecordBatch> = d.engine.collect(&sql).await.map_err(|e| {
        tracing::debug!(error = %e, "FHIR destination: reading observations failed");
        "store"
    })?;
    let mut out = Vec::new();
    for b in &batches {
        out.extend(readings_from_batch(b).map_err(|_| "store")?);
    }
    Ok(out)
}

/// A blood-pressure half whose other half came in another message: the other half is read
/// from the store, so the Observation sent always carries every component stored so far (a
/// later update never drops one).
async fn complete_blood_pressures(
    d: &Inner,
    readings: &mut Vec<Reading>,
) -> Result<(), &'static str> {
    let has = |rs: &[Reading], dev: &str, t: i64, code: &str| {
        rs.iter()
            .any(|r| r.device_id == dev && r.effective_us == t && r.vital.code == code)
    };
    let mut missing: Vec<(String, i64)> = Vec::new();
    for r in readings.iter().filter(|r| r.vital.is_bp_component()) {
        let partner_missing = carewatch_fhir::BP_COMPONENTS
            .iter()
            .any(|c| !has(readings, &r.device_id, r.effective_us, c));
        let key = (r.device_id.clone(), r.effective_us);
        if partner_missing && !missing.contains(&key) {
            missing.push(key);
        }
    }
    for (dev, t) in missing {
        let sql = format!(
            "SELECT * FROM observations WHERE device_id = '{}' \
             AND effective_time = to_timestamp_micros({t}) AND code IN ('{}', '{}') \
             ORDER BY received_time",
            dev.replace('\'', "''"),
            carewatch_fhir::BP_COMPONENTS[0],
            carewatch_fhir::BP_COMPONENTS[1],
        );
        let batches = d.engine.collect(&sql).await.map_err(|_| "store")?;
        let mut rows = Vec::new();
        for b in &batches {
            rows.extend(readings_from_batch(b).map_err(|_| "store")?);
        }
        for r in to_readings(rows) {
            if !has(readings, &r.device_id, r.effective_us, r.vital.code) {
                readings.push(r);
            }
        }
    }
    Ok(())
}

fn to_readings(rows: Vec<StoredRow>) -> Vec<Reading> {
    rows.into_iter()
        .filter_map(|r| {
            let vital = catalogue::by_code(&r.code).filter(|v| v.code == r.code)?;
            Some(Reading {
                device_id: r.device_id,
                patient_id: r.patient_id,
                vital,
                value: r.value,
                effective_us: r.effective_us,
                effective_end_us: r.effective_end_us,
                offset_min: r.tz_offset_min,
                extra: r.extra,
            })
        })
        .collect()
}

/// Sends one Bundle; a Bundle the server refuses as a whole is sent again entry by entry, so
/// only the refused entries become dead letters.
async fn send(d: &Inner, chunk: &[Entry], tally: &mut Tally) -> Result<(), SendError> {
    let kind = d.config.kind;
    match d.client.post_bundle(&bundle::bundle(chunk, kind)).await {
        Ok(resp) => {
            let outs = if kind == Kind::Transaction && resp.get("entry").is_none() {
                let ok = Answer {
                    status: "200 OK".into(),
                    ..Answer::default()
                };
                vec![Outcome::Stored(ok); chunk.len()]
            } else {
                bundle::outcomes(&resp, chunk.len())
            };
            apply(d, chunk, outs, tally)
        }
        Err(SendError::Refused(..)) if chunk.len() > 1 => {
            for e in chunk {
                let one = std::slice::from_ref(e);
                match d.client.post_bundle(&bundle::bundle(one, kind)).await {
                    Ok(resp) => apply(d, one, bundle::outcomes(&resp, 1), tally)?,
                    Err(SendError::Refused(status, outcome)) => {
                        refused(d, e, status, outcome, tally)
                    }
                    Err(other) => return Err(other),
                }
            }
            Ok(())
        }
        Err(SendError::Refused(status, outcome)) => {
            for e in chunk {
                refused(d, e, status, outcome.clone(), tally);
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn apply(
    d: &Inner,
    chunk: &[Entry],
    outs: Vec<Outcome>,
    tally: &mut Tally,
) -> Result<(), SendError> {
    let mut retry = false;
    for (e, o) in chunk.iter().zip(outs) {
        match o {
            Outcome::Stored(answer) => {
                tally.delivered += 1;
                tally.receipt(e, answer, false);
            }
            Outcome::Refused { status, outcome } => refused(d, e, status, Some(outcome), tally),
            Outcome::Retry(_) => retry = true,
        }
    }
    if retry {
        Err(SendError::Server)
    } else {
        Ok(())
    }
}

fn refused(d: &Inner, e: &Entry, status: u16, outcome: Option<Value>, tally: &mut Tally) {
    let outcome = outcome.unwrap_or_else(|| bundle::outcome_for(status, "refused"));
    let answer = Answer {
        status: status.to_string(),
        ..Answer::default()
    };
    tally.receipt(e, answer, true);
    let what = outcome
        .pointer("/issue/0/diagnostics")
        .or_else(|| outcome.pointer("/issue/0/details/text"))
        .or_else(|| outcome.pointer("/issue/0/code"))
        .and_then(Value::as_str)
        .unwrap_or("no details");
    let what: String = what.chars().take(300).collect();
    let message = format!(
        "the FHIR destination refused {} {} (HTTP {status}): {what}",
        e.resource_type, e.id
    );
    let mut raw = json!({
        "destination": d.public_url,
        "status": status,
        "outcome": outcome,
    });
    raw[e.resource_type.to_ascii_lowercase()] = e.resource.clone();
    let device = (!e.device_id.is_empty()).then(|| e.device_id.clone());
    tally.dead.push(d.dead_letter(device, message, raw));
}

impl Tally {
    /// Keeps the server's answer for the trace (which follows readings: Observations only).
    fn receipt(&mut self, e: &Entry, answer: Answer, refused: bool) {
        if e.resource_type != "Observation" {
            return;
        }
        self.receipts.push(Receipt {
            observation: e.id.clone(),
            device: e.device_id.clone(),
            received_us: self.received.get(&e.id).copied().unwrap_or_default(),
            at_us: now_us(),
            answer,
            refused,
        });
    }
}

impl Inner {
    fn dead_letter(&self, device: Option<String>, message: String, raw: Value) -> DeadLetter {
        DeadLetter {
            received_us: now_us(),
            source: Source::Destination,
            device_id: device,
            reason: Reason::DestinationRejected,
            message,
            index: None,
            raw: serde_json::to_vec(&raw).unwrap_or_default(),
            raw_sha256: None,
        }
    }
}
