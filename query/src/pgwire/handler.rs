//! Simple and extended query handlers: every query goes through the gate; session statements
//! to [`super::session`]; everything else is refused (and audited).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use datafusion_postgres::arrow_pg::datatypes::{
    arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type,
};
use datafusion_postgres::pgwire;
use futures::{Sink, StreamExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;

use carewatch_store::registry::Registry;

use crate::engine::{QueryEngine, QueryError};
use crate::gate::{self, Caller, Checked};
use crate::run::QueryStream;

use super::{Conn, pg_error, session, user_error};

/// A parsed extended-protocol statement.
#[derive(Debug, Clone)]
pub(super) enum PgStatement {
    /// A query that passed the gate (parameters still placeholders).
    Query(Arc<Checked>),
    /// A session statement (SET, SHOW, BEGIN…).
    Session(Arc<Statement>),
}

/// Parses and gates statements for the extended protocol.
#[derive(Debug)]
pub(super) struct GateParser {
    engine: QueryEngine,
    registry: Arc<Registry>,
}

/// The query handlers.
#[derive(Debug)]
pub(super) struct GateHandler {
    parser: Arc<GateParser>,
}

impl GateHandler {
    pub(super) fn new(engine: QueryEngine, registry: Arc<Registry>) -> Self {
        GateHandler {
            parser: Arc::new(GateParser { engine, registry }),
        }
    }
}

impl GateParser {
    /// The caller of the current connection, its credential re-checked.
    fn caller(&self) -> PgWireResult<(Arc<Conn>, Caller)> {
        let conn = Conn::current()?;
        let who = conn.caller(&self.registry)?;
        Ok((conn, who))
    }

    /// A statement that is neither a query nor a session statement: refused and audited.
    fn refuse(&self, who: &Caller, s: &Statement) -> PgWireError {
        let what = s.to_string();
        let kind = what
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        self.engine
            .record(who, &what, None, &[], "refused: not read-only");
        let e = match s {
            Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => {
                QueryError::NotAllowed("cursors are not supported; use LIMIT/OFFSET".into())
            }
            _ => QueryError::NotAllowed(kind),
        };
        pg_error(e)
    }

    async fn simple_one<C>(&self, client: &mut C, s: Statement) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (conn, who) = self.caller()?;
        let sql = s.to_string();
        if gate::is_query(&s) {
            let settings = session::settings(client.metadata());
            let stream = self
                .engine
                .run_statement(&who, &sql, s, &settings, Some(conn.next_query()))
                .await
                .map_err(pg_error)?;
            return encode(stream, &Format::UnifiedText, client.metadata()).map(Response::Query);
        }
        if !session::handles(&s) {
            return Err(self.refuse(&who, &s));
        }
        self.session(client, &who, &s).await
    }

    /// Runs a session statement and audits its outcome.
    async fn session<C>(
        &self,
        client: &mut C,
        who: &Caller,
        s: &Statement,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let r = session::run(client, self.engine.limits().timeout, s).await;
        let outcome = if r.is_ok() {
            "ok"
        } else {
            "refused: session setting"
        };
        self.engine.record(who, &s.to_string(), None, &[], outcome);
        r
    }
}

/// Streams a gated answer as Postgres rows (errors become the statement's error).
fn encode(
    stream: QueryStream,
    format: &Format,
    md: &std::collections::HashMap<String, String>,
) -> PgWireResult<QueryResponse> {
    let opts = Arc::new(FormatOptions::from_client_metadata(md));
    let schema = stream.schema();
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, Some(opts))?);
    let f = fields.clone();
    let rows = stream
        .map(move |b| {
            let it: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync> = match b {
                Ok(b) => encode_recordbatch(f.clone(), b),
                Err(e) => Box::new(std::iter::once(Err(pg_error(e)))),
            };
            futures::stream::iter(it)
        })
        .flatten();
    Ok(QueryResponse::new(fields, rows))
}

#[async_trait]
impl SimpleQueryHandler for GateHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let p = &self.parser;
        let (_, who) = p.caller()?;
        let statements = match gate::parse(query) {
            Ok(s) => s,
            Err(e) => {
                p.engine.record(&who, query, None, &[], &gate::refusal(&e));
                return Err(pg_error(e));
            }
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut out = Vec::with_capacity(statements.len());
        for s in statements {
            out.push(p.simple_one(client, s).await?);
        }
        Ok(out)
    }
}

#[async_trait]
impl QueryParser for GateParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let (_, who) = self.caller()?;
        let mut statements = gate::parse(sql).map_err(|e| {
            self.engine.record(&who, sql, None, &[], &gate::refusal(&e));
            pg_error(e)
        })?;
        if statements.len() > 1 {
            return Err(user_error(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let Some(s) = statements.pop() else {
            return Ok(None);
        };
        if gate::is_query(&s) {
            let settings = session::settings(client.metadata());
            let checked = self
                .engine
                .prepare(&who, sql, s, &settings)
                .await
                .map_err(pg_error)?;
            return Ok(Some(PgStatement::Query(Arc::new(checked))));
        }
        if !session::handles(&s) {
            return Err(self.refuse(&who, &s));
        }
        Ok(Some(PgStatement::Session(Arc::new(s))))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        match stmt {
            PgStatement::Query(c) => Ok(parameter_types(c)?
                .iter()
                .map(|t| {
                    t.as_ref()
                        .and_then(|t| into_pg_type(t).ok())
                        .unwrap_or(Type::UNKNOWN)
                })
                .collect()),
            PgStatement::Session(_) => Ok(Vec::new()),
        }
    }

    fn get_result_schema(
        &self,
        stmt: &PgStatement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match stmt {
            PgStatement::Query(c) => arrow_schema_to_pg_fields(
                c.plan.schema().as_arrow(),
                column_format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            PgStatement::Session(s) => Ok(session::fields(s)),
        }
    }
}

/// The plan's parameter types in `$1, $2, …` order (None where DataFusion cannot tell).
fn parameter_types(c: &Checked) -> PgWireResult<Vec<Option<DataType>>> {
    let types = c
        .plan
        .get_parameter_types()
        .map_err(|e| pg_error(e.into()))?;
    let mut v: Vec<(u32, Option<DataType>)> = types
        .into_iter()
        .map(|(k, t)| (k.trim_start_matches('$').parse().unwrap_or(u32::MAX), t))
        .collect();
    v.sort_by_key(|(k, _)| *k);
    Ok(v.into_iter().map(|(_, t)| t).collect())
}

#[async_trait]
impl ExtendedQueryHandler for GateHandler {
    type Statement = PgStatement;
    type QueryParser = GateParser;

    fn query_parser(&self) -> Arc<GateParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let p = &self.parser;
        let (conn, who) = p.caller()?;
        match &portal.statement.statement {
            PgStatement::Session(s) => p.session(client, &who, s).await,
            PgStatement::Query(c) => {
                let types = parameter_types(c)?;
                let refs: Vec<Option<&DataType>> = types.iter().map(Option::as_ref).collect();
                let params = deserialize_parameters_with_server_types(portal, &refs, &[])?;
                let settings = session::settings(client.metadata());
                let has_params = portal.parameter_len() > 0;
                let stream = p
                    .engine
                    .execute(
                        &who,
                        c,
                        has_params.then_some(params),
                        &settings,
                        Some(conn.next_query()),
                    )
                    .await
                    .map_err(pg_error)?;
                encode(stream, &portal.result_column_format, client.metadata()).map(Response::Query)
            }
        }
    }
}
