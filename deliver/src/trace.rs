//! Per-message trace (issue 14): for a device and a window of received times, each message's
//! journey — received → normalised (or rejected, with the reason) → stored → delivered to each
//! FHIR destination (with the server's answer) — built only from what carewatch keeps durably,
//! so it answers the same after a restart:
//!
//! - `observations`: rows of one message share their received time (the message's receipt);
//! - `dead_letters`: a message's rejections share received time and `raw_sha256`;
//! - the identity journal ([`crate::lookup`]): a dead-lettered message whose readings were
//!   stored later, and when;
//! - per destination: its receipts ([`crate::receipts`]), its `destination_rejected` dead
//!   letters (the server's OperationOutcome) and its position (everything received up to it
//!   is delivered; later rows are `pending`).
//!
//! Raw payloads are never part of a trace.

use std::collections::BTreeMap;
use std::path::Path;

use arrow_array::RecordBatch;
use serde_json::{Value, json};

use carewatch_query::QueryEngine;
use carewatch_transform::schema::readings_from_batch;

use crate::lookup::{self, i64_col, str_col};
use crate::{receipts, state};

/// What to trace.
#[derive(Debug, Clone)]
pub struct TraceQuery {
    /// The device.
    pub device: String,
    /// Received at or after (UTC micros).
    pub since_us: i64,
    /// Received before (UTC micros).
    pub until_us: i64,
}

/// Most messages one trace shows (the oldest first); `truncated` says when there were more.
pub const MAX_MESSAGES: usize = 1000;

/// Reasons decided after normalisation (the reading itself was understood).
const AFTER_NORMALISING: [&str; 5] = [
    "unknown_device",
    "revoked_device",
    "unassigned_device",
    "patient_mismatch",
    "future_time",
];

fn iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn collect(q: &QueryEngine, sql: &str) -> Result<Vec<RecordBatch>, String> {
    q.collect(sql).await.map_err(|e| {
        tracing::debug!(error = %e, "trace: query failed");
        "reading the tables failed".to_owned()
    })
}

/// Stored rows of the device received in the window or at the given times: received time ->
/// (source, observation ids in order).
async fn stored(
    q: &QueryEngine,
    device: &str,
    window: (i64, i64),
    also: &[i64],
) -> Result<BTreeMap<i64, (String, Vec<String>)>, String> {
    let mut cond = format!(
        "(received_time >= to_timestamp_micros({}) AND received_time < to_timestamp_micros({}))",
        window.0, window.1
    );
    for t in also {
        cond.push_str(&format!(" OR received_time = to_timestamp_micros({t})"));
    }
    let sql = format!(
        "SELECT * FROM observations WHERE device_id = {} AND ({cond}) \
         ORDER BY received_time, effective_time, code",
        quote(device)
    );
    let mut out: BTreeMap<i64, (String, Vec<String>)> = BTreeMap::new();
    for b in collect(q, &sql).await? {
        for r in readings_from_batch(&b).map_err(|_| "reading the tables failed")? {
            let e = out
                .entry(r.received_us)
                .or_insert_with(|| (r.source.clone(), Vec::new()));
            let id = r.observation_id();
            if !e.1.contains(&id) {
                e.1.push(id);
            }
        }
    }
    Ok(out)
}

/// One dead letter as the trace shows it.
#[derive(Debug, Clone)]
struct Dead {
    received_us: i64,
    source: String,
    reason: String,
    message: String,
    index: Option<i64>,
}

async fn dead_letters(q: &QueryEngine, t: &TraceQuery) -> Result<Vec<Dead>, String> {
    let sql = format!(
        "SELECT CAST(received_time AS BIGINT) AS t, source, reason, message, \
         CAST(item_index AS BIGINT) AS i FROM dead_letters \
         WHERE device_id = {} AND received_time >= to_timestamp_micros({}) \
         AND received_time < to_timestamp_micros({}) ORDER BY t, i",
        quote(&t.device),
        t.since_us,
        t.until_us
    );
    let mut out = Vec::new();
    for b in collect(q, &sql).await? {
        let bad = |_| "reading the tables failed".to_owned();
        let (ts, src, reason, msg) = (
            i64_col(&b, 0).map_err(bad)?,
            str_col(&b, 1).map_err(bad)?,
            str_col(&b, 2).map_err(bad)?,
            str_col(&b, 3).map_err(bad)?,
        );
        let idx = i64_col(&b, 4).map_err(bad)?;
        for i in 0..b.num_rows() {
            use arrow_array::Array as _;
            out.push(Dead {
                received_us: ts.value(i),
                source: src[i].clone(),
                reason: reason[i].clone(),
                message: msg[i].clone(),
                index: (!idx.is_null(i)).then(|| idx.value(i)),
            });
        }
    }
    Ok(out)
}

