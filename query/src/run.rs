//! Running a gated statement: a fresh per-query state (own memory pool, per-connection
//! settings) derived from the immutable base session, a per-role concurrency permit, one
//! deadline covering planning and streaming, client cancellation, a row cap, and the audit line
//! written when the answer ends (however it ends).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion::common::ParamValues;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{SendableRecordBatchStream, SessionState};
use datafusion::prelude::DataFrame;
use datafusion::sql::sqlparser::ast::Statement;
use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use carewatch_store::registry::Role;

use crate::engine::{QueryEngine, QueryError};
use crate::gate::{Caller, Checked, Settings, parse_one, refusal, verify_plan};

/// What bounds one query: its concurrency permit, deadline and cancellation.
struct Budget {
    permit: OwnedSemaphorePermit,
    deadline: Instant,
    timeout: Duration,
    cancel: Option<CancellationToken>,
}

impl Budget {
    /// Runs `fut` unless the deadline passes or the client cancels first.
    async fn bound<T>(
        &self,
        fut: impl Future<Output = Result<T, QueryError>>,
    ) -> Result<T, QueryError> {
        let cancel = self.cancel.clone().unwrap_or_default();
        tokio::select! {
            r = fut => r,
            () = tokio::time::sleep_until(self.deadline) => Err(QueryError::Timeout(self.timeout)),
            () = cancel.cancelled(), if self.cancel.is_some() => Err(QueryError::Cancelled),
        }
    }
}

impl QueryEngine {
    fn budget(
        &self,
        caller: &Caller,
        settings: &Settings,
        cancel: Option<CancellationToken>,
    ) -> Result<Budget, QueryError> {
        let lane = if !caller.audited {
            &self.lanes.internal
        } else if caller.principal.role == Role::Admin {
            &self.lanes.admin
        } else {
            &self.lanes.analyst
        };
        let permit = lane
            .clone()
            .try_acquire_owned()
            .map_err(|_| QueryError::Busy)?;
        let timeout = settings
            .statement_timeout
            .map_or(self.limits.timeout, |t| t.min(self.limits.timeout));
        Ok(Budget {
            permit,
            deadline: Instant::now() + timeout,
            timeout,
            cancel,
        })
    }

    /// A fresh state for one query: the base session's tables and functions, its own memory
    /// pool, the connection's settings. The base is not touched.
    pub(crate) fn query_state(&self, settings: &Settings) -> Result<SessionState, QueryError> {
        let base = self.context().state();
        let runtime = RuntimeEnvBuilder::from_runtime_env(base.runtime_env())
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(self.limits.memory_bytes)))
            .build_arc()
            .map_err(|_| QueryError::Internal)?;
        let mut config = base.config().clone();
        if let Some(tz) = &settings.time_zone {
            config.options_mut().execution.time_zone = Some(tz.clone());
        }
        let mut state = SessionStateBuilder::new_from_existing(base)
            .with_config(config)
            .with_runtime_env(runtime)
            .build();
        crate::quantile::reregister(&mut state);
        Ok(state)
    }

    /// Runs one SQL text (exactly one statement) through the gate.
    pub async fn query(
        &self,
        caller: &Caller,
        sql: &str,
        settings: &Settings,
        cancel: Option<CancellationToken>,
    ) -> Result<QueryStream, QueryError> {
        let statement = match parse_one(sql) {
            Ok(s) => s,
            Err(e) => {
                self.record(caller, sql, None, &[], &refusal(&e));
                return Err(e);
            }
        };
        self.run_statement(caller, sql, statement, settings, cancel)
            .await
    }

    /// Runs one parsed statement through the gate.
    pub async fn run_statement(
        &self,
        caller: &Caller,
        sql: &str,
        statement: Statement,
        settings: &Settings,
        cancel: Option<CancellationToken>,
    ) -> Result<QueryStream, QueryError> {
        let budget = self.admit(caller, sql, settings, cancel)?;
        let state = self.query_state(settings)?;
        let checked = budget
            .bound(self.check(caller, &state, sql, statement))
            .await
            .inspect_err(|e| {
                if matches!(e, QueryError::Timeout(_) | QueryError::Cancelled) {
                    self.record(caller, sql, None, &[], &refusal(e));
                }
            })?;
        self.start(caller, budget, state, checked).await
    }

    /// Plans a statement with parameters left as placeholders (Postgres extended protocol).
    pub async fn prepare(
        &self,
        caller: &Caller,
        sql: &str,
        statement: Statement,
        settings: &Settings,
    ) -> Result<Checked, QueryError> {
        let budget = self.admit(caller, sql, settings, None)?;
        let state = self.query_state(settings)?;
        budget
            .bound(self.check(caller, &state, sql, statement))
            .await
    }

    /// Runs a prepared statement with its parameter values; the plan is verified again.
    pub async fn execute(
        &self,
        caller: &Caller,
        prepared: &Checked,
        params: Option<ParamValues>,
        settings: &Settings,
        cancel: Option<CancellationToken>,
    ) -> Result<QueryStream, QueryError> {
        let budget = self.admit(caller, &prepared.sql, settings, cancel)?;
        let mut checked = prepared.clone();
        let bound = match params {
            Some(p) => checked
                .plan
                .replace_params_with_values(&p)
                .map_err(QueryError::from),
            None => Ok(checked.plan.clone()),
        };
        let verified = bound.and_then(|plan| {
            let tables = verify_plan(&plan, caller.principal.role)?;
            Ok((plan, tables))
        });
        match verified {
            Ok((plan, tables)) => (checked.plan, checked.tables) = (plan, tables),
            Err(e) => {
                self.record(caller, &prepared.sql, None, &prepared.tables, &refusal(&e));
                return Err(e);
            }
        }
        let state = self.query_state(settings)?;
        self.start(caller, budget, state, checked).await
    }

    fn admit(
        &self,
        caller: &Caller,
        sql: &str,
        settings: &Settings,
        cancel: Option<CancellationToken>,
    ) -> Result<Budget, QueryError> {
        self.budget(caller, settings, cancel).inspect_err(|e| {
            self.record(caller, sql, None, &[], &refusal(e));
        })
    }

    async fn start(
        &self,
        caller: &Caller,
        budget: Budget,
        state: SessionState,
        checked: Checked,
    ) -> Result<QueryStream, QueryError> {
        let df = DataFrame::new(state, checked.plan.clone());
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let inner = budget
            .bound(async { df.execute_stream().await.map_err(QueryError::from) })
            .await;
        let inner = match inner {
            Ok(s) => s,
            Err(e) => {
                self.record(caller, &checked.sql, None, &checked.tables, &refusal(&e));
                return Err(e);
            }
        };
        Ok(QueryStream {
            schema,
            inner: Some(inner),
            deadline: Box::pin(tokio::time::sleep_until(budget.deadline)),
            timeout: budget.timeout,
            cancel: budget.cancel.map(|c| Box::pin(c.cancelled_owned())),
            rows: 0,
            max_rows: self.limits.max_rows,
            outcome: None,
            permit: watchdog(budget.permit, budget.deadline),
            ticket: Some(Ticket {
                engine: self.clone(),
                caller: caller.clone(),
                sql: checked.sql,
                tables: checked.tables,
            }),
        })
    }
}

