//! MedTech / iomt-fhir compatible device mapping templates and FHIR destination mappings.
//!
//! A user's existing pair of mapping files works unchanged:
//! - device mapping (`CollectionContent` of `JsonPathContent`, `CalculatedContent`,
//!   `IotJsonPathContent`, `IotCentralJsonPathContent`) turns a device message into
//!   [`Measurement`]s, exactly as MedTech's normaliser does (its unit tests are our golden
//!   vectors);
//! - the FHIR destination mapping (`CollectionFhir` of `CodeValueFhir`) gives each measurement
//!   type its codes and units. Where it carries a code or unit we know to be wrong for the
//!   vital (diastolic coded 8867-4, `count/min`), the reading is stored with the catalogue's
//!   code and canonical UCUM unit and a [`Note`](crate::Note) says so.
//!
//! Without a FHIR mapping, value names (`hr`, `systolic`, `spo2`…) and then the type name are
//! looked up in the catalogue, with values taken in the vital's canonical unit.
//!
//! Like MedTech, a template sees the message wrapped in an Event Hubs-style envelope
//! `{"Body": …, "Properties": {}, "SystemProperties": {}}` unless it already is one, so
//! templates that read `$.Body.…` or `$.SystemProperties.…` keep working.

pub mod expr;

use serde_json::{Map, Value};

use crate::catalogue::{self, Vital};
use crate::formats::reading;
use crate::normalise::{Context, Outcome, resolve_device};
use crate::reject::{Reason, Rejection, clip, describe};
use crate::time::{self, Instant};
use expr::{Expr, Language};

/// Errors loading mapping files (configuration errors, not device data).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// The file is not JSON.
    #[error("mapping is not valid JSON: {0}")]
    Json(String),
    /// A template is malformed.
    #[error("{path}: {message}")]
    Invalid {
        /// Where in the mapping (e.g. `template[1].template.typeMatchExpression`).
        path: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(path: &str, message: impl Into<String>) -> TemplateError {
    TemplateError::Invalid {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// The content template kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    /// `JsonPathContent`: expressions run on the matched token.
    JsonPath,
    /// `CalculatedContent`: expressions run on the message plus `matchedToken`.
    Calculated,
    /// `IotJsonPathContent`: IoT Hub device id and times, expressions on the matched token.
    IotHub,
    /// `IotCentralJsonPathContent`: IoT Central export schema.
    IotCentral,
}

#[derive(Debug)]
struct ValueTemplate {
    name: String,
    expr: Expr,
    required: bool,
}

#[derive(Debug)]
struct Content {
    kind: ContentKind,
    type_name: String,
    type_match: Expr,
    device_id: Option<Expr>,
    patient_id: Option<Expr>,
    timestamp: Vec<Expr>,
    values: Vec<ValueTemplate>,
}

/// One normalised measurement, MedTech's intermediate form (what `template check` prints).
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The template's `typeName`.
    pub type_name: String,
    /// Extracted device id.
    pub device_id: String,
    /// Extracted patient id, if the template has a `patientIdExpression`.
    pub patient_id: Option<String>,
    /// Occurrence time.
    pub time: Instant,
    /// `(valueName, value)` pairs, values as MedTech stringifies them.
    pub properties: Vec<(String, String)>,
}

/// A code from a FHIR mapping.
#[derive(Debug, Clone, PartialEq)]
struct MappedCode {
    code: String,
    system: Option<String>,
    display: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct MappedValue {
    value_name: String,
    value_type: String,
    unit: Option<String>,
    codes: Vec<MappedCode>,
}

#[derive(Debug, Clone, PartialEq)]
struct CodeValue {
    type_name: String,
    codes: Vec<MappedCode>,
    value: Option<MappedValue>,
    components: Vec<MappedValue>,
}

/// A loaded device mapping, optionally with its FHIR destination mapping.
#[derive(Debug)]
pub struct Templates {
    contents: Vec<Content>,
    fhir: Option<Vec<CodeValue>>,
}

fn as_obj<'v>(v: &'v Value, path: &str) -> Result<&'v Map<String, Value>, TemplateError> {
    v.as_object()
        .ok_or_else(|| invalid(path, format!("must be an object, got {}", describe(v))))
}

