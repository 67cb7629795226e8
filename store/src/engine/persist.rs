//! Persist: the buffered chunks of closed WAL segments become sorted Parquet files, made
//! durable, and only then does the checkpoint let those segments go.
//!
//! All or nothing with respect to recovery: a persist that fails deletes the files it wrote
//! (what it cannot delete is retried before the next persist may move the checkpoint), and a
//! crash before the checkpoint leaves files whose WAL range ends after it, which open deletes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow_array::RecordBatch;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::oneshot;

use super::writer::Cmd;
use super::{Inner, io, lock};
use crate::tables::{self, FileMeta, Table};
use crate::wal;
use crate::{Error, Result};

const CHECKPOINT: &str = "checkpoint";

/// The last WAL segment persisted (0: none).
pub(super) fn read_checkpoint(dir: &Path) -> Result<u64> {
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
    // Unique per writer: two processes (serve, and `carewatch token …` on the same data
    // directory) or two threads must never share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// Runs blocking file-system work off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io)?
}

/// Makes files object_store wrote on a local file system durable: each file, and every
/// directory from its parent up to the root (a new `date=` directory must survive too).
/// S3-compatible stores are durable once PUT returns, so there is nothing to do there.
pub(super) fn sync_local(root: &Path, paths: &[ObjPath]) -> Result<()> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for p in paths {
        let file = root.join(p.as_ref());
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        let mut d = file.parent();
        while let Some(dir) = d {
            if !dirs.iter().any(|x| x == dir) {
                dirs.push(dir.to_owned());
            }
            if dir == root {
                break;
            }
            d = dir.parent();
        }
    }
    for d in dirs {
        std::fs::File::open(&d)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
    }
    Ok(())
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

/// One file a persist is about to write.
struct Planned {
    table: Table,
    date: String,
    bytes: bytes::Bytes,
}

/// The buffered batches of segments up to `closed`, per table, and the first segment.
fn collect(inner: &Inner, closed: u64) -> (u64, BTreeMap<Table, Vec<RecordBatch>>) {
    let st = lock(&inner.state);
    let mut by: BTreeMap<Table, Vec<RecordBatch>> = BTreeMap::new();
    let mut first = u64::MAX;
    for c in st.chunks.iter().filter(|c| c.segment <= closed) {
        first = first.min(c.segment);
        by.entry(c.table).or_default().push(c.batch.clone());
    }
    (first, by)
}

/// Sorts, de-duplicates, splits by day and encodes (CPU work, on the blocking pool).
async fn encode(by_table: BTreeMap<Table, Vec<RecordBatch>>, rgs: usize) -> Result<Vec<Planned>> {
    blocking(move || {
        let mut out = Vec::new();
        for (table, batches) in by_table {
            let all = tables::concat(&table.schema(), &batches)?;
            let sorted = tables::sort_dedupe(table, &all)?;
            for (date, part) in tables::split_by_day(table, &sorted)? {
                let bytes = tables::encode_parquet(&part, rgs)?;
                out.push(Planned { table, date, bytes });
            }
        }
        Ok(out)
    })
    .await
}

/// Deletes files; returns those that could not be deleted.
async fn delete_all(objects: &dyn ObjectStore, paths: Vec<ObjPath>) -> Vec<ObjPath> {
    let mut left = Vec::new();
    for p in paths {
        match objects.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(error = %e, "deleting a file of a failed persist failed; will retry");
                left.push(p);
            }
        }
    }
    left
}

/// Files of an earlier failed persist must be gone before a checkpoint may cover their range.
async fn clear_leftovers(inner: &Inner) -> Result<()> {
    let paths = std::mem::take(&mut lock(&inner.state).leftovers);
    if paths.is_empty() {
        return Ok(());
    }
    let left = delete_all(inner.objects.as_ref(), paths).await;
    let n = left.len();
    lock(&inner.state).leftovers.extend(left);
    if n > 0 {
        return Err(Error::Io(format!(
            "{n} file(s) of a failed persist could not be deleted yet"
        )));
    }
    Ok(())
}

