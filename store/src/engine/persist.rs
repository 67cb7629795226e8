//! Persist: the buffered chunks of closed WAL segments become sorted Parquet files, made
//! durable, then one Delta commit per table adds them (with the WAL position as the commit's
//! `txn`), and only then does the checkpoint let those segments go.
//!
//! All or nothing with respect to recovery: files no commit references are deleted (by the
//! failed persist, or by open after a crash); a crash after a table's commit but before the
//! checkpoint is recognised at open by the `txn` version in that table's log, so replay skips
//! the segments the table already holds and no row is stored twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow_array::RecordBatch;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::oneshot;

use super::delta::{NewFile, Op};
use super::encode::{Planned, encode};
use super::writer::Cmd;
use super::{Inner, io, lock};
use crate::tables::{self, Table};
use crate::wal;
use crate::{Error, Result};

const CHECKPOINT: &str = "checkpoint";

/// Moves the checkpoint (at open, to the position every table's Delta log records).
pub(super) fn write_checkpoint(dir: &Path, at: u64) -> Result<()> {
    write_atomic(dir, CHECKPOINT, at.to_string().as_bytes())
}

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

/// Deletes files; returns those that could not be deleted.
pub(super) async fn delete_all(objects: &dyn ObjectStore, paths: Vec<ObjPath>) -> Vec<ObjPath> {
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
) -> Result<Vec<NewFile>> {
    let mut metas: Vec<NewFile> = Vec::with_capacity(plan.len());
    let mut res = Ok(());
    for p in plan {
        let (table, date) = (p.table, p.date);
        let path = tables::file_path(table, &date, first, closed, &inner.node.file_suffix());
        let size = p.bytes.len() as u64;
        let bytes = p.bytes;
        // Recorded before the PUT: a failed PUT may still leave the file behind.
        metas.push(NewFile::new(
            table,
            path.clone(),
            date,
            (first, closed),
            size,
            p.rows,
        ));
        if let Err(e) = inner.objects.put(&path, bytes.into()).await {
            res = Err(io(e));
            break;
        }
    }
    if res.is_ok()
        && let Some(root) = inner.local_root.clone()
    {
        let paths: Vec<ObjPath> = metas.iter().map(|m| m.meta.path.clone()).collect();
        res = blocking(move || sync_local(&root, &paths)).await;
    }
    if let Err(e) = res {
        let paths = metas.into_iter().map(|m| m.meta.path).collect();
        let left = delete_all(inner.objects.as_ref(), paths).await;
        lock(&inner.state).leftovers.extend(left);
        return Err(e);
    }
    Ok(metas)
}

/// Makes a Delta commit file durable on a local file system. `false`: it is committed (its
/// files must stay) but may not survive a power loss, so the WAL must stay too.
pub(super) async fn sync_log(inner: &Inner, log: ObjPath) -> bool {
    let Some(root) = inner.local_root.clone() else {
        return true;
    };
    match blocking(move || sync_local(&root, &[log])).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "syncing the delta log failed; the WAL is kept");
            false
        }
    }
}

/// One Delta commit per table of the new files; after each, the table's buffered chunks of
/// the persisted segments leave the buffer and its file list becomes the new snapshot's.
/// `Ok(true)`: every table committed durably. On a failed commit, the files of the tables
/// not committed are deleted and the error returned (their rows stay buffered).
async fn commit_tables(inner: &Inner, files: Vec<NewFile>, closed: u64) -> Result<bool> {
    let mut by: BTreeMap<Table, Vec<NewFile>> = BTreeMap::new();
    for f in files {
        by.entry(f.meta.table).or_default().push(f);
    }
    let mut durable = true;
    let mut deltas = inner.deltas.lock().await;
    while let Some((table, adds)) = by.pop_first() {
        let Some(log) = deltas.get_mut(&table) else {
            continue;
        };
        let log_file = match log.commit(Op::Persist, &adds, &[], Some(closed)).await {
            Ok(p) => p,
            Err(e) => {
                if let Some(upto) = log.take_adopted() {
                    super::remote_wal::drop_adopted(inner, table, upto);
                }
                let paths = adds
                    .iter()
                    .chain(by.values().flatten())
                    .map(|f| f.meta.path.clone())
                    .collect();
                let left = delete_all(inner.objects.as_ref(), paths).await;
                lock(&inner.state).leftovers.extend(left);
                return Err(e);
            }
        };
        durable &= sync_log(inner, log_file).await;
        let files = log.files();
        let mut st = lock(&inner.state);
        super::follow::take_files(inner, &mut st, table, files);
        drop_buffered(&mut st, table, closed);
    }
    Ok(durable)
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
    let files = write_files(inner, plan, first, closed).await?;
    let n = files.len();
    let durable = commit_tables(inner, files, closed).await;
    // Other nodes' files this commit caught up over (read with no lock but the persist's).
    if let Err(e) = super::follow::tell_untold(inner).await {
        tracing::warn!(error = %e, "telling other nodes' rows failed");
    }
    let durable = durable?;
    {
        let mut st = lock(&inner.state);
        st.stats.persists += 1;
        st.stats.persist_seconds.observe(started.elapsed());
    }
    if !durable {
        return Ok(n);
    }
    if let Some(remote) = &inner.remote {
        remote.persisted(closed).await;
    }
    // The tables' logs hold the segments now; the checkpoint only saves replaying them. If it
    // does not move, the WAL stays and open skips what the logs record.
    let dir = inner.config.data_dir.clone();
    match blocking(move || write_checkpoint(&dir, closed)).await {
        Ok(()) => {
            let wal_dir = inner.wal_dir.clone();
            blocking(move || wal::remove_upto(&wal_dir, closed).map_err(io)).await?;
        }
        Err(e) => tracing::error!(error = %e, "writing the checkpoint failed; the WAL is kept"),
    }
    Ok(n)
}

/// Removes from the buffer the rows of `table` from WAL segments up to `upto` (they are in the
/// table now: persisted here, or adopted by another node); returns how many.
pub(super) fn drop_buffered(st: &mut super::State, table: Table, upto: u64) -> usize {
    let (mut rows, mut bytes) = (0, 0);
    st.chunks.retain(|c| {
        let keep = c.table != table || c.segment > upto;
        if !keep {
            rows += c.batch.num_rows();
            bytes += super::chunk_bytes(&c.batch);
        }
        keep
    });
    st.rows -= rows;
    st.bytes -= bytes;
    rows
}
