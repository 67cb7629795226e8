//! The registry's writes and the durable side: opening (and migrating), one change at a time
//! through the [`Backend`], applying what other writers did, last uses, compaction.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use super::persist::{Backend, Changes, Op, Tx};
use super::{Data, Registry, Role, lock, log, marks::GRAIN_US, now_us};
use crate::{Error, Result};

/// `registry.json` of earlier versions, as transactions.
fn legacy(bytes: &[u8]) -> Result<Vec<Tx>> {
    let d = Data::parse(bytes).map_err(|e| Error::Config(format!("{}: {e}", log::LEGACY)))?;
    Ok(d.snapshot())
}

/// How old a look for others' changes may be when an unknown device id is attributed (UTC
/// micros): a stream of readings of unknown devices costs at most one look per 20 ms.
pub(super) const MISS_LOOK_US: i64 = 20_000;

impl Registry {
    pub(super) fn with(data: Data, backend: Box<dyn Backend>, read_only: bool) -> Registry {
        Registry {
            data: RwLock::new(data),
            backend: Mutex::new(backend),
            read_only,
            last_used: Mutex::default(),
            seen: Mutex::default(),
            usage_written_us: std::sync::atomic::AtomicI64::new(now_us()),
            fresh_as_of_us: std::sync::atomic::AtomicI64::new(0),
            generation: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Opens the registry in `dir` (migrating a `registry.json`); on a registry without any
    /// credential creates an admin credential, returned once (the caller prints it once).
    pub fn open(dir: &Path) -> Result<(Registry, Option<String>)> {
        let o = log::LogFile::open(dir, legacy)?;
        let r = Registry::with(Data::from_txs(o.txs), Box::new(o.log), false);
        let admin = if r.read(|d| d.credentials.is_empty()) {
            Some(r.create_token(Role::Admin, None)?)
        } else {
            None
        };
        Ok((r, admin))
    }

    /// Opens the registry kept in PostgreSQL at `url` (cluster mode: every node shares it),
    /// creating its tables on first use; creates and returns an admin credential when the
    /// registry has none, like [`Registry::open`].
    pub fn open_postgres(url: &str) -> Result<(Registry, Option<String>)> {
        let (log, txs) = super::pg::PgLog::open(url)?;
        let r = Registry::with(Data::from_txs(txs), Box::new(log), false);
        let admin = r.create_first_admin()?;
        Ok((r, admin))
    }

    /// An admin credential if there is no credential at all, decided under the write lock so
    /// two nodes starting together on an empty registry create one between them.
    fn create_first_admin(&self) -> Result<Option<String>> {
        if !self.read(|d| d.credentials.is_empty()) {
            return Ok(None);
        }
        self.create_token_if_none(Role::Admin)
    }

    /// Opens an existing registry without ever creating or writing it (read-only tools).
    pub fn open_read_only(dir: &Path) -> Result<Registry> {
        let o = log::LogFile::open_read_only(dir, legacy)?;
        Ok(Registry::with(Data::from_txs(o.txs), Box::new(o.log), true))
    }

    pub(super) fn backend(&self) -> MutexGuard<'_, Box<dyn Backend>> {
        lock(&self.backend)
    }

    /// Applies transactions that are durable already, a few at a time so readers never wait
    /// long.
    fn apply(&self, txs: Vec<Tx>) {
        let mut txs = txs.into_iter().peekable();
        while txs.peek().is_some() {
            let mut g = self.data.write().unwrap_or_else(PoisonError::into_inner);
            for tx in txs.by_ref().take(256) {
                g.apply(tx);
            }
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Applies what other writers did.
    fn absorb(&self, c: Changes) {
        match c {
            Changes::None => {}
            Changes::Append(txs) => self.apply(txs),
            Changes::Reload(txs) => {
                let d = Data::from_txs(txs);
                *self.data.write().unwrap_or_else(PoisonError::into_inner) = d;
                self.generation.send_modify(|g| *g += 1);
            }
        }
    }

    /// Picks up changes made by other processes on the same data directory (`carewatch token
    /// revoke`, `carewatch devices import`) and writes last uses due. `serve` calls this
    /// twice a second, on the blocking pool.
    pub fn refresh(&self) {
        if !self.read_only
            && now_us()
                - self
                    .usage_written_us
                    .load(std::sync::atomic::Ordering::Relaxed)
                >= GRAIN_US
        {
            if let Err(e) = self.write(|_| Ok(((), Vec::new()))) {
                tracing::warn!(error = %e, "registry: writing last uses failed");
            }
            return;
        }
        let mut b = self.backend();
        if let Err(e) = self.look(&mut b, |b| b.poll()) {
            tracing::warn!(error = %e, "registry: reading others' changes failed");
        }
    }

    /// Takes in what `look` (a poll, or a write's begin) found others did, and notes when it
    /// started.
    fn look(
        &self,
        b: &mut Box<dyn Backend>,
        look: impl FnOnce(&mut Box<dyn Backend>) -> Result<Changes>,
    ) -> Result<()> {
        let started = now_us();
        self.absorb(look(b)?);
        self.fresh_as_of_us
            .fetch_max(started, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    fn fresh_since(&self, since_us: i64) -> bool {
        self.fresh_as_of_us
            .load(std::sync::atomic::Ordering::Acquire)
            >= since_us
    }

    /// Makes sure a look for others' changes that started at or after `since_us` has been
    /// taken in: waits for one under way (a refresh, a write) rather than skipping it, and
    /// looks itself only if that one started too early. An unknown credential or device id
    /// calls this: it may be one another node enrolled a moment ago, and many of them arriving
    /// together share one look. Runs off the async workers when called on one (a round trip to
    /// PostgreSQL, or a wait for a write's fsync).
    pub(super) fn catch_up(&self, since_us: i64) {
        if self.fresh_since(since_us) {
            return;
        }
        let catch_up = || {
            let mut b = self.backend();
            if !self.fresh_since(since_us)
                && let Err(e) = self.look(&mut b, |b| b.poll())
            {
                tracing::warn!(error = %e, "registry: reading others' changes failed");
            }
        };
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi {
            tokio::task::block_in_place(catch_up);
        } else {
            catch_up();
        }
    }

    /// Last uses and sightings due to be written (at most one per credential or device a
    /// minute; taken from their queues in O(1) under their locks).
    fn usage_ops(&self) -> Vec<Op> {
        let used = lock(&self.last_used).take_due();
        let seen = lock(&self.seen).take_due();
        let used = used
            .into_iter()
            .map(|(id, at_us)| Op::LastUsed { id, at_us });
        let seen = seen
            .into_iter()
            .map(|(device_id, at_us)| Op::Seen { device_id, at_us });
        used.chain(seen).collect()
    }

    /// One change: waits for other writers and takes in what they did, lets `f` decide on
    /// the current state (returning its answer and the transactions to write), writes them
    /// durably (with last uses due), then applies them. `f` must not look at the in-memory
    /// state again: it runs under the read lock.
    pub(super) fn write<T>(&self, f: impl FnOnce(&Data) -> Result<(T, Vec<Tx>)>) -> Result<T> {
        let mut b = self.backend();
        self.look(&mut b, |b| b.begin())?;
        let staged = {
            let d = self.data.read().unwrap_or_else(PoisonError::into_inner);
            f(&d).map(|(out, mut txs)| {
                let usage = self.usage_ops();
                if !usage.is_empty() {
                    txs.insert(0, Tx::of(usage));
                }
                (out, txs)
            })
        };
        let (out, txs) = match staged {
            Ok(s) => s,
            Err(e) => {
                b.abort();
                return Err(e);
            }
        };
        b.commit(&txs)?;
        self.usage_written_us
            .store(now_us(), std::sync::atomic::Ordering::Relaxed);
        if !txs.is_empty() {
            self.apply(txs);
        }
        if b.wants_compaction() {
            self.compact(&mut b);
        }
        Ok(out)
    }

    /// Compacts now (tests).
    #[cfg(test)]
    pub(super) fn compact_now(&self) {
        let mut b = self.backend();
        self.compact(&mut b);
    }

    /// Rewrites the backend's history as the current state (the log has doubled).
    fn compact(&self, b: &mut Box<dyn Backend>) {
        let out = self.look(b, |b| b.begin()).and_then(|()| {
            let state = {
                let d = self.data.read().unwrap_or_else(PoisonError::into_inner);
                d.snapshot()
            };
            b.compact(&state)
        });
        if let Err(e) = out {
            tracing::warn!(error = %e, "registry: compaction failed; the log keeps growing");
        }
    }
}
