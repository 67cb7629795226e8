//! The Postgres wire protocol (pgwire) for psql, psycopg, DBeaver, Grafana — through the gate.
//!
//! Every statement goes through [`crate::gate`] on a per-query state; the shared base session
//! is never touched by a connection. Own handlers ([`handler`]) reuse datafusion-postgres's
//! compatibility parser, pg_catalog and Arrow -> Postgres encoders. `SET`/`SHOW` of a short
//! list of client settings are per connection ([`session`]); `BEGIN`/`COMMIT`/`ROLLBACK` are
//! no-ops; cursors, `COPY` and every other statement are refused.
//!
//! Login ([`startup`]): any user name; the password is an analyst or admin token (cleartext,
//! so TLS when the server has a certificate, or loopback). A connection is closed as soon as its
//! credential stops being valid (revoked, expired), and each statement re-checks it. Cancel
//! requests stop the running query, as do the time limit and a client that goes away.

mod handler;
mod session;
mod startup;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use datafusion_postgres::pgwire;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ClientInfo, ErrorHandler, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::cancel::CancelRequest;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use carewatch_store::registry::{Principal, Registry};

use crate::engine::{QueryEngine, QueryError};
use crate::gate::Caller;

tokio::task_local! {
    /// The connection being served by the current task.
    static CONN: Arc<Conn>;
}

/// Per-connection state shared by the accept loop, the startup handler, the query handlers
/// and cancel requests.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    principal: Mutex<Option<Principal>>,
    logged_in: tokio::sync::Notify,
    current: Mutex<CancellationToken>,
    key: Mutex<Option<ConnKey>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Conn {
    /// The connection of the current task.
    pub(crate) fn current() -> Result<Arc<Conn>, PgWireError> {
        CONN.try_with(Arc::clone)
            .map_err(|_| user_error("08000", "no connection state"))
    }

    fn login(&self, p: Principal) {
        *lock(&self.principal) = Some(p);
        self.logged_in.notify_waiters();
        self.logged_in.notify_one();
    }

    /// The logged-in caller, if its credential is still valid.
    pub(crate) fn caller(&self, registry: &Registry) -> Result<Caller, PgWireError> {
        let p = lock(&self.principal)
            .clone()
            .ok_or_else(|| user_error("28000", "not logged in"))?;
        if !carewatch_auth::still_valid(registry, &p) {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "the credential of this session is no longer valid".into(),
            ))));
        }
        Ok(Caller::user(p, "pgwire"))
    }

    /// A fresh cancellation token for the next query (a cancel request fires it).
    pub(crate) fn next_query(&self) -> CancellationToken {
        let t = CancellationToken::new();
        *lock(&self.current) = t.clone();
        t
    }

    /// Completes when the logged-in credential stops being valid (never before login).
    async fn until_invalid(&self, registry: &Registry) {
        loop {
            let who = lock(&self.principal).clone();
            match who {
                Some(p) => return carewatch_auth::until_invalid(registry, &p).await,
                None => self.logged_in.notified().await,
            }
        }
    }
}

/// A Postgres error with a SQLSTATE and words safe to show.
pub(crate) fn user_error(code: &str, message: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message.into(),
    )))
}

/// The Postgres form of a gate error.
pub(crate) fn pg_error(e: QueryError) -> PgWireError {
    let code = match &e {
        QueryError::NotAllowed(_) => "25006", // read_only_sql_transaction
        QueryError::Forbidden(_) => "42501",  // insufficient_privilege
        QueryError::Invalid(m) if m.starts_with("syntax error") => "42601",
        QueryError::Invalid(_) => "42000",
        QueryError::Timeout(_) | QueryError::Cancelled => "57014", // query_canceled
        QueryError::Memory => "53200",                             // out_of_memory
        QueryError::Busy => "53300",                               // too_many_connections
        QueryError::TooManyRows(_) => "54000",                     // program_limit_exceeded
        QueryError::Internal => "XX000",
    };
    let msg = match &e {
        QueryError::NotAllowed(what) => {
            format!("carewatch is read-only over SQL: only queries are allowed ({what})")
        }
        QueryError::Timeout(_) => format!("canceling statement due to statement timeout: {e}"),
        QueryError::Cancelled => "canceling statement due to user request".into(),
        other => other.to_string(),
    };
    user_error(code, &msg)
}

