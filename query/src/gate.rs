//! The one SQL statement gate, used by every wire (HTTP `/v1/sql`, the Postgres wire,
//! `carewatch sql`, the dashboard).
//!
//! 1. Parse with a fixed PostgreSQL dialect (datafusion-postgres's compatibility parser, which
//!    also rewrites pg_catalog idioms) — never the session's `sql_parser.dialect`.
//! 2. Allow only `Query` and `EXPLAIN [ANALYZE] <query>` statements.
//! 3. Plan on a fresh per-query state derived from the immutable base session.
//! 4. Check the WHOLE logical plan (inside EXPLAIN/ANALYZE, CTEs, subqueries) with read-only
//!    `SQLOptions::verify_plan` (its visitor descends into Explain and Analyze inputs and into
//!    subqueries), and refuse extension nodes.
//! 5. Table access from the plan's table scans: `audit_log` is for admins; the tables read are
//!    recorded in the audit line.
//!
//! Execution (limits, cancellation, audit on completion) is in [`crate::run`].

use std::sync::LazyLock;
use std::time::Duration;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

use carewatch_store::registry::{Principal, Role};

use crate::engine::{QueryEngine, QueryError};

/// Who runs a statement, through which channel.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The credential behind the call.
    pub principal: Principal,
    /// `http-sql`, `pgwire`, `cli`, `internal`.
    pub channel: &'static str,
    /// Whether the statement is recorded in the audit log (user statements are; carewatch's
    /// own dashboard query is not).
    pub audited: bool,
}

impl Caller {
    /// A user statement on a channel.
    pub fn user(principal: Principal, channel: &'static str) -> Caller {
        Caller {
            principal,
            channel,
            audited: true,
        }
    }

    /// carewatch itself (dashboard, offline CLI): admin tables allowed, not audited.
    pub fn internal(channel: &'static str) -> Caller {
        Caller {
            principal: Principal {
                id: "carewatch".into(),
                role: Role::Admin,
                subject: None,
                person: None,
            },
            channel,
            audited: false,
        }
    }

    fn is_internal(&self) -> bool {
        !self.audited
    }
}

/// Per-connection settings a client may change (applied to each query's own state).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// A lower time limit than the server's (never higher, never none).
    pub statement_timeout: Option<Duration>,
    /// Session time zone (`SET TIME ZONE`).
    pub time_zone: Option<String>,
}

/// A statement that passed the gate: its plan (parameters may still be placeholders) and the
/// tables it reads.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The SQL as given (for the audit line).
    pub sql: String,
    /// The logical plan.
    pub plan: LogicalPlan,
    /// Tables scanned anywhere in the plan.
    pub tables: Vec<String>,
}

static PARSER: LazyLock<PostgresCompatibilityParser> =
    LazyLock::new(PostgresCompatibilityParser::new);

/// Parses SQL text with the fixed PostgreSQL dialect.
pub fn parse(sql: &str) -> Result<Vec<Statement>, QueryError> {
    PARSER
        .parse(sql)
        .map_err(|e| QueryError::Invalid(format!("syntax error: {e}")))
}

/// Parses exactly one statement.
pub fn parse_one(sql: &str) -> Result<Statement, QueryError> {
    let mut v = parse(sql)?;
    match v.len() {
        0 => Err(QueryError::Invalid("empty query".into())),
        1 => Ok(v.remove(0)),
        _ => Err(QueryError::NotAllowed("one statement per request".into())),
    }
}

/// Statement kinds that may be planned: a query, or EXPLAIN [ANALYZE] of a query.
pub fn is_query(s: &Statement) -> bool {
    match s {
        Statement::Query(_) => true,
        Statement::Explain { statement, .. } => matches!(**statement, Statement::Query(_)),
        _ => false,
    }
}

fn statement_kind(s: &Statement) -> String {
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    words.join(" ").to_ascii_uppercase()
}

/// Checks a whole plan: read-only everywhere, no extension nodes; returns the tables scanned.
pub fn verify_plan(plan: &LogicalPlan, role: Role) -> Result<Vec<String>, QueryError> {
    QueryEngine::options().verify_plan(plan).map_err(|e| {
        tracing::debug!(error = %e, "plan refused");
        QueryError::NotAllowed("the statement writes or changes state".into())
    })?;
    let mut tables: Vec<String> = Vec::new();
    let mut bad = false;
    let _ = plan.apply_with_subqueries(|n| {
        match n {
            LogicalPlan::TableScan(t) => {
                let name = t.table_name.table().to_ascii_lowercase();
                if !tables.contains(&name) {
                    tables.push(name);
                }
            }
            LogicalPlan::Extension(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Statement(_) => bad = true,
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if bad {
        return Err(QueryError::NotAllowed(
            "the statement writes or changes state".into(),
        ));
    }
    if role != Role::Admin && tables.iter().any(|t| t == "audit_log") {
        return Err(QueryError::Forbidden("audit_log".into()));
    }
    tables.sort();
    Ok(tables)
}

impl QueryEngine {
    /// Parses (fixed dialect), checks the statement kind, plans on `state` and verifies the
    /// plan. Refusals are audited here; the caller audits the outcome of running it.
    pub(crate) async fn check(
        &self,
        caller: &Caller,
        state: &SessionState,
        sql: &str,
        statement: Statement,
    ) -> Result<Checked, QueryError> {
        let res = self.check_inner(caller, state, sql, statement).await;
        if let Err(e) = &res {
            let tables = match e {
                QueryError::Forbidden(t) => vec![t.clone()],
                _ => Vec::new(),
            };
            self.record(caller, sql, None, &tables, &refusal(e));
        }
        res
    }

    async fn check_inner(
        &self,
        caller: &Caller,
        state: &SessionState,
        sql: &str,
        statement: Statement,
    ) -> Result<Checked, QueryError> {
        if !is_query(&statement) {
            return Err(QueryError::NotAllowed(statement_kind(&statement)));
        }
        let plan = state
            .statement_to_plan(DfStatement::Statement(Box::new(statement)))
            .await?;
        let tables = verify_plan(&plan, caller.principal.role)?;
        Ok(Checked {
            sql: sql.to_owned(),
            plan,
            tables,
        })
    }

    /// One audit line (skipped for carewatch's own queries).
    pub(crate) fn record(
        &self,
        caller: &Caller,
        sql: &str,
        rows: Option<u64>,
        tables: &[String],
        outcome: &str,
    ) {
        if caller.is_internal() {
            return;
        }
        self.audit().record_tables(
            &caller.principal,
            caller.channel,
            sql,
            rows,
            tables,
            outcome,
        );
    }
}

/// The audit outcome of a refused or failed statement.
pub(crate) fn refusal(e: &QueryError) -> String {
    match e {
        QueryError::NotAllowed(_) => "refused: not read-only".into(),
        QueryError::Forbidden(_) => "refused: audit log is for admins".into(),
        QueryError::Busy => "refused: too many concurrent queries".into(),
        QueryError::Timeout(_) => "timeout".into(),
        QueryError::Cancelled => "cancelled".into(),
        other => format!("error: {other}"),
    }
}
