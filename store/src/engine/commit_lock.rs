//! Cluster mode: the Delta commits of every node sharing a table go one at a time, through a
//! PostgreSQL advisory lock per table (issue 13).
//!
//! A Delta commit is "LIST the log for its latest version → PUT `<latest + 1>.json`", and it
//! relies on the object store refusing the PUT if that key appeared meanwhile (put-if-absent,
//! `If-None-Match: *`). Garage 2.5.0 accepts a second create-only PUT and replaces the first,
//! so two nodes committing at the same moment could both write one version and one commit —
//! acknowledged, persisted readings — vanished. Under the lock no other carewatch node commits
//! between the LIST and the PUT, so the version is free when written; the committer then
//! checks that its transaction (hence the lock) was held throughout and reads its log entry
//! back (a writer that did not take the lock would show there).
//!
//! The lock is `pg_advisory_xact_lock(key)` in a transaction of this node's own connection,
//! `key` derived from the table's URL; it ends with the transaction (COMMIT, or the connection
//! closing — a killed node releases it at once). `lock_timeout` bounds the wait: a commit that
//! cannot get the lock fails, its rows stay buffered and the next persist retries. Readers
//! never take it. The synchronous client lives on a thread of its own, so waiting for the lock
//! never occupies an async worker; callers await a reply.

use std::sync::{Arc, mpsc};

use postgres::Client;

use crate::pg_connect::connect;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::{Error, Result};

/// How long a commit waits for another node's commit before it fails (and is retried).
const LOCK_TIMEOUT: &str = "30s";

fn pg_err(e: postgres::Error) -> Error {
    crate::pg_error("delta commit lock", e)
}

/// The advisory lock key of a table (by its URL, so every node naming the same tables agrees).
pub(crate) fn key(table_url: &str) -> i64 {
    let d = Sha256::digest(format!("carewatch delta commit {table_url}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

struct Conn {
    url: String,
    client: Option<Client>,
}

impl Conn {
    fn client(&mut self) -> Result<&mut Client> {
        if self.client.is_none() {
            self.client = Some(connect(&self.url, "delta commit lock")?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| Error::Io("delta commit lock: no connection".into()))
    }

    /// Runs `f`; on an error forgets the connection (its transaction and lock end with it).
    fn run<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let out = self.client().and_then(f);
        if out.is_err() {
            self.client = None;
        }
        out
    }

    fn lock(&mut self, key: i64) -> Result<()> {
        self.run(|c| {
            c.batch_execute(&format!("BEGIN; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                .map_err(pg_err)?;
            c.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
                .map_err(pg_err)?;
            Ok(())
        })
    }

    fn release(&mut self) {
        if let Some(c) = self.client.as_mut()
            && c.batch_execute("COMMIT").is_err()
        {
            self.client = None;
        }
    }
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// One node's connection for commit locks.
pub(crate) struct CommitLock {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for CommitLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitLock")
    }
}

impl CommitLock {
    /// Starts the lock's thread and connects once (a wrong URL fails at open, not at the
    /// first persist).
    pub(crate) async fn open(url: &str) -> Result<Arc<CommitLock>> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let mut conn = Conn {
            url: url.to_owned(),
            client: None,
        };
        std::thread::Builder::new()
            .name("delta-commit-lock".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| Error::Io(format!("delta commit lock thread: {e}")))?;
        let lock = Arc::new(CommitLock { jobs });
        lock.call(|c| c.run(|_| Ok(()))).await?;
        Ok(lock)
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(move |c| {
            let _ = tx.send(f(c));
        })?;
        rx.await
            .map_err(|_| Error::Io("delta commit lock: worker stopped".into()))?
    }

    fn send(&self, f: impl FnOnce(&mut Conn) + Send + 'static) -> Result<()> {
        self.jobs
            .send(Box::new(f))
            .map_err(|_| Error::Io("delta commit lock: worker stopped".into()))
    }

    /// Waits for the table's lock (at most `lock_timeout`). Dropping the answer releases it.
    pub(crate) async fn acquire(self: &Arc<Self>, key: i64) -> Result<Held> {
        let (tx, rx) = oneshot::channel();
        self.send(move |c| {
            let got = c.lock(key);
            let ok = got.is_ok();
            // The waiter gave up (its future was dropped): nobody will release it but us.
            if tx.send(got).is_err() && ok {
                c.release();
            }
        })?;
        rx.await
            .map_err(|_| Error::Io("delta commit lock: worker stopped".into()))??;
        Ok(Held { lock: self.clone() })
    }
}

/// A table's commit lock, held until dropped.
#[derive(Debug)]
pub(crate) struct Held {
    lock: Arc<CommitLock>,
}

impl Held {
    /// `Ok`: the lock's transaction is still open, so the lock was held from `acquire` until
    /// now (it ends only with its transaction or connection).
    pub(crate) async fn still_held(&self) -> Result<()> {
        self.lock
            .call(|c| match c.client.as_mut() {
                Some(cl) => cl.execute("SELECT 1", &[]).map(|_| ()).map_err(|e| {
                    c.client = None;
                    pg_err(e)
                }),
                None => Err(Error::Io("delta commit lock: connection lost".into())),
            })
            .await
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Queued behind nothing of ours: the next acquire comes after it.
        let _ = self.lock.send(Conn::release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_per_table_url() {
        let a = key("s3://b/tables/observations/");
        assert_eq!(a, key("s3://b/tables/observations/"));
        assert_ne!(a, key("s3://b/tables/dead_letters/"));
        assert_ne!(a, key("s3://b/other/observations/"));
    }
}
