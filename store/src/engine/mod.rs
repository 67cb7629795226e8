//! The store engine: group-commit writer thread, buffer, persistence, compaction, retention.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{self, Record};
use crate::tables::{self, FileMeta, Table};
use crate::wal::{self, Wal};
use crate::{Config, DeadLetter, Error, Result, Row};

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
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Rows in the buffer.
    pub buffered_rows: usize,
    /// Persisted files per table.
    pub files: usize,
    /// WAL frames replayed at open.
    pub replayed_frames: usize,
    /// WAL damage found at open (torn or corrupt tails cut).
    pub wal_damage: Vec<String>,
    /// Group commits done.
    pub commits: u64,
    /// Persists done.
    pub persists: u64,
    /// Compactions done.
    pub compactions: u64,
    /// Rows acknowledged since open.
    pub rows_appended: u64,
    /// Dead letters acknowledged since open.
    pub dead_appended: u64,
    /// Rows acknowledged since open, per source (`http`, `mqtt`, `replay`).
    pub rows_by_source: BTreeMap<&'static str, u64>,
    /// Dead letters acknowledged since open, per (source, reason code).
    pub dead_by_reason: BTreeMap<(&'static str, &'static str), u64>,
    /// WAL group commit (write + fsync) durations.
    pub commit_seconds: Histogram,
    /// Persist (buffer to Parquet + checkpoint) durations.
    pub persist_seconds: Histogram,
}

/// A latency histogram with fixed bucket bounds (seconds), Prometheus-style cumulative on output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    /// Count per bucket (not cumulative), one more than [`Histogram::BOUNDS`] for +Inf.
    pub counts: Vec<u64>,
    /// Sum of observations, microseconds.
    pub sum_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; Self::BOUNDS.len() + 1],
            sum_us: 0,
        }
    }
}

impl Histogram {
    /// Upper bounds, seconds.
    pub const BOUNDS: [f64; 12] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    ];
    /// Records one duration.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = Self::BOUNDS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(Self::BOUNDS.len());
        self.counts[i] += 1;
        self.sum_us += d.as_micros() as u64;
    }
    /// Observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
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
    files: Vec<FileMeta>,
    /// Replaced files still readable until the instant, then deleted.
    graveyard: Vec<(Instant, ObjPath)>,
    stats: StoreStats,
}

enum Cmd {
    Append {
        payload: Vec<u8>,
        rows: Vec<Row>,
        dead: Vec<DeadLetter>,
        done: oneshot::Sender<Result<()>>,
    },
    Rotate {
        done: oneshot::Sender<Result<u64>>,
    },
}

struct Inner {
    /// Held for the store's lifetime: one writer per data directory.
    _lock: Option<std::fs::File>,
    config: Config,
    tx: mpsc::Sender<Cmd>,
    state: Mutex<State>,
    objects: Arc<dyn ObjectStore>,
    persist_lock: tokio::sync::Mutex<()>,
    wal_dir: PathBuf,
    observers: std::sync::RwLock<Vec<AppendObserver>>,
}

/// What one durable append added, for observers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppendSummary {
    /// Per patient: (patient, earliest, latest effective time), UTC µs.
    pub patients: Vec<(String, i64, i64)>,
    /// Per (patient, code): the reading with the latest effective time (patient, code, time,
    /// value).
    pub latest: Vec<(String, &'static str, i64, f64)>,
}

/// Called after each durable append with an [`AppendSummary`]. Rows without a patient are not
/// reported.
pub type AppendObserver = Arc<dyn Fn(&AppendSummary) + Send + Sync>;

