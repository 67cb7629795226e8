//! Table layout and Parquet encoding.
//!
//! Files live at `<table>/date=YYYY-MM-DD/wal-<first>-<last>[-c<n>].parquet`: the hive
//! partition is the UTC date of the row's time (effective time for observations, received
//! time for dead letters), and the name records the WAL segments the file was persisted from,
//! which is how a restart recognises files a crashed persist left behind.

use std::collections::BTreeMap;

use arrow_array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array};
use arrow_ord::sort::{SortColumn, lexsort_to_indices};
use arrow_schema::SchemaRef;
use arrow_select::take::take_record_batch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::{Error, Result};

/// The persisted tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `observations`.
    Observations,
    /// `dead_letters`.
    DeadLetters,
    /// `alerts`: the alert history's transitions, exported from the history (not fed
    /// by the WAL, so not in [`Table::ALL`]; `Store::export_alert_history`).
    Alerts,
}

impl Table {
    /// Directory name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Observations => "observations",
            Table::DeadLetters => "dead_letters",
            Table::Alerts => "alerts",
        }
    }
    /// The column that decides the day partition.
    pub fn time_column(self) -> &'static str {
        match self {
            Table::Observations => "effective_time",
            Table::DeadLetters => "received_time",
            Table::Alerts => "at",
        }
    }
    /// The table's schema.
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Observations => carewatch_transform::schema::observations_schema(),
            Table::DeadLetters => crate::dead::dead_letters_schema(),
            Table::Alerts => crate::alert_history::alert_history_schema(),
        }
    }
    /// The tables the WAL feeds (persisted, followed, compacted, adopted).
    pub const ALL: [Table; 2] = [Table::Observations, Table::DeadLetters];
}

/// A persisted file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Table.
    pub table: Table,
    /// Object store path.
    pub path: object_store::path::Path,
    /// Partition date, `YYYY-MM-DD`.
    pub date: String,
    /// First WAL segment persisted into it.
    pub wal_first: u64,
    /// Last WAL segment persisted into it.
    pub wal_last: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The path for a new file.
pub fn file_path(
    table: Table,
    date: &str,
    first: u64,
    last: u64,
    suffix: &str,
) -> object_store::path::Path {
    object_store::path::Path::from(format!(
        "{}/date={date}/wal-{first:016}-{last:016}{suffix}.parquet",
        table.name()
    ))
}

/// Recognises one of our files from its path.
pub fn parse_path(path: &object_store::path::Path, size: u64) -> Option<FileMeta> {
    let parts: Vec<&str> = path.as_ref().split('/').collect();
    let n = parts.len();
    if n < 3 {
        return None;
    }
    let table = Table::ALL.into_iter().find(|t| t.name() == parts[n - 3])?;
    let date = parts[n - 2].strip_prefix("date=")?.to_owned();
    let stem = parts[n - 1]
        .strip_suffix(".parquet")?
        .strip_prefix("wal-")?;
    let mut it = stem.split('-');
    let first = it.next()?.parse().ok()?;
    let last = it.next()?.parse().ok()?;
    Some(FileMeta {
        table,
        path: path.clone(),
        date,
        wal_first: first,
        wal_last: last,
        size,
    })
}

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::Encode(format!("column {name} missing or mistyped")))
}

/// The columns a table's files are sorted by (ascending, nulls first). For observations the
/// first four are the natural key: rows equal in them are duplicates.
pub fn sort_columns(table: Table) -> &'static [&'static str] {
    match table {
        Table::Observations => &[
            "patient_id",
            "code",
            "effective_time",
            "device_id",
            "received_time",
        ],
        Table::DeadLetters => &["received_time"],
        Table::Alerts => &["seq"],
    }
}

/// Sorts a batch of one table into its persisted order and, for observations, drops
/// duplicates of the natural key (device, code, effective time), keeping the first received.
pub fn sort_dedupe(table: Table, batch: &RecordBatch) -> Result<RecordBatch> {
    sort_dedupe_batches(table, std::slice::from_ref(batch))
}

/// [`sort_dedupe`] of the rows of several batches (of the table's schema), without
/// concatenating them first: only the sort columns are concatenated, to sort and compare, and
/// the rows are gathered from the batches in order. A persist holds one copy of its rows beside
/// the buffer instead of two (a whole concatenation, then its sorted copy: ~265 MB each for a
/// million rows at 100,000 patients).
pub fn sort_dedupe_batches(table: Table, batches: &[RecordBatch]) -> Result<RecordBatch> {
    let enc = |e: arrow_schema::ArrowError| Error::Encode(e.to_string());
    let names = sort_columns(table);
    let mut keys = Vec::with_capacity(names.len());
    for n in names {
        let parts: Vec<&dyn Array> = batches
            .iter()
            .map(|b| b.column_by_name(n).map(|c| c.as_ref()))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Encode(format!("column {n} missing")))?;
        keys.push(match parts.as_slice() {
            [] => return Ok(RecordBatch::new_empty(table.schema())),
            [one] => one.slice(0, one.len()),
            _ => arrow_select::concat::concat(&parts).map_err(enc)?,
        });
    }
    let cols: Vec<SortColumn> = keys
        .iter()
        .map(|values| SortColumn {
            values: values.clone(),
            options: None,
        })
        .collect();
    let order = lexsort_to_indices(&cols, None).map_err(enc)?;
    let keep = match table {
        Table::Observations => first_of_each_key(&keys, order.values())?,
        Table::DeadLetters | Table::Alerts => order.values().to_vec(),
    };
    drop((cols, keys, order));
    // Positions in the concatenation, as (batch, row).
    let mut starts = Vec::with_capacity(batches.len());
    let mut at = 0usize;
    for b in batches {
        starts.push(at);
        at += b.num_rows();
    }
    let picks: Vec<(usize, usize)> = keep
        .iter()
        .map(|&g| {
            let g = g as usize;
            let b = starts.partition_point(|&s| s <= g) - 1;
            (b, g - starts[b])
        })
        .collect();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    arrow_select::interleave::interleave_record_batch(&refs, &picks).map_err(enc)
}

