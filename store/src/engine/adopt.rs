//! The tables at open: each table's Delta log is loaded (or created, adopting the Parquet
//! files of a directory written before Delta), the WAL position each table's log records is
//! read (this node's, under its own `txn` app id), and files no commit references are dealt
//! with: those a commit removed wait out the rest of their grace period (a reader may hold an
//! older snapshot), the others — left by a persist or compaction of this node that crashed
//! before its commit — are deleted. On tables shared through a URL, another node's
//! uncommitted files are its persist in flight: left alone.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::commit_lock::CommitLock;
use super::compact::recover_compaction;
use super::delta::{DeltaLog, Location, NewFile};
use super::io;
use super::node::Node;
use crate::tables::{self, FileMeta, Table};
use crate::{Config, Result};

/// The tables as open found them.
pub(super) struct Opened {
    /// Each table's log (empty logs for a read-only store of a directory without them).
    pub(super) deltas: BTreeMap<Table, DeltaLog>,
    /// The files of every table's snapshot.
    pub(super) files: Vec<FileMeta>,
    /// Per table, the last WAL segment its rows are persisted from.
    pub(super) persisted: BTreeMap<Table, u64>,
    /// Removed files still in their grace period: delete at the instant.
    pub(super) graveyard: Vec<(Instant, ObjPath)>,
}

/// Parquet files of ours found by listing (the pre-Delta way), per table. Files whose WAL
/// range ends after the checkpoint come from a persist that did not finish: deleted (unless
/// read-only), their rows replay from the WAL.
async fn listed(
    objects: &dyn ObjectStore,
    only: &[Table],
    checkpoint: u64,
    superseded: &[String],
    ro: bool,
) -> Result<Vec<FileMeta>> {
    let mut files = Vec::new();
    let all: Vec<object_store::ObjectMeta> = objects.list(None).try_collect().await.map_err(io)?;
    for m in all {
        let Some(f) = tables::parse_path(&m.location, m.size).filter(|f| only.contains(&f.table))
        else {
            continue;
        };
        if f.wal_last > checkpoint {
            if !ro {
                tracing::warn!(path = %f.path, "removing file from an unfinished persist");
                objects.delete(&f.path).await.map_err(io)?;
            }
        } else if !superseded.contains(&f.path.to_string()) {
            files.push(f);
        }
    }
    Ok(files)
}

/// Writable: files under a table's directory that its snapshot does not hold. `shared`: other
/// nodes write these tables too, so only this node's own unreferenced files are deleted.
async fn sweep(
    objects: &dyn ObjectStore,
    log: &DeltaLog,
    table: Table,
    (node, shared): (&Node, bool),
    grace: Duration,
    graveyard: &mut Vec<(Instant, ObjPath)>,
) -> Result<()> {
    let live: HashSet<ObjPath> = log.files().into_iter().map(|f| f.path).collect();
    let removed: BTreeMap<ObjPath, i64> = log.tombstones().await?.into_iter().collect();
    let prefix = ObjPath::from(table.name());
    let all: Vec<object_store::ObjectMeta> = objects
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(io)?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    for m in all {
        let p = m.location;
        if live.contains(&p)
            || !p.as_ref().ends_with(".parquet")
            || p.as_ref().contains("/_delta_log/")
        {
            continue;
        }
        let left_ms = removed
            .get(&p)
            .map(|at| at + grace.as_millis() as i64 - now_ms)
            .unwrap_or(0);
        if !removed.contains_key(&p) && shared && !node.wrote(&p) {
            continue;
        }
        if left_ms > 0 {
            graveyard.push((Instant::now() + Duration::from_millis(left_ms as u64), p));
        } else {
            if !removed.contains_key(&p) {
                tracing::warn!(path = %p, "removing a file no Delta commit references (unfinished persist or compaction)");
            }
            match objects.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io(e)),
            }
        }
    }
    Ok(())
}

/// Loads (or creates, or for read-only pre-Delta directories lists) every table.
pub(super) async fn open_tables(
    config: &Config,
    location: &Location,
    objects: &Arc<dyn ObjectStore>,
    (checkpoint, node): (u64, &Node),
    superseded: &[String],
    lock: Option<Arc<CommitLock>>,
) -> Result<Opened> {
    let ro = config.read_only;
    let mut deltas = BTreeMap::new();
    for t in Table::ALL {
        deltas.insert(
            t,
            DeltaLog::open(location, objects, t, (node.app_id(), lock.clone())).await?,
        );
    }
    let mut legacy = Vec::new();
    let bare: Vec<Table> = deltas
        .iter()
        .filter(|(_, d)| !d.exists())
        .map(|(t, _)| *t)
        .collect();
    if !bare.is_empty() {
        if !ro {
            recover_compaction(&config.data_dir, objects.as_ref()).await?;
        }
        legacy = listed(objects.as_ref(), &bare, checkpoint, superseded, ro).await?;
    }
    let mut out = Opened {
        deltas: BTreeMap::new(),
        files: Vec::new(),
        persisted: BTreeMap::new(),
        graveyard: Vec::new(),
    };
    for (t, mut log) in deltas {
        let mine: Vec<FileMeta> = legacy.iter().filter(|f| f.table == t).cloned().collect();
        if !log.exists() {
            if ro {
                out.files.extend(mine);
                out.persisted.insert(t, checkpoint);
                out.deltas.insert(t, log);
                continue;
            }
            let n = mine.len();
            let adopt = mine.into_iter().map(|meta| NewFile { meta, rows: None });
            log.create(adopt.collect(), checkpoint).await?;
            tracing::info!(
                table = t.name(),
                files = n,
                "created the Delta table (adopting existing files)"
            );
        } else if !ro {
            sweep(
                objects.as_ref(),
                &log,
                t,
                (node, config.tables_url.is_some()),
                config.delete_grace,
                &mut out.graveyard,
            )
            .await?;
        }
        let at = log.wal_position().await?.unwrap_or(0).max(checkpoint);
        out.persisted.insert(t, at);
        out.files.extend(log.files());
        out.deltas.insert(t, log);
    }
    out.files
        .sort_by(|a, b| (a.table, &a.date, a.wal_first).cmp(&(b.table, &b.date, b.wal_first)));
    Ok(out)
}

/// Where the tables live, as Delta resolves paths: the root of the file system and the data
/// directory's URL, or the store behind the tables URL and that URL.
pub(super) fn location(config: &Config, parsed: Option<Arc<dyn ObjectStore>>) -> Result<Location> {
    match (&config.tables_url, parsed) {
        (Some(u), Some(root)) => {
            let url = url::Url::parse(u)
                .map_err(|e| crate::Error::Config(format!("tables URL {u:?}: {e}")))?;
            Ok(Location { root, url })
        }
        _ => {
            let dir = std::path::absolute(&config.data_dir).map_err(io)?;
            let url = url::Url::from_directory_path(&dir).map_err(|()| {
                crate::Error::Config(format!(
                    "data directory {} is not a usable path",
                    dir.display()
                ))
            })?;
            Ok(Location {
                root: Arc::new(object_store::local::LocalFileSystem::new()),
                url,
            })
        }
    }
}

/// The lowest WAL position over the tables: every segment up to it is in every table.
pub(super) fn all_persisted(persisted: &BTreeMap<Table, u64>, checkpoint: u64) -> u64 {
    persisted
        .values()
        .copied()
        .min()
        .unwrap_or(checkpoint)
        .max(checkpoint)
}
