//! The registry's [`Backend`] in PostgreSQL (cluster mode, issue 13): the same transactions as
//! the log file, as rows of one table that every node writes and reads.
//!
//! - `carewatch_registry_log(seq, tx)`: one [`Tx`] (its JSON) a row, `seq` counting up from 1.
//! - `carewatch_registry_epoch(epoch)`: bumped by a compaction, which replaces the rows by the
//!   whole state; a reader that sees a new epoch reloads (the log file's "new inode").
//!
//! Writers are serialised by a transaction-scoped advisory lock, taken in `begin` and held to
//! `commit`/`abort`: the writer holding it has read every row (so it numbers its rows after
//! them), and a row becomes visible only with its transaction's commit, so readers see the log
//! grow in `seq` order without gaps. Readers take no lock: `poll` reads the epoch and the rows
//! past its last `seq` in one repeatable-read snapshot.
//!
//! The synchronous client runs its own small runtime, so it lives on a thread of its own and
//! the backend's methods hand it jobs: they may be called from any thread, async workers
//! included (the registry calls its backend from the blocking pool, as it does for the file).
//! A broken connection is dropped (PostgreSQL rolls its transaction back) and opened again by
//! the next call.

use std::sync::mpsc;

use postgres::Client;

use super::persist::{Backend, Changes, Tx};
use crate::{Error, Result};

/// The advisory lock of registry writers ("carewatc").
const LOCK_KEY: i64 = 0x6361_7265_7761_7463;
/// Rows past this (and past twice the state at the last compaction) ask for a compaction.
const COMPACT_MIN_ROWS: i64 = 10_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS carewatch_registry_log (seq BIGINT PRIMARY KEY, tx TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS carewatch_registry_epoch (
    id INT PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL
);
INSERT INTO carewatch_registry_epoch VALUES (1, 0) ON CONFLICT DO NOTHING;
";

fn pg_err(e: postgres::Error) -> Error {
    crate::pg_error("registry", e)
}

/// The connection and what this node has read of the log; owned by the worker thread.
struct Conn {
    url: String,
    client: Option<Client>,
    /// The epoch whose rows `last_seq` counts; -1 before the first read.
    epoch: i64,
    last_seq: i64,
    /// Rows in the table now, and the state's size at the last compaction.
    rows: i64,
    compacted: i64,
}

impl Conn {
    fn client(&mut self) -> Result<&mut Client> {
        if self.client.is_none() {
            let c = crate::pg_connect::connect(&self.url, "registry")?;
            self.client = Some(c);
        }
        self.client
            .as_mut()
            .ok_or_else(|| Error::Io("registry: postgres: no connection".into()))
    }

    /// Runs `f`; on an error forgets the connection (its transaction, if any, rolls back).
    fn run<T>(&mut self, f: impl FnOnce(&mut Conn) -> Result<T>) -> Result<T> {
        let out = f(self);
        if out.is_err() {
            self.client = None;
        }
        out
    }

    /// What other writers did since the last look (inside the caller's transaction).
    fn changes(&mut self) -> Result<Changes> {
        let (epoch_seen, last) = (self.epoch, self.last_seq);
        let c = self.client()?;
        let epoch: i64 = c
            .query_one(
                "SELECT epoch FROM carewatch_registry_epoch WHERE id = 1",
                &[],
            )
            .map_err(pg_err)?
            .get(0);
        let reload = epoch != epoch_seen;
        let from = if reload { 0 } else { last };
        let rows = c
            .query(
                "SELECT seq, tx FROM carewatch_registry_log WHERE seq > $1 ORDER BY seq",
                &[&from],
            )
            .map_err(pg_err)?;
        let mut txs = Vec::with_capacity(rows.len());
        let mut seq = from;
        for r in &rows {
            seq = r.get(0);
            let json: &str = r.get(1);
            txs.push(
                serde_json::from_str::<Tx>(json)
                    .map_err(|e| Error::Io(format!("registry: postgres row {seq}: {e}")))?,
            );
        }
        if reload {
            let n: i64 = c
                .query_one("SELECT count(*) FROM carewatch_registry_log", &[])
                .map_err(pg_err)?
                .get(0);
            (self.epoch, self.rows, self.compacted) = (epoch, n, n);
        } else {
            self.rows += txs.len() as i64;
        }
        self.last_seq = seq;
        Ok(match (reload, txs.is_empty()) {
            (true, _) => Changes::Reload(txs),
            (false, true) => Changes::None,
            (false, false) => Changes::Append(txs),
        })
    }

    fn insert(&mut self, txs: &[Tx]) -> Result<()> {
        let mut seq = self.last_seq;
        let c = self.client()?;
        let stmt = c
            .prepare("INSERT INTO carewatch_registry_log (seq, tx) VALUES ($1, $2)")
            .map_err(pg_err)?;
        for tx in txs {
            seq += 1;
            let json = serde_json::to_string(tx).map_err(|e| Error::Encode(e.to_string()))?;
            c.execute(&stmt, &[&seq, &json]).map_err(pg_err)?;
        }
        c.batch_execute("COMMIT").map_err(pg_err)?;
        self.rows += seq - self.last_seq;
        self.last_seq = seq;
        Ok(())
    }

    fn replace(&mut self, state: &[Tx]) -> Result<()> {
        let c = self.client()?;
        c.batch_execute(
            "DELETE FROM carewatch_registry_log;
             UPDATE carewatch_registry_epoch SET epoch = epoch + 1 WHERE id = 1;",
        )
        .map_err(pg_err)?;
        let epoch = self.epoch + 1;
        self.insert(state)?;
        // Our own compaction: the state is what we hold, numbered from where we were.
        (self.epoch, self.rows, self.compacted) = (epoch, state.len() as i64, state.len() as i64);
        Ok(())
    }
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// The registry's durable side in PostgreSQL.
pub(crate) struct PgLog {
    jobs: mpsc::Sender<Job>,
    wants: bool,
}

impl std::fmt::Debug for PgLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgLog")
    }
}

