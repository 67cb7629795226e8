//! Persist's CPU phase: the buffered batches of each table are concatenated, sorted by key
//! and de-duplicated, split by day and encoded as Parquet, on the blocking pool.

use std::collections::BTreeMap;

use arrow_array::RecordBatch;

use super::persist::blocking;
use crate::Result;
use crate::tables::{self, Table};

/// One file a persist is about to write.
pub(super) struct Planned {
    pub(super) table: Table,
    pub(super) date: String,
    pub(super) rows: u64,
    pub(super) bytes: bytes::Bytes,
}

/// Sorts, de-duplicates, splits by day and encodes (CPU work, on the blocking pool).
pub(super) async fn encode(
    by_table: BTreeMap<Table, Vec<RecordBatch>>,
    rgs: usize,
) -> Result<Vec<Planned>> {
    blocking(move || {
        let mut out = Vec::new();
        for (table, batches) in by_table {
            let all = tables::concat(&table.schema(), &batches)?;
            let sorted = tables::sort_dedupe(table, &all)?;
            for (date, part) in tables::split_by_day(table, &sorted)? {
                let bytes = tables::encode_parquet(&part, rgs)?;
                let rows = part.num_rows() as u64;
                out.push(Planned {
                    table,
                    date,
                    rows,
                    bytes,
                });
            }
        }
        Ok(out)
    })
    .await
}
