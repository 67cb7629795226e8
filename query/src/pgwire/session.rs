//! Per-connection session statements: `SET`/`SHOW` of a short list of client settings (kept in
//! the connection's metadata, applied to each query's own state), `statement_timeout` only
//! lowered, transaction statements as no-ops. Everything else — any `datafusion.*` setting,
//! cursors, `COPY` — is refused with a clear error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{Expr, Set, Statement, Value};
use datafusion_postgres::pgwire;
use futures::{Sink, SinkExt};
use pgwire::api::ClientInfo;
use pgwire::api::Type;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::startup::ParameterStatus;

use crate::gate::Settings;

use super::user_error;

/// Metadata keys of carewatch's own per-connection settings start with this.
pub(super) const PRIVATE: &str = "carewatch.";
const TIMEOUT_KEY: &str = "carewatch.statement_timeout_ms";
const TZ_KEY: &str = "carewatch.time_zone";

/// Client settings that may be SET (lower-case name, the name reported to the client when it
/// is a reported parameter).
const SETTABLE: &[(&str, Option<&str>)] = &[
    ("client_encoding", Some("client_encoding")),
    ("search_path", None),
    ("application_name", Some("application_name")),
    ("datestyle", Some("DateStyle")),
    ("extra_float_digits", None),
    ("intervalstyle", Some("IntervalStyle")),
    ("bytea_output", None),
    ("client_min_messages", None),
];

/// Read-only values SHOW answers.
const FIXED: &[(&str, &str)] = &[
    ("server_version", "16.6"),
    ("server_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
    ("default_transaction_read_only", "on"),
    ("max_identifier_length", "63"),
    ("is_superuser", "off"),
];

/// The connection's settings for the next query.
pub(super) fn settings(md: &HashMap<String, String>) -> Settings {
    Settings {
        statement_timeout: md
            .get(TIMEOUT_KEY)
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis),
        time_zone: md.get(TZ_KEY).cloned(),
    }
}

/// Statements the session answers itself (everything else that is not a query is refused).
pub(super) fn handles(s: &Statement) -> bool {
    matches!(
        s,
        Statement::Set(_)
            | Statement::ShowVariable { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Discard { .. }
            | Statement::Deallocate { .. }
    )
}

/// The result columns of a session statement (for Describe).
pub(super) fn fields(s: &Statement) -> Vec<FieldInfo> {
    match s {
        Statement::ShowVariable { variable } => vec![field(&name_of(variable))],
        _ => Vec::new(),
    }
}

fn field(name: &str) -> FieldInfo {
    FieldInfo::new(name.into(), None, None, Type::TEXT, FieldFormat::Text)
}

fn name_of(variable: &[datafusion::sql::sqlparser::ast::Ident]) -> String {
    variable
        .iter()
        .map(|i| i.value.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Answers a session statement.
pub(super) async fn run<C>(client: &mut C, limit: Duration, s: &Statement) -> PgWireResult<Response>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    match s {
        Statement::Set(set) => self::set(client, limit, set).await,
        Statement::ShowVariable { variable } => show(client.metadata(), limit, &name_of(variable)),
        Statement::StartTransaction { .. } => Ok(Response::TransactionStart(Tag::new("BEGIN"))),
        Statement::Commit { .. } => Ok(Response::TransactionEnd(Tag::new("COMMIT"))),
        Statement::Rollback { .. } => Ok(Response::TransactionEnd(Tag::new("ROLLBACK"))),
        Statement::Discard { .. } => {
            client.metadata_mut().retain(|k, _| !k.starts_with(PRIVATE));
            Ok(Response::Execution(Tag::new("DISCARD ALL")))
        }
        Statement::Deallocate { .. } => Ok(Response::Execution(Tag::new("DEALLOCATE"))),
        _ => Err(user_error(
            "25006",
            "carewatch is read-only over SQL: only queries are allowed",
        )),
    }
}

async fn set<C>(client: &mut C, limit: Duration, set: &Set) -> PgWireResult<Response>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let (name, value) = match set {
        Set::SingleAssignment {
            variable, values, ..
        } if values.len() == 1 => (variable.to_string().to_ascii_lowercase(), text(&values[0])),
        Set::SetTimeZone { value, .. } => ("timezone".to_owned(), text(value)),
        Set::SetNames { charset_name, .. } => {
            ("client_encoding".to_owned(), charset_name.value.clone())
        }
        // Transaction modes (DBeaver's read-only connections): every session is read-only.
        Set::SetTransaction { .. } => return Ok(Response::Execution(Tag::new("SET"))),
        _ => return Err(refused(&set.to_string())),
    };
    let name = name.trim_matches('"').to_owned();
    let reported: Option<(String, String)> = match name.as_str() {
        "statement_timeout" => {
            set_timeout(client.metadata_mut(), limit, &value)?;
            None
        }
        "timezone" | "time zone" => {
            let tz = set_time_zone(client.metadata_mut(), &value)?;
            Some(("TimeZone".into(), tz))
        }
        "client_encoding"
            if !value.eq_ignore_ascii_case("utf8") && !value.eq_ignore_ascii_case("utf-8") =>
        {
            return Err(user_error(
                "22023",
                "only UTF8 is supported as client_encoding",
            ));
        }
        n => match SETTABLE.iter().find(|(k, _)| *k == n) {
            Some((k, r)) => {
                client.metadata_mut().insert((*k).to_owned(), value.clone());
                r.map(|r| (r.to_owned(), value))
            }
            None => return Err(refused(n)),
        },
    };
    if let Some((k, v)) = reported {
        client
            .send(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                k, v,
            )))
            .await?;
    }
    Ok(Response::Execution(Tag::new("SET")))
}