fn get_str<'v>(
    o: &'v Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'v str>, TemplateError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(
            &format!("{path}.{key}"),
            format!("must be a string, got {}", describe(other)),
        )),
    }
}

fn parse_lang(s: &str, path: &str) -> Result<Language, TemplateError> {
    match s.to_ascii_lowercase().as_str() {
        "jsonpath" => Ok(Language::JsonPath),
        "jmespath" => Ok(Language::JmesPath),
        other => Err(invalid(
            path,
            format!("unknown expression language {}", clip(other)),
        )),
    }
}

fn expression(v: &Value, default: Language, path: &str) -> Result<Expr, TemplateError> {
    let (src, lang) = match v {
        Value::String(s) => (s.as_str(), default),
        Value::Object(o) => {
            let src = get_str(o, "value", path)?
                .ok_or_else(|| invalid(path, "expression object needs `value`"))?;
            let lang = match get_str(o, "language", path)? {
                Some(l) => parse_lang(l, &format!("{path}.language"))?,
                None => default,
            };
            (src, lang)
        }
        other => {
            return Err(invalid(
                path,
                format!(
                    "expression must be a string or object, got {}",
                    describe(other)
                ),
            ));
        }
    };
    Expr::compile(src, lang).map_err(|m| invalid(path, m))
}

fn opt_expr(
    o: &Map<String, Value>,
    key: &str,
    default: Language,
    path: &str,
) -> Result<Option<Expr>, TemplateError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => expression(v, default, &format!("{path}.{key}")).map(Some),
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

impl Templates {
    /// Loads a device mapping (and optionally a FHIR destination mapping) from JSON text.
    pub fn load(
        device_mapping: &str,
        fhir_mapping: Option<&str>,
    ) -> Result<Templates, TemplateError> {
        let dm: Value =
            serde_json::from_str(device_mapping).map_err(|e| TemplateError::Json(e.to_string()))?;
        let mut contents = Vec::new();
        collect_content(&dm, "$", &mut contents)?;
        if contents.is_empty() {
            return Err(invalid("$", "device mapping holds no templates"));
        }
        let fhir = match fhir_mapping {
            Some(text) => {
                let fm: Value =
                    serde_json::from_str(text).map_err(|e| TemplateError::Json(e.to_string()))?;
                let mut out = Vec::new();
                collect_fhir(&fm, "$", &mut out)?;
                let mut names = std::collections::HashSet::new();
                for cv in &out {
                    if !names.insert(cv.type_name.clone()) {
                        return Err(invalid(
                            "$",
                            format!("typeName {} is mapped twice", clip(&cv.type_name)),
                        ));
                    }
                }
                Some(out)
            }
            None => None,
        };
        Ok(Templates { contents, fhir })
    }

    /// The device mapping alone turns a message into measurements (MedTech's normalise step).
    /// Failures are rejections naming the template and expression.
    pub fn measurements(
        &self,
        message: &Value,
        tz: time::ZonePolicy,
    ) -> (Vec<Measurement>, Vec<Rejection>) {
        let envelope = envelope(message);
        let mut out = Vec::new();
        let mut errs = Vec::new();
        let mut matched_any = false;
        for c in &self.contents {
            let matches = match c.type_match.select(&envelope) {
                Ok(m) => m,
                Err(e) => {
                    errs.push(Rejection::new(
                        Reason::TemplateExtractionFailed,
                        format!("template {}: {e}", clip(&c.type_name)),
                    ));
                    continue;
                }
            };
            for token in matches {
                matched_any = true;
                match c.extract(&envelope, token, tz) {
                    Ok(m) => out.push(m),
                    Err(e) => errs.push(e),
                }
            }
        }
        if !matched_any && errs.is_empty() {
            let names: Vec<String> = self.contents.iter().map(|c| clip(&c.type_name)).collect();
            errs.push(Rejection::new(
                Reason::TemplateNoMatch,
                format!(
                    "no template's typeMatchExpression matched the message (templates: {})",
                    names.join(", ")
                ),
            ));
        }
        (out, errs)
    }

