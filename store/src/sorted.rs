//! The persist's Parquet encoding on several threads: each row group's columns are encoded
//! by whichever thread is free, into exactly the file [`tables::encode_parquet`] writes.
//!
//! (Sorting was measured too: integer ranks of the ids through a hash map, then a sort of
//! packed keys, took 0.72 s for 1M rows of 100,000 patients against 0.40 s for `concat` +
//! `sort_dedupe` + `split_by_day` — the hash lookups over 100,000 distinct ids cost more than
//! the string comparisons they save — so the persist sorts as before; see BENCHMARKS.md.)

use std::sync::Mutex;

use arrow_array::RecordBatch;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn};
use parquet::arrow::arrow_writer::{ArrowRowGroupWriterFactory, compute_leaves};

use crate::tables;
use crate::{Error, Result};

fn enc(e: impl std::fmt::Display) -> Error {
    Error::Encode(e.to_string())
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
