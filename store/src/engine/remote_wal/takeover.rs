//! Taking over a dead node's WAL objects (cluster mode).
//!
//! A node whose liveness row ran out in PostgreSQL may have acknowledged rows it never
//! persisted; their frames are on the shared store. One live node (the deliverer) reads the
//! frames beyond the dead node's `txn` position in each table, writes their rows as Parquet and
//! commits them in one Delta commit per table that also moves the dead node's `txn` to the last
//! segment taken — under the commit lock, and only if that position is still the one read
//! (fencing: a second adopter, or the dead node itself persisting after all, is refused, see
//! `DeltaLog::txn_as_expected`). Then the frames are deleted. The files are named as this
//! node's (`-n<me>`) with the dead node's id after `-w`, so the other nodes' append observers
//! are told of their rows as of any other node's persist, and this node's are told here.

use std::collections::BTreeMap;

use arrow_array::RecordBatch;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjPath;

use super::super::delta::NewFile;
use super::super::persist::{blocking, delete_all};
use super::super::{Inner, dead_batch, io, lock, rows_batch};
use super::{RemoteWal, app_id_of};
use crate::codec::{self, Record};
use crate::tables::{self, Table};
use crate::{Result, wal};

/// Adopts the WAL objects of every node no longer alive. Returns the rows committed.
pub(in crate::engine) async fn adopt(inner: &Inner) -> Result<usize> {
    let Some(remote) = inner.remote.clone() else {
        return Ok(0);
    };
    let others: Vec<String> = remote
        .nodes()
        .await?
        .into_iter()
        .filter(|n| *n != remote.node)
        .collect();
    if others.is_empty() {
        return Ok(0);
    }
    let live = remote.live().await?;
    let mut rows = 0;
    for node in others.into_iter().filter(|n| !live.contains(n)) {
        rows += adopt_node(inner, &remote, &node).await?;
    }
    if rows > 0
        && let Err(e) = super::super::follow::tell_untold(inner).await
    {
        tracing::warn!(error = %e, "telling adopted rows failed");
    }
    Ok(rows)
}

/// The rows of a dead node's frames, per table, beyond each table's position of that node.
#[derive(Default)]
struct Taken {
    by_table: BTreeMap<Table, Vec<RecordBatch>>,
    first: u64,
    last: u64,
}

/// Reads and decodes the frames of segments beyond `pos` (per table).
async fn read_frames(
    remote: &RemoteWal,
    frames: &[(u64, u64, ObjPath)],
    pos: &BTreeMap<Table, Option<u64>>,
) -> Result<Taken> {
    let at = |t: Table| pos.get(&t).copied().flatten().unwrap_or(0);
    let mut taken = Taken {
        first: u64::MAX,
        ..Taken::default()
    };
    for (seg, _, path) in frames {
        taken.last = taken.last.max(*seg);
        if *seg <= at(Table::Observations) && *seg <= at(Table::DeadLetters) {
            continue;
        }
        let bytes = super::super::get_bytes(remote.objects.as_ref(), path).await?;
        let (payloads, damage) = wal::scan(&bytes);
        if damage.is_some() {
            // A PUT is all or nothing: a damaged object was never acknowledged whole.
            tracing::warn!(
                segment = seg,
                "a damaged WAL object: its intact frames are taken"
            );
        }
        for p in payloads {
            for rec in codec::decode(p).map_err(io)? {
                let (table, batch) = match rec {
                    Record::Rows(_) if *seg <= at(Table::Observations) => continue,
                    Record::Dead(_) if *seg <= at(Table::DeadLetters) => continue,
                    Record::Rows(rows) => (Table::Observations, rows_batch(&rows)?),
                    Record::Dead(dead) => (Table::DeadLetters, dead_batch(&dead)?),
                };
                taken.first = taken.first.min(*seg);
                taken.by_table.entry(table).or_default().push(batch);
            }
        }
    }
    Ok(taken)
}

/// Sorts, de-duplicates, splits by day and writes one table's adopted rows.
async fn write(
    inner: &Inner,
    table: Table,
    batches: Vec<RecordBatch>,
    (first, last, dead): (u64, u64, &str),
) -> Result<Vec<NewFile>> {
    let rgs = inner.config.row_group_rows;
    let parts = blocking(move || {
        let all = tables::concat(&table.schema(), &batches)?;
        let sorted = tables::sort_dedupe(table, &all)?;
        let mut out = Vec::new();
        for (date, part) in tables::split_by_day(table, &sorted)? {
            out.push((
                date,
                part.num_rows() as u64,
                tables::encode_parquet(&part, rgs)?,
            ));
        }
        Ok(out)
    })
    .await?;
    let suffix = format!("{}-w{dead}", inner.node.file_suffix());
    let mut files = Vec::new();
    for (date, rows, bytes) in parts {
        let path = tables::file_path(table, &date, first, last, &suffix);
        let size = bytes.len() as u64;
        files.push(NewFile::new(
            table,
            path.clone(),
            date,
            (first, last),
            size,
            rows,
        ));
        if let Err(e) = inner.objects.put(&path, bytes.into()).await {
            let paths = files.into_iter().map(|f| f.meta.path).collect();
            let left = delete_all(inner.objects.as_ref(), paths).await;
            lock(&inner.state).leftovers.extend(left);
            return Err(io(e));
        }
    }
    Ok(files)
}

/// Adopts one dead node's frames; returns the rows committed.
async fn adopt_node(inner: &Inner, remote: &RemoteWal, node: &str) -> Result<usize> {
    let frames = remote.frames_of(node).await?;
    let Some(last) = frames.last().map(|f| f.0) else {
        return Ok(0);
    };
    let app = app_id_of(node);
    let _g = inner.persist_lock.lock().await;
    let mut deltas = inner.deltas.lock().await;
    let mut pos = BTreeMap::new();
    for (t, log) in deltas.iter_mut() {
        log.refresh().await?;
        pos.insert(*t, log.position_of(&app).await?);
    }
    let taken = read_frames(remote, &frames, &pos).await?;
    let mut rows = 0;
    for (table, batches) in taken.by_table {
        let Some(log) = deltas.get_mut(&table) else {
            continue;
        };
        let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let adds = write(inner, table, batches, (taken.first, last, node)).await?;
        let expect = pos.get(&table).copied().flatten();
        if let Err(e) = log.commit_adopted(&adds, &app, (expect, last)).await {
            let paths = adds.into_iter().map(|f| f.meta.path).collect();
            let left = delete_all(inner.objects.as_ref(), paths).await;
            lock(&inner.state).leftovers.extend(left);
            return Err(e);
        }
        let paths: Vec<ObjPath> = adds.iter().map(|f| f.meta.path.clone()).collect();
        let files = log.files();
        {
            let mut st = lock(&inner.state);
            super::super::follow::take_files(inner, &mut st, table, files);
            // This node's observers hear of the adopted rows too (the files carry its name).
            if inner.config.observe_other_nodes && table == Table::Observations {
                st.untold.extend(paths);
            }
        }
        rows += n;
    }
    drop(deltas);
    // Every table now holds every frame up to `last` (committed, or had none of its rows).
    remote.delete_frames(node, last).await?;
    if rows > 0 {
        tracing::warn!(
            rows,
            upto = last,
            "adopted a dead node's acknowledged rows from its WAL objects"
        );
    }
    Ok(rows)
}
