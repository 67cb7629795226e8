//! Identity lookup (`[fhir.identity] mode = "lookup"`, MedTech's Lookup mode done right).
//!
//! A reading of a device the registry does not know is a dead letter (`unknown_device`) — never
//! a guessed patient. This task follows those dead letters: every `recheck` it asks the FHIR
//! destination for each such device (`GET Device?identifier=[system|]{device id}`, the Device
//! naming its patient in `Device.patient`), and once the device is found — or enrolled in the
//! registry some other way — enrols it from the epoch and stores its dead-lettered readings:
//! the raw payload is normalised again (`Pipeline::rows_for_device`), rows whose natural key
//! (device, code, effective time) is already stored are left out, the rest appended with a new
//! received time (so the FHIR destination delivers them), and one journal line per message is
//! fsynced (`<data-dir>/fhir/identity-resolved.jsonl`). The journal says which dead letters are
//! resolved; the natural-key check makes a crash between the append and the journal harmless,
//! so every reading is stored exactly once and nobody re-sends anything.
//!
//! Several Devices matching one id, a Device without `patient`, or an identifier that is not
//! the configured one resolve nothing (logged without ids); the dead letters wait.
//!
//! Care teams come from the same server ([`teams`]): each patient a device is enrolled for is
//! placed in the team its one active `CareTeam` names, looked up again every
//! `care_team_recheck`.

mod teams;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array as _, BinaryArray, Int64Array, RecordBatch, StringArray, StringViewArray};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use carewatch_ingest::identity::{IdentityModel, patient_ref};
use carewatch_ingest::{Origin, Pipeline};
use carewatch_store::registry::{Attribution, Enrolment};
use carewatch_transform::Source;

use crate::{Destination, Inner, now_us};

/// One dead-lettered message whose readings were stored once its device became known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    /// The device.
    pub device: String,
    /// When the message was received (its dead letters' `received_time`).
    pub dead_received_us: i64,
    /// Its dead letters' `raw_sha256`.
    pub raw_sha256: String,
    /// The received time of the rows stored for it.
    pub stored_received_us: i64,
    /// Rows the message holds for the device.
    pub rows: usize,
    /// Of those, stored by this resolution (the others were stored already).
    pub stored: usize,
    /// `lookup` (found on the FHIR destination) or `registry` (enrolled in carewatch).
    pub via: String,
    /// When it was resolved.
    pub at_us: i64,
}

/// The journal of resolutions under a data directory.
pub fn journal_path(data_dir: &Path) -> PathBuf {
    data_dir.join("fhir").join("identity-resolved.jsonl")
}