/// Holds a query's concurrency permit until the stream is dropped or its deadline passes,
/// whichever comes first: an answer left unread in a suspended portal stops counting at its
/// deadline (and fails with a timeout if it is read later).
fn watchdog(
    permit: OwnedSemaphorePermit,
    deadline: Instant,
) -> Arc<Mutex<Option<OwnedSemaphorePermit>>> {
    let slot = Arc::new(Mutex::new(Some(permit)));
    let weak = Arc::downgrade(&slot);
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline).await;
        if let Some(s) = weak.upgrade() {
            s.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
        }
    });
    slot
}

/// The audit line owed when the answer ends.
struct Ticket {
    engine: QueryEngine,
    caller: Caller,
    sql: String,
    tables: Vec<String>,
}

/// A running query's answer. Dropping it stops the query (DataFusion's tasks are aborted), so
/// a timeout, a cancel or a client that went away leave no work behind.
pub struct QueryStream {
    schema: SchemaRef,
    inner: Option<SendableRecordBatchStream>,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    cancel: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    rows: u64,
    max_rows: u64,
    outcome: Option<String>,
    ticket: Option<Ticket>,
    permit: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("rows", &self.rows)
            .finish()
    }
}

impl QueryStream {
    /// The answer's schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows yielded so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn stop(&mut self, e: QueryError) -> Poll<Option<Result<RecordBatch, QueryError>>> {
        self.inner = None; // drops DataFusion's stream and its spawned tasks
        self.outcome = Some(refusal(&e));
        Poll::Ready(Some(Err(e)))
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch, QueryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.inner.is_none() {
            return Poll::Ready(None);
        }
        if let Some(c) = self.cancel.as_mut()
            && c.as_mut().poll(cx).is_ready()
        {
            return self.stop(QueryError::Cancelled);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            let t = self.timeout;
            return self.stop(QueryError::Timeout(t));
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.inner = None;
                self.outcome = Some("ok".into());
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => self.stop(e.into()),
            Poll::Ready(Some(Ok(b))) => {
                let n = self.rows + b.num_rows() as u64;
                if n > self.max_rows {
                    let m = self.max_rows;
                    return self.stop(QueryError::TooManyRows(m));
                }
                self.rows = n;
                Poll::Ready(Some(Ok(b)))
            }
        }
    }
}

impl Drop for QueryStream {
    fn drop(&mut self) {
        self.permit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(t) = self.ticket.take() {
            let outcome = self
                .outcome
                .take()
                .unwrap_or_else(|| "ok (answer not read to the end)".into());
            t.engine
                .record(&t.caller, &t.sql, Some(self.rows), &t.tables, &outcome);
        }
    }
}
