//! Compaction's merge: Parquet files each already in the table's persisted order (what
//! persist, adoption and earlier merges write) are merged row by row into one file in that
//! order, observations' duplicates dropped as [`tables::sort_dedupe`] drops them. Only one
//! decoded batch per input and one output batch are in memory at a time, so a merge of ten
//! million rows holds megabytes of decoded data rather than the gigabytes that decoding,
//! concatenating and sorting every input at once took (which a 100,000-patient load run showed
//! as RSS jumping by 2 GB at each compaction). The inputs are read and the output written
//! through whatever the caller gives: files on disk in compaction (the compressed bytes of a
//! 256 MiB merge held in memory, inputs and output, were another ~0.5 GiB at each merge of a
//! 100,000-patient soak), bytes in tests.
//!
//! An input found out of order makes the merge return [`Merged::Unsorted`]; the caller then
//! falls back to the whole-file sort (files of older versions, whatever wrote them).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use arrow_array::RecordBatch;
use arrow_row::{RowConverter, Rows, SortField};
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::file::reader::ChunkReader;

use crate::tables::{self, Table};
use crate::{Error, Result};

/// Rows decoded from an input at a time, and rows per output batch.
const BATCH_ROWS: usize = 8 * 1024;

fn enc(e: impl std::fmt::Display) -> Error {
    Error::Encode(e.to_string())
}

fn io(e: std::io::Error) -> Error {
    Error::Io(e.to_string())
}

/// The outcome of [`merge_sorted`].
#[derive(Debug)]
pub enum Merged<W> {
    /// The output the merged file was written to, and its row count.
    File(W, u64),
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

/// The files' rows merged into one file written to `out` in the table's order, duplicates
/// dropped. On [`Merged::Unsorted`] `out` holds part of a file: the caller starts it again.
pub fn merge_sorted<R, W>(
    table: Table,
    inputs: Vec<R>,
    out: W,
    row_group_rows: usize,
) -> Result<Merged<W>>
where
    R: ChunkReader + 'static,
    W: std::io::Write + Send,
{
    let schema = table.schema();
    let keys = Keys::new(table, &schema)?;
    let mut sources: Vec<RecordBatch> = Vec::new();
    let mut cursors: Vec<Cursor> = Vec::new();
    for input in inputs {
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(input)
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
    let mut w = ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(enc)?;
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
    Ok(Merged::File(w.into_inner().map_err(enc)?, rows))
}

/// The files merged into one written to `out`, in the table's order: streamed when every
/// input is in that order (as everything this version writes is), else decoded, sorted and
/// encoded whole. Blocking file I/O: runs on a thread of its own.
pub fn merge_files(table: Table, files: Vec<File>, out: File, rgs: usize) -> Result<(File, u64)> {
    let readers = files
        .iter()
        .map(File::try_clone)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    let mut out = match merge_sorted(table, readers, out.try_clone().map_err(io)?, rgs)? {
        Merged::File(_, rows) => return Ok((out, rows)),
        Merged::Unsorted => out,
    };
    tracing::info!(
        table = table.name(),
        "an input of a merge is not sorted; merging in memory"
    );
    let mut batches = Vec::new();
    for mut f in files {
        let mut bytes = Vec::new();
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.read_to_end(&mut bytes))
            .map_err(io)?;
        for b in tables::decode_parquet(bytes.into())? {
            batches.push(tables::conform(table, &b)?);
        }
    }
    let all = tables::concat(&table.schema(), &batches)?;
    let merged = tables::sort_dedupe(table, &all)?;
    let bytes = tables::encode_parquet(&merged, rgs)?;
    out.set_len(0)
        .and_then(|_| out.seek(SeekFrom::Start(0)))
        .and_then(|_| out.write_all(&bytes))
        .map_err(io)?;
    Ok((out, merged.num_rows() as u64))
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

fn flush<W: std::io::Write + Send>(
    w: &mut ArrowWriter<W>,
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
