//! `carewatch replay`: backfills history through the same normalisation path as live ingest.
//!
//! Files: NDJSON (`.ndjson`, `.jsonl`), JSON (`.json`: one payload — an array, a FHIR Bundle…)
//! and CSV (`.csv`), each optionally gzip-compressed (`.gz`). A CSV row becomes a carewatch
//! JSON sample; `--csv-map` names which column holds which field (`device_id=Id,time=Time,
//! heart_rate=Value`), otherwise the header must use carewatch field names. Times without an
//! offset are refused unless a zone is given (the pipeline's zone policy).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::{Map, Value};

use carewatch_store::registry::Attribution;
use carewatch_transform::{Reason, Source};

use crate::pipeline::{Origin, Pipeline};

/// Options.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// `(carewatch field, CSV column)` pairs.
    pub csv_map: Vec<(String, String)>,
    /// Register unknown devices, each as its own patient (`patient_id = device_id`).
    pub register_devices: bool,
    /// Items per durable append.
    pub batch: usize,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Items read.
    pub items: u64,
    /// Readings stored.
    pub accepted: u64,
    /// Rejected items per reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Devices registered on the way.
    pub registered: u64,
}

impl ReplayReport {
    /// Adds another report's counts.
    pub fn merge(&mut self, r: ReplayReport) {
        self.items += r.items;
        self.accepted += r.accepted;
        self.registered += r.registered;
        for (k, v) in r.rejected {
            *self.rejected.entry(k).or_default() += v;
        }
    }
}

fn open(path: &Path) -> Result<Box<dyn BufRead>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let r: Box<dyn Read> = if path.extension().is_some_and(|x| x == "gz") {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, r)))
}

fn kind(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name).to_owned();
    name.rsplit('.').next().unwrap_or("").to_owned()
}

fn cell(v: &str) -> Value {
    match v.trim().parse::<f64>() {
        Ok(n) if !v.trim().is_empty() && !v.contains('-') && !v.contains(':') => {
            serde_json::Number::from_f64(n)
                .map_or_else(|| Value::String(v.to_owned()), Value::Number)
        }
        _ => Value::String(v.to_owned()),
    }
}

/// A running server to replay into (`carewatch replay --server`): readings go through its
/// `POST /v1/readings` as the admin, so its alert engine evaluates them live, as it would a
/// phone's late sync. Zone-less times follow the server's `--assume-tz`.
#[derive(Debug, Clone)]
pub struct Remote {
    /// HTTP client.
    pub client: reqwest::Client,
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub base: String,
    /// Admin token.
    pub token: String,
}