    /// Normalises a message into readings (used by [`crate::normalise`]).
    pub fn normalise(
        &self,
        message: &Value,
        index: Option<usize>,
        ctx: &Context<'_>,
        out: &mut Outcome,
    ) {
        let (ms, errs) = self.measurements(message, ctx.tz);
        for e in errs {
            out.rejections.push(Rejection { index, ..e });
        }
        for m in ms {
            let dev = Some(m.device_id.clone());
            let device = match resolve_device(Some(&m.device_id), ctx, "deviceIdExpression") {
                Ok(d) => d,
                Err(e) => {
                    out.rejections.push(Rejection { index, ..e });
                    continue;
                }
            };
            let m = Measurement {
                device_id: device,
                ..m
            };
            if let Err(e) = self.to_readings(&m, index, out) {
                out.rejections.push(Rejection {
                    index,
                    device_id: dev,
                    ..e
                });
            }
        }
    }

    fn to_readings(
        &self,
        m: &Measurement,
        index: Option<usize>,
        out: &mut Outcome,
    ) -> Result<(), Rejection> {
        let prop = |name: &str| {
            m.properties
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let mut rows = Vec::new();
        match &self.fhir {
            Some(maps) => {
                let cv = maps
                    .iter()
                    .find(|c| c.type_name == m.type_name)
                    .ok_or_else(|| {
                        Rejection::new(
                            Reason::UnknownVital,
                            format!(
                                "typeName {} has no CodeValueFhir in the FHIR mapping",
                                clip(&m.type_name)
                            ),
                        )
                    })?;
                let mut values: Vec<(&MappedValue, &[MappedCode])> = Vec::new();
                if let Some(v) = &cv.value {
                    values.push((v, &cv.codes));
                }
                for comp in &cv.components {
                    values.push((comp, &comp.codes));
                }
                if values.is_empty() {
                    return Err(Rejection::new(
                        Reason::UnknownVital,
                        format!(
                            "CodeValueFhir for {} has neither value nor components",
                            clip(&m.type_name)
                        ),
                    ));
                }
                for (mv, codes) in values {
                    let Some(raw) = prop(&mv.value_name) else {
                        continue;
                    };
                    if !matches!(mv.value_type.as_str(), "Quantity" | "SampledData") {
                        return Err(Rejection::new(
                            Reason::UnknownVital,
                            format!(
                                "value {} of {} has valueType {}; only Quantity and SampledData are stored as vitals",
                                clip(&mv.value_name),
                                clip(&m.type_name),
                                clip(&mv.value_type)
                            ),
                        ));
                    }
                    let vital = resolve_vital(m, &mv.value_name, codes, out, index)?;
                    let unit = mv.unit.as_deref().filter(|u| !u.trim().is_empty());
                    if let Some(u) = unit
                        && u != vital.unit
                        && vital
                            .conversion(u)
                            .is_some_and(|c| c == catalogue::Conversion::ID)
                    {
                        out.note(
                            index,
                            format!(
                                "unit {} for {} normalised to UCUM {}",
                                clip(u),
                                vital.code,
                                vital.unit
                            ),
                        );
                    }
                    rows.push(self.row(m, vital, raw, &mv.value_name, unit)?);
                }
            }
            None => {
                for (name, raw) in &m.properties {
                    let vital = catalogue::by_name(name)
                        .or_else(|| (m.properties.len() == 1).then(|| catalogue::by_name(&m.type_name)).flatten())
                        .ok_or_else(|| {
                            Rejection::new(
                                Reason::UnknownVital,
                                format!(
                                    "value {} of type {} is not a known vital; add a FHIR mapping with its LOINC code",
                                    clip(name),
                                    clip(&m.type_name)
                                ),
                            )
                        })?;
                    rows.push(self.row(m, vital, raw, name, None)?);
                }
            }
        }
        if rows.is_empty() {
            return Err(Rejection::new(
                Reason::TemplateExtractionFailed,
                format!("no mapped value of {} was present", clip(&m.type_name)),
            ));
        }
        out.readings.extend(rows);
        Ok(())
    }

    fn row(
        &self,
        m: &Measurement,
        vital: &'static Vital,
        raw: &str,
        name: &str,
        unit: Option<&str>,
    ) -> Result<crate::Reading, Rejection> {
        let n: f64 = raw.trim().parse().map_err(|_| {
            Rejection::new(
                Reason::WrongType,
                format!("value {} = {} is not a number", clip(name), clip(raw)),
            )
        })?;
        reading(
            vital,
            n,
            unit,
            name,
            &m.device_id,
            m.patient_id.as_deref(),
            m.time,
            None,
        )
    }
}

/// Picks the vital for a mapped value: the mapping's codes, checked against what the value's
/// name and the coding's display say. A conflict (MedTech's sample codes diastolic as 8867-4)
/// resolves to the name, with a note.
fn resolve_vital(
    m: &Measurement,
    value_name: &str,
    codes: &[MappedCode],
    out: &mut Outcome,
    index: Option<usize>,
) -> Result<&'static Vital, Rejection> {
    let by_code = codes
        .iter()
        .find_map(|c| catalogue::by_code(&c.code).map(|v| (v, c)));
    let by_name = catalogue::by_name(value_name).or_else(|| {
        codes
            .iter()
            .filter_map(|c| c.display.as_deref())
            .find_map(catalogue::by_name)
    });
    match (by_code, by_name) {
        (Some((cv, c)), Some(nv)) if cv.code != nv.code => {
            out.note(
                index,
                format!(
                    "FHIR mapping codes {} ({}) for value {} of {}, which is {}; stored as {} {}",
                    c.code,
                    cv.display,
                    clip(value_name),
                    clip(&m.type_name),
                    nv.display,
                    nv.code,
                    nv.display
                ),
            );
            Ok(nv)
        }
        (Some((v, _)), _) | (None, Some(v)) => Ok(v),
        (None, None) => {
            let shown: Vec<String> = codes.iter().map(|c| clip(&c.code)).collect();
            Err(Rejection::new(
                Reason::UnknownVital,
                format!(
                    "codes [{}] for value {} name no known vital",
                    shown.join(", "),
                    clip(value_name)
                ),
            ))
        }
    }
}

