//! The store engine: the buffer and the public [`Store`] handle. Its phases live in their own
//! modules: `open` (lock, recovery, replay), `adopt` (the tables' Delta logs at open),
//! `writer` (group commit), `persist` (buffer to Parquet, Delta commit, checkpoint),
//! `compact` (compaction, retention, vacuum, the background task), `delta` (one table's
//! Delta log), `export` (the alert history as the `alerts` Delta table), `remote_wal`
//! (cluster mode: the WAL on the object store, and taking over a
//! dead node's) and `stats` (counters and append summaries).

mod adopt;
mod commit_lock;
mod compact;
mod delta;
mod encode;
mod export;
mod follow;
mod merge_plan;
mod node;
mod open;
mod persist;
mod prefix;
mod priority;
mod remote_wal;
mod spool;
mod stats;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arrow_array::RecordBatch;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use tokio::sync::{mpsc, oneshot};

use crate::codec;
use crate::tables::{self, FileMeta, Table};
use crate::{Config, DeadLetter, Error, Result, Row};

pub(crate) use crate::pg_connect::connect;
use stats::summarise;
pub use stats::{AppendObserver, AppendSummary, Histogram, StoreStats};
use writer::{Append, Cmd};

/// A consistent view for readers: buffered batches plus the files that hold everything else.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Buffered `observations` batches (durable, not yet in Parquet).
    pub observations: Vec<RecordBatch>,
    /// Buffered `dead_letters` batches.
    pub dead_letters: Vec<RecordBatch>,
    /// Persisted files.
    pub files: Vec<FileMeta>,
}

impl Snapshot {
    /// Buffered batches of a table.
    pub fn buffered(&self, t: Table) -> &[RecordBatch] {
        match t {
            Table::Observations => &self.observations,
            Table::DeadLetters => &self.dead_letters,
            Table::Alerts => &[],
        }
    }
}

struct Chunk {
    segment: u64,
    at: Instant,
    table: Table,
    batch: RecordBatch,
}

#[derive(Default)]
struct State {
    chunks: Vec<Chunk>,
    rows: usize,
    /// Memory the buffered batches take.
    bytes: usize,
    files: Vec<FileMeta>,
    /// Files a failed persist wrote and could not delete yet: no checkpoint may move before
    /// they are gone (it would cover them, and their rows would count twice).
    leftovers: Vec<ObjPath>,
    /// Replaced files still readable until the instant, then deleted.
    graveyard: Vec<(Instant, ObjPath)>,
    /// Other nodes' new files the snapshot took in, not yet told to the observers
    /// ([`follow`]).
    untold: Vec<ObjPath>,
    stats: StoreStats,
    /// Tests only ([`Store::pause_next_merge`]): the next merge signals the first and waits
    /// for the second once it has read its inputs.
    merge_pause: Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>,
}

struct Inner {
    /// Held for the store's lifetime: one writer per data directory.
    _lock: Option<std::fs::File>,
    config: Config,
    /// This data directory's node: its `txn` app id and file names in the tables.
    node: node::Node,
    tx: mpsc::Sender<Cmd>,
    state: Mutex<State>,
    objects: Arc<dyn ObjectStore>,
    /// Each table's Delta log; changed only under `persist_lock`.
    deltas: tokio::sync::Mutex<std::collections::BTreeMap<Table, delta::DeltaLog>>,
    /// The `alerts` Delta table's log ([`export`]).
    history_table: tokio::sync::Mutex<delta::DeltaLog>,
    persist_lock: tokio::sync::Mutex<()>,
    /// One compaction or retention at a time (taken before `persist_lock`, which a merge
    /// holds only to commit).
    maintain_lock: tokio::sync::Mutex<()>,
    wal_dir: PathBuf,
    /// The tables' directory when they are on this machine (files are fsynced there).
    local_root: Option<PathBuf>,
    observers: std::sync::RwLock<Vec<AppendObserver>>,
    health: Arc<Health>,
    /// The earliest `received_us` of each append not yet answered (count per time): readers
    /// that follow the table by received time stop short of it ([`Store::received_floor`]).
    inflight: Mutex<std::collections::BTreeMap<i64, usize>>,
    /// Cluster mode: this node's WAL on the shared store and its liveness ([`remote_wal`]).
    remote: Option<Arc<remote_wal::RemoteWal>>,
    /// Cluster mode: where the writer thread hands written groups to be PUT.
    upload: Option<mpsc::Sender<remote_wal::Job>>,
    /// Cluster mode: the background compaction and retention run only while this says the
    /// node holds the maintenance partition (unset: always, a single node).
    maintainer: std::sync::OnceLock<Arc<dyn crate::lease::Ownership>>,
}