/// Every resolution recorded (a torn last line is ignored).
pub fn load(data_dir: &Path) -> std::io::Result<Vec<Resolution>> {
    match std::fs::read_to_string(journal_path(data_dir)) {
        Ok(s) => Ok(s
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Appends resolutions durably (blocking: call from the blocking pool).
fn append(path: &Path, rs: &[Resolution]) -> std::io::Result<()> {
    crate::receipts::append_lines(path, rs)
}

/// Lookup settings.
#[derive(Debug, Clone)]
pub struct LookupConfig {
    /// How Device resources name their device.
    pub model: IdentityModel,
    /// How often a device not found is looked up again.
    pub recheck: Duration,
    /// How often each patient's care team is looked up again.
    pub care_team_recheck: Duration,
    /// Only CareTeams of this category (`[system|]code`) name carewatch's teams.
    pub care_team_category: Option<String>,
}

/// One dead-lettered message of a device.
#[derive(Debug, Clone)]
struct Pending {
    received_us: i64,
    sha: String,
    source: String,
}

struct Lookup {
    d: Arc<Inner>,
    pipeline: Arc<Pipeline>,
    config: LookupConfig,
    journal: PathBuf,
    /// (device, received, sha) of resolved messages.
    done: HashSet<(String, i64, String)>,
    /// When each device not found was last asked for.
    asked: HashMap<String, Instant>,
    /// When each patient's care team was last asked for.
    teams_asked: HashMap<String, Instant>,
    /// When the registry's patients were last walked for due care teams, and whether that walk
    /// left due patients for the next pass.
    teams_walked: Option<(Instant, bool)>,
}

impl Destination {
    /// Starts identity lookup on this destination's server until `shutdown`.
    pub fn start_lookup(
        &self,
        config: LookupConfig,
        pipeline: Arc<Pipeline>,
        data_dir: &Path,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let done = load(data_dir)
            .map_err(|e| format!("reading the identity journal: {e}"))?
            .into_iter()
            .map(|r| (r.device, r.dead_received_us, r.raw_sha256))
            .collect();
        let l = Lookup {
            d: self.inner.clone(),
            pipeline,
            config,
            journal: journal_path(data_dir),
            done,
            asked: HashMap::new(),
            teams_asked: HashMap::new(),
            teams_walked: None,
        };
        Ok(tokio::spawn(l.run(shutdown)))
    }
}

impl Lookup {
    async fn run(mut self, shutdown: CancellationToken) {
        let tick = self.config.recheck.min(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(tick) => {}
            }
            if let Err(class) = self.pass().await {
                tracing::warn!(destination = %self.d.label, error = class, "identity lookup failed; retrying");
            }
        }
    }

    /// One pass over the unresolved `unknown_device` dead letters.
    async fn pass(&mut self) -> Result<(), &'static str> {
        let mut by_device: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        let mut resolved = false;
        for (dev, p) in self.pending().await? {
            if !self
                .done
                .contains(&(dev.clone(), p.received_us, p.sha.clone()))
            {
                by_device.entry(dev).or_default().push(p);
            }
        }
        for (dev, msgs) in by_device {
            let known =
                self.pipeline.registry.attribute(&dev, now_us()) != Attribution::UnknownDevice;
            let via = if known {
                "registry"
            } else {
                let due = self
                    .asked
                    .get(&dev)
                    .is_none_or(|t| t.elapsed() >= self.config.recheck);
                if !due {
                    continue;
                }
                self.asked.insert(dev.clone(), Instant::now());
                let Some(patient) = self.find(&dev).await? else {
                    continue;
                };
                self.enrol(&dev, patient).await?;
                self.asked.remove(&dev);
                "lookup"
            };
            self.replay(&dev, msgs, via).await?;
            resolved = true;
        }
        self.teams(resolved).await
    }

    /// Unresolved-looking dead letters: (device, message), one per message.
    async fn pending(&self) -> Result<Vec<(String, Pending)>, &'static str> {
        let sql = "SELECT DISTINCT device_id, CAST(received_time AS BIGINT) AS t, raw_sha256, source \
                   FROM dead_letters WHERE reason = 'unknown_device' AND device_id IS NOT NULL \
                   AND raw_sha256 IS NOT NULL ORDER BY t";
        let batches = self.d.engine.collect(sql).await.map_err(|e| {
            tracing::debug!(error = %e, "identity lookup: reading dead letters failed");
            "store"
        })?;
        let mut out = Vec::new();
        for b in &batches {
            let (dev, t, sha, src) = (
                str_col(b, 0)?,
                i64_col(b, 1)?,
                str_col(b, 2)?,
                str_col(b, 3)?,
            );
            for i in 0..b.num_rows() {
                out.push((
                    dev[i].clone(),
                    Pending {
                        received_us: t.value(i),
                        sha: sha[i].clone(),
                        source: src[i].clone(),
                    },
                ));
            }
        }
        Ok(out)
    }

    /// The patient of the one Device the destination holds for `dev`, if there is exactly one.
    async fn find(&self, dev: &str) -> Result<Option<String>, &'static str> {
        let ident = match &self.config.model.device_identifier_system {
            Some(sys) => format!("{sys}|{dev}"),
            None => dev.to_owned(),
        };
        let bundle = self
            .d
            .client
            .get_json("Device", &[("identifier", &ident)])
            .await
            .map_err(|e| e.class())?;
        let found: Vec<&Value> = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|e| e.get("resource")).collect())
            .unwrap_or_default();
        let matching: Vec<&Value> = found
            .into_iter()
            .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("Device"))
            .filter(|r| self.config.model.device_id(r).is_ok_and(|id| id == dev))
            .collect();
        match matching.as_slice() {
            [] => Ok(None),
            [one] => match patient_ref(one.get("patient"), "Device.patient") {
                Ok(p) => Ok(Some(p)),
                Err(_) => {
                    tracing::info!(destination = %self.d.label, "identity lookup: a Device was found without Device.patient; its readings stay dead letters");
                    Ok(None)
                }
            },
            _ => {
                tracing::warn!(destination = %self.d.label, "identity lookup: several Devices carry one device id; none is chosen");
                Ok(None)
            }
        }
    }

    async fn enrol(&self, dev: &str, patient: String) -> Result<(), &'static str> {
        let e = Enrolment {
            device_id: dev.to_owned(),
            patient_id: patient,
            valid_from_us: None,
            valid_to_us: None,
            reassign: false,
        };
        let r = self.pipeline.registry.clone();
        match tokio::task::spawn_blocking(move || r.enrol(std::slice::from_ref(&e))).await {
            // Refused items (enrolled elsewhere meanwhile) leave the registry's word standing.
            Ok(Ok(_)) => Ok(()),
            _ => Err("store"),
        }
    }

    /// Stores the readings of `dev`'s dead-lettered messages (those not stored yet) and
    /// journals each message.
    async fn replay(
        &mut self,
        dev: &str,
        msgs: Vec<Pending>,
        via: &str,
    ) -> Result<(), &'static str> {
        let mut lines = Vec::with_capacity(msgs.len());
        for m in msgs {
            let raw = self.raw(m.received_us, &m.sha).await?;
            let origin = Origin {
                source: Some(source(&m.source)),
                // From an external broker the topic named the device; otherwise the payload did.
                device: (m.source == "mqtt").then(|| dev.to_owned()),
                format: None,
            };
            let now = now_us();
            let rows = self
                .pipeline
                .rows_for_device(&raw, &origin, dev, m.received_us, now);
            let total = rows.len();
            let (stored_before, fresh) = self.split_stored(dev, rows).await?;
            let stored = fresh.len();
            if !fresh.is_empty() {
                self.pipeline
                    .store
                    .append(fresh, Vec::new())
                    .await
                    .map_err(|_| "store")?;
                self.pipeline.registry.note_seen([dev], now);
            }
            lines.push(Resolution {
                device: dev.to_owned(),
                dead_received_us: m.received_us,
                raw_sha256: m.sha,
                stored_received_us: if stored > 0 {
                    now
                } else {
                    stored_before.unwrap_or(now)
                },
                rows: total,
                stored,
                via: via.to_owned(),
                at_us: now,
            });
        }
        let path = self.journal.clone();
        let l2 = lines.clone();
        match tokio::task::spawn_blocking(move || append(&path, &l2)).await {
            Ok(Ok(())) => {}
            _ => return Err("store"),
        }
        let n: usize = lines.iter().map(|l| l.stored).sum();
        tracing::info!(
            messages = lines.len(),
            rows = n,
            via,
            "identity lookup: dead-lettered readings stored"
        );
        for l in lines {
            self.done
                .insert((l.device, l.dead_received_us, l.raw_sha256));
        }
        Ok(())
    }

    /// The message's raw payload (kept once, with its first dead letter).
    async fn raw(&self, t: i64, sha: &str) -> Result<Vec<u8>, &'static str> {
        let sql = format!(
            "SELECT raw FROM dead_letters WHERE received_time = to_timestamp_micros({t}) \
             AND raw_sha256 = '{}'",
            sha.replace('\'', "''")
        );
        let batches = self.d.engine.collect(&sql).await.map_err(|_| "store")?;
        for b in &batches {
            let col = b
                .column(0)
                .as_any()
                .downcast_ref::<BinaryArray>()
                .ok_or("store")?;
            if let Some(v) = (0..col.len()).map(|i| col.value(i)).find(|v| !v.is_empty()) {
                return Ok(v.to_vec());
            }
        }
        Ok(Vec::new())
    }

    /// Splits rows into those whose natural key is stored already (the latest received time
    /// among them) and the rest.
    async fn split_stored(
        &self,
        dev: &str,
        rows: Vec<carewatch_store::Row>,
    ) -> Result<(Option<i64>, Vec<carewatch_store::Row>), &'static str> {
        let (Some(lo), Some(hi)) = (
            rows.iter().map(|r| r.reading.effective_us).min(),
            rows.iter().map(|r| r.reading.effective_us).max(),
        ) else {
            return Ok((None, rows));
        };
        let sql = format!(
            "SELECT code, CAST(effective_time AS BIGINT) AS e, CAST(received_time AS BIGINT) AS r \
             FROM observations WHERE device_id = '{}' \
             AND effective_time >= to_timestamp_micros({lo}) AND effective_time <= to_timestamp_micros({hi})",
            dev.replace('\'', "''")
        );
        let batches = self.d.engine.collect(&sql).await.map_err(|_| "store")?;
        let mut have = HashMap::new();
        for b in &batches {
            let (c, e, r) = (str_col(b, 0)?, i64_col(b, 1)?, i64_col(b, 2)?);
            for i in 0..b.num_rows() {
                have.insert((c[i].clone(), e.value(i)), r.value(i));
            }
        }
        let mut latest = None;
        let fresh = rows
            .into_iter()
            .filter(|r| {
                let k = (r.reading.vital.code.to_owned(), r.reading.effective_us);
                match have.get(&k) {
                    Some(t) => {
                        latest = latest.max(Some(*t));
                        false
                    }
                    None => true,
                }
            })
            .collect();
        Ok((latest, fresh))
    }
}

fn source(s: &str) -> Source {
    match s {
        "mqtt" => Source::Mqtt,
        "replay" => Source::Replay,
        "cli" => Source::Cli,
        _ => Source::Http,
    }
}

/// A string column (Utf8 or Utf8View) as owned values (null as "").
pub(crate) fn str_col(b: &RecordBatch, i: usize) -> Result<Vec<String>, &'static str> {
    let c = b.column(i).as_any();
    if let Some(a) = c.downcast_ref::<StringArray>() {
        return Ok((0..a.len()).map(|j| a.value(j).to_owned()).collect());
    }
    if let Some(a) = c.downcast_ref::<StringViewArray>() {
        return Ok((0..a.len()).map(|j| a.value(j).to_owned()).collect());
    }
    Err("store")
}

pub(crate) fn i64_col(b: &RecordBatch, i: usize) -> Result<&Int64Array, &'static str> {
    b.column(i)
        .as_any()
        .downcast_ref::<Int64Array>()
        .ok_or("store")
}