/// Wraps a message in MedTech's envelope unless it already is one.
pub fn envelope(message: &Value) -> Value {
    match message {
        Value::Object(o)
            if o.contains_key("Body")
                && (o.contains_key("Properties") || o.contains_key("SystemProperties")) =>
        {
            message.clone()
        }
        other => serde_json::json!({"Body": other, "Properties": {}, "SystemProperties": {}}),
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b {
            "True".to_owned()
        } else {
            "False".to_owned()
        }),
        _ => None,
    }
}

impl Content {
    fn extract(
        &self,
        envelope: &Value,
        token: Value,
        tz: time::ZonePolicy,
    ) -> Result<Measurement, Rejection> {
        let scope = match self.kind {
            ContentKind::Calculated => {
                let mut o = envelope.as_object().cloned().unwrap_or_default();
                o.insert("matchedToken".to_owned(), token);
                Value::Object(o)
            }
            _ => token,
        };
        let fail = |what: &str, e: &Expr, detail: String| {
            Rejection::new(
                Reason::TemplateExtractionFailed,
                format!(
                    "template {}: {what} {} {detail}",
                    clip(&self.type_name),
                    clip(e.source())
                ),
            )
        };
        let eval = |what: &str, e: &Expr| -> Result<Option<String>, Rejection> {
            match e.first(&scope) {
                Ok(None) => Ok(None),
                Ok(Some(v)) => scalar_string(&v).map(Some).ok_or_else(|| {
                    fail(
                        what,
                        e,
                        format!("selected {}, not a string or number", describe(&v)),
                    )
                }),
                Err(msg) => Err(fail(what, e, msg)),
            }
        };
        let device_id = match &self.device_id {
            Some(e) => eval("deviceIdExpression", e)?
                .ok_or_else(|| fail("deviceIdExpression", e, "found nothing".to_owned()))?,
            None => {
                return Err(Rejection::new(
                    Reason::TemplateExtractionFailed,
                    format!(
                        "template {} has no deviceIdExpression",
                        clip(&self.type_name)
                    ),
                ));
            }
        };
        let patient_id = match &self.patient_id {
            Some(e) => eval("patientIdExpression", e)?,
            None => None,
        };
        let mut when = None;
        for e in &self.timestamp {
            if let Some(t) = eval("timestampExpression", e)? {
                let t = time::parse_str(&t, "timestampExpression", tz).map_err(|r| Rejection {
                    message: format!("template {}: {}", clip(&self.type_name), r.message),
                    ..r
                })?;
                when = Some(t);
                break;
            }
        }
        let time = match (when, self.timestamp.first()) {
            (Some(t), _) => t,
            (None, Some(e)) => {
                return Err(fail("timestampExpression", e, "found nothing".to_owned()));
            }
            (None, None) => {
                return Err(Rejection::new(
                    Reason::TemplateExtractionFailed,
                    format!(
                        "template {} has no timestampExpression",
                        clip(&self.type_name)
                    ),
                ));
            }
        };
        let mut properties = Vec::with_capacity(self.values.len());
        for v in &self.values {
            match eval("valueExpression", &v.expr)? {
                Some(s) => properties.push((v.name.clone(), s)),
                None if v.required => {
                    return Err(fail(
                        &format!("required value {} (valueExpression", clip(&v.name)),
                        &v.expr,
                        "found nothing)".to_owned(),
                    ));
                }
                None => {}
            }
        }
        Ok(Measurement {
            type_name: self.type_name.clone(),
            device_id,
            patient_id,
            time,
            properties,
        })
    }
}

