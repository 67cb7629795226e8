//! Compaction's merge: Parquet files each already in the table's persisted order (what
//! persist, adoption and earlier merges write) are merged row by row into one file in that
//! order, observations' duplicates dropped as [`tables::sort_dedupe`] drops them. Only one
//! decoded batch per input and one output batch are in memory at a time, plus the files'
//! compressed bytes, so a merge of ten million rows holds megabytes of decoded data rather than
//! the gigabytes that decoding, concatenating and sorting every input at once took (which a
//! 100,000-patient load run showed as RSS jumping by 2 GB at each compaction).
//!
//! An input found out of order makes the merge return [`Merged::Unsorted`]; the caller then
//! falls back to the whole-file sort (files of older versions, whatever wrote them).

use arrow_array::RecordBatch;
use arrow_row::{RowConverter, Rows, SortField};
use arrow_schema::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::tables::{self, Table};
use crate::{Error, Result};

/// Rows decoded from an input at a time, and rows per output batch.
const BATCH_ROWS: usize = 8 * 1024;

fn enc(e: impl std::fmt::Display) -> Error {
    Error::Encode(e.to_string())
}

/// The outcome of [`merge_sorted`].
#[derive(Debug)]
pub enum Merged {
    /// The merged file and its row count.
    File(Bytes, u64),
    /// An input was not in the table's persisted order.
    Unsorted,
}

/// One input: its reader, current batch, that batch's sort and duplicate keys, and position.
struct Cursor {
    reader: ParquetRecordBatchReader,
    batch: RecordBatch,
    /// Index of `batch` in the current output chunk's sources.
    source: usize,
    order: Rows,
    dup: Option<Rows>,
    pos: usize,
}

struct Keys {
    order: RowConverter,
    order_cols: Vec<usize>,
    /// Observations: the natural key (the sort key but the received time), whose repeats are
    /// duplicates; the first received is kept.
    dup: Option<(RowConverter, Vec<usize>)>,
}

impl Keys {
    fn new(table: Table, schema: &SchemaRef) -> Result<Keys> {
        let names = tables::sort_columns(table);
        let cols: Vec<usize> = names
            .iter()
            .map(|n| schema.index_of(n).map_err(enc))
            .collect::<Result<_>>()?;
        let fields = |c: &[usize]| -> Vec<SortField> {
            c.iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect()
        };
        let dup = match table {
            Table::Observations => {
                let c = cols[..cols.len() - 1].to_vec();
                Some((RowConverter::new(fields(&c)).map_err(enc)?, c))
            }
            Table::DeadLetters | Table::Alerts => None,
        };
        Ok(Keys {
            order: RowConverter::new(fields(&cols)).map_err(enc)?,
            order_cols: cols,
            dup,
        })
    }

    fn rows(conv: &RowConverter, cols: &[usize], b: &RecordBatch) -> Result<Rows> {
        let arrays: Vec<_> = cols.iter().map(|&i| b.column(i).clone()).collect();
        conv.convert_columns(&arrays).map_err(enc)
    }
}