/// Removes an append's received time from the in-flight set when the append ends (durable
/// and visible, or failed), however it ends.
struct InFlight<'a>(&'a Inner, Option<i64>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some(t) = self.1 else { return };
        let mut m = self
            .0
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&t) {
            *n -= 1;
            if *n == 0 {
                m.remove(&t);
            }
        }
    }
}

/// Whether the WAL writer can go on.
#[derive(Debug, Default)]
struct Health {
    /// The writer thread ended (a bug): nothing will be appended until restart.
    dead: Mutex<Option<String>>,
    /// The writer is alive but cannot write (a damaged segment and no new one).
    broken: Mutex<Option<String>>,
}

impl Health {
    fn set_dead(&self, why: &str) {
        *self
            .dead
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why.to_owned());
    }
    fn set_broken(&self, why: Option<String>) {
        *self
            .broken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why;
    }
    fn check(&self) -> std::result::Result<(), String> {
        for m in [&self.dead, &self.broken] {
            if let Some(why) = m
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
            {
                return Err(why);
            }
        }
        Ok(())
    }
}

/// Memory a buffered batch takes (counted against `buffer_limit_bytes`).
fn chunk_bytes(b: &RecordBatch) -> usize {
    b.get_array_memory_size()
}

/// The store handle (cheap to clone).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.inner.config.data_dir)
            .finish()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn io(e: impl std::fmt::Display) -> Error {
    Error::Io(e.to_string())
}

impl Store {
    /// Opens (or creates) a store: recovers from any crash, replays the WAL into the buffer,
    /// and starts the writer thread and the background persister.
    pub async fn open(config: Config) -> Result<Store> {
        open::open(config).await
    }