/// A connection's (pid, secret key), as a cancel request names it.
type ConnKey = (i32, Vec<u8>);

/// Cancel requests: the (pid, secret) of a logged-in connection fires its current query's token.
#[derive(Debug, Default)]
struct Cancels {
    conns: Mutex<HashMap<ConnKey, Weak<Conn>>>,
}

#[async_trait]
impl CancelHandler for Cancels {
    async fn on_cancel_request(&self, r: CancelRequest) {
        let key = (r.pid, r.secret_key.to_bytes().to_vec());
        let conn = lock(&self.conns).get(&key).and_then(Weak::upgrade);
        if let Some(c) = conn {
            tracing::info!("postgres wire: cancel request");
            lock(&c.current).cancel();
        }
    }
}

/// Errors not produced by the gate (encoding, protocol) lose their text above debug.
#[derive(Debug)]
struct SafeErrors;

impl ErrorHandler for SafeErrors {
    fn on_error<C: ClientInfo>(&self, _client: &C, error: &mut PgWireError) {
        if let PgWireError::ApiError(e) = error {
            tracing::debug!(error = %e, "postgres wire error (raw)");
            *error = user_error("XX000", "query failed");
        }
    }
}

/// The pgwire handlers.
struct Handlers {
    query: Arc<handler::GateHandler>,
    startup: Arc<startup::TokenStartup>,
    cancels: Arc<Cancels>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.query.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.query.clone()
    }
    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }
    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancels.clone()
    }
    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(SafeErrors)
    }
}

/// Binds the Postgres wire listener (call before announcing it; a failure is the caller's).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the Postgres wire on a bound listener until the task is dropped. With `tls`, clients
/// may (and `sslmode=require` clients do) upgrade to TLS.
pub async fn serve(
    listener: TcpListener,
    engine: QueryEngine,
    auth: carewatch_auth::Authenticator,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let registry = auth.registry().clone();
    let cancels = Arc::new(Cancels::default());
    let handlers = Arc::new(Handlers {
        query: Arc::new(handler::GateHandler::new(engine, registry.clone())),
        startup: Arc::new(startup::TokenStartup::new(auth, cancels.clone())),
        cancels: cancels.clone(),
    });
    loop {
        let (socket, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "postgres wire: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (h, tls, registry, cancels) = (
            handlers.clone(),
            tls.clone(),
            registry.clone(),
            cancels.clone(),
        );
        tokio::spawn(async move {
            let conn = Arc::new(Conn::default());
            let probe = probe(&socket);
            let session = CONN.scope(conn.clone(), pgwire::tokio::process_socket(socket, tls, h));
            tokio::select! {
                r = session => if let Err(e) = r {
                    tracing::debug!(error = %e, "postgres wire connection ended");
                },
                () = conn.until_invalid(&registry) => {
                    tracing::info!("postgres wire: connection closed, its credential is no longer valid");
                }
                () = until_peer_gone(probe) => {
                    tracing::debug!("postgres wire: the client went away");
                }
            }
            if let Some(key) = lock(&conn.key).take() {
                lock(&cancels.conns).remove(&key);
            }
        });
    }
}

/// A second handle on the connection's socket, to notice a client that went away while a
/// query runs (pgwire reads nothing then).
fn probe(socket: &TcpStream) -> Option<TcpStream> {
    use std::os::fd::AsFd;
    let fd = socket.as_fd().try_clone_to_owned().ok()?;
    TcpStream::from_std(std::net::TcpStream::from(fd)).ok()
}

/// Completes when the peer closed the connection (EOF, or an error). Unread data means pgwire
/// will read it: look again a little later.
async fn until_peer_gone(probe: Option<TcpStream>) {
    let Some(probe) = probe else {
        return std::future::pending().await;
    };
    let mut b = [0u8; 1];
    loop {
        match probe.peek(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
        }
    }
}
