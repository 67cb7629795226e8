//! The normalised reading: one row of the `observations` table.

use sha2::{Digest, Sha256};

use crate::catalogue::Vital;

/// The transport a reading arrived by (`observations.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// HTTP `POST /v1/readings` or `/fhir`.
    Http,
    /// MQTT publish.
    Mqtt,
    /// `carewatch replay` backfill.
    Replay,
    /// `carewatch template check` or other local tools.
    Cli,
    /// The FHIR destination (a dead letter of a delivery the server refused).
    Destination,
}

impl Source {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Mqtt => "mqtt",
            Source::Replay => "replay",
            Source::Cli => "cli",
            Source::Destination => "fhir-destination",
        }
    }
}

/// One measured quantity, coded and in its canonical unit.
///
/// The natural key is (device, code, effective time); the FHIR Observation id is derived from
/// (device, panel-or-code, effective time) by [`observation_id`], so both blood-pressure rows
/// share one Observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The device that measured it.
    pub device_id: String,
    /// The patient, when the payload names one. The edge fills it from the registry
    /// (device assignment at `effective_us`) before the row is stored.
    pub patient_id: Option<String>,
    /// The catalogue entry (LOINC code, canonical unit, category).
    pub vital: &'static Vital,
    /// The value in `vital.unit`.
    pub value: f64,
    /// Effective time, microseconds since the epoch, UTC.
    pub effective_us: i64,
    /// End of the effective period, when the reading covers an interval (steps).
    pub effective_end_us: Option<i64>,
    /// The sender's UTC offset in minutes, when it sent one.
    pub offset_min: Option<i16>,
    /// FHIR-native input: elements with no column of their own, as compact JSON.
    pub extra: Option<String>,
}

impl Reading {
    /// The LOINC code stored in `observations.code`.
    pub fn code(&self) -> &'static str {
        self.vital.code
    }
    /// The canonical UCUM unit.
    pub fn unit(&self) -> &'static str {
        self.vital.unit
    }
    /// The panel code, for blood-pressure components.
    pub fn panel(&self) -> Option<&'static str> {
        self.vital.panel
    }
    /// The FHIR Observation id of this reading.
    pub fn observation_id(&self) -> String {
        observation_id(
            &self.device_id,
            self.panel().unwrap_or(self.code()),
            self.effective_us,
        )
    }
}

/// The deterministic Observation id for (device, code, effective time): 32 lowercase hex
/// digits of SHA-256 over `device \n code \n micros`. Never stored per row; derived on read.
pub fn observation_id(device_id: &str, code: &str, effective_us: i64) -> String {
    let mut h = Sha256::new();
    h.update(device_id.as_bytes());
    h.update(b"\n");
    h.update(code.as_bytes());
    h.update(b"\n");
    h.update(effective_us.to_string().as_bytes());
    let digest = h.finalize();
    let mut s = String::with_capacity(32);
    for b in &digest[..16] {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_id_is_stable_and_distinct() {
        let a = observation_id("dev-1", "8867-4", 1_700_000_000_000_000);
        assert_eq!(a, observation_id("dev-1", "8867-4", 1_700_000_000_000_000));
        assert_eq!(a.len(), 32);
        // Pinned: changing this breaks every stored id.
        assert_eq!(a, "5c7a9d221f25b9d4770511fcdcc670fb");
        assert_ne!(a, observation_id("dev-1", "8867-4", 1_700_000_000_000_001));
        assert_ne!(a, observation_id("dev-2", "8867-4", 1_700_000_000_000_000));
        assert_ne!(a, observation_id("dev-1", "2708-6", 1_700_000_000_000_000));
    }
}