/// A `{templateType, template}` node: its type, its inner template and the inner's path.
fn template_header<'v>(
    v: &'v Value,
    path: &str,
) -> Result<(&'v str, &'v Value, String), TemplateError> {
    let o = as_obj(v, path)?;
    let ty =
        get_str(o, "templateType", path)?.ok_or_else(|| invalid(path, "missing templateType"))?;
    let inner = o
        .get("template")
        .ok_or_else(|| invalid(path, "missing template"))?;
    Ok((ty, inner, format!("{path}.template")))
}

fn collect_content(v: &Value, path: &str, out: &mut Vec<Content>) -> Result<(), TemplateError> {
    let (ty, inner, ipath) = template_header(v, path)?;
    let kind = match ty {
        "CollectionContent" => {
            let items = inner
                .as_array()
                .ok_or_else(|| invalid(&ipath, "CollectionContent.template must be an array"))?;
            for (i, t) in items.iter().enumerate() {
                collect_content(t, &format!("{ipath}[{i}]"), out)?;
            }
            return Ok(());
        }
        "JsonPathContent" => ContentKind::JsonPath,
        "CalculatedContent" => ContentKind::Calculated,
        "IotJsonPathContent" => ContentKind::IotHub,
        "IotCentralJsonPathContent" => ContentKind::IotCentral,
        other => {
            return Err(invalid(
                &format!("{path}.templateType"),
                format!("unknown templateType {}", clip(other)),
            ));
        }
    };
    let t = as_obj(inner, &ipath)?;
    let default = match get_str(t, "defaultExpressionLanguage", &ipath)? {
        Some(l) => parse_lang(l, &format!("{ipath}.defaultExpressionLanguage"))?,
        None => Language::JsonPath,
    };
    // JMESPath is only a CalculatedContent feature in MedTech; elsewhere plain strings are JSONPath.
    let default = if kind == ContentKind::Calculated {
        default
    } else {
        Language::JsonPath
    };
    let type_name = get_str(t, "typeName", &ipath)?
        .ok_or_else(|| invalid(&ipath, "missing typeName"))?
        .to_owned();
    let type_match = opt_expr(t, "typeMatchExpression", default, &ipath)?
        .ok_or_else(|| invalid(&ipath, "missing typeMatchExpression"))?;
    let j = |s: &str| Expr::compile(s, Language::JsonPath).map_err(|m| invalid(&ipath, m));
    let (device_id, timestamp) = match kind {
        ContentKind::IotHub => (
            Some(j("$.SystemProperties.iothub-connection-device-id")?),
            vec![
                j("$.Properties.iothub-creation-time-utc")?,
                j("$.SystemProperties.iothub-enqueuedtime")?,
            ],
        ),
        ContentKind::IotCentral => (Some(j("$.deviceId")?), vec![j("$.enqueuedTime")?]),
        _ => (
            opt_expr(t, "deviceIdExpression", default, &ipath)?,
            opt_expr(t, "timestampExpression", default, &ipath)?
                .into_iter()
                .collect(),
        ),
    };
    if device_id.is_none() {
        return Err(invalid(&ipath, "missing deviceIdExpression"));
    }
    if timestamp.is_empty() {
        return Err(invalid(&ipath, "missing timestampExpression"));
    }
    let patient_id = opt_expr(t, "patientIdExpression", default, &ipath)?;
    let mut values = Vec::new();
    if let Some(vs) = t.get("values") {
        let arr = vs
            .as_array()
            .ok_or_else(|| invalid(&format!("{ipath}.values"), "must be an array"))?;
        for (i, v) in arr.iter().enumerate() {
            let vp = format!("{ipath}.values[{i}]");
            let vo = as_obj(v, &vp)?;
            let name = get_str(vo, "valueName", &vp)?
                .ok_or_else(|| invalid(&vp, "missing valueName"))?
                .to_owned();
            let expr = opt_expr(vo, "valueExpression", default, &vp)?
                .ok_or_else(|| invalid(&vp, "missing valueExpression"))?;
            values.push(ValueTemplate {
                name,
                expr,
                required: truthy(vo.get("required")),
            });
        }
    }
    out.push(Content {
        kind,
        type_name,
        type_match,
        device_id,
        patient_id,
        timestamp,
        values,
    });
    Ok(())
}

