//! The single entry point every edge calls: bytes in, readings and rejections out.
//!
//! A payload is one JSON value, or NDJSON (one value per line). A top-level array is a batch:
//! each element is an item with its own index, so one bad item never sinks the others. Each
//! item's format is detected from its shape (or fixed per device by the caller):
//! FHIR (`resourceType`), Open mHealth (`header` + `body`, or a bare body with
//! `effective_time_frame`), carewatch JSON (`type`/`value`, or a multi-vital sample), and
//! otherwise the configured device mapping templates.

use serde_json::Value;

use crate::formats::{carewatch, fhir, omh};
use crate::reading::Reading;
use crate::reject::{Reason, Rejection, clip, describe};
use crate::template::Templates;
use crate::time::ZonePolicy;

/// Payload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// carewatch JSON (single reading, multi-vital sample).
    Carewatch,
    /// FHIR Observation or Bundle.
    Fhir,
    /// Open mHealth / IEEE 1752.1 data point.
    Omh,
    /// MedTech-compatible device mapping template.
    Template,
}

impl Format {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Carewatch => "carewatch",
            Format::Fhir => "fhir",
            Format::Omh => "omh",
            Format::Template => "template",
        }
    }
}

/// What the caller knows about a payload besides its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// How to read times without an offset.
    pub tz: ZonePolicy,
    /// The device id the transport vouches for (MQTT topic, device credential). When set,
    /// a payload naming another device is rejected with `device_mismatch`, and payloads
    /// without a device id are attributed to it.
    pub device: Option<&'a str>,
    /// Fixed format for this device, or `None` to detect per item.
    pub format: Option<Format>,
    /// Device mapping templates, when configured.
    pub templates: Option<&'a Templates>,
    /// Payloads larger than this are rejected whole (`too_large`).
    pub max_bytes: usize,
}

impl Default for Context<'_> {
    fn default() -> Self {
        Context {
            tz: ZonePolicy::Reject,
            device: None,
            format: None,
            templates: None,
            max_bytes: 4 << 20,
        }
    }
}

/// A remark about how an item was normalised (a corrected code or unit), for `template check`
/// and logs at debug level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Item index within the payload.
    pub index: Option<usize>,
    /// What was done.
    pub message: String,
}

/// The result of normalising one payload.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Accepted readings, in payload order.
    pub readings: Vec<Reading>,
    /// Rejected items (several per item are possible, one per failed quantity).
    pub rejections: Vec<Rejection>,
    /// Normalisation remarks.
    pub notes: Vec<Note>,
    /// Number of items the payload held.
    pub items: usize,
    /// The formats seen.
    pub formats: Vec<Format>,
}

impl Outcome {
    fn rejected(r: Rejection) -> Self {
        Outcome {
            rejections: vec![r],
            items: 1,
            ..Outcome::default()
        }
    }

    /// Records a format once.
    pub(crate) fn saw(&mut self, f: Format) {
        if !self.formats.contains(&f) {
            self.formats.push(f);
        }
    }

    /// Adds a note.
    pub(crate) fn note(&mut self, index: Option<usize>, message: String) {
        self.notes.push(Note { index, message });
    }
}

/// Normalises one payload. Never panics; every failure is a [`Rejection`] in the outcome.
pub fn normalise(bytes: &[u8], ctx: &Context<'_>) -> Outcome {
    if bytes.len() > ctx.max_bytes {
        return Outcome::rejected(Rejection::new(
            Reason::TooLarge,
            format!(
                "payload of {} bytes exceeds the limit of {} bytes",
                bytes.len(),
                ctx.max_bytes
            ),
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return Outcome::rejected(Rejection::new(
                Reason::InvalidUtf8,
                format!(
                    "payload is not UTF-8: invalid byte at offset {}",
                    e.valid_up_to()
                ),
            ));
        }
    };
    match serde_json::from_str::<Value>(text) {
        Ok(v) => normalise_value(&v, ctx),
        Err(e) if e.is_syntax() && e.line() > 1 && looks_like_ndjson(text) => {
            normalise_ndjson(text, ctx)
        }
        Err(e) => Outcome::rejected(json_error(&e)),
    }
}

fn looks_like_ndjson(text: &str) -> bool {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(2)
        .count()
        == 2
}

fn json_error(e: &serde_json::Error) -> Rejection {
    let msg = e.to_string();
    if msg.contains("recursion limit") {
        Rejection::new(
            Reason::TooDeep,
            "payload nests JSON deeper than 128 levels".to_owned(),
        )
    } else {
        Rejection::new(
            Reason::InvalidJson,
            format!(
                "payload is not valid JSON: {} at line {} column {}",
                classify(e),
                e.line(),
                e.column()
            ),
        )
    }
}

fn classify(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "invalid data",
        serde_json::error::Category::Io => "read error",
    }
}