    /// Appends rows and dead letters; completes when they are durable. Concurrent appends share
    /// one fsync. [`Error::Busy`] when the buffer is full (rows or bytes); [`Error::TooLarge`]
    /// when one append exceeds a WAL frame; [`Error::Wal`] when the disk fails (nothing of
    /// this append is then acknowledged or visible).
    pub async fn append(&self, rows: Vec<Row>, mut dead: Vec<DeadLetter>) -> Result<()> {
        if rows.is_empty() && dead.is_empty() {
            return Ok(());
        }
        {
            let st = lock(&self.inner.state);
            let c = &self.inner.config;
            if st.rows >= c.buffer_limit_rows || st.bytes >= c.buffer_limit_bytes {
                return Err(Error::Busy);
            }
        }
        let first = rows.iter().map(|r| r.received_us).min();
        if let Some(t) = first {
            *self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(t)
                .or_default() += 1;
        }
        let _inflight = InFlight(&self.inner, first);
        // Hashed here, on the caller's task, rather than on the writer thread.
        for d in dead.iter_mut().filter(|d| d.raw_sha256.is_none()) {
            d.raw_sha256 = Some(crate::dead::digest(&d.raw));
        }
        let payload = encode(&rows, &dead)?;
        let observed = {
            let obs = self
                .inner
                .observers
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if obs.is_empty() {
                None
            } else {
                Some((obs.clone(), summarise(&rows)))
            }
        };
        let (done, wait) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Append(Append {
                payload,
                rows,
                dead,
                done,
            }))
            .await
            .map_err(|_| Error::Closed)?;
        wait.await.map_err(|_| Error::Closed)??;
        if let Some((obs, summary)) = observed
            && !summary.patients.is_empty()
        {
            for o in &obs {
                o(&summary);
            }
        }
        Ok(())
    }

    /// Whether appends can be made durable: `Err` names why not (the WAL writer stopped, or
    /// cannot write to a new segment). A read-only store is healthy (it never writes).
    pub fn healthy(&self) -> std::result::Result<(), String> {
        self.inner.health.check()
    }

    /// Tests only: makes the WAL writer thread fail as a bug would, to prove it is visible.
    #[doc(hidden)]
    pub async fn inject_writer_failure(&self) {
        let _ = self.inner.tx.send(Cmd::InjectPanic).await;
    }

    /// Tests only: the next merge stops once it has read its inputs, tells the first
    /// receiver, and goes on when the sender is dropped or sends.
    #[doc(hidden)]
    pub fn pause_next_merge(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        lock(&self.inner.state).merge_pause = Some((reached_tx, release_rx));
        (reached_rx, release_tx)
    }

    /// The earliest received time of rows being appended right now (not yet durable and
    /// visible), if any. Every row received before it that was stored at all is visible in
    /// [`Store::snapshot`], so a reader following `observations` by received time may go up
    /// to just before it (the FHIR destination does).
    pub fn received_floor(&self) -> Option<i64> {
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .next()
            .copied()
    }

    /// Registers a function told about every durable append (see [`AppendObserver`]).
    pub fn observe_appends(&self, f: AppendObserver) {
        self.inner
            .observers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(f);
    }

    /// A consistent snapshot for readers.
    pub fn snapshot(&self) -> Snapshot {
        let st = lock(&self.inner.state);
        let mut s = Snapshot {
            files: st.files.clone(),
            ..Snapshot::default()
        };
        for c in &st.chunks {
            match c.table {
                Table::Observations => s.observations.push(c.batch.clone()),
                Table::DeadLetters => s.dead_letters.push(c.batch.clone()),
                Table::Alerts => {}
            }
        }
        s
    }

    /// The object store holding the tables (paths as in [`FileMeta::path`]).
    pub fn objects(&self) -> Arc<dyn ObjectStore> {
        self.inner.objects.clone()
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        let st = lock(&self.inner.state);
        StoreStats {
            buffered_rows: st.rows,
            files: st.files.len(),
            ..st.stats.clone()
        }
    }

    /// Every row of a table: persisted files plus the buffer (for tests and small tools; the
    /// query engine reads files itself).
    pub async fn read_all(&self, table: Table) -> Result<Vec<RecordBatch>> {
        let snap = self.snapshot();
        let mut out = Vec::new();
        for f in snap.files.iter().filter(|f| f.table == table) {
            out.extend(read_file(self.inner.objects.as_ref(), &f.path).await?);
        }
        out.extend(snap.buffered(table).iter().cloned());
        Ok(out)
    }

    /// Persists everything buffered now. Returns the number of files written.
    pub async fn persist(&self) -> Result<usize> {
        persist::persist(&self.inner).await
    }

    /// Cluster mode: takes over the WAL objects of nodes that are no longer alive (their
    /// liveness in PostgreSQL ran out) beyond what they persisted: their rows are committed to
    /// the tables with the dead node's `txn` moved past them, then the objects are deleted.
    /// Run by one node at a time (the holder of [`crate::lease::DELIVERY_PARTITION`]); two at
    /// once are safe (the commit lock and the `txn` check let only one commit). Returns the
    /// rows committed (0 when not in cluster mode).
    pub async fn adopt_wals(&self) -> Result<usize> {
        remote_wal::adopt(&self.inner).await
    }

    /// Tests only: stops renewing this node's cluster liveness, as a node cut off from
    /// PostgreSQL would: it looks dead to the others while it still runs.
    #[doc(hidden)]
    pub fn inject_liveness_stop(&self) {
        if let Some(r) = &self.inner.remote {
            r.stop_heartbeat();
        }
    }

    /// Cluster mode on shared tables: the background compaction and retention run only while
    /// `ownership` holds [`crate::lease::DELIVERY_PARTITION`], so one node at a time rewrites
    /// the tables (the others' commits would be refused under the commit lock anyway, after
    /// the work). Set once; an explicit [`Store::compact`] still runs on any node.
    pub fn maintain_while(&self, ownership: Arc<dyn crate::lease::Ownership>) {
        let _ = self.inner.maintainer.set(ownership);
    }

    /// Compacts every day that has at least `compact_min_files` files of a table.
    pub async fn compact(&self) -> Result<usize> {
        compact::compact(&self.inner, self.inner.config.compact_min_files).await
    }

    /// Compacts every day with more than one file (used by tests and `carewatch` maintenance).
    pub async fn compact_all(&self) -> Result<usize> {
        compact::compact(&self.inner, 2).await
    }

    /// Drops days whose date is before `cutoff_date` (`YYYY-MM-DD`): one Delta commit of
    /// removes per table. Returns files dropped.
    pub async fn drop_days_before(&self, cutoff_date: &str) -> Result<usize> {
        compact::retain(&self.inner, cutoff_date).await
    }

    /// Persists the buffer and stops the writer: call on shutdown. Files a commit removed stay
    /// until their grace period ends (the next open deletes them from the log's tombstones).
    pub async fn close(&self) -> Result<()> {
        persist::persist(&self.inner).await?;
        Ok(())
    }
}

