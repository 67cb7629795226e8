//! Template expressions: JSONPath (Newtonsoft dialect, as MedTech writes it) and JMESPath
//! (with MedTech's arithmetic, time and string functions).
//!
//! JSONPath is evaluated by `serde_json_path` (RFC 9535). MedTech's templates are written for
//! Json.NET, whose dialect differs in three ways we translate, and test:
//! - filters name members without a dot: `[?(@heartRate)]` is RFC `[?(@.heartRate)]`;
//! - member names may hold characters RFC shorthand forbids: `$.Properties.iothub-creation-time-utc`
//!   becomes `$.Properties['iothub-creation-time-utc']`;
//! - `$..[?(…)]` tests the root itself too (Json.NET scans `DescendantsAndSelf`), so such an
//!   expression is evaluated against `[root]`.

use std::sync::LazyLock;

use jmespath::functions::{ArgumentType, CustomFunction, Signature};
use jmespath::{
    Context as JmesContext, ErrorReason, JmespathError, Rcvar, Runtime, RuntimeError, Variable,
};
use serde_json::Value;

/// The JMESPath runtime with the built-in and MedTech functions.
static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let mut rt = Runtime::new();
    rt.register_builtin_functions();
    let num2 = || Signature::new(vec![ArgumentType::Number, ArgumentType::Number], None);
    let arith = |name: &'static str, f: fn(f64, f64) -> Option<f64>| {
        CustomFunction::new(
            num2(),
            Box::new(move |args: &[Rcvar], ctx: &mut JmesContext<'_>| {
                let a = args[0].as_number().unwrap_or(f64::NAN);
                let b = args[1].as_number().unwrap_or(f64::NAN);
                match f(a, b).filter(|r| r.is_finite()) {
                    Some(r) => Ok(number(r)),
                    None => Err(runtime_error(
                        ctx,
                        format!("{name}({a}, {b}) has no finite result"),
                    )),
                }
            }),
        )
    };
    rt.register_function("add", Box::new(arith("add", |a, b| Some(a + b))));
    rt.register_function("subtract", Box::new(arith("subtract", |a, b| Some(a - b))));
    rt.register_function("multiply", Box::new(arith("multiply", |a, b| Some(a * b))));
    rt.register_function(
        "divide",
        Box::new(arith("divide", |a, b| (b != 0.0).then(|| a / b))),
    );
    rt.register_function("pow", Box::new(arith("pow", |a, b| Some(a.powf(b)))));
    let from_unix = |scale: f64| {
        CustomFunction::new(
            Signature::new(vec![ArgumentType::Number], None),
            Box::new(move |args: &[Rcvar], ctx: &mut JmesContext<'_>| {
                let v = args[0].as_number().unwrap_or(f64::NAN);
                let us = (v * scale).round();
                match chrono::DateTime::from_timestamp_micros(us as i64).filter(|_| us.is_finite())
                {
                    Some(t) => Ok(std::sync::Arc::new(Variable::String(
                        t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    ))),
                    None => Err(runtime_error(ctx, format!("{v} is not a valid unix time"))),
                }
            }),
        )
    };
    rt.register_function("fromUnixTimestamp", Box::new(from_unix(1e6)));
    rt.register_function("fromUnixTimestampMs", Box::new(from_unix(1e3)));
    rt.register_function(
        "insertString",
        Box::new(CustomFunction::new(
            Signature::new(
                vec![
                    ArgumentType::String,
                    ArgumentType::String,
                    ArgumentType::Number,
                ],
                None,
            ),
            Box::new(|args: &[Rcvar], ctx: &mut JmesContext<'_>| {
                let s = args[0].as_string().cloned().unwrap_or_default();
                let ins = args[1].as_string().cloned().unwrap_or_default();
                let pos = args[2].as_number().unwrap_or(-1.0);
                let chars: Vec<char> = s.chars().collect();
                if pos < 0.0 || pos.fract() != 0.0 || pos as usize > chars.len() {
                    return Err(runtime_error(
                        ctx,
                        format!("insertString position {pos} is outside the string"),
                    ));
                }
                let (a, b) = chars.split_at(pos as usize);
                let out: String = a
                    .iter()
                    .chain(ins.chars().collect::<Vec<_>>().iter())
                    .chain(b)
                    .collect();
                Ok(std::sync::Arc::new(Variable::String(out)))
            }),
        )),
    );
    rt
});

