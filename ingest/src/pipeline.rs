//! The one path every reading takes from an edge to the store.

use std::sync::Arc;

use carewatch_store::registry::{Attribution, Registry};
use carewatch_store::{DeadLetter, Row, Store};
use carewatch_transform::template::Templates;
use carewatch_transform::{Context, Format, Reason, Rejection, Source, ZonePolicy, normalise};

/// At most this many rejected items of one message become dead letters of their own; the rest
/// are summed up in one more (`too_large`). A message's raw payload is stored once either way.
pub const MAX_DEAD_PER_MESSAGE: usize = 10_000;

/// Where a payload came from.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// Transport.
    pub source: Option<Source>,
    /// The device the transport vouches for (MQTT login, device credential).
    pub device: Option<String>,
    /// Fixed format (FHIR endpoints), or detect.
    pub format: Option<Format>,
}

/// The answer for one payload, once durable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ingested {
    /// Rows stored.
    pub accepted: usize,
    /// Items rejected (each one also a dead-letter row).
    pub rejected: Vec<Rejection>,
    /// Items in the payload.
    pub items: usize,
}

/// One message normalised and attributed, ready to store ([`Pipeline::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    /// When it was received (its rows' and dead letters' received time).
    pub received_us: i64,
    rows: Vec<Row>,
    dead: Vec<DeadLetter>,
    /// What storing it will have done.
    pub outcome: Ingested,
}

/// The current device mapping, replaceable while the server runs.
#[derive(Debug, Clone, Default)]
pub struct TemplateSlot(Arc<std::sync::RwLock<Option<Arc<Templates>>>>);

impl TemplateSlot {
    /// A slot holding `t`.
    pub fn new(t: Option<Templates>) -> Self {
        TemplateSlot(Arc::new(std::sync::RwLock::new(t.map(Arc::new))))
    }
    /// The current templates.
    pub fn get(&self) -> Option<Arc<Templates>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    /// Replaces the templates.
    pub fn set(&self, t: Templates) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(t));
    }
}

/// Reloads the mapping files when they change (polled every `every`), until `shutdown`.
/// A file that fails to load is reported and the previous templates stay in use.
pub async fn watch_templates(
    slot: TemplateSlot,
    device_mapping: std::path::PathBuf,
    fhir_mapping: Option<std::path::PathBuf>,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = (
        stamp(&device_mapping),
        fhir_mapping.as_deref().and_then(stamp),
    );
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now = (
            stamp(&device_mapping),
            fhir_mapping.as_deref().and_then(stamp),
        );
        if now == seen {
            continue;
        }
        seen = now;
        let dm = std::fs::read_to_string(&device_mapping);
        let fm = fhir_mapping
            .as_ref()
            .map(std::fs::read_to_string)
            .transpose();
        match (dm, fm) {
            (Ok(dm), Ok(fm)) => match Templates::load(&dm, fm.as_deref()) {
                Ok(t) => {
                    slot.set(t);
                    tracing::info!(file = %device_mapping.display(), "device mapping reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "device mapping reload failed; keeping the previous one")
                }
            },
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "reading mapping files failed; keeping the previous ones")
            }
        }
    }
}

/// Shared ingest state.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The store.
    pub store: Store,
    /// The registry.
    pub registry: Arc<Registry>,
    /// Device mapping templates, if configured; swapped in place on reload.
    pub templates: TemplateSlot,
    /// Zone policy for zone-less times.
    pub tz: ZonePolicy,
    /// Largest payload accepted.
    pub max_bytes: usize,
    /// Readings dated more than this after their arrival are rejected (`future_time`).
    pub max_future_skew_us: i64,
}

