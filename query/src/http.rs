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
use crate::gate::{Caller, Settings};
use crate::run::QueryStream;

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
            axum::routing::get(crate::fhir_search::search),
        )
        .route(
            "/fhir/Observation/$lastn",
            axum::routing::get(crate::fhir_search::lastn),
        )
        .route(
            "/fhir/Patient/{id}",
            axum::routing::get(crate::fhir_registry::read_patient),
        )
        .route(
            "/fhir/Device/{id}",
            axum::routing::get(crate::fhir_registry::read_device),
        )
        .route(
            "/fhir/Communication",
            axum::routing::get(crate::fhir_communication::search),
        )
        .route(
            "/fhir/Communication/{id}",
            axum::routing::get(crate::fhir_communication::read),
        )
        .route(
            "/fhir/metadata",
            axum::routing::get(crate::fhir_read::metadata),
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

/// The HTTP answer for a refused or failed query. A timeout is a timeout (504), never a
/// memory error; too many concurrent queries is 429 with `Retry-After`.
fn query_error(e: QueryError) -> Response {
    let (status, code) = match &e {
        QueryError::NotAllowed(_) => (StatusCode::FORBIDDEN, "not_allowed"),
        QueryError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        QueryError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
        QueryError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        QueryError::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "cancelled"),
        QueryError::Memory => (StatusCode::UNPROCESSABLE_ENTITY, "memory_limit"),
        QueryError::TooManyRows(_) => (StatusCode::UNPROCESSABLE_ENTITY, "row_limit"),
        QueryError::Busy => (StatusCode::TOO_MANY_REQUESTS, "too_many_queries"),
        QueryError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let mut r = error(status, code, e.to_string());
    if matches!(e, QueryError::Busy) {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
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

async fn sql(
    State(s): State<SqlState>,
    headers: HeaderMap,
    caller: carewatch_auth::Caller,
    body: Bytes,
) -> Response {
    let principal = match caller.require(
        &[Role::Analyst, Role::Admin],
        "SQL is for analyst and admin credentials",
    ) {
        Ok(p) => p.clone(),
        Err(e) => return e.into_response(),
    };
    let query = match sql_text(&body) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let out = out_format(&headers);
    tracing::info!(principal = %principal.id, role = principal.role.as_str(), "sql query");
    let who = Caller::user(principal, "http-sql");
    let mut stream = match s
        .engine
        .query(&who, &query, &Settings::default(), None)
        .await
    {
        Ok(x) => x,
        Err(e) => return query_error(e),
    };
    // The first batch decides the status: errors before any row are proper error responses.
    let first = match stream.next().await {
        Some(Err(e)) => return query_error(e),
        Some(Ok(b)) => Some(b),
        None => None,
    };
    let content_type = match out {
        Out::Json => "application/json",
        Out::Csv => "text/csv",
        Out::Arrow => "application/vnd.apache.arrow.stream",
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(pump(out, stream, first, tx));
    let body = Body::from_stream(tokio_stream_from(rx));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn sql_text(body: &Bytes) -> Result<String, Box<Response>> {
    let text = String::from_utf8_lossy(body).to_string();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => match v.get("sql").and_then(|q| q.as_str()) {
            Some(q) => Ok(q.to_owned()),
            None => Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "JSON body needs a \"sql\" string".into(),
            ))),
        },
        Err(_) => Ok(text),
    }
}

fn out_format(headers: &HeaderMap) -> Out {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if accept.contains("text/csv") {
        Out::Csv
    } else if accept.contains("arrow") {
        Out::Arrow
    } else {
        Out::Json
    }
}

type Tx = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

/// The next batch, or None when the client went away (dropping the stream stops the query).
async fn next_or_gone(
    stream: &mut QueryStream,
    tx: &Tx,
) -> Option<Option<Result<RecordBatch, QueryError>>> {
    tokio::select! {
        b = stream.next() => Some(b),
        () = tx.closed() => None,
    }
}

/// Streams the encoded answer into the response body. A failure after the first batch ends
/// the body with an error (the status is already sent); the query's own audit line says why.
async fn pump(out: Out, mut stream: QueryStream, first: Option<RecordBatch>, tx: Tx) {
    let send = |b: Vec<u8>| {
        let tx = tx.clone();
        async move { b.is_empty() || tx.send(Ok(Bytes::from(b))).await.is_ok() }
    };
    let fail = |tx: Tx| async move {
        let _ = tx.send(Err(std::io::Error::other("query failed"))).await;
    };
    let schema = stream.schema();
    let mut arrow = match out {
        Out::Arrow => match arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema) {
            Ok(w) => Some(w),
            Err(_) => return fail(tx.clone()).await,
        },
        _ => None,
    };
    let mut head = if matches!(out, Out::Json) {
        b"[".to_vec()
    } else {
        Vec::new()
    };
    let (mut batch, mut started) = (first, false);
    loop {
        let mut w = std::mem::take(&mut head);
        if let Some(b) = batch.take() {
            let ok = match arrow.as_mut() {
                Some(aw) => aw.write(&b).map(|()| w.append(aw.get_mut())).is_ok(),
                None => encode(out, &b, !started, &mut w).is_ok(),
            };
            if !ok {
                return fail(tx.clone()).await;
            }
            started = true;
        }
        if !send(w).await {
            return;
        }
        match next_or_gone(&mut stream, &tx).await {
            None => return,
            Some(Some(Ok(b))) => batch = Some(b),
            Some(Some(Err(_))) => return fail(tx.clone()).await,
            Some(None) => break,
        }
    }
    let mut end = Vec::new();
    match (out, arrow.as_mut()) {
        (Out::Arrow, Some(aw)) => {
            let _ = aw.finish().map(|()| end.append(aw.get_mut()));
        }
        (Out::Csv, _) if !started => {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            end = format!("{}\n", names.join(",")).into_bytes();
        }
        (Out::Json, _) => end.push(b']'),
        _ => {}
    }
    let _ = send(end).await;
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