fn number(v: f64) -> Rcvar {
    let n = serde_json::Number::from_f64(v).unwrap_or_else(|| serde_json::Number::from(0));
    std::sync::Arc::new(Variable::Number(n))
}

fn runtime_error(ctx: &JmesContext<'_>, msg: String) -> JmespathError {
    JmespathError::from_ctx(
        ctx,
        ErrorReason::Runtime(RuntimeError::InvalidType {
            expected: msg,
            actual: String::new(),
            position: 0,
        }),
    )
}

/// The language of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// JSONPath (default).
    JsonPath,
    /// JMESPath.
    JmesPath,
}

/// A compiled expression with its source text.
pub struct Expr {
    source: String,
    kind: Kind,
}

enum Kind {
    JsonPath {
        path: serde_json_path::JsonPath,
        on_wrapped_root: bool,
    },
    JmesPath(jmespath::Expression<'static>),
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl Expr {
    /// Compiles an expression; the error says what is wrong with it.
    pub fn compile(source: &str, lang: Language) -> Result<Expr, String> {
        let kind = match lang {
            Language::JsonPath => {
                let trimmed = source.trim();
                let on_wrapped_root = trimmed.starts_with("$..");
                let translated = translate_jsonpath(trimmed);
                let path = serde_json_path::JsonPath::parse(&translated)
                    .map_err(|e| format!("invalid JSONPath {source:?}: {e}"))?;
                Kind::JsonPath {
                    path,
                    on_wrapped_root,
                }
            }
            Language::JmesPath => Kind::JmesPath(
                RUNTIME
                    .compile(source)
                    .map_err(|e| format!("invalid JMESPath {source:?}: {e}"))?,
            ),
        };
        Ok(Expr {
            source: source.to_owned(),
            kind,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// All matches (JMESPath: the elements of an array result, or the one non-null result).
    pub fn select(&self, root: &Value) -> Result<Vec<Value>, String> {
        match &self.kind {
            Kind::JsonPath {
                path,
                on_wrapped_root: true,
            } => {
                let wrapped = Value::Array(vec![root.clone()]);
                Ok(path.query(&wrapped).all().into_iter().cloned().collect())
            }
            Kind::JsonPath {
                path,
                on_wrapped_root: false,
            } => Ok(path.query(root).all().into_iter().cloned().collect()),
            Kind::JmesPath(e) => {
                let r = e
                    .search(root)
                    .map_err(|err| format!("JMESPath {:?} failed: {err}", self.source))?;
                let v = serde_json::to_value(&*r).map_err(|err| err.to_string())?;
                Ok(match v {
                    Value::Null => vec![],
                    Value::Array(a) => a,
                    other => vec![other],
                })
            }
        }
    }

    /// The first match, if any (JMESPath: the result unless null).
    pub fn first(&self, root: &Value) -> Result<Option<Value>, String> {
        match &self.kind {
            Kind::JmesPath(e) => {
                let r = e
                    .search(root)
                    .map_err(|err| format!("JMESPath {:?} failed: {err}", self.source))?;
                let v = serde_json::to_value(&*r).map_err(|err| err.to_string())?;
                Ok((!v.is_null()).then_some(v))
            }
            Kind::JsonPath { .. } => Ok(self.select(root)?.into_iter().next()),
        }
    }
}

/// Translates a Json.NET-dialect JSONPath into RFC 9535.
pub fn translate_jsonpath(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len() + 8);
    let mut i = 0;
    let is_name =
        |c: char| c.is_alphanumeric() || c == '_' || c == '-' || c == '$' || (c as u32) > 0x7f;
    let rfc_shorthand_ok = |s: &str| {
        let mut cs = s.chars();
        cs.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (c as u32) > 0x7f)
            && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || (c as u32) > 0x7f)
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' => {
                // Copy a quoted string verbatim.
                out.push(c);
                i += 1;
                while i < chars.len() {
                    out.push(chars[i]);
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        out.push(chars[i + 1]);
                        i += 2;
                        continue;
                    }
                    if chars[i] == c {
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            '@' => {
                out.push('@');
                i += 1;
                if i < chars.len() && is_name(chars[i]) {
                    // `@name` -> `@.name` (handled as a member below).
                    emit_member(&chars, &mut i, &mut out, &is_name, &rfc_shorthand_ok);
                }
            }
            '.' if i + 1 < chars.len() && is_name(chars[i + 1]) => {
                i += 1;
                emit_member(&chars, &mut i, &mut out, &is_name, &rfc_shorthand_ok);
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn emit_member(
    chars: &[char],
    i: &mut usize,
    out: &mut String,
    is_name: &dyn Fn(char) -> bool,
    ok: &dyn Fn(&str) -> bool,
) {
    let start = *i;
    while *i < chars.len() && is_name(chars[*i]) {
        *i += 1;
    }
    let name: String = chars[start..*i].iter().collect();
    if ok(&name) {
        out.push('.');
        out.push_str(&name);
    } else {
        out.push_str("['");
        out.push_str(&name.replace('\\', "\\\\").replace('\'', "\\'"));
        out.push_str("']");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn translates_jsonnet_dialect() {
        assert_eq!(
            translate_jsonpath("$..[?(@heartRate)]"),
            "$..[?(@.heartRate)]"
        );
        assert_eq!(
            translate_jsonpath("$..[?(@systolic && @diastolic)]"),
            "$..[?(@.systolic && @.diastolic)]"
        );
        assert_eq!(
            translate_jsonpath("$..[?(@unit == 'inches')]"),
            "$..[?(@.unit == 'inches')]"
        );
        assert_eq!(
            translate_jsonpath("$..[?(@.deviceType == 'a.b')]"),
            "$..[?(@.deviceType == 'a.b')]"
        );
        assert_eq!(
            translate_jsonpath("$.Properties.iothub-creation-time-utc"),
            "$.Properties['iothub-creation-time-utc']"
        );
        assert_eq!(
            translate_jsonpath("$.telemetry.BloodPressure.Diastolic"),
            "$.telemetry.BloodPressure.Diastolic"
        );
        assert_eq!(translate_jsonpath("$.a.1x"), "$.a['1x']");
    }

    #[test]
    fn scan_filter_tests_root_like_jsonnet() {
        let e = Expr::compile("$..[?(@Body.heartrate)]", Language::JsonPath).expect("compile");
        let root = json!({"Body": {"heartrate": "203"}, "Properties": {}});
        assert_eq!(e.select(&root).expect("select"), vec![root.clone()]);
        let e = Expr::compile("$.Body.heartrate", Language::JsonPath).expect("compile");
        assert_eq!(e.first(&root).expect("first"), Some(json!("203")));
    }

    #[test]
    fn jmespath_functions() {
        let root = json!({"m": {"h": "78", "t": 1_600_000_000, "s": "abcd"}});
        let e = Expr::compile("multiply(to_number(m.h), `0.0254`)", Language::JmesPath).expect("c");
        let v = e.first(&root).expect("ok").expect("some");
        assert!((v.as_f64().unwrap_or(0.0) - 1.9812).abs() < 1e-9);
        let e = Expr::compile("fromUnixTimestamp(m.t)", Language::JmesPath).expect("c");
        assert_eq!(
            e.first(&root).expect("ok"),
            Some(json!("2020-09-13T12:26:40Z"))
        );
        let e = Expr::compile("insertString(m.s, '-', `2`)", Language::JmesPath).expect("c");
        assert_eq!(e.first(&root).expect("ok"), Some(json!("ab-cd")));
        let e = Expr::compile("divide(`1`, `0`)", Language::JmesPath).expect("c");
        assert!(e.first(&root).is_err());
        assert!(Expr::compile("multiply(", Language::JmesPath).is_err());
        assert!(Expr::compile("$.a[", Language::JsonPath).is_err());
    }
}
