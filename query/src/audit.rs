//! The access audit trail (HIPAA): every SQL query (HTTP and Postgres wire) and every FHIR
//! read records who, when, through which channel, what statement or search, which tables the
//! statement's plan read (`tables`, comma-separated in the table), and how many rows. A person
//! signed in through the identity provider is named (`person`: the issuer's subject,
//! `person_name`: their display name), not only the credential.
//!
//! Append-only JSON lines in `audit.jsonl` in the data directory, each line synced to disk
//! when the answer ends; in cluster mode (`--postgres-url`) the same lines are rows of one
//! PostgreSQL table every node appends to (`carewatch_store::shared_audit`), so every node's
//! `audit_log` shows the whole cluster's accesses and a node lost with its disk loses none.
//! A streamed SQL answer's line is written when the stream ends, after its last rows left:
//! a process killed in that instant loses the line (not yet closed). Readable as the
//! `audit_log` table — by admins only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_array::builder::{StringBuilder, TimestampMicrosecondBuilder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::{Value, json};

use carewatch_store::registry::Principal;
use carewatch_store::shared_audit::SharedAudit;

/// The audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
    /// Cluster mode: the lines go to PostgreSQL instead of the file.
    shared: Option<SharedAudit>,
}

impl AuditLog {
    /// Opens (creates) `audit.jsonl` in `dir`; `read_only` never creates or writes it.
    pub fn open(dir: &Path, read_only: bool) -> std::io::Result<AuditLog> {
        let path = dir.join("audit.jsonl");
        let file = if read_only {
            None
        } else {
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?,
            )
        };
        Ok(AuditLog {
            path,
            file: Mutex::new(file),
            shared: None,
        })
    }

    /// The cluster's audit trail in PostgreSQL at `url` (the table is created if missing).
    /// Blocking.
    pub fn open_shared(url: &str) -> Result<AuditLog, carewatch_store::Error> {
        Ok(AuditLog {
            path: PathBuf::new(),
            file: Mutex::new(None),
            shared: Some(SharedAudit::open(url)?),
        })
    }

    /// Records one access. Errors are logged; the caller decides nothing on them.
    pub fn record(
        &self,
        who: &Principal,
        channel: &str,
        what: &str,
        rows: Option<u64>,
        outcome: &str,
    ) {
        self.record_tables(who, channel, what, rows, &[], outcome);
    }

    /// Records one access with the tables the statement's plan read.
    pub fn record_tables(
        &self,
        who: &Principal,
        channel: &str,
        what: &str,
        rows: Option<u64>,
        tables: &[String],
        outcome: &str,
    ) {
        let line = json!({
            "time_us": chrono::Utc::now().timestamp_micros(),
            "principal": who.id,
            "person": who.person.as_ref().map(|p| &p.sub),
            "person_name": who.person.as_ref().map(|p| &p.name),
            "role": who.role.as_str(),
            "channel": channel,
            "statement": what,
            "tables": tables,
            "rows": rows,
            "outcome": outcome,
        });
        if let Some(shared) = &self.shared {
            if let Err(e) = blocking(|| shared.append(&line.to_string())) {
                tracing::error!(error = %e, "writing the audit log failed");
            }
            return;
        }
        let write = || {
            let mut g = self
                .file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(f) = g.as_mut() {
                let res = writeln!(f, "{line}").and_then(|()| f.sync_data());
                if let Err(e) = res {
                    tracing::error!(error = %e, "writing the audit log failed");
                }
            }
        };
        blocking(write);
    }

    fn batch(&self, schema: &SchemaRef) -> datafusion::error::Result<RecordBatch> {
        let text = match &self.shared {
            Some(shared) => blocking(|| shared.lines())
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
                .join("\n"),
            None => blocking(|| std::fs::read_to_string(&self.path).unwrap_or_default()),
        };
        let mut t = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let (mut p, mut r, mut c, mut s, mut o, mut tb) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let mut n = UInt64Builder::new();
        let (mut ps, mut pn) = (StringBuilder::new(), StringBuilder::new());
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            t.append_value(v["time_us"].as_i64().unwrap_or(0));
            p.append_value(v["principal"].as_str().unwrap_or(""));
            r.append_value(v["role"].as_str().unwrap_or(""));
            c.append_value(v["channel"].as_str().unwrap_or(""));
            s.append_value(v["statement"].as_str().unwrap_or(""));
            let names: Vec<&str> = v["tables"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            tb.append_value(names.join(","));
            n.append_option(v["rows"].as_u64());
            o.append_value(v["outcome"].as_str().unwrap_or(""));
            ps.append_option(v["person"].as_str());
            pn.append_option(v["person_name"].as_str());
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(t.finish()),
            Arc::new(p.finish()),
            Arc::new(r.finish()),
            Arc::new(c.finish()),
            Arc::new(s.finish()),
            Arc::new(tb.finish()),
            Arc::new(n.finish()),
            Arc::new(o.finish()),
            Arc::new(ps.finish()),
            Arc::new(pn.finish()),
        ];
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    }
}

/// Runs blocking file I/O (the fsync, reading the log); on a multi-threaded runtime it tells
/// tokio first, so other tasks move off this worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The `audit_log` table.
#[derive(Debug)]
pub struct AuditTable {
    log: Arc<AuditLog>,
    schema: SchemaRef,
}

impl AuditTable {
    /// A provider over the log.
    pub fn new(log: Arc<AuditLog>) -> Self {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("principal", DataType::Utf8, false),
            Field::new("role", DataType::Utf8, false),
            Field::new("channel", DataType::Utf8, false),
            Field::new("statement", DataType::Utf8, false),
            Field::new("tables", DataType::Utf8, false),
            Field::new("rows", DataType::UInt64, true),
            Field::new("outcome", DataType::Utf8, false),
            Field::new("person", DataType::Utf8, true),
            Field::new("person_name", DataType::Utf8, true),
        ]));
        AuditTable { log, schema }
    }
}

impl crate::table::BatchSource for AuditTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn batch(&self) -> datafusion::error::Result<RecordBatch> {
        self.log.batch(&self.schema)
    }
}