fn normalise_ndjson(text: &str, ctx: &Context<'_>) -> Outcome {
    let mut out = Outcome::default();
    for (index, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        out.items += 1;
        match serde_json::from_str::<Value>(line) {
            Ok(v) => item(&v, index, ctx, &mut out),
            Err(e) => out.rejections.push(
                json_error(&e)
                    .context(&format!("line {}", index + 1))
                    .at(index),
            ),
        }
    }
    out
}

/// Normalises an already-parsed JSON value (top level of a payload).
pub fn normalise_value(v: &Value, ctx: &Context<'_>) -> Outcome {
    let mut out = Outcome::default();
    // Templates see the whole message, as MedTech does (an array body fans out by template).
    if ctx.format == Some(Format::Template) || (ctx.templates.is_some() && detect_top(v).is_none())
    {
        out.items = 1;
        template_item(v, None, ctx, &mut out);
        return out;
    }
    match v {
        Value::Array(items) => {
            for (index, it) in items.iter().enumerate() {
                out.items += 1;
                item(it, index, ctx, &mut out);
            }
            if items.is_empty() {
                out.rejections.push(Rejection::new(
                    Reason::MissingField,
                    "payload is an empty array",
                ));
            }
        }
        _ => {
            // A single object has no batch index (a Bundle indexes its entries itself).
            out.items = 1;
            dispatch(v, ctx, &mut out);
        }
    }
    out
}

fn detect_top(v: &Value) -> Option<Format> {
    match v {
        Value::Array(items) => {
            let first = detect(items.first()?)?;
            items.iter().all(|i| detect(i).is_some()).then_some(first)
        }
        other => detect(other),
    }
}

/// Detects the format of one item from its shape.
pub fn detect(v: &Value) -> Option<Format> {
    let o = v.as_object()?;
    if o.contains_key("resourceType") {
        Some(Format::Fhir)
    } else if (o.contains_key("header") && o.contains_key("body"))
        || o.contains_key("effective_time_frame")
    {
        Some(Format::Omh)
    } else if carewatch::looks_like(o) {
        Some(Format::Carewatch)
    } else {
        None
    }
}

fn item(v: &Value, index: usize, ctx: &Context<'_>, out: &mut Outcome) {
    let before_j = out.rejections.len();
    let before_n = out.notes.len();
    dispatch(v, ctx, out);
    for r in &mut out.rejections[before_j..] {
        r.index.get_or_insert(index);
    }
    for n in &mut out.notes[before_n..] {
        n.index.get_or_insert(index);
    }
}

fn dispatch(v: &Value, ctx: &Context<'_>, out: &mut Outcome) {
    let format = ctx.format.or_else(|| detect(v));
    match format {
        Some(Format::Carewatch) => carewatch::normalise(v, ctx, out),
        Some(Format::Fhir) => fhir::normalise(v, ctx, out),
        Some(Format::Omh) => omh::normalise(v, ctx, out),
        Some(Format::Template) => template_item(v, None, ctx, out),
        None if ctx.templates.is_some() => template_item(v, None, ctx, out),
        None => out.rejections.push(unknown_format(v)),
    }
    if let Some(f) = format {
        out.saw(f);
    }
}

fn template_item(v: &Value, index: Option<usize>, ctx: &Context<'_>, out: &mut Outcome) {
    out.saw(Format::Template);
    match ctx.templates {
        Some(t) => t.normalise(v, index, ctx, out),
        None => out.rejections.push(Rejection::new(
            Reason::TemplateNoMatch,
            "device is configured for templates but no device mapping is loaded",
        )),
    }
}

fn unknown_format(v: &Value) -> Rejection {
    let detail = match v {
        Value::Object(o) => {
            let keys: Vec<String> = o.keys().take(6).map(|k| clip(k)).collect();
            format!("object with keys [{}]", keys.join(", "))
        }
        other => describe(other),
    };
    Rejection::new(
        Reason::UnknownFormat,
        format!(
            "{detail} is not a carewatch reading (`type`+`value` or vital fields with `time`), a FHIR resource, an Open mHealth data point, and no device mapping template is configured"
        ),
    )
}

/// Checks the payload's device id against the transport's and picks the device for a reading.
pub(crate) fn resolve_device(
    payload_device: Option<&str>,
    ctx: &Context<'_>,
    field: &str,
) -> Result<String, Rejection> {
    match (payload_device, ctx.device) {
        (Some(p), Some(t)) if p != t => Err(Rejection::new(
            Reason::DeviceMismatch,
            format!(
                "field `{field}` names device {} but the message came from device {}",
                clip(p),
                clip(t)
            ),
        )
        .with_device(Some(t))),
        (Some(p), _) if p.trim().is_empty() => Err(Rejection::new(
            Reason::MissingField,
            format!("field `{field}` is empty"),
        )),
        (Some(p), _) => Ok(p.to_owned()),
        (None, Some(t)) => Ok(t.to_owned()),
        (None, None) => Err(Rejection::missing(field)),
    }
}
