//! Pure: the Bundles sent to the destination and the reading of its answers.
//!
//! Each Observation is the one carewatch serves at `GET /fhir/Observation/{id}`
//! ([`carewatch_fhir::observation_json`], one code path), without its server-local `id` and with
//! a business identifier `{system}|{observation id}` (the hash of the natural key) in front of
//! any the sender gave. It is written with a conditional update, `PUT
//! Observation?identifier={system}|{id}`, so sending it again updates the same resource.

use serde_json::{Value, json};

use carewatch_transform::Reading;

/// The default identifier system of delivered Observations.
pub const DEFAULT_IDENTIFIER_SYSTEM: &str = "urn:carewatch:observation";

/// One resource to deliver: an Observation (a reading) or a Communication (an alert).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The identifier's value: the observation id (hash of the natural key) or the alert id.
    pub id: String,
    /// `Observation` or `Communication`.
    pub resource_type: &'static str,
    /// The device (for the dead letter, never logged; empty for a Communication).
    pub device_id: String,
    /// The resource as sent.
    pub resource: Value,
    /// The conditional-update URL ([`conditional_url`]).
    pub url: String,
}

/// The Observation of one group of rows (one reading, or both blood-pressure rows) as the
/// destination receives it. Errors name the group's problem without PHI.
pub fn entry(rows: &[&Reading], system: &str) -> Result<Entry, String> {
    let first = rows.first().ok_or("no rows")?;
    let mut o = carewatch_fhir::observation_json(rows, None).map_err(|e| match e {
        carewatch_fhir::Error::MissingPatient(_) => "reading without a patient".to_owned(),
        other => other.to_string(),
    })?;
    let id = first.observation_id();
    if let Some(obj) = o.as_object_mut() {
        obj.remove("id");
        let ours = json!({"system": system, "value": id});
        let mut idents = vec![ours];
        if let Some(Value::Array(theirs)) = obj.remove("identifier") {
            idents.extend(
                theirs
                    .into_iter()
                    .filter(|i| i.get("system") != Some(&json!(system))),
            );
        }
        // `resourceType` first, then `identifier`, as FHIR's JSON examples order them.
        let mut out = serde_json::Map::new();
        if let Some(rt) = obj.remove("resourceType") {
            out.insert("resourceType".into(), rt);
        }
        out.insert("identifier".into(), Value::Array(idents));
        out.extend(std::mem::take(obj));
        o = Value::Object(out);
    }
    Ok(Entry {
        url: conditional_url("Observation", system, &id),
        id,
        resource_type: "Observation",
        device_id: first.device_id.clone(),
        resource: o,
    })
}

/// The conditional-update URL of an entry: `{type}?identifier={system}|{id}` with the system
/// and the value percent-encoded.
pub fn conditional_url(resource_type: &str, system: &str, id: &str) -> String {
    let enc = |s: &str| -> String { url::form_urlencoded::byte_serialize(s.as_bytes()).collect() };
    format!("{resource_type}?identifier={}%7C{}", enc(system), enc(id))
}

/// The kind of Bundle sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// Every entry on its own: one refused entry does not stop the others (default).
    #[default]
    Batch,
    /// All or nothing; a refused Bundle is re-sent entry by entry to find the refused ones.
    Transaction,
}

impl Kind {
    /// The Bundle.type.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Batch => "batch",
            Kind::Transaction => "transaction",
        }
    }
    /// Parses `batch` or `transaction`.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "batch" => Some(Kind::Batch),
            "transaction" => Some(Kind::Transaction),
            _ => None,
        }
    }
}

/// The Bundle of `entries`.
pub fn bundle(entries: &[Entry], kind: Kind) -> Value {
    let items: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "fullUrl": format!("urn:uuid:{}", uuid_form(e.resource_type, &e.id)),
                "resource": e.resource,
                "request": {"method": "PUT", "url": e.url},
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": kind.as_str(), "entry": items})
}

/// An entry's id written as a UUID (8-4-4-4-12), for `fullUrl`: the 32 hex digits of an
/// observation id as they are, any other id (an alert's 16) through SHA-256 of `{type}/{id}`.
fn uuid_form(resource_type: &str, id: &str) -> String {
    use sha2::{Digest, Sha256};
    let hex: String = if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id.to_ascii_lowercase()
    } else {
        let d = Sha256::digest(format!("{resource_type}/{id}").as_bytes());
        d[..16].iter().map(|b| format!("{b:02x}")).collect()
    };
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The server's answer to one stored entry (`Bundle.entry.response`), kept as the delivery's
/// receipt.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Answer {
    /// `response.status`, e.g. `201 Created`.
    pub status: String,
    /// `response.location`, e.g. `Observation/123/_history/1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `response.etag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `response.lastModified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl Answer {
    fn of(r: &Value) -> Answer {
        let s = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .map(|v| v.chars().take(300).collect())
        };
        Answer {
            status: s("status").unwrap_or_default(),
            location: s("location"),
            etag: s("etag"),
            last_modified: s("lastModified"),
        }
    }
}

/// What became of one entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Stored (2xx), with the server's answer.
    Stored(Answer),
    /// Refused for good (a 4xx other than 408/429): a dead letter with the server's answer.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's OperationOutcome (or a made-up one naming the status).
        outcome: Value,
    },
    /// Failed for now (5xx, 408, 429, or no answer for the entry): send again later.
    Retry(u16),
}

/// Whether an HTTP status refuses for good.
pub fn refuses(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

fn status_code(s: &str) -> Option<u16> {
    s.split_whitespace().next()?.parse().ok()
}

/// An OperationOutcome for a refusal the server gave without one.
pub fn outcome_for(status: u16, text: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "processing",
        "diagnostics": format!("HTTP {status} {text}")
    }]})
}

/// Reads a batch-response (or transaction-response) Bundle: one outcome per sent entry, in
/// order. An answer that is not such a Bundle, or has fewer entries, makes the missing ones
/// `Retry(0)`.
pub fn outcomes(response: &Value, sent: usize) -> Vec<Outcome> {
    let entries = response
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    (0..sent)
        .map(|i| {
            let Some(r) = entries.get(i).and_then(|e| e.get("response")) else {
                return Outcome::Retry(0);
            };
            let Some(status) = r
                .get("status")
                .and_then(Value::as_str)
                .and_then(status_code)
            else {
                return Outcome::Retry(0);
            };
            match status {
                200..=299 => Outcome::Stored(Answer::of(r)),
                s if refuses(s) => Outcome::Refused {
                    status: s,
                    outcome: r
                        .get("outcome")
                        .filter(|o| o.get("resourceType") == Some(&json!("OperationOutcome")))
                        .cloned()
                        .unwrap_or_else(|| outcome_for(s, "refused")),
                },
                s => Outcome::Retry(s),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
