//! `POST /v1/sql`: analyst SQL over HTTP. The answer streams as JSON (an array of row objects),
//! CSV, or an Arrow IPC stream, chosen by `Accept`.

use std::sync::Arc;

use arrow_array::RecordBatch;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde_json::json;

use carewatch_store::registry::{Registry, Role};

use crate::engine::{QueryEngine, QueryError};

/// State for the SQL endpoint.
#[derive(Debug, Clone)]
pub struct SqlState {
    /// The engine.
    pub engine: QueryEngine,
    /// For bearer-token authentication.
    pub registry: Arc<Registry>,
}

/// The router for `/v1/sql`.
pub fn router(state: SqlState) -> Router {
    Router::new()
        .route("/v1/sql", post(sql))
        .route(
            "/fhir/Observation/{id}",
            axum::routing::get(crate::fhir_read::read),
        )
        .route(
            "/fhir/Observation",
            axum::routing::get(crate::fhir_read::search),
        )
        .with_state(state)
}

#[derive(Clone, Copy)]
enum Out {
    Json,
    Csv,
    Arrow,
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

fn query_error(e: QueryError) -> Response {
    let status = match &e {
        QueryError::NotAllowed(_) => StatusCode::FORBIDDEN,
        QueryError::Invalid(_) => StatusCode::BAD_REQUEST,
        QueryError::Timeout(_) | QueryError::Memory => StatusCode::UNPROCESSABLE_ENTITY,
        QueryError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let code = match &e {
        QueryError::NotAllowed(_) => "not_allowed",
        QueryError::Invalid(_) => "invalid_query",
        QueryError::Timeout(_) => "timeout",
        QueryError::Memory => "memory_limit",
        QueryError::Internal => "internal",
    };
    error(status, code, e.to_string())
}

fn encode(out: Out, batch: &RecordBatch, first: bool, w: &mut Vec<u8>) -> Result<(), String> {
    match out {
        Out::Json => {
            let mut buf = Vec::new();
            {
                let mut jw = arrow_json::ArrayWriter::new(&mut buf);
                jw.write(batch).map_err(|e| e.to_string())?;
                jw.finish().map_err(|e| e.to_string())?;
            }
            // `[{...},{...}]` -> stitch batches into one array.
            let inner = buf
                .strip_prefix(b"[")
                .and_then(|b| b.strip_suffix(b"]"))
                .unwrap_or(&buf);
            if !inner.is_empty() {
                if !first {
                    w.push(b',');
                }
                w.extend_from_slice(inner);
            }
            Ok(())
        }
        Out::Csv => {
            let mut cw = arrow_csv::WriterBuilder::new()
                .with_header(first)
                .build(&mut *w);
            cw.write(batch).map_err(|e| e.to_string())
        }
        Out::Arrow => Err("arrow output is encoded by the stream writer".into()),
    }
}

async fn sql(State(s): State<SqlState>, headers: HeaderMap, body: Bytes) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(principal) = token.and_then(|t| s.registry.authenticate(t.trim())) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token".into(),
        );
    };
    if !matches!(principal.role, Role::Analyst | Role::Admin) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "SQL is for analyst and admin credentials".into(),
        );
    }
    let text = String::from_utf8_lossy(&body).to_string();
    let query = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => match v.get("sql").and_then(|q| q.as_str()) {
            Some(q) => q.to_owned(),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "JSON body needs a \"sql\" string".into(),
                );
            }
        },
        Err(_) => text,
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let out = if accept.contains("text/csv") {
        Out::Csv
    } else if accept.contains("arrow") {
        Out::Arrow
    } else {
        Out::Json
    };
    tracing::info!(principal = %principal.id, role = principal.role.as_str(), "sql query");
    let audit = s.engine.audit().clone();
    if principal.role != Role::Admin && crate::audit::mentions_audit(s.engine.context(), &query) {
        audit.record(
            &principal,
            "http-sql",
            &query,
            None,
            "refused: audit log is for admins",
        );
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the audit log is for admin credentials".into(),
        );
    }
    let (schema, mut stream) = match s.engine.stream(&query).await {
        Ok(x) => x,
        Err(e) => {
            audit.record(&principal, "http-sql", &query, None, &format!("error: {e}"));
            return query_error(e);
        }
    };
    // The first batch decides the status: errors before any row are proper error responses.
    let first = stream.next().await;
    let first = match first {
        Some(Err(e)) => {
            let e: QueryError = e.into();
            audit.record(&principal, "http-sql", &query, None, &format!("error: {e}"));
            return query_error(e);
        }
        other => other.and_then(Result::ok),
    };
    let content_type = match out {
        Out::Json => "application/json",
        Out::Csv => "text/csv",
        Out::Arrow => "application/vnd.apache.arrow.stream",
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let rows = Arc::new(std::sync::atomic::AtomicU64::new(
        first.as_ref().map_or(0, |b| b.num_rows() as u64),
    ));
    let rows2 = rows.clone();
    let mut stream = stream.inspect(move |b| {
        if let Ok(b) = b {
            rows2.fetch_add(b.num_rows() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    tokio::spawn(async move {
        let _record = Recorder {
            audit,
            who: principal,
            query,
            rows,
        };
        let send = |b: Vec<u8>| {
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(b))).await.is_ok() }
        };
        match out {
            Out::Arrow => {
                let Ok(mut w) = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema)
                else {
                    return;
                };
                let mut batch = first;
                loop {
                    if let Some(b) = batch.take()
                        && w.write(&b).is_err()
                    {
                        return;
                    }
                    let chunk = std::mem::take(w.get_mut());
                    if !chunk.is_empty() && !send(chunk).await {
                        return;
                    }
                    match stream.next().await {
                        Some(Ok(b)) => batch = Some(b),
                        Some(Err(_)) => {
                            let _ = tx.send(Err(std::io::Error::other("query failed"))).await;
                            return;
                        }
                        None => break,
                    }
                }
                if w.finish().is_ok() {
                    let _ = send(std::mem::take(w.get_mut())).await;
                }
            }
            Out::Json | Out::Csv => {
                let mut started = false;
                let mut head = Vec::new();
                if matches!(out, Out::Json) {
                    head.push(b'[');
                }
                let mut batch = first;
                let mut wrote_any = false;
                loop {
                    let mut w = std::mem::take(&mut head);
                    if let Some(b) = batch.take() {
                        if encode(out, &b, !started, &mut w).is_err() {
                            return;
                        }
                        started = true;
                        wrote_any = true;
                    }
                    if !w.is_empty() && !send(w).await {
                        return;
                    }
                    match stream.next().await {
                        Some(Ok(b)) => batch = Some(b),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "query failed while streaming");
                            let _ = tx.send(Err(std::io::Error::other("query failed"))).await;
                            return;
                        }
                        None => break,
                    }
                }
                if matches!(out, Out::Csv) && !wrote_any {
                    let names: Vec<&str> =
                        schema.fields().iter().map(|f| f.name().as_str()).collect();
                    let _ = send(format!("{}\n", names.join(",")).into_bytes()).await;
                }
                if matches!(out, Out::Json) {
                    let _ = send(b"]".to_vec()).await;
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Records the query in the audit log when the response stream ends (however it ends).
struct Recorder {
    audit: Arc<crate::audit::AuditLog>,
    who: carewatch_store::registry::Principal,
    query: String,
    rows: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let n = self.rows.load(std::sync::atomic::Ordering::Relaxed);
        self.audit
            .record(&self.who, "http-sql", &self.query, Some(n), "ok");
    }
}