/// The destinations' words about the device: per destination, its URL, position, receipts and
/// refusals (observation id -> the dead letter's server answer).
struct Deliveries {
    url: String,
    position_us: i64,
    receipts: Vec<receipts::Receipt>,
    refusals: BTreeMap<String, Value>,
}

async fn deliveries(
    q: &QueryEngine,
    data_dir: &Path,
    device: &str,
) -> Result<Vec<Deliveries>, String> {
    let states = state::load_all(data_dir).map_err(|_| "reading the delivery state failed")?;
    if states.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT raw FROM dead_letters WHERE device_id = {} AND reason = 'destination_rejected'",
        quote(device)
    );
    let mut refused: Vec<Value> = Vec::new();
    for b in collect(q, &sql).await? {
        use arrow_array::Array as _;
        if let Some(a) = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::BinaryArray>()
        {
            refused.extend((0..a.len()).filter_map(|i| serde_json::from_slice(a.value(i)).ok()));
        }
    }
    let mut out = Vec::new();
    for (path, s) in states {
        let rs = receipts::of_device(&receipts::path(&path), device)
            .map_err(|_| "reading the delivery receipts failed")?;
        let mut refusals = BTreeMap::new();
        for r in refused
            .iter()
            .filter(|r| r["destination"] == s.url.as_str())
        {
            if let Some(id) = r
                .pointer("/observation/identifier/0/value")
                .and_then(Value::as_str)
            {
                refusals.insert(
                    id.to_owned(),
                    json!({"status": r["status"], "outcome": r["outcome"]}),
                );
            }
        }
        out.push(Deliveries {
            url: s.url,
            position_us: s.position_us,
            receipts: rs,
            refusals,
        });
    }
    Ok(out)
}

/// The delivery steps of one stored message's Observations.
fn delivery_steps(ds: &[Deliveries], ids: &[String], received_us: i64) -> Vec<Value> {
    let mut steps = Vec::new();
    for d in ds {
        for id in ids {
            let got: Vec<&receipts::Receipt> = d
                .receipts
                .iter()
                .filter(|r| r.observation == *id && r.received_us >= received_us)
                .collect();
            if let Some(r) = got.iter().find(|r| !r.refused) {
                steps.push(
                    json!({"step": "delivered", "destination": d.url, "observation": id,
                    "at": iso(r.at_us), "response": r.answer}),
                );
            } else if let Some(x) = d.refusals.get(id) {
                steps.push(
                    json!({"step": "refused", "destination": d.url, "observation": id,
                    "at": got.first().map(|r| iso(r.at_us)), "response": x}),
                );
            } else if received_us <= d.position_us {
                steps.push(
                    json!({"step": "delivered", "destination": d.url, "observation": id,
                    "response": Value::Null,
                    "note": "delivered (the server's answer is no longer kept)"}),
                );
            } else {
                steps.push(json!({"step": "pending", "destination": d.url, "observation": id}));
            }
        }
    }
    steps
}

/// Everything known about the device's messages in the window.
struct Known {
    /// Rejection steps by received time.
    rejected: BTreeMap<i64, Vec<Value>>,
    /// Transport by received time (of dead-lettered messages).
    sources: BTreeMap<i64, String>,
    /// Readings understood but rejected after normalising, by received time.
    normalised: BTreeMap<i64, usize>,
    /// Stored rows by received time: (transport, observation ids).
    rows: BTreeMap<i64, (String, Vec<String>)>,
    /// Dead-lettered messages stored later (identity journal).
    resolutions: Vec<lookup::Resolution>,
    /// Received times of rows a resolution stored (part of the dead-lettered message).
    replayed: Vec<i64>,
    deliveries: Vec<Deliveries>,
}