/// Of observations' rows in sort order (`order`, positions in `keys`: patient, code, effective
/// time, device, received time), the first of each natural key: the first received.
fn first_of_each_key(keys: &[arrow_array::ArrayRef], order: &[u32]) -> Result<Vec<u32>> {
    let col = |i: usize, name: &str| {
        keys.get(i)
            .ok_or_else(|| Error::Encode(format!("column {name} missing")))
    };
    let str_col = |i: usize, name: &str| -> Result<&StringArray> {
        col(i, name)?
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| Error::Encode(format!("column {name} has the wrong type")))
    };
    let (pat, code, dev) = (
        str_col(0, "patient_id")?,
        str_col(1, "code")?,
        str_col(3, "device_id")?,
    );
    let t = col(2, "effective_time")?
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| Error::Encode("column effective_time has the wrong type".into()))?;
    let mut keep: Vec<u32> = Vec::with_capacity(order.len());
    for &i in order {
        let same = keep.last().is_some_and(|&j| {
            let (i, j) = (i as usize, j as usize);
            t.value(i) == t.value(j)
                && code.value(i) == code.value(j)
                && dev.value(i) == dev.value(j)
                && pat.is_null(i) == pat.is_null(j)
                && (pat.is_null(i) || pat.value(i) == pat.value(j))
        });
        if !same {
            keep.push(i);
        }
    }
    Ok(keep)
}

/// Splits a batch by the UTC date of the table's time column, keeping row order.
pub fn split_by_day(table: Table, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
    let t = column::<TimestampMicrosecondArray>(batch, table.time_column())?;
    let mut days: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for i in 0..batch.num_rows() {
        days.entry(t.value(i).div_euclid(86_400_000_000))
            .or_default()
            .push(i as u32);
    }
    let mut out = Vec::with_capacity(days.len());
    for (day, idx) in days {
        let date = chrono::DateTime::from_timestamp(day * 86_400, 0)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .ok_or_else(|| Error::Encode(format!("day {day} out of range")))?;
        let part = if idx.len() == batch.num_rows() {
            batch.clone()
        } else {
            take_record_batch(batch, &UInt32Array::from(idx))
                .map_err(|e| Error::Encode(e.to_string()))?
        };
        out.push((date, part));
    }
    Ok(out)
}

/// The properties (but the row group size) every persisted file is written with: ZSTD, page statistics, timestamps
/// delta-encoded.
pub fn writer_properties(
    schema: &arrow_schema::Schema,
) -> Result<parquet::file::properties::WriterPropertiesBuilder> {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).map_err(|e| Error::Encode(e.to_string()))?,
        ))
        .set_statistics_enabled(EnabledStatistics::Page);
    // Sorted timestamps delta-encode to almost nothing; a dictionary only gets in the way.
    for f in schema.fields() {
        if matches!(f.data_type(), arrow_schema::DataType::Timestamp(..)) {
            let col = parquet::schema::types::ColumnPath::from(f.name().as_str());
            props = props
                .set_column_dictionary_enabled(col.clone(), false)
                .set_column_encoding(col, parquet::basic::Encoding::DELTA_BINARY_PACKED);
        }
    }
    Ok(props)
}

/// Encodes a batch as ZSTD Parquet with statistics.
pub fn encode_parquet(batch: &RecordBatch, row_group_rows: usize) -> Result<Bytes> {
    let props = writer_properties(&batch.schema())?
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .build();
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4 + 1024);
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))
        .map_err(|e| Error::Encode(e.to_string()))?;
    w.write(batch).map_err(|e| Error::Encode(e.to_string()))?;
    w.close().map_err(|e| Error::Encode(e.to_string()))?;
    Ok(Bytes::from(buf))
}

/// Decodes a Parquet file into batches.
pub fn decode_parquet(bytes: Bytes) -> Result<Vec<RecordBatch>> {
    let r = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(64 * 1024).build())
        .map_err(|e| Error::Encode(e.to_string()))?;
    r.collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Encode(e.to_string()))
}

/// Concatenates batches of one schema.
pub fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    arrow_select::concat::concat_batches(schema, batches).map_err(|e| Error::Encode(e.to_string()))
}

/// Brings a batch read from an older file to the table's current schema: columns added since
/// (nullable, by contract) are filled with nulls, and a column whose type changed (the dead
/// letters' `item_index`, UInt32 before Delta) is cast.
pub fn conform(table: Table, batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = table.schema();
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let cols = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow_cast::cast(c, f.data_type()).map_err(|e| Error::Encode(e.to_string())),
            None if f.is_nullable() => {
                Ok(arrow_array::new_null_array(f.data_type(), batch.num_rows()))
            }
            None => Err(Error::Encode(format!("column {} missing", f.name()))),
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(schema, cols).map_err(|e| Error::Encode(e.to_string()))
}

/// Builds an empty batch (for tables with no rows).
pub fn empty(schema: &SchemaRef) -> RecordBatch {
    RecordBatch::new_empty(schema.clone())
}