/// The default `--max-future-skew`: 5 minutes.
pub const DEFAULT_MAX_FUTURE_SKEW_US: i64 = 5 * 60 * 1_000_000;

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Pipeline {
    /// Names the reading's patient from the registry (the device's assignment at the reading's
    /// effective time), or why it cannot be stored.
    fn attribute(&self, r: &mut carewatch_transform::Reading) -> Result<(), Rejection> {
        match self.registry.attribute(&r.device_id, r.effective_us) {
            Attribution::Patient(p) => match &r.patient_id {
                Some(claimed) if *claimed != p => Err(Rejection::new(
                    Reason::PatientMismatch,
                    "the payload names another patient than the device is assigned to",
                )),
                _ => {
                    r.patient_id = Some(p);
                    Ok(())
                }
            },
            Attribution::UnknownDevice => Err(Rejection::new(
                Reason::UnknownDevice,
                "device is not registered",
            )),
            Attribution::Revoked => Err(Rejection::new(Reason::RevokedDevice, "device is revoked")),
            Attribution::Unassigned => Err(Rejection::new(
                Reason::UnassignedDevice,
                "device is assigned to no patient at the reading's effective time",
            )),
        }
    }

    /// Identity lookup: the rows a dead-lettered message (received at `received_us`) holds for
    /// `device`, now that the registry knows the device — normalised again from the raw payload
    /// and attributed, to be stored as received at `now_us`. Nothing is rejected twice: items
    /// of other devices, or that still cannot be stored, are left out (they are dead letters
    /// already). Pure apart from the registry read.
    pub fn rows_for_device(
        &self,
        bytes: &[u8],
        origin: &Origin,
        device: &str,
        received_us: i64,
        now_us: i64,
    ) -> Vec<Row> {
        let templates = self.templates.get();
        let ctx = Context {
            tz: self.tz,
            device: origin.device.as_deref(),
            format: origin.format,
            templates: templates.as_deref(),
            max_bytes: self.max_bytes,
        };
        let out = normalise(bytes, &ctx);
        let format = out.formats.first().copied().unwrap_or(Format::Carewatch);
        let latest_us = received_us.saturating_add(self.max_future_skew_us);
        out.readings
            .into_iter()
            .filter(|r| r.device_id == device && r.effective_us <= latest_us)
            .filter_map(|mut r| {
                self.attribute(&mut r).ok()?;
                Some(Row {
                    reading: r,
                    received_us: now_us,
                    source: origin.source.unwrap_or(Source::Http),
                    format,
                })
            })
            .collect()
    }

    /// Normalises, attributes and durably stores one payload. Returns only when rows and dead
    /// letters are in the WAL; a store error means nothing of it was acknowledged.
    pub async fn ingest(
        &self,
        bytes: &[u8],
        origin: &Origin,
    ) -> Result<Ingested, carewatch_store::Error> {
        let mut done = self.store_all(vec![self.prepare(bytes, origin)]).await?;
        Ok(done.pop().unwrap_or_default())
    }

    /// Stores several prepared messages in one append (one WAL frame, one fsync): all or none
    /// of them are durable when this returns. Their outcomes, in order.
    pub async fn store_all(
        &self,
        batch: Vec<Prepared>,
    ) -> Result<Vec<Ingested>, carewatch_store::Error> {
        let (mut rows, mut dead) = (Vec::new(), Vec::new());
        let mut seen = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for p in batch {
            let mut devices: Vec<String> =
                p.rows.iter().map(|r| r.reading.device_id.clone()).collect();
            devices.sort_unstable();
            devices.dedup();
            seen.push((p.received_us, devices));
            rows.extend(p.rows);
            dead.extend(p.dead);
            outcomes.push(p.outcome);
        }
        self.store.append(rows, dead).await?;
        // The fleet view's "last seen": when the device's readings were last stored.
        for (t, devices) in seen {
            self.registry
                .note_seen(devices.iter().map(String::as_str), t);
        }
        Ok(outcomes)
    }

    /// Normalises and attributes one payload received now, without storing it: its rows and
    /// dead letters (see [`Pipeline::store_all`]).
    pub fn prepare(&self, bytes: &[u8], origin: &Origin) -> Prepared {
        let received_us = now_us();
        let templates = self.templates.get();
        let source = origin.source.unwrap_or(Source::Http);
        let ctx = Context {
            tz: self.tz,
            device: origin.device.as_deref(),
            format: origin.format,
            templates: templates.as_deref(),
            max_bytes: self.max_bytes,
        };
        let out = normalise(bytes, &ctx);
        let format = out.formats.first().copied().unwrap_or(Format::Carewatch);
        let mut rejected = out.rejections;
        let mut rows = Vec::with_capacity(out.readings.len());
        let latest_us = received_us.saturating_add(self.max_future_skew_us);
        for mut r in out.readings {
            if r.effective_us > latest_us {
                rejected.push(
                    Rejection::new(
                        Reason::FutureTime,
                        "the reading is dated later than its arrival plus the allowed clock skew (--max-future-skew)",
                    )
                    .with_device(Some(&r.device_id)),
                );
                continue;
            }
            match self.attribute(&mut r) {
                Ok(()) => rows.push(Row {
                    reading: r,
                    received_us,
                    source,
                    format,
                }),
                Err(e) => rejected.push(e.with_device(Some(&r.device_id))),
            }
        }
        let dead = dead_letters(bytes, origin, source, received_us, &rejected);
        Prepared {
            received_us,
            outcome: Ingested {
                accepted: rows.len(),
                rejected,
                items: out.items,
            },
            rows,
            dead,
        }
    }

    /// A payload refused before normalisation (wrong topic, bad credential), as one dead letter
    /// holding it, to store with [`Pipeline::store_all`].
    pub fn prepare_refusal(&self, bytes: &[u8], origin: &Origin, rejection: Rejection) -> Prepared {
        let received_us = now_us();
        let d = DeadLetter {
            received_us,
            source: origin.source.unwrap_or(Source::Http),
            device_id: rejection
                .device_id
                .clone()
                .or_else(|| origin.device.clone()),
            reason: rejection.reason,
            message: rejection.message.clone(),
            index: None,
            raw: bytes.to_vec(),
            raw_sha256: None,
        };
        Prepared {
            received_us,
            rows: Vec::new(),
            dead: vec![d],
            outcome: Ingested {
                accepted: 0,
                rejected: vec![rejection],
                items: 0,
            },
        }
    }

    /// Dead-letters a payload refused before normalisation (wrong topic, bad credential).
    pub async fn refuse(
        &self,
        bytes: &[u8],
        origin: &Origin,
        rejection: Rejection,
    ) -> Result<(), carewatch_store::Error> {
        let p = self.prepare_refusal(bytes, origin, rejection);
        self.store.append(p.rows, p.dead).await
    }
}

