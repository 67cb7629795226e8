//! Opening a store: the directory lock, crash recovery of files, WAL replay, then the writer
//! thread and the background task.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::mpsc;

use super::adopt::{all_persisted, location, open_tables};
use super::compact::{Intent, background, intent_files};
use super::node::Node;
use super::persist::{read_checkpoint, write_checkpoint};
use super::writer::writer;
use super::{Chunk, Health, Inner, State, Store, chunk_bytes, dead_batch, io, rows_batch};
use crate::alert_history::EXPORT_APP_ID;
use crate::codec::{self, Record};
use crate::tables::Table;
use crate::wal::{self, Wal};
use crate::{Config, Error, Result};

/// The object store of the tables (rooted at them), and for a tables URL the store at the
/// URL's root (how Delta resolves paths).
type Stores = (Arc<dyn ObjectStore>, Option<Arc<dyn ObjectStore>>);

fn object_store(config: &Config) -> Result<Stores> {
    match &config.tables_url {
        None => {
            std::fs::create_dir_all(&config.data_dir).map_err(io)?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&config.data_dir)
                .map_err(io)?;
            Ok((Arc::new(fs), None))
        }
        Some(url) => {
            let u = url::Url::parse(url)
                .map_err(|e| Error::Config(format!("tables URL {url:?}: {e}")))?;
            let env = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
            let (store, prefix) =
                object_store::parse_url_opts(&u, env.chain(config.object_store_options.clone()))
                    .map_err(|e| Error::Config(format!("tables URL {url:?}: {e}")))?;
            let root: Arc<dyn ObjectStore> = Arc::from(store);
            let tables = super::prefix::Prefixed::new(root.clone(), prefix);
            Ok((Arc::new(tables), Some(root)))
        }
    }
}

/// Where the tables live on this machine, when they do (to fsync what object_store wrote).
fn local_root(config: &Config) -> Option<std::path::PathBuf> {
    match &config.tables_url {
        None => Some(config.data_dir.clone()),
        Some(u) => url::Url::parse(u)
            .ok()
            .filter(|u| u.scheme() == "file")
            .and_then(|u| u.to_file_path().ok()),
    }
}