fn mapped_codes(o: &Map<String, Value>, path: &str) -> Result<Vec<MappedCode>, TemplateError> {
    let mut out = Vec::new();
    if let Some(cs) = o.get("codes") {
        let arr = cs
            .as_array()
            .ok_or_else(|| invalid(&format!("{path}.codes"), "must be an array"))?;
        for (i, c) in arr.iter().enumerate() {
            let cp = format!("{path}.codes[{i}]");
            let co = as_obj(c, &cp)?;
            out.push(MappedCode {
                code: get_str(co, "code", &cp)?
                    .ok_or_else(|| invalid(&cp, "missing code"))?
                    .to_owned(),
                system: get_str(co, "system", &cp)?.map(str::to_owned),
                display: get_str(co, "display", &cp)?.map(str::to_owned),
            });
        }
    }
    Ok(out)
}

fn mapped_value(
    v: &Value,
    codes: Vec<MappedCode>,
    path: &str,
) -> Result<MappedValue, TemplateError> {
    let o = as_obj(v, path)?;
    Ok(MappedValue {
        value_name: get_str(o, "valueName", path)?
            .ok_or_else(|| invalid(path, "missing valueName"))?
            .to_owned(),
        value_type: get_str(o, "valueType", path)?
            .ok_or_else(|| invalid(path, "missing valueType"))?
            .to_owned(),
        unit: get_str(o, "code", path)?
            .or(get_str(o, "unit", path)?)
            .map(str::to_owned),
        codes,
    })
}

fn collect_fhir(v: &Value, path: &str, out: &mut Vec<CodeValue>) -> Result<(), TemplateError> {
    let (ty, inner, ipath) = template_header(v, path)?;
    match ty {
        "CollectionFhir" | "CollectionFhirTemplate" => {
            let items = inner
                .as_array()
                .ok_or_else(|| invalid(&ipath, "CollectionFhir.template must be an array"))?;
            for (i, t) in items.iter().enumerate() {
                collect_fhir(t, &format!("{ipath}[{i}]"), out)?;
            }
            Ok(())
        }
        "CodeValueFhir" => {
            let t = as_obj(inner, &ipath)?;
            let type_name = get_str(t, "typeName", &ipath)?
                .ok_or_else(|| invalid(&ipath, "missing typeName"))?
                .to_owned();
            let codes = mapped_codes(t, &ipath)?;
            let value = match t.get("value") {
                Some(v) => Some(mapped_value(v, Vec::new(), &format!("{ipath}.value"))?),
                None => None,
            };
            let mut components = Vec::new();
            if let Some(cs) = t.get("components") {
                let arr = cs
                    .as_array()
                    .ok_or_else(|| invalid(&format!("{ipath}.components"), "must be an array"))?;
                for (i, c) in arr.iter().enumerate() {
                    let cp = format!("{ipath}.components[{i}]");
                    let co = as_obj(c, &cp)?;
                    let codes = mapped_codes(co, &cp)?;
                    let v = co
                        .get("value")
                        .ok_or_else(|| invalid(&cp, "missing value"))?;
                    components.push(mapped_value(v, codes, &format!("{cp}.value"))?);
                }
            }
            out.push(CodeValue {
                type_name,
                codes,
                value,
                components,
            });
            Ok(())
        }
        other => Err(invalid(
            &format!("{path}.templateType"),
            format!("unknown templateType {}", clip(other)),
        )),
    }
}
