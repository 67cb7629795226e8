//! Persist's CPU phase: the buffered batches of each table are sorted by key and
//! de-duplicated (gathered from the batches, not concatenated first), split by day and encoded as Parquet (a file's columns on several
//! threads, [`crate::sorted`]), on a thread of lower priority ([`super::priority`]).

use std::collections::BTreeMap;
use std::time::Instant;

use arrow_array::RecordBatch;

use super::priority::{PERSIST_NICE, yielding};
use crate::Result;
use crate::sorted;
use crate::tables::{self, Table};

/// One file a persist is about to write.
pub(super) struct Planned {
    pub(super) table: Table,
    pub(super) date: String,
    pub(super) rows: u64,
    pub(super) bytes: bytes::Bytes,
}

/// Threads a file's columns are encoded on: the machine's cores, at most 4 (the string
/// columns dominate; beyond that the split is uneven).
fn encode_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Sorts, de-duplicates, splits by day and encodes (CPU work, on a thread of lower priority).
pub(super) async fn encode(
    by_table: BTreeMap<Table, Vec<RecordBatch>>,
    rgs: usize,
) -> Result<Vec<Planned>> {
    yielding("carewatch-persist", PERSIST_NICE, move || {
        let mut out = Vec::new();
        for (table, batches) in by_table {
            let t = Instant::now();
            let sorted_all = tables::sort_dedupe_batches(table, &batches)?;
            drop(batches);
            let days = tables::split_by_day(table, &sorted_all)?;
            drop(sorted_all);
            let sort = t.elapsed();
            let t = Instant::now();
            let mut rows = 0;
            for (date, part) in days {
                let bytes = sorted::encode_parallel(&part, rgs, encode_threads())?;
                rows += part.num_rows();
                out.push(Planned {
                    table,
                    date,
                    rows: part.num_rows() as u64,
                    bytes,
                });
            }
            tracing::debug!(
                table = table.name(),
                rows,
                sort_ms = sort.as_millis() as u64,
                encode_ms = t.elapsed().as_millis() as u64,
                "persist encoded"
            );
        }
        Ok(out)
    })
    .await
}