fn summarise(rows: &[Row]) -> AppendSummary {
    let mut m: std::collections::HashMap<&str, (i64, i64)> = std::collections::HashMap::new();
    let mut latest: std::collections::HashMap<(&str, &'static str), (i64, f64)> =
        std::collections::HashMap::new();
    for r in rows {
        let Some(p) = r.reading.patient_id.as_deref() else {
            continue;
        };
        let t = r.reading.effective_us;
        let e = m.entry(p).or_insert((t, t));
        e.0 = e.0.min(t);
        e.1 = e.1.max(t);
        let l = latest
            .entry((p, r.reading.code()))
            .or_insert((t, r.reading.value));
        if t >= l.0 {
            *l = (t, r.reading.value);
        }
    }
    AppendSummary {
        patients: m
            .into_iter()
            .map(|(p, (a, b))| (p.to_owned(), a, b))
            .collect(),
        latest: latest
            .into_iter()
            .map(|((p, c), (t, v))| (p.to_owned(), c, t, v))
            .collect(),
    }
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

const CHECKPOINT: &str = "checkpoint";

fn read_checkpoint(dir: &Path) -> Result<u64> {
    match std::fs::read_to_string(dir.join(CHECKPOINT)) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|_| Error::Io(format!("corrupt checkpoint {s:?}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io(e)),
    }
}

/// Writes a small file atomically: temp name, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

fn object_store(config: &Config) -> Result<Arc<dyn ObjectStore>> {
    match &config.tables_url {
        None => {
            std::fs::create_dir_all(&config.data_dir).map_err(io)?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&config.data_dir)
                .map_err(io)?;
            Ok(Arc::new(fs))
        }
        Some(url) => {
            let u = url::Url::parse(url)
                .map_err(|e| Error::Config(format!("tables URL {url:?}: {e}")))?;
            let (store, prefix) = object_store::parse_url_opts(
                &u,
                std::env::vars().filter(|(k, _)| k.starts_with("AWS_")),
            )
            .map_err(|e| Error::Config(format!("tables URL {url:?}: {e}")))?;
            Ok(Arc::new(object_store::prefix::PrefixStore::new(
                store, prefix,
            )))
        }
    }
}

impl Store {
    /// Opens (or creates) a store: recovers from any crash, replays the WAL into the buffer,
    /// and starts the writer thread and the background persister.
    pub async fn open(config: Config) -> Result<Store> {
        let objects = object_store(&config)?;
        let wal_dir = config.data_dir.join("wal");
        let ro = config.read_only;
        let lock = if ro {
            None
        } else {
            std::fs::create_dir_all(&wal_dir).map_err(io)?;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(config.data_dir.join("LOCK"))
                .map_err(io)?;
            // A store being dropped in this process may hold the lock a moment longer.
            let mut locked = f.try_lock().is_ok();
            for _ in 0..50 {
                if locked {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                locked = f.try_lock().is_ok();
            }
            if !locked {
                return Err(Error::Config(format!(
                    "data directory {} is in use by another carewatch process (use read-only tools such as `carewatch sql --data-dir` beside it)",
                    config.data_dir.display()
                )));
            }
            Some(f)
        };
        let persisted = read_checkpoint(&config.data_dir)?;
        // Read-only: a compaction in progress means its inputs are superseded by its output.
        let mut superseded: Vec<String> = Vec::new();
        if ro {
            for p in intent_files(&config.data_dir) {
                if let Some(i) = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| Intent::decode(&t))
                    && objects
                        .head(&ObjPath::from(i.output.as_str()))
                        .await
                        .is_ok()
                {
                    superseded.extend(i.inputs);
                }
            }
        } else {
            recover_compaction(&config.data_dir, objects.as_ref()).await?;
        }

        // Files: drop what a crashed persist left behind (not covered by the checkpoint).
        let mut files = Vec::new();
        let listed: Vec<object_store::ObjectMeta> =
            objects.list(None).try_collect().await.map_err(io)?;
        for m in listed {
            let Some(f) = tables::parse_path(&m.location, m.size) else {
                continue;
            };
            if f.wal_last > persisted {
                if !ro {
                    tracing::warn!(path = %f.path, "removing file from an unfinished persist");
                    objects.delete(&f.path).await.map_err(io)?;
                }
            } else if superseded.contains(&f.path.to_string()) {
                continue;
            } else {
                files.push(f);
            }
        }
        files.sort_by(|a, b| (a.table, &a.date, a.wal_first).cmp(&(b.table, &b.date, b.wal_first)));

        // WAL: segments the checkpoint covers are done; replay the rest.
        let segments = if wal_dir.exists() {
            wal::list_segments(&wal_dir).map_err(io)?
        } else {
            Vec::new()
        };
        let mut state = State {
            files,
            ..State::default()
        };
        let now = Instant::now();
        for &id in &segments {
            if id <= persisted {
                continue;
            }
            let (frames, damage) = wal::read_segment_opts(&wal_dir, id, !ro).map_err(io)?;
            if let Some(d) = damage.filter(|_| !ro) {
                tracing::warn!(segment = d.segment, offset = d.offset, what = %d.what, "WAL tail cut");
                state.stats.wal_damage.push(format!(
                    "segment {} offset {}: {}",
                    d.segment, d.offset, d.what
                ));
            }
            for f in frames {
                state.stats.replayed_frames += 1;
                let records = codec::decode(&f).map_err(io)?;
                for rec in records {
                    let (table, batch) = match rec {
                        Record::Rows(rows) => (Table::Observations, rows_batch(&rows)?),
                        Record::Dead(dead) => (Table::DeadLetters, dead_batch(&dead)?),
                    };
                    state.rows += batch.num_rows();
                    state.chunks.push(Chunk {
                        segment: id,
                        at: now,
                        table,
                        batch,
                    });
                }
            }
        }
        let wal = if ro {
            None
        } else {
            wal::remove_upto(&wal_dir, persisted).map_err(io)?;
            let next = segments.last().copied().unwrap_or(0).max(persisted) + 1;
            Some(Wal::create(&wal_dir, next).map_err(io)?)
        };
        let (tx, rx) = mpsc::channel(4096);
        let inner = Arc::new(Inner {
            _lock: lock,
            config,
            tx,
            state: Mutex::new(state),
            objects,
            persist_lock: tokio::sync::Mutex::new(()),
            wal_dir,
            observers: std::sync::RwLock::new(Vec::new()),
        });
        let Some(wal) = wal else {
            // Read-only: no writer, so appends find the channel closed.
            drop(rx);
            return Ok(Store { inner });
        };
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("carewatch-wal".into())
            .spawn(move || writer(wal, rx, weak))
            .map_err(io)?;
        let store = Store { inner };
        let bg = Arc::downgrade(&store.inner);
        tokio::spawn(async move { background(bg).await });
        Ok(store)
    }

    /// Appends rows and dead letters; completes when they are durable. Concurrent appends share
    /// one fsync. [`Error::Busy`] when the buffer is full; [`Error::Wal`] when the disk fails
    /// (nothing of this append is then acknowledged or visible).
    pub async fn append(&self, rows: Vec<Row>, dead: Vec<DeadLetter>) -> Result<()> {
        if rows.is_empty() && dead.is_empty() {
            return Ok(());
        }
        if lock(&self.inner.state).rows >= self.inner.config.buffer_limit_rows {
            return Err(Error::Busy);
        }
        let mut payload = Vec::with_capacity(64 * (rows.len() + dead.len()) + 16);
        if !rows.is_empty() {
            codec::encode_rows(&mut payload, &rows);
        }
        if !dead.is_empty() {
            codec::encode_dead(&mut payload, &dead);
        }
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
            .send(Cmd::Append {
                payload,
                rows,
                dead,
                done,
            })
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
        persist(&self.inner).await
    }

    /// Compacts every day that has at least `compact_min_files` files of a table.
    pub async fn compact(&self) -> Result<usize> {
        compact(&self.inner, self.inner.config.compact_min_files).await
    }

    /// Compacts every day with more than one file (used by tests and `carewatch` maintenance).
    pub async fn compact_all(&self) -> Result<usize> {
        compact(&self.inner, 2).await
    }

    /// Drops days whose date is before `cutoff_date` (`YYYY-MM-DD`). Returns files dropped.
    pub async fn drop_days_before(&self, cutoff_date: &str) -> Result<usize> {
        let _g = self.inner.persist_lock.lock().await;
        let mut st = lock(&self.inner.state);
        let grace = Instant::now() + self.inner.config.delete_grace;
        let (old, keep): (Vec<FileMeta>, Vec<FileMeta>) = std::mem::take(&mut st.files)
            .into_iter()
            .partition(|f| f.date.as_str() < cutoff_date);
        st.files = keep;
        let n = old.len();
        st.graveyard
            .extend(old.into_iter().map(|f| (grace, f.path)));
        Ok(n)
    }

    /// Persists the buffer and stops the writer: call on shutdown.
    pub async fn close(&self) -> Result<()> {
        persist(&self.inner).await?;
        let st_graves: Vec<ObjPath> = {
            let mut st = lock(&self.inner.state);
            std::mem::take(&mut st.graveyard)
                .into_iter()
                .map(|(_, p)| p)
                .collect()
        };
        for p in st_graves {
            let _ = self.inner.objects.delete(&p).await;
        }
        Ok(())
    }
}

/// Reads one Parquet file of ours from the object store.
async fn read_file(objects: &dyn ObjectStore, path: &ObjPath) -> Result<Vec<RecordBatch>> {
    let bytes = objects
        .get(path)
        .await
        .map_err(io)?
        .bytes()
        .await
        .map_err(io)?;
    tables::decode_parquet(bytes)
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

/// The writer thread: group commit. Whatever queued while the previous fsync ran is written
/// as one frame and synced once.
fn writer(mut wal: Wal, mut rx: mpsc::Receiver<Cmd>, inner: std::sync::Weak<Inner>) {
    let mut pending: Option<Cmd> = None;
    loop {
        let first = match pending.take() {
            Some(c) => c,
            None => match rx.blocking_recv() {
                Some(c) => c,
                None => return,
            },
        };
        let Some(inn) = inner.upgrade() else { return };
        match first {
            Cmd::Rotate { done } => {
                let _ = done.send(wal.rotate().map_err(Error::Wal));
            }
            Cmd::Append {
                payload,
                rows,
                dead,
                done,
            } => {
                let mut group = vec![(payload, rows, dead, done)];
                let mut n: usize = group[0].1.len() + group[0].2.len();
                let deadline = Instant::now() + inn.config.commit_delay;
                loop {
                    if n >= inn.config.max_commit_rows {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(Cmd::Append {
                            payload,
                            rows,
                            dead,
                            done,
                        }) => {
                            n += rows.len() + dead.len();
                            group.push((payload, rows, dead, done));
                        }
                        Ok(rot @ Cmd::Rotate { .. }) => {
                            pending = Some(rot);
                            break;
                        }
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_micros(200))
                        }
                        Err(_) => break,
                    }
                }
                let mut frame = Vec::with_capacity(group.iter().map(|g| g.0.len()).sum());
                for g in &group {
                    frame.extend_from_slice(&g.0);
                }
                let started = Instant::now();
                let res = wal.append(&frame);
                let took = started.elapsed();
                match res {
                    Ok(()) => {
                        let mut by_source: Vec<(&'static str, u64)> = Vec::new();
                        let mut by_reason: Vec<((&'static str, &'static str), u64)> = Vec::new();
                        for g in &group {
                            for r in &g.1 {
                                match by_source.iter_mut().find(|x| x.0 == r.source.as_str()) {
                                    Some(x) => x.1 += 1,
                                    None => by_source.push((r.source.as_str(), 1)),
                                }
                            }
                            for d in &g.2 {
                                let k = (d.source.as_str(), d.reason.code());
                                match by_reason.iter_mut().find(|x| x.0 == k) {
                                    Some(x) => x.1 += 1,
                                    None => by_reason.push((k, 1)),
                                }
                            }
                        }
                        let seg = wal.id();
                        let all_rows: Vec<Row> = group
                            .iter_mut()
                            .flat_map(|g| std::mem::take(&mut g.1))
                            .collect();
                        let all_dead: Vec<DeadLetter> = group
                            .iter_mut()
                            .flat_map(|g| std::mem::take(&mut g.2))
                            .collect();
                        let built = (|| -> Result<Vec<(Table, RecordBatch)>> {
                            let mut v = Vec::new();
                            if !all_rows.is_empty() {
                                v.push((Table::Observations, rows_batch(&all_rows)?));
                            }
                            if !all_dead.is_empty() {
                                v.push((Table::DeadLetters, dead_batch(&all_dead)?));
                            }
                            Ok(v)
                        })();
                        match built {
                            Ok(batches) => {
                                let mut st = lock(&inn.state);
                                let now = Instant::now();
                                for (table, batch) in batches {
                                    st.rows += batch.num_rows();
                                    match table {
                                        Table::Observations => {
                                            st.stats.rows_appended += batch.num_rows() as u64
                                        }
                                        Table::DeadLetters => {
                                            st.stats.dead_appended += batch.num_rows() as u64
                                        }
                                    }
                                    st.chunks.push(Chunk {
                                        segment: seg,
                                        at: now,
                                        table,
                                        batch,
                                    });
                                }
                                st.stats.commits += 1;
                                st.stats.commit_seconds.observe(took);
                                for (k, n) in by_source {
                                    *st.stats.rows_by_source.entry(k).or_default() += n;
                                }
                                for (k, n) in by_reason {
                                    *st.stats.dead_by_reason.entry(k).or_default() += n;
                                }
                                drop(st);
                                for g in group {
                                    let _ = g.3.send(Ok(()));
                                }
                            }
                            Err(e) => {
                                // Durable in the WAL but not buffered: replay will bring it back.
                                tracing::error!(error = %e, "building buffer batch failed");
                                for g in group {
                                    let _ = g.3.send(Err(Error::Encode(e.to_string())));
                                }
                            }
                        }
                        if wal.size() >= inn.config.segment_bytes
                            && let Err(e) = wal.rotate()
                        {
                            tracing::error!(error = %e, "WAL rotation failed");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "WAL write failed; appends refused until it succeeds");
                        let kind = e.kind();
                        let msg = e.to_string();
                        for g in group {
                            let _ =
                                g.3.send(Err(Error::Wal(std::io::Error::new(kind, msg.clone()))));
                        }
                    }
                }
            }
        }
    }
}

async fn rotate(inner: &Inner) -> Result<u64> {
    let (done, wait) = oneshot::channel();
    inner
        .tx
        .send(Cmd::Rotate { done })
        .await
        .map_err(|_| Error::Closed)?;
    wait.await.map_err(|_| Error::Closed)?
}

async fn persist(inner: &Inner) -> Result<usize> {
    if inner.config.read_only {
        return Ok(0);
    }
    let _g = inner.persist_lock.lock().await;
    if lock(&inner.state).chunks.is_empty() {
        return Ok(0);
    }
    let started = Instant::now();
    let closed = rotate(inner).await?;
    let (first, by_table) = {
        let st = lock(&inner.state);
        let mut by: BTreeMap<Table, Vec<RecordBatch>> = BTreeMap::new();
        let mut first = u64::MAX;
        for c in st.chunks.iter().filter(|c| c.segment <= closed) {
            first = first.min(c.segment);
            by.entry(c.table).or_default().push(c.batch.clone());
        }
        (first, by)
    };
    if by_table.is_empty() {
        return Ok(0);
    }
    let rgs = inner.config.row_group_rows;
    let encoded =
        tokio::task::spawn_blocking(move || -> Result<Vec<(Table, String, bytes::Bytes)>> {
            let mut out = Vec::new();
            for (table, batches) in by_table {
                let all = tables::concat(&table.schema(), &batches)?;
                let sorted = tables::sort_dedupe(table, &all)?;
                for (date, part) in tables::split_by_day(table, &sorted)? {
                    out.push((table, date, tables::encode_parquet(&part, rgs)?));
                }
            }
            Ok(out)
        })
        .await
        .map_err(io)??;
    let mut metas = Vec::with_capacity(encoded.len());
    for (table, date, bytes) in encoded {
        let path = tables::file_path(table, &date, first, closed, "");
        let size = bytes.len() as u64;
        inner.objects.put(&path, bytes.into()).await.map_err(io)?;
        metas.push(FileMeta {
            table,
            path,
            date,
            wal_first: first,
            wal_last: closed,
            size,
        });
    }
    write_atomic(
        &inner.config.data_dir,
        CHECKPOINT,
        closed.to_string().as_bytes(),
    )?;
    let n = metas.len();
    {
        let mut st = lock(&inner.state);
        st.files.extend(metas);
        st.files
            .sort_by(|a, b| (a.table, &a.date, a.wal_first).cmp(&(b.table, &b.date, b.wal_first)));
        let mut removed = 0;
        st.chunks.retain(|c| {
            let keep = c.segment > closed;
            if !keep {
                removed += c.batch.num_rows();
            }
            keep
        });
        st.rows -= removed;
        st.stats.persists += 1;
        st.stats.persist_seconds.observe(started.elapsed());
    }
    wal::remove_upto(&inner.wal_dir, closed).map_err(io)?;
    Ok(n)
}

#[derive(Debug)]
struct Intent {
    output: String,
    inputs: Vec<String>,
}

impl Intent {
    fn encode(&self) -> String {
        std::iter::once(self.output.as_str())
            .chain(self.inputs.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("\n")
    }
    fn decode(s: &str) -> Option<Intent> {
        let mut lines = s.lines().filter(|l| !l.is_empty());
        let output = lines.next()?.to_owned();
        Some(Intent {
            output,
            inputs: lines.map(str::to_owned).collect(),
        })
    }
}

fn intent_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "intent"))
        .collect();
    v.sort();
    v
}