/// Reads the next non-empty batch of an input (brought to the table's current schema).
fn next_batch(table: Table, r: &mut ParquetRecordBatchReader) -> Result<Option<RecordBatch>> {
    for b in r.by_ref() {
        let b = tables::conform(table, &b.map_err(enc)?)?;
        if b.num_rows() > 0 {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// The files' rows merged into one file in the table's order, duplicates dropped.
pub fn merge_sorted(table: Table, inputs: Vec<Bytes>, row_group_rows: usize) -> Result<Merged> {
    let schema = table.schema();
    let keys = Keys::new(table, &schema)?;
    // The output is about the inputs' size: reserved once, it is never copied into a buffer of
    // twice its size as it grows (by doubling, a 256 MiB merge's output reached a 512 MiB buffer
    // with the 256 MiB one still held during the copy, beside the inputs).
    let reserve = inputs.iter().map(Bytes::len).sum::<usize>();
    let reserve = reserve + reserve / 16 + (64 << 10);
    let mut sources: Vec<RecordBatch> = Vec::new();
    let mut cursors: Vec<Cursor> = Vec::new();
    for bytes in inputs {
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.with_batch_size(BATCH_ROWS).build())
            .map_err(enc)?;
        if let Some(batch) = next_batch(table, &mut reader)? {
            let (order, dup) = keys.of(&batch)?;
            sources.push(batch.clone());
            cursors.push(Cursor {
                reader,
                batch,
                source: sources.len() - 1,
                order,
                dup,
                pos: 0,
            });
        }
    }
    let props = tables::writer_properties(&schema)?
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .build();
    let mut out = Vec::with_capacity(reserve);
    let mut w = ArrowWriter::try_new(&mut out, schema.clone(), Some(props)).map_err(enc)?;
    // Live cursors ordered by current row, the smallest last; among equal rows the earlier
    // input goes last, so it wins.
    let before = |cursors: &[Cursor], a: usize, b: usize| {
        let (ra, rb) = (cursors[a].row(), cursors[b].row());
        ra > rb || (ra == rb && a > b)
    };
    let mut live: Vec<usize> = (0..cursors.len()).collect();
    live.sort_by(
        |&a, &b| match (before(&cursors, a, b), before(&cursors, b, a)) {
            (true, _) => std::cmp::Ordering::Less,
            (_, true) => std::cmp::Ordering::Greater,
            _ => std::cmp::Ordering::Equal,
        },
    );
    let mut picks: Vec<(usize, usize)> = Vec::with_capacity(BATCH_ROWS);
    let mut last_dup: Option<Vec<u8>> = None;
    let mut prev: Vec<u8> = Vec::new();
    let mut rows = 0u64;
    while let Some(c) = live.pop() {
        let cur = &cursors[c];
        let dup = cur.dup.as_ref().map(|d| d.row(cur.pos));
        let repeat = matches!((&dup, &last_dup), (Some(d), Some(l)) if d.as_ref() == l.as_slice());
        if !repeat {
            picks.push((cur.source, cur.pos));
            if let Some(d) = dup {
                let l = last_dup.get_or_insert_with(Vec::new);
                l.clear();
                l.extend_from_slice(d.as_ref());
            }
        }
        if picks.len() == BATCH_ROWS {
            rows += flush(&mut w, &sources, &mut picks)?;
            // Only the cursors' current batches are referenced from here on.
            sources.clear();
            for cur in &mut cursors {
                cur.source = sources.len();
                sources.push(cur.batch.clone());
            }
        }
        let cur = &mut cursors[c];
        prev.clear();
        prev.extend_from_slice(cur.row().as_ref());
        if !cur.advance(table, &keys, &mut sources)? {
            continue;
        }
        if cur.row().as_ref() < prev.as_slice() {
            return Ok(Merged::Unsorted);
        }
        // Back among the others, which stay ordered (k is small: a binary search and a shift).
        let at = live.partition_point(|&o| before(&cursors, o, c));
        live.insert(at, c);
    }
    rows += flush(&mut w, &sources, &mut picks)?;
    w.close().map_err(enc)?;
    Ok(Merged::File(Bytes::from(out), rows))
}

impl Keys {
    /// A batch's sort keys and (observations) natural keys, as comparable rows.
    fn of(&self, b: &RecordBatch) -> Result<(Rows, Option<Rows>)> {
        let order = Keys::rows(&self.order, &self.order_cols, b)?;
        let dup = match &self.dup {
            Some((conv, cols)) => Some(Keys::rows(conv, cols, b)?),
            None => None,
        };
        Ok((order, dup))
    }
}

impl Cursor {
    fn row(&self) -> arrow_row::Row<'_> {
        self.order.row(self.pos)
    }

    /// Moves to the next row, loading the next batch when this one is used up; false at the
    /// end of the input.
    fn advance(
        &mut self,
        table: Table,
        keys: &Keys,
        sources: &mut Vec<RecordBatch>,
    ) -> Result<bool> {
        if self.pos + 1 < self.batch.num_rows() {
            self.pos += 1;
            return Ok(true);
        }
        let Some(batch) = next_batch(table, &mut self.reader)? else {
            return Ok(false);
        };
        (self.order, self.dup) = keys.of(&batch)?;
        sources.push(batch.clone());
        self.source = sources.len() - 1;
        self.batch = batch;
        self.pos = 0;
        Ok(true)
    }
}

fn flush(
    w: &mut ArrowWriter<&mut Vec<u8>>,
    sources: &[RecordBatch],
    picks: &mut Vec<(usize, usize)>,
) -> Result<u64> {
    if picks.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&RecordBatch> = sources.iter().collect();
    let b = arrow_select::interleave::interleave_record_batch(&refs, picks).map_err(enc)?;
    w.write(&b).map_err(enc)?;
    let n = picks.len() as u64;
    picks.clear();
    Ok(n)
}