/// The dead letters of a message's rejected items: one raw copy per message (the first dead
/// letter carries it, all share its digest), at most [`MAX_DEAD_PER_MESSAGE`] one by one.
fn dead_letters(
    bytes: &[u8],
    origin: &Origin,
    source: Source,
    received_us: i64,
    rejected: &[Rejection],
) -> Vec<DeadLetter> {
    let sha = (!rejected.is_empty()).then(|| carewatch_store::dead::digest(bytes));
    let letter = |i: usize, reason, message: String, index: Option<u32>, device| DeadLetter {
        received_us,
        source,
        device_id: device,
        reason,
        message,
        index,
        raw: if i == 0 { bytes.to_vec() } else { Vec::new() },
        raw_sha256: sha,
    };
    let kept = rejected.len().min(MAX_DEAD_PER_MESSAGE);
    let mut dead = Vec::with_capacity(kept + 1);
    for (i, r) in rejected.iter().take(kept).enumerate() {
        let device = r.device_id.clone().or_else(|| origin.device.clone());
        let index = r.index.map(|i| i as u32);
        dead.push(letter(i, r.reason, r.message.clone(), index, device));
    }
    if rejected.len() > kept {
        let message = format!(
            "{} more rejected items of this message are not stored one by one (at most {MAX_DEAD_PER_MESSAGE} per message)",
            rejected.len() - kept
        );
        dead.push(letter(
            kept,
            Reason::TooLarge,
            message,
            None,
            origin.device.clone(),
        ));
    }
    dead
}