impl PgLog {
    /// Connects, creates the tables if they are missing, and reads the whole log.
    pub(crate) fn open(url: &str) -> Result<(PgLog, Vec<Tx>)> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let mut conn = Conn {
            url: url.to_owned(),
            client: None,
            epoch: -1,
            last_seq: 0,
            rows: 0,
            compacted: 0,
        };
        std::thread::Builder::new()
            .name("registry-pg".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| Error::Io(format!("registry: postgres thread: {e}")))?;
        let log = PgLog { jobs, wants: false };
        let txs = log.call(|c| {
            c.run(|c| {
                let cl = c.client()?;
                cl.batch_execute("BEGIN").map_err(pg_err)?;
                cl.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
                    .map_err(pg_err)?;
                cl.batch_execute(SCHEMA).map_err(pg_err)?;
                let changes = c.changes()?;
                c.client()?.batch_execute("COMMIT").map_err(pg_err)?;
                Ok(match changes {
                    Changes::Reload(t) | Changes::Append(t) => t,
                    Changes::None => Vec::new(),
                })
            })
        })?;
        Ok((log, txs))
    }

    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move |c| {
                let _ = tx.send(f(c));
            }))
            .map_err(|_| Error::Io("registry: postgres worker stopped".into()))?;
        rx.recv()
            .map_err(|_| Error::Io("registry: postgres worker stopped".into()))?
    }

    fn note_size(&mut self) -> Result<()> {
        self.wants = self.call(|c| Ok(c.rows > COMPACT_MIN_ROWS.max(2 * c.compacted)))?;
        Ok(())
    }
}

impl Backend for PgLog {
    fn begin(&mut self) -> Result<Changes> {
        self.call(|c| {
            c.run(|c| {
                let cl = c.client()?;
                cl.batch_execute("BEGIN").map_err(pg_err)?;
                cl.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
                    .map_err(pg_err)?;
                c.changes()
            })
        })
    }

    fn commit(&mut self, txs: &[Tx]) -> Result<()> {
        let txs = txs.to_vec();
        self.call(move |c| c.run(|c| c.insert(&txs)))?;
        self.note_size()
    }

    fn abort(&mut self) {
        let _ = self.call(|c| c.run(|c| c.client()?.batch_execute("ROLLBACK").map_err(pg_err)));
    }

    fn poll(&mut self) -> Result<Changes> {
        self.call(|c| {
            c.run(|c| {
                c.client()?
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .map_err(pg_err)?;
                let changes = c.changes()?;
                c.client()?.batch_execute("COMMIT").map_err(pg_err)?;
                Ok(changes)
            })
        })
    }

    fn wants_compaction(&self) -> bool {
        self.wants
    }

    fn compact(&mut self, state: &[Tx]) -> Result<()> {
        let state = state.to_vec();
        self.call(move |c| c.run(|c| c.replace(&state)))?;
        self.wants = false;
        Ok(())
    }
}
