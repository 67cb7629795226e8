//! The persist's CPU work, made cheap: the buffered batches of `observations` are sorted by
//! key, de-duplicated and split by day without concatenating them first, and each file's
//! columns are encoded to Parquet on several threads.
//!
//! The sort compares integers, not strings: every distinct patient, code and device id gets its
//! rank in byte order, so ordering by (day, patient rank, code rank, effective time, device
//! rank, received time) gives each day exactly the rows, in exactly the order, that
//! [`tables::sort_dedupe`] then [`tables::split_by_day`] give it (nulls first, as there). Each
//! day's rows are gathered once, straight from the buffered batches.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;

use arrow_array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn};
use parquet::arrow::arrow_writer::{ArrowRowGroupWriterFactory, compute_leaves};

use crate::tables::{self, Table};
use crate::{Error, Result};

const DAY_US: i64 = 86_400_000_000;

fn enc(e: impl std::fmt::Display) -> Error {
    Error::Encode(e.to_string())
}

/// FxHash: ids are short and trusted here (our own buffer), so a cheap hash will do.
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or_default());
            h = (h.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
        self.0 = h;
    }
}

/// Distinct strings -> their rank in byte order (0 is kept for null).
struct Ranks<'a> {
    ids: HashMap<&'a str, u32, BuildHasherDefault<Fx>>,
    /// The last id asked for: a phone's batch repeats its patient and device row after row.
    last: (&'a str, u32),
}

impl<'a> Ranks<'a> {
    fn new() -> Self {
        Ranks {
            ids: HashMap::default(),
            last: ("", 0),
        }
    }
    /// A provisional id (order of first sight); [`Ranks::finish`] maps it to the rank.
    fn id(&mut self, s: &'a str) -> u32 {
        if self.last.1 != 0 && self.last.0 == s {
            return self.last.1;
        }
        let n = self.ids.len() as u32 + 1;
        let id = *self.ids.entry(s).or_insert(n);
        self.last = (s, id);
        id
    }
    /// Provisional id -> rank.
    fn finish(self) -> Vec<u32> {
        let mut by: Vec<(&str, u32)> = self.ids.into_iter().collect();
        by.sort_unstable();
        let mut rank = vec![0u32; by.len() + 1];
        for (r, (_, id)) in by.iter().enumerate() {
            rank[*id as usize] = r as u32 + 1;
        }
        rank
    }
}

/// One row's sort key, packed: `hi` is the day (from the first day, 16 bits), the patient's
/// rank (32) and the code's (16); then effective time, device rank and the row's number over
/// all batches. Received time breaks the rare ties (redelivered readings) in a second pass.
#[derive(Clone, Copy)]
struct Key {
    hi: u64,
    effective: i64,
    device: u32,
    row: u32,
}

impl Key {
    fn reading(&self) -> (u64, i64, u32) {
        (self.hi, self.effective, self.device)
    }
    fn day(&self) -> u64 {
        self.hi >> 48
    }
}

/// A key's `hi`; `None`: a day or code beyond what it holds (then the plain path sorts).
fn pack(day: i64, patient: u32, code: u32) -> Option<u64> {
    (u16::try_from(day).is_ok() && code <= u32::from(u16::MAX))
        .then(|| (day as u64) << 48 | u64::from(patient) << 16 | u64::from(code))
}

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::Encode(format!("column {name} missing or mistyped")))
}

/// The first day of the rows' effective times.
fn first_day(batches: &[RecordBatch]) -> Result<i64> {
    let mut min = i64::MAX;
    for b in batches {
        let e = column::<TimestampMicrosecondArray>(b, "effective_time")?;
        min = e.values().iter().fold(min, |m, v| m.min(*v));
    }
    Ok(min.div_euclid(DAY_US))
}

/// Every row's key (ranked), and every row's received time; `None` if a key cannot hold them.
fn keys(batches: &[RecordBatch], day0: i64) -> Result<Option<(Vec<Key>, Vec<i64>)>> {
    let (mut pat, mut code, mut dev) = (Ranks::new(), Ranks::new(), Ranks::new());
    let n: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if u32::try_from(n).is_err() {
        return Ok(None);
    }
    let (mut keys, mut received) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for batch in batches {
        let p = column::<StringArray>(batch, "patient_id")?;
        let c = column::<StringArray>(batch, "code")?;
        let d = column::<StringArray>(batch, "device_id")?;
        let e = column::<TimestampMicrosecondArray>(batch, "effective_time")?;
        received.extend_from_slice(
            column::<TimestampMicrosecondArray>(batch, "received_time")?.values(),
        );
        for i in 0..batch.num_rows() {
            let effective = e.value(i);
            let patient = if p.is_null(i) { 0 } else { pat.id(p.value(i)) };
            let Some(hi) = pack(
                effective.div_euclid(DAY_US) - day0,
                patient,
                code.id(c.value(i)),
            ) else {
                return Ok(None);
            };
            keys.push(Key {
                hi,
                effective,
                device: dev.id(d.value(i)),
                row: keys.len() as u32,
            });
        }
    }
    let (pat, code, dev) = (pat.finish(), code.finish(), dev.finish());
    for k in &mut keys {
        let (day, p, c) = (k.hi >> 48, (k.hi >> 16) as u32, (k.hi & 0xffff) as usize);
        k.hi = day << 48 | u64::from(pat[p as usize]) << 16 | u64::from(code[c]);
        k.device = dev[k.device as usize];
    }
    Ok(Some((keys, received)))
}

