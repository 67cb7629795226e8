//! DataFusion errors -> [`QueryError`] classes that carry no data values and no paths.
//!
//! DataFusion's texts can quote the data (`Cannot cast string 'alice' to value of Int32 type`)
//! or name object-store paths. Only classes reach clients and logs above debug; the raw text is
//! logged at debug.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

use crate::engine::QueryError;

/// The safe class of a DataFusion error.
pub(crate) fn classify(e: DataFusionError) -> QueryError {
    tracing::debug!(error = %e, "query error (raw)");
    let e = e.find_root();
    match e {
        // The user's own SQL text: position and token are fine to show.
        DataFusionError::SQL(p, _) => QueryError::Invalid(format!("syntax error: {p}")),
        DataFusionError::Plan(m) => QueryError::Invalid(scrub(m)),
        DataFusionError::SchemaError(s, _) => QueryError::Invalid(scrub(&s.to_string())),
        DataFusionError::NotImplemented(m) => {
            QueryError::Invalid(format!("not supported: {}", scrub(m)))
        }
        DataFusionError::ResourcesExhausted(_) => QueryError::Memory,
        DataFusionError::ArrowError(a, _) => arrow(a),
        DataFusionError::Execution(m) if m.contains("cast") || m.contains("Cast") => {
            QueryError::Invalid(cast_message(m))
        }
        DataFusionError::Execution(m) if m.contains("Divide by zero") => {
            QueryError::Invalid("division by zero".into())
        }
        other => {
            tracing::warn!(class = kind(other), "query failed");
            QueryError::Internal
        }
    }
}

fn arrow(a: &ArrowError) -> QueryError {
    match a {
        ArrowError::CastError(m) | ArrowError::ParseError(m) => {
            QueryError::Invalid(cast_message(m))
        }
        ArrowError::DivideByZero => QueryError::Invalid("division by zero".into()),
        ArrowError::ArithmeticOverflow(_) => QueryError::Invalid("arithmetic overflow".into()),
        ArrowError::MemoryError(_) => QueryError::Memory,
        other => {
            tracing::warn!(class = arrow_kind(other), "query failed");
            QueryError::Internal
        }
    }
}

/// "cannot cast a value to type X" from a cast/parse message, without the value.
fn cast_message(m: &str) -> String {
    let target = m
        .rsplit_once(" to value of ")
        .and_then(|(_, t)| t.split_whitespace().next())
        .or_else(|| {
            m.rsplit_once(" to ")
                .and_then(|(_, t)| t.split_whitespace().next())
        })
        .map(|t| t.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|t| !t.is_empty() && !t.contains('\''));
    match target {
        Some(t) => format!("cannot cast a value to type {t} (a value does not convert)"),
        None => "cannot cast a value to the requested type".into(),
    }
}

/// Replaces every single-quoted literal with `'…'` and drops anything after a backtrace.
pub(crate) fn scrub(s: &str) -> String {
    let s = s.split("\n\nbacktrace").next().unwrap_or(s);
    let mut out = String::with_capacity(s.len());
    let mut in_quote = false;
    for c in s.chars() {
        if c == '\'' {
            if in_quote {
                out.push_str("…'");
            } else {
                out.push('\'');
            }
            in_quote = !in_quote;
        } else if !in_quote {
            out.push(c);
        }
    }
    if in_quote {
        out.push_str("…'");
    }
    out
}

fn kind(e: &DataFusionError) -> &'static str {
    match e {
        DataFusionError::IoError(_) => "io",
        DataFusionError::ObjectStore(_) => "object_store",
        DataFusionError::ParquetError(_) => "parquet",
        DataFusionError::Execution(_) => "execution",
        DataFusionError::Internal(_) => "internal",
        DataFusionError::External(_) => "external",
        DataFusionError::Configuration(_) => "configuration",
        _ => "other",
    }
}

fn arrow_kind(a: &ArrowError) -> &'static str {
    match a {
        ArrowError::IoError(..) => "io",
        ArrowError::ComputeError(_) => "compute",
        _ => "arrow",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_scrubbed() {
        assert_eq!(scrub("no 'alice' here"), "no '…' here");
        assert_eq!(scrub("open 'bob"), "open '…'");
    }

    #[test]
    fn casts_lose_their_value() {
        let m = cast_message("Cannot cast string 'alice' to value of Int32 type");
        assert!(!m.contains("alice"), "{m}");
        assert!(m.contains("Int32"), "{m}");
    }
}