/// Finishes or undoes compactions a crash interrupted.
async fn recover_compaction(dir: &Path, objects: &dyn ObjectStore) -> Result<()> {
    for path in intent_files(dir) {
        let text = std::fs::read_to_string(&path).map_err(io)?;
        if let Some(intent) = Intent::decode(&text) {
            let out = ObjPath::from(intent.output.as_str());
            match objects.head(&out).await {
                Ok(_) => {
                    // The merged file is complete: the inputs are redundant.
                    for i in &intent.inputs {
                        match objects.delete(&ObjPath::from(i.as_str())).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(io(e)),
                        }
                    }
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io(e)),
            }
        }
        std::fs::remove_file(&path).map_err(io)?;
    }
    Ok(())
}

async fn compact(inner: &Inner, min_files: usize) -> Result<usize> {
    if inner.config.read_only {
        return Ok(0);
    }
    let _g = inner.persist_lock.lock().await;
    let groups: Vec<Vec<FileMeta>> = {
        let st = lock(&inner.state);
        let mut by: BTreeMap<(Table, String), Vec<FileMeta>> = BTreeMap::new();
        for f in &st.files {
            by.entry((f.table, f.date.clone()))
                .or_default()
                .push(f.clone());
        }
        let max = inner.config.compact_max_bytes;
        by.into_values()
            .filter(|v| v.len() >= min_files.max(2) && v.iter().map(|f| f.size).sum::<u64>() <= max)
            .collect()
    };
    let mut done = 0;
    for inputs in groups {
        let table = inputs[0].table;
        let date = inputs[0].date.clone();
        let first = inputs.iter().map(|f| f.wal_first).min().unwrap_or(0);
        let last = inputs.iter().map(|f| f.wal_last).max().unwrap_or(0);
        let mut batches = Vec::new();
        for f in &inputs {
            batches.extend(read_file(inner.objects.as_ref(), &f.path).await?);
        }
        let rgs = inner.config.row_group_rows;
        let bytes = tokio::task::spawn_blocking(move || -> Result<bytes::Bytes> {
            let all = tables::concat(&table.schema(), &batches)?;
            tables::encode_parquet(&tables::sort_dedupe(table, &all)?, rgs)
        })
        .await
        .map_err(io)??;
        let stamp = chrono::Utc::now().timestamp_micros();
        let path = tables::file_path(table, &date, first, last, &format!("-c{stamp}"));
        let intent = Intent {
            output: path.to_string(),
            inputs: inputs.iter().map(|f| f.path.to_string()).collect(),
        };
        write_atomic(
            &inner.config.data_dir,
            &format!("compaction-{stamp}.intent"),
            intent.encode().as_bytes(),
        )?;
        let size = bytes.len() as u64;
        inner.objects.put(&path, bytes.into()).await.map_err(io)?;
        {
            let mut st = lock(&inner.state);
            let grace = Instant::now() + inner.config.delete_grace;
            st.files
                .retain(|f| !inputs.iter().any(|i| i.path == f.path));
            st.files.push(FileMeta {
                table,
                path,
                date,
                wal_first: first,
                wal_last: last,
                size,
            });
            st.files.sort_by(|a, b| {
                (a.table, &a.date, a.wal_first).cmp(&(b.table, &b.date, b.wal_first))
            });
            st.graveyard
                .extend(inputs.iter().map(|f| (grace, f.path.clone())));
            st.stats.compactions += 1;
        }
        // Inputs stay until their grace period ends; the intent makes a crash before then safe.
        done += 1;
    }
    Ok(done)
}

