//! The read-only SQL session.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;

use carewatch_store::registry::Registry;
use carewatch_store::{Store, Table};

use crate::table::{ComputedTable, RegistryKind, RegistryTable, StoreTable, TABLES_URL};

/// Per-query limits.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Wall-clock limit for one query.
    pub timeout: Duration,
    /// Memory for one query's operators (sorts, joins, aggregates), bytes.
    pub memory_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(60),
            memory_bytes: 2 << 30,
        }
    }
}

/// Query errors, in words safe to show a user (no paths, no internals).
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement kind is not allowed (DDL, DML, COPY, SET…).
    #[error("only read-only queries are allowed: {0}")]
    NotAllowed(String),
    /// Parse or planning error (bad SQL, unknown table or column).
    #[error("{0}")]
    Invalid(String),
    /// The query ran past its time limit.
    #[error("query cancelled after {0:?} (time limit)")]
    Timeout(Duration),
    /// The query needed more memory than allowed.
    #[error("query cancelled: it needs more memory than the per-query limit")]
    Memory,
    /// Anything else.
    #[error("query failed")]
    Internal,
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        let e = e.find_root();
        match e {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(..)
            | DataFusionError::SchemaError(..) => {
                QueryError::Invalid(strip_backtrace(&e.to_string()))
            }
            DataFusionError::ResourcesExhausted(..) => QueryError::Memory,
            DataFusionError::NotImplemented(m) => {
                QueryError::Invalid(format!("not supported: {m}"))
            }
            other => {
                tracing::warn!(error = %other, "query failed");
                QueryError::Internal
            }
        }
    }
}

fn strip_backtrace(s: &str) -> String {
    s.split("\n\nbacktrace").next().unwrap_or(s).to_owned()
}

/// The SQL engine over the store and registry.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    limits: QueryLimits,
    audit: Arc<crate::audit::AuditLog>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("limits", &self.limits)
            .finish()
    }
}

impl QueryEngine {
    /// Builds the session with the tables registered.
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        limits: QueryLimits,
        audit: Arc<crate::audit::AuditLog>,
    ) -> Result<Self, QueryError> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(limits.memory_bytes)))
            .build_arc()
            .map_err(|_| QueryError::Internal)?;
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("carewatch", "public");
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        crate::fhir_read::register_udfs(&ctx);
        let url = url::Url::parse(TABLES_URL).map_err(|_| QueryError::Internal)?;
        ctx.register_object_store(&url, store.objects());
        let reg = |name: &str, t: Arc<dyn datafusion::datasource::TableProvider>| {
            ctx.register_table(name, t)
                .map(|_| ())
                .map_err(|_| QueryError::Internal)
        };
        reg(
            "observations",
            Arc::new(StoreTable::new(store.clone(), Table::Observations)),
        )?;
        reg(
            "dead_letters",
            Arc::new(StoreTable::new(store, Table::DeadLetters)),
        )?;
        reg(
            "devices",
            Arc::new(ComputedTable(RegistryTable::new(
                registry.clone(),
                RegistryKind::Devices,
            ))),
        )?;
        reg(
            "care_teams",
            Arc::new(ComputedTable(RegistryTable::new(
                registry,
                RegistryKind::CareTeams,
            ))),
        )?;
        reg(
            "audit_log",
            Arc::new(ComputedTable(crate::audit::AuditTable::new(audit.clone()))),
        )?;
        Ok(QueryEngine { ctx, limits, audit })
    }

    /// The audit log.
    pub fn audit(&self) -> &Arc<crate::audit::AuditLog> {
        &self.audit
    }

    /// The session (for the Postgres wire and tests).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// What is allowed: queries only.
    pub fn options() -> SQLOptions {
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
    }

    /// Plans a read-only query and returns its stream, bounded by the time limit.
    pub async fn stream(
        &self,
        sql: &str,
    ) -> Result<(arrow_schema::SchemaRef, SendableRecordBatchStream), QueryError> {
        let df = match tokio::time::timeout(
            self.limits.timeout,
            self.ctx.sql_with_options(sql, Self::options()),
        )
        .await
        {
            Err(_) => return Err(QueryError::Timeout(self.limits.timeout)),
            Ok(Err(e)) => {
                let msg = e.to_string();
                if msg.contains("not supported")
                    && (msg.contains("DDL") || msg.contains("DML") || msg.contains("Statement"))
                {
                    return Err(QueryError::NotAllowed(strip_backtrace(&msg)));
                }
                return Err(e.into());
            }
            Ok(Ok(df)) => df,
        };
        let schema = Arc::new(df.schema().as_arrow().clone());
        let stream = df.execute_stream().await?;
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let timeout = self.limits.timeout;
        let bounded = futures::stream::unfold((stream, false), move |(mut s, done)| async move {
            if done {
                return None;
            }
            match tokio::time::timeout_at(deadline, s.next()).await {
                Ok(Some(item)) => Some((item, (s, false))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(DataFusionError::ResourcesExhausted(format!(
                        "query cancelled after {timeout:?} (time limit)"
                    ))),
                    (s, true),
                )),
            }
        });
        let out = datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
            schema.clone(),
            bounded,
        );
        Ok((schema, Box::pin(out)))
    }

    /// Runs a read-only query to completion.
    pub async fn collect(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        let (_, mut s) = self.stream(sql).await?;
        let mut out = Vec::new();
        while let Some(b) = s.next().await {
            match b {
                Ok(b) => out.push(b),
                Err(DataFusionError::ResourcesExhausted(m)) if m.contains("time limit") => {
                    return Err(QueryError::Timeout(self.limits.timeout));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }
}
