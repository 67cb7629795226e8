//! Rejections: bad device data is a value, not an error.
//!
//! Every rejection has a stable machine-readable [`Reason`] (stored in `dead_letters.reason`,
//! returned by the HTTP API, counted in metrics) and a human message naming the field and the
//! offending value.

use std::fmt;

/// Why an item was rejected. The `code()` strings are a persisted contract: add, never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The bytes are not valid UTF-8.
    InvalidUtf8,
    /// The bytes are not valid JSON.
    InvalidJson,
    /// JSON nesting deeper than we accept.
    TooDeep,
    /// The payload is larger than we accept.
    TooLarge,
    /// A required field is missing.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// The measurement type is not in the vitals catalogue.
    UnknownVital,
    /// The unit is not one the catalogue converts for this vital.
    UnitNotConvertible,
    /// The value lies outside the vital's plausible range.
    OutOfRange,
    /// The time could not be parsed.
    UnparseableTime,
    /// The time has no offset and no zone policy says how to read it.
    ZonelessTime,
    /// The payload's shape matches no known format.
    UnknownFormat,
    /// A FHIR resource of a type we do not ingest (only Observation and Bundle).
    UnsupportedResource,
    /// A FHIR resource that is structurally invalid for ingest.
    InvalidFhir,
    /// No device mapping template matched the payload.
    TemplateNoMatch,
    /// A template matched but a required value could not be extracted.
    TemplateExtractionFailed,
    /// The payload's device id disagrees with the transport's (topic or credential).
    DeviceMismatch,
    /// The reading carries no value (e.g. FHIR dataAbsentReason): nothing to store.
    NoValue,
    /// The device is not registered (decided at the edge, not here).
    UnknownDevice,
    /// The device was revoked (decided at the edge, not here).
    RevokedDevice,
    /// The device is registered but assigned to no patient at the reading's time.
    UnassignedDevice,
    /// The payload names another patient than the device's assignment.
    PatientMismatch,
    /// Published to a topic other than `devices/{device_id}/readings`.
    WrongTopic,
    /// The credential may not write readings (wrong role or bad secret).
    Unauthorized,
    /// The reading is dated further after its arrival than `--max-future-skew` allows.
    FutureTime,
    /// A stored reading's Observation was refused by the FHIR destination (the dead letter
    /// holds the server's OperationOutcome); decided by the delivery, not at ingest.
    DestinationRejected,
}

impl Reason {
    /// All reasons, for metrics pre-registration and docs.
    pub const ALL: [Reason; 26] = [
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::TooDeep,
        Reason::TooLarge,
        Reason::MissingField,
        Reason::WrongType,
        Reason::UnknownVital,
        Reason::UnitNotConvertible,
        Reason::OutOfRange,
        Reason::UnparseableTime,
        Reason::ZonelessTime,
        Reason::UnknownFormat,
        Reason::UnsupportedResource,
        Reason::InvalidFhir,
        Reason::TemplateNoMatch,
        Reason::TemplateExtractionFailed,
        Reason::DeviceMismatch,
        Reason::NoValue,
        Reason::UnknownDevice,
        Reason::RevokedDevice,
        Reason::UnassignedDevice,
        Reason::PatientMismatch,
        Reason::WrongTopic,
        Reason::Unauthorized,
        Reason::FutureTime,
        Reason::DestinationRejected,
    ];

    /// The stable code stored and returned for this reason.
    pub fn code(self) -> &'static str {
        match self {
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::TooDeep => "too_deep",
            Reason::TooLarge => "too_large",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::UnknownVital => "unknown_vital",
            Reason::UnitNotConvertible => "unit_not_convertible",
            Reason::OutOfRange => "out_of_range",
            Reason::UnparseableTime => "unparseable_time",
            Reason::ZonelessTime => "zoneless_time",
            Reason::UnknownFormat => "unknown_format",
            Reason::UnsupportedResource => "unsupported_resource",
            Reason::InvalidFhir => "invalid_fhir",
            Reason::TemplateNoMatch => "template_no_match",
            Reason::TemplateExtractionFailed => "template_extraction_failed",
            Reason::DeviceMismatch => "device_mismatch",
            Reason::NoValue => "no_value",
            Reason::UnknownDevice => "unknown_device",
            Reason::RevokedDevice => "revoked_device",
            Reason::UnassignedDevice => "unassigned_device",
            Reason::PatientMismatch => "patient_mismatch",
            Reason::WrongTopic => "wrong_topic",
            Reason::Unauthorized => "unauthorized",
            Reason::FutureTime => "future_time",
            Reason::DestinationRejected => "destination_rejected",
        }
    }

    /// Parses a stable code back into a reason.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One rejected item: why, in words, and where in the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The stable reason.
    pub reason: Reason,
    /// A human message that names the field and the offending value.
    pub message: String,
    /// Index of the item within a batch payload (array element or NDJSON line), if any.
    pub index: Option<usize>,
    /// The device id, when the payload told us one before failing.
    pub device_id: Option<String>,
}

impl Rejection {
    /// A rejection with a reason and message.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
            index: None,
            device_id: None,
        }
    }

    /// Missing field `field`.
    pub fn missing(field: &str) -> Self {
        Rejection::new(Reason::MissingField, format!("missing field `{field}`"))
    }

    /// Field `field` has the wrong type.
    pub fn wrong_type(field: &str, expected: &str, got: &serde_json::Value) -> Self {
        Rejection::new(
            Reason::WrongType,
            format!("field `{field}` must be {expected}, got {}", describe(got)),
        )
    }

    /// Sets the batch index.
    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    /// Sets the device id if not already known.
    pub fn with_device(mut self, device: Option<&str>) -> Self {
        if self.device_id.is_none() {
            self.device_id = device.map(str::to_owned);
        }
        self
    }

    /// Prefixes the message with a location (e.g. `entry[3]`).
    pub fn context(mut self, location: &str) -> Self {
        self.message = format!("{location}: {}", self.message);
        self
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// A short description of a JSON value for messages: its type and a clipped rendering.
pub fn describe(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {}", clip(s)),
        Value::Array(a) => format!("array of {} items", a.len()),
        Value::Object(_) => "object".to_owned(),
    }
}

/// Quotes and clips a string to at most 40 characters for a message.
pub fn clip(s: &str) -> String {
    const MAX: usize = 40;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert_eq!(Reason::from_code("nope"), None);
    }

    #[test]
    fn messages_name_field_and_value() {
        let r = Rejection::wrong_type("value", "a number", &serde_json::json!("fast"));
        assert_eq!(
            r.to_string(),
            "wrong_type: field `value` must be a number, got string \"fast\""
        );
        let long = "x".repeat(100);
        assert!(clip(&long).ends_with('…'));
    }
}