async fn background(inner: std::sync::Weak<Inner>) {
    loop {
        let tick = match inner.upgrade() {
            Some(i) => i.config.tick,
            None => return,
        };
        tokio::time::sleep(tick).await;
        let Some(inn) = inner.upgrade() else { return };
        let due = {
            let st = lock(&inn.state);
            st.rows >= inn.config.persist_rows
                || st
                    .chunks
                    .first()
                    .is_some_and(|c| c.at.elapsed() >= inn.config.persist_age)
        };
        if due && let Err(e) = persist(&inn).await {
            tracing::error!(error = %e, "persist failed; will retry");
        }
        if let Err(e) = compact(&inn, inn.config.compact_min_files).await {
            tracing::error!(error = %e, "compaction failed; will retry");
        }
        if let Some(keep) = inn.config.retention {
            let cutoff = chrono::Utc::now() - chrono::Duration::from_std(keep).unwrap_or_default();
            let date = cutoff.format("%Y-%m-%d").to_string();
            if let Err(e) = (Store { inner: inn.clone() }).drop_days_before(&date).await {
                tracing::error!(error = %e, "retention failed");
            }
        }
        let expired: Vec<ObjPath> = {
            let mut st = lock(&inn.state);
            let now = Instant::now();
            let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.graveyard)
                .into_iter()
                .partition(|(t, _)| *t <= now);
            st.graveyard = keep;
            gone.into_iter().map(|(_, p)| p).collect()
        };
        for p in expired {
            match inn.objects.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "deleting replaced file failed"),
            }
        }
        // An intent is no longer needed once none of its inputs waits in the graveyard.
        let waiting: Vec<String> = lock(&inn.state)
            .graveyard
            .iter()
            .map(|(_, p)| p.to_string())
            .collect();
        for path in intent_files(&inn.config.data_dir) {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if Intent::decode(&text).is_none_or(|i| !i.inputs.iter().any(|x| waiting.contains(x))) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