/// Takes the exclusive `LOCK` of a data directory (one writer per directory).
async fn lock_dir(config: &Config, wal_dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(wal_dir).map_err(io)?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(config.data_dir.join("LOCK"))
        .map_err(io)?;
    // A store being dropped in this process may hold the lock a moment longer.
    for _ in 0..50 {
        if f.try_lock().is_ok() {
            return Ok(f);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if f.try_lock().is_ok() {
        return Ok(f);
    }
    Err(Error::Config(format!(
        "data directory {} is in use by another carewatch process (use read-only tools such as `carewatch sql --data-dir` beside it)",
        config.data_dir.display()
    )))
}

/// Read-only: a compaction in progress means its inputs are superseded by its output.
async fn superseded_inputs(dir: &Path, objects: &dyn ObjectStore) -> Vec<String> {
    let mut superseded = Vec::new();
    for p in intent_files(dir) {
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
    superseded
}

/// Replays the WAL segments after each table's persisted position into the buffer; cuts torn
/// tails (unless read-only). Returns the segment ids found.
fn replay(
    wal_dir: &Path,
    persisted: &BTreeMap<Table, u64>,
    ro: bool,
    state: &mut State,
) -> Result<Vec<u64>> {
    let at = |t: Table| persisted.get(&t).copied().unwrap_or(0);
    let lowest = at(Table::Observations).min(at(Table::DeadLetters));
    let segments = if wal_dir.exists() {
        wal::list_segments(wal_dir).map_err(io)?
    } else {
        Vec::new()
    };
    let now = Instant::now();
    for &id in segments.iter().filter(|id| **id > lowest) {
        let (frames, damage) = wal::read_segment_opts(wal_dir, id, !ro).map_err(io)?;
        if let Some(d) = damage.filter(|_| !ro) {
            tracing::warn!(segment = d.segment, offset = d.offset, what = %d.what, "WAL tail cut");
            state.stats.wal_damage.push(format!(
                "segment {} offset {}: {}",
                d.segment, d.offset, d.what
            ));
        }
        for f in frames {
            state.stats.replayed_frames += 1;
            for rec in codec::decode(&f).map_err(io)? {
                // A table whose log already holds this segment (a crash after its commit,
                // before the checkpoint moved) must not get its rows twice.
                let (table, batch) = match rec {
                    Record::Rows(_) if id <= at(Table::Observations) => continue,
                    Record::Dead(_) if id <= at(Table::DeadLetters) => continue,
                    Record::Rows(rows) => (Table::Observations, rows_batch(&rows)?),
                    Record::Dead(dead) => (Table::DeadLetters, dead_batch(&dead)?),
                };
                state.rows += batch.num_rows();
                state.bytes += chunk_bytes(&batch);
                state.chunks.push(Chunk {
                    segment: id,
                    at: now,
                    table,
                    batch,
                });
            }
        }
    }
    Ok(segments)
}

/// Opens (or creates) a store: recovers from any crash, replays the WAL into the buffer, and
/// starts the writer thread and the background persister.
pub(super) async fn open(config: Config) -> Result<Store> {
    let (objects, url_root) = object_store(&config)?;
    let location = location(&config, url_root)?;
    let wal_dir = config.data_dir.join("wal");
    let ro = config.read_only;
    let lock = if ro {
        None
    } else {
        Some(lock_dir(&config, &wal_dir).await?)
    };
    let node = Node::of_dir(&config.data_dir, &wal_dir, ro)?;
    // Cluster mode: commits of the nodes sharing these tables go one at a time. (Tables in
    // the data directory have one writer, this process, whose LOCK keeps others out.)
    let commit_lock = match (&config.postgres_url, &config.tables_url, ro) {
        (Some(url), Some(_), false) => Some(super::commit_lock::CommitLock::open(url).await?),
        _ => None,
    };
    // Cluster mode: the WAL goes to the shared store too, and this node's liveness is kept.
    let remote = match (&config.postgres_url, &commit_lock) {
        (Some(url), Some(_)) => Some(
            super::remote_wal::RemoteWal::start(
                objects.clone(),
                &node.app_id(),
                url,
                config.wal_node_ttl,
            )
            .await?,
        ),
        _ => None,
    };
    let (upload, upload_rx) = match remote {
        Some(_) => {
            let (tx, rx) = mpsc::channel(2 * super::remote_wal::IN_FLIGHT);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let checkpoint = read_checkpoint(&config.data_dir)?;
    let superseded = if ro {
        superseded_inputs(&config.data_dir, objects.as_ref()).await
    } else {
        Vec::new()
    };
    let history_table = super::delta::DeltaLog::open(
        &location,
        &objects,
        Table::Alerts,
        (EXPORT_APP_ID.to_owned(), commit_lock.clone()),
    )
    .await?;
    let opened = open_tables(
        &config,
        &location,
        &objects,
        (checkpoint, &node),
        &superseded,
        commit_lock,
    )
    .await?;
    let mut state = State {
        files: opened.files,
        graveyard: opened.graveyard,
        ..State::default()
    };
    let segments = replay(&wal_dir, &opened.persisted, ro, &mut state)?;
    let persisted = all_persisted(&opened.persisted, checkpoint);
    let wal = if ro {
        None
    } else {
        if persisted > checkpoint {
            write_checkpoint(&config.data_dir, persisted)?;
        }
        wal::remove_upto(&wal_dir, persisted).map_err(io)?;
        let newest = opened.persisted.values().copied().max().unwrap_or(0);
        let next = segments
            .last()
            .copied()
            .unwrap_or(0)
            .max(newest)
            .max(checkpoint)
            + 1;
        Some(Wal::create(&wal_dir, next).map_err(io)?)
    };
    let (tx, rx) = mpsc::channel(4096);
    let inner = Arc::new(Inner {
        _lock: lock,
        local_root: local_root(&config),
        config,
        node,
        tx,
        state: Mutex::new(state),
        objects,
        deltas: tokio::sync::Mutex::new(opened.deltas),
        history_table: tokio::sync::Mutex::new(history_table),
        persist_lock: tokio::sync::Mutex::new(()),
        maintain_lock: tokio::sync::Mutex::new(()),
        wal_dir,
        observers: std::sync::RwLock::new(Vec::new()),
        health: Arc::new(Health::default()),
        inflight: Mutex::new(std::collections::BTreeMap::new()),
        remote,
        upload,
        maintainer: std::sync::OnceLock::new(),
    });
    let Some(wal) = wal else {
        // Read-only: no writer, so appends find the channel closed.
        drop(rx);
        return Ok(Store { inner });
    };
    let weak = Arc::downgrade(&inner);
    let health = inner.health.clone();
    std::thread::Builder::new()
        .name("carewatch-wal".into())
        .spawn(move || writer(wal, rx, weak, health))
        .map_err(io)?;
    let store = Store { inner };
    if let (Some(remote), Some(rx)) = (store.inner.remote.clone(), upload_rx) {
        let weak = Arc::downgrade(&store.inner);
        tokio::spawn(super::remote_wal::uploader(rx, weak.clone(), remote));
        tokio::spawn(super::remote_wal::keep_alive(weak));
    }
    tokio::spawn(background(Arc::downgrade(&store.inner)));
    tokio::spawn(super::compact::maintenance(Arc::downgrade(&store.inner)));
    Ok(store)
}
