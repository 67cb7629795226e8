//! The access audit trail of a cluster in PostgreSQL (issue 13): every node appends to one
//! table, so `audit_log` on any node shows every node's accesses, and a node lost with its
//! disk takes none of them along. One row per access, `carewatch_audit_log(id, line)`: `line`
//! is the JSON line the single node writes to `audit.jsonl`, so both are read the same way;
//! `id` orders them in commit order per node (an identity column).
//!
//! An append returns once its transaction committed (PostgreSQL's durability, like the file's
//! fsync). Blocking: call it off the async workers.

use crate::Result;
use crate::pg_conn::PgConn;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS carewatch_audit_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    line TEXT NOT NULL
);
";

/// The shared audit trail.
#[derive(Debug)]
pub struct SharedAudit {
    conn: PgConn,
}

impl SharedAudit {
    /// Connects and creates the table if it is missing.
    pub fn open(url: &str) -> Result<SharedAudit> {
        Ok(SharedAudit {
            conn: PgConn::open(url, "audit trail", SCHEMA)?,
        })
    }

    /// Appends one line; returns once it is committed.
    pub fn append(&self, line: &str) -> Result<()> {
        self.conn.with(|c| {
            c.execute(
                "INSERT INTO carewatch_audit_log (line) VALUES ($1)",
                &[&line],
            )
            .map(|_| ())
            .map_err(|e| self.conn.err(e))
        })
    }

    /// Every line, oldest first.
    pub fn lines(&self) -> Result<Vec<String>> {
        self.conn.with(|c| {
            let rows = c
                .query("SELECT line FROM carewatch_audit_log ORDER BY id", &[])
                .map_err(|e| self.conn.err(e))?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
    }
}