/// The whole object at `path`.
async fn get_bytes(objects: &dyn ObjectStore, path: &ObjPath) -> Result<bytes::Bytes> {
    objects
        .get(path)
        .await
        .map_err(io)?
        .bytes()
        .await
        .map_err(io)
}

/// Reads one Parquet file of ours from the object store.
async fn read_file(objects: &dyn ObjectStore, path: &ObjPath) -> Result<Vec<RecordBatch>> {
    let bytes = get_bytes(objects, path).await?;
    let table = tables::parse_path(path, 0).map(|f| f.table);
    let batches = tables::decode_parquet(bytes)?;
    match table {
        // Files written before a column was added lack it: it reads as nulls.
        Some(t) => batches.iter().map(|b| tables::conform(t, b)).collect(),
        None => Ok(batches),
    }
}

/// Encodes one append's WAL records, refusing what no frame could hold.
fn encode(rows: &[Row], dead: &[DeadLetter]) -> Result<Vec<u8>> {
    let mut payload = Vec::with_capacity(64 * (rows.len() + dead.len()) + 16);
    if !rows.is_empty() {
        codec::encode_rows(&mut payload, rows);
    }
    if !dead.is_empty() {
        codec::encode_dead(&mut payload, dead);
    }
    if payload.len() > crate::wal::MAX_FRAME {
        return Err(Error::TooLarge(format!(
            "one append of {} bytes exceeds the largest WAL frame ({} bytes); send smaller batches",
            payload.len(),
            crate::wal::MAX_FRAME
        )));
    }
    Ok(payload)
}

fn rows_batch(rows: &[Row]) -> Result<RecordBatch> {
    let mut b = carewatch_transform::schema::ObservationBatchBuilder::new(rows.len());
    for r in rows {
        b.push(&r.reading, r.received_us, r.source, r.format);
    }
    Ok(b.finish())
}

fn dead_batch(dead: &[DeadLetter]) -> Result<RecordBatch> {
    crate::dead::batch(dead).map_err(|e| Error::Encode(e.to_string()))
}
