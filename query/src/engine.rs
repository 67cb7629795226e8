//! The read-only SQL engine: the immutable base session, per-query limits, and errors that
//! carry no data values. Every statement goes through [`crate::gate`].

use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use tokio::sync::Semaphore;

use carewatch_store::registry::Registry;
use carewatch_store::{Store, Table};

use crate::gate::{Caller, Settings};
use crate::table::{ComputedTable, RegistryKind, RegistryTable, StoreTable, TABLES_URL};

/// Per-query limits, the same on every wire.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Wall-clock limit for one query: planning and streaming its answer.
    pub timeout: Duration,
    /// Memory for one query's operators (sorts, joins, aggregates), bytes; each query has its
    /// own pool.
    pub memory_bytes: usize,
    /// Largest answer, rows; a query that would return more fails with `TooManyRows`.
    pub max_rows: u64,
    /// Queries an analyst credential class may run at once (all analysts together).
    pub analyst_concurrency: usize,
    /// Queries admins may run at once.
    pub admin_concurrency: usize,
    /// Queries carewatch itself (dashboard) may run at once.
    pub internal_concurrency: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(60),
            memory_bytes: 1 << 30,
            max_rows: 1_000_000,
            analyst_concurrency: 4,
            admin_concurrency: 2,
            internal_concurrency: 8,
        }
    }
}

/// Query errors, in words safe to show a user: no data values, no paths, no internals.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// The statement kind is not allowed (DDL, DML, COPY, SET…).
    #[error("only read-only queries are allowed: {0}")]
    NotAllowed(String),
    /// The caller's role may not read a table the query reads.
    #[error("permission denied for table {0}")]
    Forbidden(String),
    /// Parse or planning error (bad SQL, unknown table or column).
    #[error("{0}")]
    Invalid(String),
    /// The query ran past its time limit.
    #[error("query cancelled after {0:?} (time limit)")]
    Timeout(Duration),
    /// The query was cancelled by its client.
    #[error("query cancelled on request")]
    Cancelled,
    /// The query needed more memory than allowed.
    #[error("query cancelled: it needs more memory than the per-query limit")]
    Memory,
    /// Too many queries of this kind run at once.
    #[error("too many concurrent queries; retry shortly")]
    Busy,
    /// The answer has more rows than allowed.
    #[error("the answer has more than {0} rows (the row limit); aggregate or add LIMIT")]
    TooManyRows(u64),
    /// Anything else.
    #[error("query failed")]
    Internal,
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        crate::errors::classify(e)
    }
}

/// The SQL engine over the store and registry.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    pub(crate) limits: QueryLimits,
    audit: Arc<crate::audit::AuditLog>,
    pub(crate) lanes: Arc<Lanes>,
}

/// One semaphore per kind of caller, so analysts cannot starve admins or the dashboard.
#[derive(Debug)]
pub(crate) struct Lanes {
    pub(crate) analyst: Arc<Semaphore>,
    pub(crate) admin: Arc<Semaphore>,
    pub(crate) internal: Arc<Semaphore>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine")
            .field("limits", &self.limits)
            .finish()
    }
}

impl QueryEngine {
    /// Builds the base session with the tables registered. The base is never changed by a
    /// query: each query runs on its own state derived from it.
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        limits: QueryLimits,
        audit: Arc<crate::audit::AuditLog>,
    ) -> Result<Self, QueryError> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("carewatch", "public");
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_physical_optimizer_rules(crate::join_order::physical_rules())
            .build();
        let ctx = SessionContext::new_with_state(state);
        crate::fhir_read::register_udfs(&ctx);
        crate::quantile::register(&ctx);
        crate::arg_max::register(&ctx);
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
        // pg_catalog (for psql `\d`, DBeaver) is part of the base, installed once here.
        datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog(
            &ctx,
            "carewatch",
            datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
        )
        .map_err(|_| QueryError::Internal)?;
        let lane = |n: usize| Arc::new(Semaphore::new(n.max(1)));
        let lanes = Arc::new(Lanes {
            analyst: lane(limits.analyst_concurrency),
            admin: lane(limits.admin_concurrency),
            internal: lane(limits.internal_concurrency),
        });
        Ok(QueryEngine {
            ctx,
            limits,
            audit,
            lanes,
        })
    }

    /// The audit log.
    pub fn audit(&self) -> &Arc<crate::audit::AuditLog> {
        &self.audit
    }

    /// The limits.
    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// The base session, for carewatch's own planned queries (alert rules, FHIR search) and
    /// registering carewatch tables at start-up. Never hand it to a wire: user SQL goes
    /// through [`QueryEngine::query`].
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// What is allowed anywhere in a plan: queries only.
    pub fn options() -> SQLOptions {
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
    }

    /// carewatch's own read-only query (the dashboard): through the gate, with the internal
    /// concurrency lane and the usual limits, not audited.
    pub async fn collect(&self, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        self.collect_as(&Caller::internal("internal"), sql).await
    }

    /// Runs one statement through the gate to completion.
    pub async fn collect_as(
        &self,
        caller: &Caller,
        sql: &str,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        let mut s = self.query(caller, sql, &Settings::default(), None).await?;
        let mut out = Vec::new();
        while let Some(b) = s.next().await {
            out.push(b?);
        }
        Ok(out)
    }
}