fn refused(name: &str) -> PgWireError {
    let allowed: Vec<&str> = SETTABLE.iter().map(|(k, _)| *k).collect();
    user_error(
        "42501",
        &format!(
            "SET {name} is not allowed: a session may set only {}, TimeZone, and lower statement_timeout",
            allowed.join(", ")
        ),
    )
}

/// The text of a SET value: a string, number or identifier (DEFAULT included).
fn text(e: &Expr) -> String {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.to_string(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

/// `statement_timeout`: only lowered; 0 (no limit) and values above the server's are refused;
/// DEFAULT goes back to the server's limit.
fn set_timeout(md: &mut HashMap<String, String>, limit: Duration, v: &str) -> PgWireResult<()> {
    if v.eq_ignore_ascii_case("default") {
        md.remove(TIMEOUT_KEY);
        return Ok(());
    }
    let ms = parse_ms(v).ok_or_else(|| {
        user_error(
            "22023",
            "statement_timeout must be a duration like 5000, '5s' or '1min'",
        )
    })?;
    if ms == 0 {
        return Err(user_error(
            "42501",
            &format!(
                "statement_timeout cannot be disabled; the server's limit is {}ms",
                limit.as_millis()
            ),
        ));
    }
    if u128::from(ms) > limit.as_millis() {
        return Err(user_error(
            "42501",
            &format!(
                "statement_timeout cannot be raised above the server's limit of {}ms",
                limit.as_millis()
            ),
        ));
    }
    md.insert(TIMEOUT_KEY.into(), ms.to_string());
    Ok(())
}

fn parse_ms(v: &str) -> Option<u64> {
    let v = v.trim().to_ascii_lowercase();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `SET TIME ZONE`: UTC or a fixed offset like `+02:00` (what the engine understands).
fn set_time_zone(md: &mut HashMap<String, String>, v: &str) -> PgWireResult<String> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("default") || v.eq_ignore_ascii_case("local") {
        md.remove(TZ_KEY);
        return Ok("UTC".into());
    }
    let ok = v.eq_ignore_ascii_case("utc")
        || v.parse::<datafusion::arrow::array::timezone::Tz>().is_ok();
    if !ok {
        return Err(user_error(
            "22023",
            "time zone must be UTC, an offset like +02:00, or a zone name",
        ));
    }
    md.insert(TZ_KEY.into(), v.to_owned());
    Ok(v.to_owned())
}

/// What SHOW answers for a settable parameter the client never set.
fn default_of(name: &str) -> String {
    match name {
        "search_path" => "\"$user\", public",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "bytea_output" => "hex",
        "extra_float_digits" => "1",
        "client_min_messages" => "notice",
        _ => "",
    }
    .to_owned()
}

fn show(md: &HashMap<String, String>, limit: Duration, name: &str) -> PgWireResult<Response> {
    let value = match name {
        "statement_timeout" => format!(
            "{}ms",
            settings(md).statement_timeout.unwrap_or(limit).as_millis()
        ),
        "timezone" | "time zone" => md.get(TZ_KEY).cloned().unwrap_or_else(|| "UTC".into()),
        "client_encoding" => "UTF8".into(),
        n => match (
            SETTABLE.iter().find(|(k, _)| *k == n),
            FIXED.iter().find(|(k, _)| *k == n),
        ) {
            (Some((k, _)), _) => md.get(*k).cloned().unwrap_or_else(|| default_of(k)),
            (None, Some((_, v))) => (*v).to_owned(),
            (None, None) => {
                return Err(user_error(
                    "42704",
                    &format!("unrecognized configuration parameter \"{n}\""),
                ));
            }
        },
    };
    let fields = Arc::new(vec![field(name)]);
    let mut enc = DataRowEncoder::new(fields.clone());
    enc.encode_field(&Some(value))?;
    let row = enc.take_row();
    Ok(Response::Query(QueryResponse::new(
        fields,
        futures::stream::once(async move { Ok(row) }),
    )))
}
