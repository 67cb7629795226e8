//! The one path every reading takes from an edge to the store.

use std::sync::Arc;

use carewatch_store::registry::{Attribution, Registry};
use carewatch_store::{DeadLetter, Row, Store};
use carewatch_transform::template::Templates;
use carewatch_transform::{Context, Format, Reason, Rejection, Source, ZonePolicy, normalise};

/// Raw payloads larger than this are stored only with the first of their dead letters.
const RAW_PER_REJECTION: usize = 64 << 10;

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

/// Shared ingest state.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The store.
    pub store: Store,
    /// The registry.
    pub registry: Arc<Registry>,
    /// Device mapping templates, if configured.
    pub templates: Option<Arc<Templates>>,
    /// Zone policy for zone-less times.
    pub tz: ZonePolicy,
    /// Largest payload accepted.
    pub max_bytes: usize,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Pipeline {
    /// Normalises, attributes and durably stores one payload. Returns only when rows and dead
    /// letters are in the WAL; a store error means nothing of it was acknowledged.
    pub async fn ingest(
        &self,
        bytes: &[u8],
        origin: &Origin,
    ) -> Result<Ingested, carewatch_store::Error> {
        let received_us = now_us();
        let source = origin.source.unwrap_or(Source::Http);
        let ctx = Context {
            tz: self.tz,
            device: origin.device.as_deref(),
            format: origin.format,
            templates: self.templates.as_deref(),
            max_bytes: self.max_bytes,
        };
        let out = normalise(bytes, &ctx);
        let format = out.formats.first().copied().unwrap_or(Format::Carewatch);
        let mut rejected = out.rejections;
        let mut rows = Vec::with_capacity(out.readings.len());
        for mut r in out.readings {
            let verdict = match self.registry.attribute(&r.device_id, r.effective_us) {
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
                Attribution::Revoked => {
                    Err(Rejection::new(Reason::RevokedDevice, "device is revoked"))
                }
                Attribution::Unassigned => Err(Rejection::new(
                    Reason::UnassignedDevice,
                    "device is assigned to no patient at the reading's effective time",
                )),
            };
            match verdict {
                Ok(()) => rows.push(Row {
                    reading: r,
                    received_us,
                    source,
                    format,
                }),
                Err(e) => rejected.push(e.with_device(Some(&r.device_id))),
            }
        }
        let mut dead = Vec::with_capacity(rejected.len());
        for (i, r) in rejected.iter().enumerate() {
            let raw = if i == 0 || bytes.len() <= RAW_PER_REJECTION {
                bytes.to_vec()
            } else {
                Vec::new()
            };
            dead.push(DeadLetter {
                received_us,
                source,
                device_id: r.device_id.clone().or_else(|| origin.device.clone()),
                reason: r.reason,
                message: r.message.clone(),
                index: r.index.map(|i| i as u32),
                raw,
            });
        }
        let accepted = rows.len();
        self.store.append(rows, dead).await?;
        Ok(Ingested {
            accepted,
            rejected,
            items: out.items,
        })
    }

    /// Dead-letters a payload refused before normalisation (wrong topic, bad credential).
    pub async fn refuse(
        &self,
        bytes: &[u8],
        origin: &Origin,
        rejection: Rejection,
    ) -> Result<(), carewatch_store::Error> {
        let d = DeadLetter {
            received_us: now_us(),
            source: origin.source.unwrap_or(Source::Http),
            device_id: rejection
                .device_id
                .clone()
                .or_else(|| origin.device.clone()),
            reason: rejection.reason,
            message: rejection.message,
            index: None,
            raw: bytes.to_vec(),
        };
        self.store.append(vec![], vec![d]).await
    }
}