async fn gather(q: &QueryEngine, data_dir: &Path, t: &TraceQuery) -> Result<Known, String> {
    let dead = dead_letters(q, t).await?;
    let resolutions: Vec<lookup::Resolution> = lookup::load(data_dir)
        .map_err(|_| "reading the identity journal failed")?
        .into_iter()
        .filter(|r| {
            r.device == t.device
                && r.dead_received_us >= t.since_us
                && r.dead_received_us < t.until_us
        })
        .collect();
    let later: Vec<i64> = resolutions.iter().map(|r| r.stored_received_us).collect();
    let replayed = resolutions
        .iter()
        .filter(|r| r.stored > 0)
        .map(|r| r.stored_received_us)
        .collect();
    let rows = stored(q, &t.device, (t.since_us, t.until_us), &later).await?;
    let mut k = Known {
        rejected: BTreeMap::new(),
        sources: BTreeMap::new(),
        normalised: BTreeMap::new(),
        rows,
        resolutions,
        replayed,
        deliveries: deliveries(q, data_dir, &t.device).await?,
    };
    for d in dead.iter().filter(|d| d.reason != "destination_rejected") {
        k.sources
            .entry(d.received_us)
            .or_insert_with(|| d.source.clone());
        if AFTER_NORMALISING.contains(&d.reason.as_str()) {
            *k.normalised.entry(d.received_us).or_default() += 1;
        }
        k.rejected.entry(d.received_us).or_default().push(json!({
            "step": "rejected", "reason": d.reason, "message": d.message, "item": d.index,
        }));
    }
    Ok(k)
}

/// The journey of the message received at `at`.
fn message(k: &mut Known, at: i64, own: Option<(String, Vec<String>)>) -> Value {
    let source = own
        .as_ref()
        .map(|o| o.0.clone())
        .or_else(|| k.sources.get(&at).cloned())
        .unwrap_or_default();
    let rejected = k.rejected.remove(&at).unwrap_or_default();
    let n_ids = own.as_ref().map_or(0, |o| o.1.len());
    let mut steps = vec![json!({"step": "received", "at": iso(at), "source": source})];
    let understood = k.normalised.get(&at).copied().unwrap_or(0) + n_ids;
    if understood > 0 {
        steps.push(json!({"step": "normalised", "readings": understood}));
    }
    steps.extend(rejected.iter().cloned());
    if let Some((_, ids)) = &own {
        steps.push(json!({"step": "stored", "at": iso(at), "observations": ids}));
        steps.extend(delivery_steps(&k.deliveries, ids, at));
    }
    let mut resolved = false;
    for r in k.resolutions.iter().filter(|r| r.dead_received_us == at) {
        resolved = true;
        let ids = k
            .rows
            .get(&r.stored_received_us)
            .map(|x| x.1.clone())
            .unwrap_or_default();
        let why = if r.via == "lookup" {
            "the device was found on the FHIR destination"
        } else {
            "the device was enrolled"
        };
        steps.push(
            json!({"step": "stored", "at": iso(r.stored_received_us), "observations": ids,
            "after": why, "stored_now": r.stored, "already_stored": r.rows - r.stored}),
        );
        steps.extend(delivery_steps(&k.deliveries, &ids, r.stored_received_us));
    }
    let outcome = match (own.is_some(), resolved, rejected.is_empty()) {
        (_, true, _) => "rejected, then stored",
        (true, false, true) => "stored",
        (true, false, false) => "partly stored",
        (false, false, _) => "rejected",
    };
    json!({"received": iso(at), "source": source, "outcome": outcome, "steps": steps})
}

/// The trace as JSON: `{device, since, until, messages: [{received, source, outcome, steps}],
/// truncated}`.
pub async fn trace(q: &QueryEngine, data_dir: &Path, t: &TraceQuery) -> Result<Value, String> {
    let mut k = gather(q, data_dir, t).await?;
    let in_window = |at: i64| at >= t.since_us && at < t.until_us;
    let mut times: Vec<i64> = k.rejected.keys().copied().collect();
    times.extend(
        k.rows
            .keys()
            .copied()
            .filter(|at| in_window(*at) && !k.replayed.contains(at)),
    );
    times.sort_unstable();
    times.dedup();
    let truncated = times.len() > MAX_MESSAGES;
    let mut out = Vec::new();
    for at in times.into_iter().take(MAX_MESSAGES) {
        let own = if in_window(at) && !k.replayed.contains(&at) {
            k.rows.remove(&at)
        } else {
            None
        };
        out.push(message(&mut k, at, own));
    }
    Ok(json!({
        "device": t.device, "since": iso(t.since_us), "until": iso(t.until_us),
        "messages": out, "truncated": truncated,
    }))
}