/// Sorts keys into the persisted order and drops all but the first received of each reading.
fn sort_dedupe(keys: &mut Vec<Key>, received: &[i64]) {
    keys.sort_unstable_by_key(|k| (k.reading(), k.row));
    // Copies of one reading (rare): the first received first, as the plain path has them.
    let mut i = 0;
    while i < keys.len() {
        let mut j = i + 1;
        while j < keys.len() && keys[j].reading() == keys[i].reading() {
            j += 1;
        }
        if j - i > 1 {
            keys[i..j].sort_unstable_by_key(|k| (received[k.row as usize], k.row));
        }
        i = j;
    }
    keys.dedup_by(|later, first| later.reading() == first.reading());
}

/// The batches of one table sorted into its persisted order, de-duplicated (observations) and
/// split by the UTC day of the table's time column: what `concat`, `sort_dedupe` and
/// `split_by_day` of [`tables`] give, without the intermediate copies.
pub fn sort_split(table: Table, batches: &[RecordBatch]) -> Result<Vec<(String, RecordBatch)>> {
    if table != Table::Observations {
        let all = tables::concat(&table.schema(), batches)?;
        let sorted = tables::sort_dedupe(table, &all)?;
        return tables::split_by_day(table, &sorted);
    }
    let day0 = first_day(batches)?;
    let Some((mut keys, received)) = keys(batches, day0)? else {
        let all = tables::concat(&table.schema(), batches)?;
        let sorted = tables::sort_dedupe(table, &all)?;
        return tables::split_by_day(table, &sorted);
    };
    sort_dedupe(&mut keys, &received);
    drop(received);
    // Row number -> (batch, row in it).
    let mut starts = Vec::with_capacity(batches.len());
    let mut at = 0u32;
    for b in batches {
        starts.push(at);
        at += b.num_rows() as u32;
    }
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let mut out = Vec::new();
    for day in keys.chunk_by(|a, b| a.day() == b.day()) {
        let d = day0 + day[0].day() as i64;
        let date = chrono::DateTime::from_timestamp(d * 86_400, 0)
            .map(|d| d.format("%Y-%m-%d").to_string())
            .ok_or_else(|| Error::Encode(format!("day {d} out of range")))?;
        let idx: Vec<(usize, usize)> = day
            .iter()
            .map(|k| {
                let b = starts.partition_point(|s| *s <= k.row) - 1;
                (b, (k.row - starts[b]) as usize)
            })
            .collect();
        let part = arrow_select::interleave::interleave_record_batch(&refs, &idx).map_err(enc)?;
        out.push((date, part));
    }
    Ok(out)
}

/// [`tables::encode_parquet`]'s file (same properties, row groups and bytes per column), with
/// each row group's columns encoded on up to `threads` threads.
pub fn encode_parallel(
    batch: &RecordBatch,
    row_group_rows: usize,
    threads: usize,
) -> Result<Bytes> {
    let props = tables::writer_properties(&batch.schema())?.build();
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() / 4 + 1024);
    let w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).map_err(enc)?;
    let (mut file, factory) = w.into_serialized_writer().map_err(enc)?;
    let step = row_group_rows.max(1);
    let mut offset = 0;
    let mut group = 0;
    while offset < batch.num_rows() {
        let len = step.min(batch.num_rows() - offset);
        let chunks = encode_group(&factory, group, &batch.slice(offset, len), threads)?;
        let mut rg = file.next_row_group().map_err(enc)?;
        for c in chunks {
            c.append_to_row_group(&mut rg).map_err(enc)?;
        }
        rg.close().map_err(enc)?;
        offset += len;
        group += 1;
    }
    file.close().map_err(enc)?;
    Ok(Bytes::from(buf))
}

/// One row group's column chunks, in column order; the columns are taken by whichever thread
/// is free (the string columns cost most).
fn encode_group(
    factory: &ArrowRowGroupWriterFactory,
    group: usize,
    batch: &RecordBatch,
    threads: usize,
) -> Result<Vec<ArrowColumnChunk>> {
    let writers = factory.create_column_writers(group).map_err(enc)?;
    let mut leaves: Vec<ArrowLeafColumn> = Vec::with_capacity(writers.len());
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        leaves.extend(compute_leaves(field, col).map_err(enc)?);
    }
    if leaves.len() != writers.len() {
        return Err(Error::Encode(
            "column writers do not match the schema".into(),
        ));
    }
    let n = writers.len();
    let jobs: Mutex<Vec<(usize, ArrowColumnWriter, ArrowLeafColumn)>> = Mutex::new(
        writers
            .into_iter()
            .zip(leaves)
            .enumerate()
            .map(|(i, (w, l))| (i, w, l))
            .rev()
            .collect(),
    );
    let done: Mutex<Vec<(usize, Result<ArrowColumnChunk>)>> = Mutex::new(Vec::with_capacity(n));
    let work = || {
        loop {
            let job = jobs.lock().map(|mut j| j.pop()).unwrap_or(None);
            let Some((i, mut w, leaf)) = job else { return };
            let chunk = w.write(&leaf).and_then(|()| w.close()).map_err(enc);
            if let Ok(mut d) = done.lock() {
                d.push((i, chunk));
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads.clamp(1, n.max(1)) {
            s.spawn(work);
        }
        work();
    });
    let mut done = done
        .into_inner()
        .map_err(|_| Error::Encode("encode thread panicked".into()))?;
    if done.len() != n {
        return Err(Error::Encode("an encode thread panicked".into()));
    }
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, c)| c).collect()
}
