//! The Postgres wire protocol (datafusion-postgres over pgwire) for psql, DBeaver, Grafana.
//!
//! Login: any user name, the password is an analyst or admin token (cleartext over the wire, so
//! loopback or TLS only). Statements other than queries are refused before planning by
//! [`ReadOnlyHook`]; `SET`/`SHOW`, transactions and cursors are handled by datafusion-postgres's
//! own hooks so clients that send them at connect time work. `pg_catalog` is installed so
//! `\d` works, and the server reports a plain numeric version (16.6).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, QueryHook};
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::api::{ClientInfo, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use carewatch_store::registry::{Principal, Registry, Role};

use crate::audit::AuditLog;

/// Refuses every statement that is not a read (DDL, DML, COPY, CREATE EXTERNAL TABLE…).
#[derive(Debug)]
pub struct ReadOnlyHook {
    audit: Arc<AuditLog>,
}

impl ReadOnlyHook {
    fn check(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &dyn ClientInfo,
    ) -> Option<PgWireError> {
        let md = client.metadata();
        let who = Principal {
            id: md.get(META_PRINCIPAL).cloned().unwrap_or_default(),
            role: md
                .get(META_ROLE)
                .and_then(|r| Role::parse(r))
                .unwrap_or(Role::Analyst),
            subject: None,
        };
        let sql = statement.to_string();
        if !allowed(statement) {
            self.audit
                .record(&who, "pgwire", &sql, None, "refused: not read-only");
            return Some(refused());
        }
        if who.role != Role::Admin && crate::audit::mentions_audit(ctx, &sql) {
            self.audit.record(
                &who,
                "pgwire",
                &sql,
                None,
                "refused: audit log is for admins",
            );
            return Some(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "42501".into(),
                "permission denied for table audit_log".into(),
            ))));
        }
        self.audit.record(&who, "pgwire", &sql, None, "ok");
        None
    }
}

const META_PRINCIPAL: &str = "carewatch.principal";
const META_ROLE: &str = "carewatch.role";

fn allowed(s: &Statement) -> bool {
    matches!(
        s,
        Statement::Query(_)
            | Statement::Explain { .. }
            | Statement::ShowVariable { .. }
            | Statement::ShowVariables { .. }
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::Set(_)
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Declare { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
            | Statement::Deallocate { .. }
            | Statement::Discard { .. }
    )
}

fn refused() -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "25006".into(), // read_only_sql_transaction
        "carewatch is read-only over SQL: only queries are allowed".into(),
    )))
}

#[async_trait]
impl QueryHook for ReadOnlyHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.check(statement, ctx, &*client).map(Err)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        self.check(statement, ctx, client).map(Err)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        (!allowed(statement)).then(|| Err(refused()))
    }
}

/// Cleartext-password startup that checks the password as a carewatch token.
pub struct TokenStartup {
    registry: Arc<Registry>,
    timeout: std::time::Duration,
    params: DefaultServerParameterProvider,
}

impl Debug for TokenStartup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenStartup")
    }
}

#[async_trait]
impl StartupHandler for TokenStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                match self.registry.authenticate(pwd.password.trim()) {
                    Some(p) if matches!(p.role, Role::Analyst | Role::Admin) => {
                        tracing::info!(principal = %p.id, role = p.role.as_str(), "postgres wire login");
                        client
                            .metadata_mut()
                            .insert(META_PRINCIPAL.into(), p.id.clone());
                        client
                            .metadata_mut()
                            .insert(META_ROLE.into(), p.role.as_str().into());
                        // The same per-query time limit as HTTP SQL (datafusion-postgres reads
                        // this metadata key; a client may change it with SET statement_timeout).
                        client.metadata_mut().insert(
                            "statement_timeout_ms".into(),
                            self.timeout.as_millis().to_string(),
                        );
                        finish_authentication(client, &self.params).await?;
                    }
                    _ => {
                        tracing::info!("postgres wire login refused");
                        return Err(PgWireError::InvalidPassword(user));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The pgwire handlers: token startup + the DataFusion session service.
pub struct Handlers {
    session: Arc<DfSessionService>,
    startup: Arc<TokenStartup>,
}

impl Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handlers")
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.session.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.session.clone()
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Serves the Postgres wire protocol on `host:port` until the task is dropped.
pub async fn serve(
    ctx: SessionContext,
    registry: Arc<Registry>,
    audit: Arc<AuditLog>,
    timeout: std::time::Duration,
    host: String,
    port: u16,
) -> std::io::Result<()> {
    let ctx = Arc::new(ctx);
    setup_pg_catalog(&ctx, "carewatch", EmptyContextProvider)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(ReadOnlyHook { audit }),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let session = Arc::new(DfSessionService::new_with_hooks(ctx, hooks));
    let mut params = DefaultServerParameterProvider::default();
    params.server_version = "16.6".into();
    let handlers = Arc::new(Handlers {
        session,
        startup: Arc::new(TokenStartup {
            registry,
            params,
            timeout,
        }),
    });
    let opts = datafusion_postgres::ServerOptions::new()
        .with_host(host)
        .with_port(port);
    datafusion_postgres::serve_with_handlers(handlers, &opts).await
}
