//! Cluster mode: the rows other nodes persisted, told to this node's append observers (with
//! [`crate::Config::observe_other_nodes`]). When the tick follows other nodes' commits, the
//! files a commit added to `observations` that another node wrote in a persist (not a
//! compaction's merge: those add no rows) are read, and their rows summarised as an append
//! of this node's would be — so an alert engine that owns a patient hears of readings that
//! arrived at any node, one persist later. Files that were in the table when this node opened
//! are not told (the engine's catch-up reads the tables).

use std::collections::HashSet;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use object_store::path::Path as ObjPath;

use super::stats::{AppendSummary, summarise_readings};
use super::{Inner, read_file};
use crate::Result;
use crate::tables::{FileMeta, Table};

/// Whether a file is a compaction's merge (`…-c<stamp>.parquet`).
fn merged(path: &ObjPath) -> bool {
    let name = path.filename().unwrap_or_default();
    let stem = name.strip_suffix(".parquet").unwrap_or(name);
    stem.rsplit('-')
        .next()
        .and_then(|p| p.strip_prefix('c'))
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Files of `now` not in `before` that another node's persist wrote to `observations`.
fn others_new(inner: &Inner, table: Table, before: &[FileMeta], now: &[FileMeta]) -> Vec<ObjPath> {
    if !inner.config.observe_other_nodes || table != Table::Observations {
        return Vec::new();
    }
    let seen: HashSet<&ObjPath> = before.iter().map(|f| &f.path).collect();
    now.iter()
        .filter(|f| !seen.contains(&f.path) && !inner.node.wrote(&f.path) && !merged(&f.path))
        .map(|f| f.path.clone())
        .collect()
}

/// A table's files in the state become its snapshot's (after any commit or refresh); the
/// files other nodes' persists added meanwhile wait in `untold` for [`tell_untold`]. Every
/// path that moves the snapshot goes through here: a commit of this node's that caught up over
/// others' commits brings their files in too, and the next refresh finds nothing new.
pub(super) fn take_files(inner: &Inner, st: &mut super::State, table: Table, files: Vec<FileMeta>) {
    let before: Vec<FileMeta> = st
        .files
        .iter()
        .filter(|f| f.table == table)
        .cloned()
        .collect();
    let told = others_new(inner, table, &before, &files);
    st.untold.extend(told);
    st.files.retain(|f| f.table != table);
    st.files.extend(files);
    st.files
        .sort_by(|a, b| (a.table, &a.date, a.wal_first).cmp(&(b.table, &b.date, b.wal_first)));
}

/// Tells the observers of the files [`take_files`] set aside. Call it with no lock held:
/// reading the files waits on the object store.
pub(super) async fn tell_untold(inner: &Inner) -> Result<()> {
    let files = std::mem::take(&mut super::lock(&inner.state).untold);
    tell(inner, files).await
}

/// Files read at once when telling: a tick finds one file per other node and date, and each
/// read is a round trip to the object store.
const READS_AT_ONCE: usize = 8;

/// Reads the files (several at once) and tells the observers, one summary per file, in order.
async fn tell(inner: &Inner, files: Vec<ObjPath>) -> Result<()> {
    use futures::StreamExt as _;
    let objects = inner.objects.as_ref();
    let mut read = futures::stream::iter(files)
        .map(|path| async move { read_file(objects, &path).await })
        .buffered(READS_AT_ONCE);
    while let Some(res) = read.next().await {
        // A file removed and vacuumed meanwhile (another node's compaction) is skipped: its
        // rows are in the merge, which the alert engine's catch-up reads.
        let batches = match res {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading another node's new file failed; its rows are not told");
                continue;
            }
        };
        let summary = summary(&batches);
        if summary.patients.is_empty() {
            continue;
        }
        let observers = inner
            .observers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for o in &observers {
            o(&summary);
        }
    }
    Ok(())
}

/// The summary of persisted `observations` rows (rows without a patient, or with a code the
/// catalogue does not know, are left out as an append leaves them out).
fn summary(batches: &[RecordBatch]) -> AppendSummary {
    let mut rows = Vec::new();
    for b in batches {
        let (Some(p), Some(c), Some(t), Some(v)) = (
            b.column_by_name("patient_id")
                .and_then(|a| a.as_string_opt::<i32>()),
            b.column_by_name("code")
                .and_then(|a| a.as_string_opt::<i32>()),
            b.column_by_name("effective_time")
                .and_then(|a| a.as_primitive_opt::<TimestampMicrosecondType>()),
            b.column_by_name("value")
                .and_then(|a| a.as_primitive_opt::<Float64Type>()),
        ) else {
            tracing::warn!("a persisted observations file lacks a column the alert engine reads");
            continue;
        };
        for i in 0..b.num_rows() {
            if p.is_null(i) {
                continue;
            }
            let Some(vital) = carewatch_transform::catalogue::by_code(c.value(i)) else {
                continue;
            };
            rows.push((p.value(i), vital.code, t.value(i), v.value(i)));
        }
    }
    summarise_readings(rows.into_iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_are_told_apart_from_persists() {
        let p = |s: &str| ObjPath::from(s);
        assert!(merged(&p(
            "observations/date=2024-05-01/wal-1-9-n0a1b-c1700000000.parquet"
        )));
        assert!(merged(&p(
            "observations/date=2024-05-01/wal-1-9-c1700000000.parquet"
        )));
        assert!(!merged(&p(
            "observations/date=2024-05-01/wal-0000000000000001-0000000000000002-n0a1b.parquet"
        )));
        assert!(!merged(&p("observations/date=2024-05-01/wal-1-2.parquet")));
    }
}
