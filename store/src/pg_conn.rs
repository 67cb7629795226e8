//! One PostgreSQL connection used by one caller at a time, opened again after a failure (the
//! shared alert history, the shared audit trail). Blocking: call it off the async workers
//! (the synchronous client runs a runtime of its own).

use std::sync::Mutex;

use postgres::Client;

use crate::engine::connect;
use crate::{Error, Result};

pub(crate) struct PgConn {
    url: String,
    /// For error messages: what the connection is for.
    what: &'static str,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("PgConn")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl PgConn {
    /// Connects and runs `schema` (idempotent `CREATE … IF NOT EXISTS`).
    pub(crate) fn open(url: &str, what: &'static str, schema: &str) -> Result<PgConn> {
        let mut c = connect(url, what)?;
        c.batch_execute(schema)
            .map_err(|e| crate::pg_error(what, e))?;
        Ok(PgConn {
            url: url.to_owned(),
            what,
            client: Mutex::new(Some(c)),
        })
    }

    /// The error of a request on this connection (class only; the message goes to debug).
    pub(crate) fn err(&self, e: postgres::Error) -> Error {
        crate::pg_error(self.what, e)
    }

    /// Runs `f` on the connection, reconnecting first when the last one failed; a failure
    /// drops the connection (a transaction cut off mid-way leaves an unknown state).
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut g = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let c = match &mut *g {
            Some(c) => c,
            slot => slot.insert(connect(&self.url, self.what)?),
        };
        let r = f(c);
        if r.is_err() {
            *g = None;
        }
        r
    }
}