/// Writes the planned files and makes them durable. On failure, what was written is deleted
/// (or kept in `leftovers` for the next attempt) and the error returned.
async fn write_files(
    inner: &Inner,
    plan: Vec<Planned>,
    first: u64,
    closed: u64,
) -> Result<Vec<FileMeta>> {
    let mut metas: Vec<FileMeta> = Vec::with_capacity(plan.len());
    let mut res = Ok(());
    for Planned { table, date, bytes } in plan {
        let path = tables::file_path(table, &date, first, closed, "");
        let size = bytes.len() as u64;
        // Recorded before the PUT: a failed PUT may still leave the file behind.
        metas.push(FileMeta {
            table,
            path: path.clone(),
            date,
            wal_first: first,
            wal_last: closed,
            size,
        });
        if let Err(e) = inner.objects.put(&path, bytes.into()).await {
            res = Err(io(e));
            break;
        }
    }
    if res.is_ok()
        && let Some(root) = inner.local_root.clone()
    {
        let paths: Vec<ObjPath> = metas.iter().map(|m| m.path.clone()).collect();
        res = blocking(move || sync_local(&root, &paths)).await;
    }
    if let Err(e) = res {
        let paths = metas.into_iter().map(|m| m.path).collect();
        let left = delete_all(inner.objects.as_ref(), paths).await;
        lock(&inner.state).leftovers.extend(left);
        return Err(e);
    }
    Ok(metas)
}

/// Moves the checkpoint to `closed`. `Ok(true)`: durable; `Ok(false)`: the checkpoint file
/// says `closed` but its directory fsync failed, so the WAL must stay (a power loss may bring
/// the old checkpoint back; then the files are beyond it, deleted on open, and replayed).
/// `Err`: the checkpoint did not move; the files are deleted so no later checkpoint covers them.
async fn checkpoint(inner: &Inner, closed: u64, metas: &[FileMeta]) -> Result<bool> {
    let dir = inner.config.data_dir.clone();
    let text = closed.to_string();
    let Err(e) = blocking(move || write_atomic(&dir, CHECKPOINT, text.as_bytes())).await else {
        return Ok(true);
    };
    tracing::error!(error = %e, "writing the checkpoint failed");
    if read_checkpoint(&inner.config.data_dir).ok() == Some(closed) {
        return Ok(false);
    }
    let paths = metas.iter().map(|m| m.path.clone()).collect();
    let left = delete_all(inner.objects.as_ref(), paths).await;
    lock(&inner.state).leftovers.extend(left);
    Err(e)
}

/// Persists the buffered chunks of every closed segment. Returns the number of files written.
pub(super) async fn persist(inner: &Inner) -> Result<usize> {
    if inner.config.read_only {
        return Ok(0);
    }
    let _g = inner.persist_lock.lock().await;
    clear_leftovers(inner).await?;
    if lock(&inner.state).chunks.is_empty() {
        return Ok(0);
    }
    let started = Instant::now();
    let closed = rotate(inner).await?;
    let (first, by_table) = collect(inner, closed);
    if by_table.is_empty() {
        return Ok(0);
    }
    let plan = encode(by_table, inner.config.row_group_rows).await?;
    let metas = write_files(inner, plan, first, closed).await?;
    let moved = checkpoint(inner, closed, &metas).await?;
    let n = metas.len();
    {
        let mut st = lock(&inner.state);
        st.files.extend(metas);
        st.files
            .sort_by(|a, b| (a.table, &a.date, a.wal_first).cmp(&(b.table, &b.date, b.wal_first)));
        let (mut rows, mut bytes) = (0, 0);
        st.chunks.retain(|c| {
            let keep = c.segment > closed;
            if !keep {
                rows += c.batch.num_rows();
                bytes += super::chunk_bytes(&c.batch);
            }
            keep
        });
        st.rows -= rows;
        st.bytes -= bytes;
        st.stats.persists += 1;
        st.stats.persist_seconds.observe(started.elapsed());
    }
    if moved {
        let wal_dir = inner.wal_dir.clone();
        blocking(move || wal::remove_upto(&wal_dir, closed).map_err(io)).await?;
    }
    Ok(n)
}