/// Where replayed items go.
#[derive(Debug, Clone, Copy)]
pub enum Sink<'a> {
    /// Straight into a data directory (no server running on it).
    Local(&'a Pipeline),
    /// Through a running server's HTTP API.
    Remote(&'a Remote),
}

impl Remote {
    async fn chunk(
        &self,
        lines: &[String],
        opts: &ReplayOptions,
        report: &mut ReplayReport,
        known: &mut std::collections::HashSet<String>,
    ) -> Result<(), String> {
        if opts.register_devices {
            for l in lines {
                let Some((d, patient)) = device_and_patient(l) else {
                    continue;
                };
                if !known.insert(d.clone()) {
                    continue;
                }
                let r = self
                    .client
                    .post(format!("{}/v1/devices", self.base))
                    .bearer_auth(&self.token)
                    .json(&serde_json::json!({"device_id": d, "patient_id": patient, "valid_from": "1970-01-01T00:00:00Z"}))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                // Registered from the epoch: an existing device is never re-assigned (the server
                // answers that it already has an assignment from then on).
                match r.status().as_u16() {
                    201 => report.registered += 1,
                    400 => {
                        let body = r.text().await.unwrap_or_default();
                        if !body.contains("already has an assignment") {
                            return Err(format!("registering device: {body}"));
                        }
                    }
                    s => return Err(format!("registering device: HTTP {s}")),
                }
            }
        }
        let body = lines.join("\n");
        let v: Value = loop {
            let r = self
                .client
                .post(format!("{}/v1/readings", self.base))
                .bearer_auth(&self.token)
                .header("content-type", "application/x-ndjson")
                .body(body.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match r.status().as_u16() {
                503 => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                202 | 422 => break r.json().await.map_err(|e| e.to_string())?,
                s => return Err(format!("posting readings: HTTP {s}")),
            }
        };
        report.items += lines.len() as u64;
        report.accepted += v["accepted"].as_u64().unwrap_or(0);
        for r in v["rejected"].as_array().into_iter().flatten() {
            let code = r["reason"]
                .as_str()
                .and_then(Reason::from_code)
                .map_or("other", Reason::code);
            *report.rejected.entry(code).or_default() += 1;
        }
        Ok(())
    }
}

impl Sink<'_> {
    async fn chunk(
        &self,
        lines: &[String],
        opts: &ReplayOptions,
        report: &mut ReplayReport,
        known: &mut std::collections::HashSet<String>,
    ) -> Result<(), String> {
        match self {
            Sink::Local(p) => p.replay_chunk(lines, opts, report).await,
            Sink::Remote(r) => r.chunk(lines, opts, report, known).await,
        }
    }
}

/// The device a replayed line names, and its patient: the line's `patient_id` when it has one
/// (so a file naming both is honoured), else the device id.
fn device_and_patient(line: &str) -> Option<(String, String)> {
    let v = serde_json::from_str::<Value>(line).ok()?;
    let d = v.get("device_id").and_then(Value::as_str)?.to_owned();
    let p = v
        .get("patient_id")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .map_or_else(|| d.clone(), str::to_owned);
    Some((d, p))
}

impl Pipeline {
    async fn replay_chunk(
        &self,
        lines: &[String],
        opts: &ReplayOptions,
        report: &mut ReplayReport,
    ) -> Result<(), String> {
        if opts.register_devices {
            for l in lines {
                if let Some((d, patient)) = device_and_patient(l)
                    && self.registry.attribute(&d, 0) == Attribution::UnknownDevice
                {
                    self.registry
                        .register_device(&d, &patient, Some(0))
                        .map_err(|e| e.to_string())?;
                    report.registered += 1;
                }
            }
        }
        let body = lines.join("\n");
        let origin = Origin {
            source: Some(Source::Replay),
            device: None,
            format: None,
        };
        let got = loop {
            match self.ingest(body.as_bytes(), &origin).await {
                Err(carewatch_store::Error::Busy) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                other => break other.map_err(|e| e.to_string())?,
            }
        };
        report.items += lines.len() as u64;
        report.accepted += got.accepted as u64;
        for r in got.rejected {
            *report.rejected.entry(reason_code(r.reason)).or_default() += 1;
        }
        Ok(())
    }

    /// Replays one file into this pipeline's store; `progress` is told the items done so far.
    pub async fn replay_file(
        &self,
        path: &Path,
        opts: &ReplayOptions,
        progress: &dyn Fn(u64),
    ) -> Result<ReplayReport, String> {
        replay_file(Sink::Local(self), path, opts, progress).await
    }
}

/// Replays one file into `sink`; `progress` is told the items done so far.
pub async fn replay_file(
    sink: Sink<'_>,
    path: &Path,
    opts: &ReplayOptions,
    progress: &dyn Fn(u64),
) -> Result<ReplayReport, String> {
    let mut known = std::collections::HashSet::new();
    let mut report = ReplayReport::default();
    let batch = opts.batch.max(1);
    match kind(path).as_str() {
        "json" => {
            let mut text = String::new();
            open(path)?
                .read_to_string(&mut text)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            sink.chunk(&[text], opts, &mut report, &mut known).await?;
        }
        "ndjson" | "jsonl" => {
            let mut chunk = Vec::with_capacity(batch);
            for line in open(path)?.lines() {
                let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
                if line.trim().is_empty() {
                    continue;
                }
                chunk.push(line);
                if chunk.len() == batch {
                    sink.chunk(&chunk, opts, &mut report, &mut known).await?;
                    chunk.clear();
                    progress(report.items);
                }
            }
            if !chunk.is_empty() {
                sink.chunk(&chunk, opts, &mut report, &mut known).await?;
            }
        }
        "csv" => {
            let mut rdr = csv::Reader::from_reader(open(path)?);
            let headers = rdr
                .headers()
                .map_err(|e| format!("{}: {e}", path.display()))?
                .clone();
            let mut cols: Vec<(String, usize)> = Vec::new();
            if opts.csv_map.is_empty() {
                cols = headers
                    .iter()
                    .enumerate()
                    .map(|(i, h)| (h.to_owned(), i))
                    .collect();
            } else {
                for (field, col) in &opts.csv_map {
                    let i = headers.iter().position(|h| h == col).ok_or_else(|| {
                        format!(
                            "{}: no column {col:?} (header: {:?})",
                            path.display(),
                            headers
                        )
                    })?;
                    cols.push((field.clone(), i));
                }
            }
            let mut chunk = Vec::with_capacity(batch);
            for rec in rdr.records() {
                let rec = rec.map_err(|e| format!("{}: {e}", path.display()))?;
                let mut o = Map::new();
                for (field, i) in &cols {
                    let v = rec.get(*i).unwrap_or("");
                    let val = if field == "device_id"
                        || field == "patient_id"
                        || field == "time"
                        || field == "end_time"
                    {
                        Value::String(v.to_owned())
                    } else {
                        cell(v)
                    };
                    o.insert(field.clone(), val);
                }
                chunk.push(Value::Object(o).to_string());
                if chunk.len() == batch {
                    sink.chunk(&chunk, opts, &mut report, &mut known).await?;
                    chunk.clear();
                    progress(report.items);
                }
            }
            if !chunk.is_empty() {
                sink.chunk(&chunk, opts, &mut report, &mut known).await?;
            }
        }
        other => {
            return Err(format!(
                "{}: unknown file kind {other:?} (csv, ndjson, jsonl, json; optionally .gz)",
                path.display()
            ));
        }
    }
    progress(report.items);
    Ok(report)
}

fn reason_code(r: Reason) -> &'static str {
    r.code()
}
