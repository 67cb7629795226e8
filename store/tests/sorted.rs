//! The fast paths of persist and compaction against the plain code they replaced, on sorted
//! days of varied data — null patients, ids that are prefixes of each other, non-ASCII ids,
//! redelivered readings:
//! - the persist's parallel Parquet encoding (`sorted::encode_parallel`) against the one-thread
//!   writer (`tables::encode_parquet`): byte for byte the same file, for several row-group
//!   sizes and thread counts;
//! - compaction's streaming merge of sorted files (`merge::merge_sorted`) against decoding,
//!   concatenating and sorting them whole (`tables::sort_dedupe`): the same rows in the same
//!   order, duplicates across files dropped the same way, inputs longer than a decoded batch.

use arrow_array::RecordBatch;
use carewatch_store::merge::{Merged, merge_files, merge_sorted};
use carewatch_store::{Row, Table, sorted, tables};
use carewatch_transform::schema::ObservationBatchBuilder;
use carewatch_transform::{Format, Reading, Source, catalogue};

const T0: i64 = 1_700_006_400_000_000; // 2023-11-15T00:00:00Z
const IDS: [&str; 7] = ["p1", "p10", "P2", "p", "é-7", "p1\u{0}", "z"];

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `n` readings; about one in eight repeats an earlier reading's key (received later, with a
/// different value, as a redelivery would).
fn readings(n: usize, seed: u64) -> Vec<Row> {
    let mut rng = Rng(seed);
    let keys = ["heart_rate", "spo2", "steps", "body_temperature"];
    let mut out: Vec<Row> = Vec::with_capacity(n);
    for i in 0..n {
        let received_us = T0 + 3 * 86_400_000_000 + i as i64;
        if i > 0 && rng.next(8) == 0 {
            let mut r = out[rng.next(i as u64) as usize].clone();
            r.received_us = received_us;
            r.reading.value += 1.0;
            out.push(r);
            continue;
        }
        let p = rng.next(IDS.len() as u64 + 1) as usize;
        let patient = IDS.get(p).map(|s| (*s).to_owned());
        let device = format!("d{}", rng.next(5));
        out.push(Row {
            reading: Reading {
                device_id: device,
                patient_id: patient,
                vital: catalogue::by_key(keys[rng.next(4) as usize]).expect("vital"),
                value: rng.next(200) as f64,
                // Three days, a few hundred distinct instants each: keys collide often.
                effective_us: T0 + rng.next(3) as i64 * 86_400_000_000 + rng.next(300) as i64,
                effective_end_us: None,
                offset_min: None,
                extra: None,
            },
            received_us,
            source: Source::Http,
            format: Format::Carewatch,
        });
    }
    out
}

fn batches(rows: &[Row], per: usize) -> Vec<RecordBatch> {
    rows.chunks(per)
        .map(|c| {
            let mut b = ObservationBatchBuilder::new(c.len());
            for r in c {
                b.push(&r.reading, r.received_us, r.source, r.format);
            }
            b.finish()
        })
        .collect()
}

fn plain(batches: &[RecordBatch]) -> Vec<(String, RecordBatch)> {
    let t = Table::Observations;
    let all = tables::concat(&t.schema(), batches).expect("concat");
    let sorted = tables::sort_dedupe(t, &all).expect("sort");
    tables::split_by_day(t, &sorted).expect("split")
}

#[test]
fn encode_parallel_writes_the_file_encode_parquet_writes() {
    let b = batches(&readings(30_000, 9), 1000);
    let days = plain(&b);
    for (day, part) in &days {
        for (rgs, threads) in [(1 << 20, 2), (4000, 3), (1000, 1), (7, 13)] {
            if rgs == 7 && part.num_rows() > 2000 {
                // Thousands of 7-row groups say nothing more; keep them to a small day.
                continue;
            }
            let want = tables::encode_parquet(part, rgs).expect("encode");
            let got = sorted::encode_parallel(part, rgs, threads).expect("encode_parallel");
            assert_eq!(got, want, "{day}, {rgs} rows per group, {threads} threads");
            let back = tables::decode_parquet(got).expect("decode");
            let back = tables::concat(&part.schema(), &back).expect("concat");
            assert_eq!(&back, part, "{day}: rows read back");
        }
    }
    let small = plain(&batches(&readings(50, 5), 50));
    let (_, part) = &small[0];
    let want = tables::encode_parquet(part, 7).expect("encode");
    let got = sorted::encode_parallel(part, 7, 2).expect("encode_parallel");
    assert_eq!(got, want, "7-row groups");
}

/// A day's rows as the files of several persists: each file sorted and deduplicated alone.
fn persisted_files(rows: &[Row], files: usize) -> Vec<bytes::Bytes> {
    rows.chunks(rows.len().div_ceil(files))
        .map(|c| {
            let (_, part) = plain(&batches(c, c.len())).remove(0);
            tables::encode_parquet(&part, 1 << 20).expect("encode")
        })
        .collect()
}

fn read_all(file: bytes::Bytes) -> RecordBatch {
    let t = Table::Observations;
    let back = tables::decode_parquet(file).expect("decode");
    tables::concat(&t.schema(), &back).expect("concat")
}

/// One day of `readings` (the generator spreads them over three).
fn one_day(n: usize, seed: u64) -> Vec<Row> {
    let mut rows = readings(n, seed);
    for r in &mut rows {
        r.reading.effective_us = T0 + (r.reading.effective_us - T0).rem_euclid(86_400_000_000);
    }
    rows
}

#[test]
fn the_streaming_merge_gives_the_rows_the_whole_sort_gives() {
    let t = Table::Observations;
    for (n, files, seed) in [(60_000, 5, 3), (20_000, 2, 11), (3_000, 9, 17), (1, 1, 5)] {
        let rows = one_day(n, seed);
        let inputs = persisted_files(&rows, files);
        let whole: Vec<RecordBatch> = inputs.iter().cloned().map(read_all).collect();
        let all = tables::concat(&t.schema(), &whole).expect("concat");
        let want = tables::sort_dedupe(t, &all).expect("sort");
        let Merged::File(got, count) = merge_sorted(t, inputs, Vec::new(), 7_000).expect("merge")
        else {
            panic!("sorted inputs taken for unsorted");
        };
        let got = read_all(got.into());
        if files > 1 {
            assert!(
                want.num_rows() < all.num_rows(),
                "no duplicate across files to drop"
            );
        }
        assert_eq!(count as usize, want.num_rows());
        assert_eq!(got, want, "{n} rows in {files} files");
    }
}

#[test]
fn an_input_out_of_order_is_reported_not_merged() {
    let t = Table::Observations;
    let rows = one_day(20_000, 23);
    let mut inputs = persisted_files(&rows, 2);
    // The second file as arrival order, not sorted.
    let raw = tables::concat(&t.schema(), &batches(&rows[10_000..], 1000)).expect("concat");
    inputs[1] = tables::encode_parquet(&raw, 1 << 20).expect("encode");
    assert!(matches!(
        merge_sorted(t, inputs, Vec::new(), 1 << 20).expect("merge"),
        Merged::Unsorted
    ));
}

/// Compaction's merge over files: an input out of order is noticed after part of the output
/// was written, and the output file is then the whole sort's file (started again, not appended
/// to what the streaming merge wrote).
#[test]
fn a_merge_of_files_with_one_unsorted_starts_its_output_again() {
    use std::io::{Seek, SeekFrom, Write};
    let t = Table::Observations;
    let rows = one_day(20_000, 29);
    let mut inputs = persisted_files(&rows, 2);
    let raw = tables::concat(&t.schema(), &batches(&rows[10_000..], 1000)).expect("concat");
    inputs[1] = tables::encode_parquet(&raw, 1 << 20).expect("encode");
    let whole: Vec<RecordBatch> = inputs.iter().cloned().map(read_all).collect();
    let all = tables::concat(&t.schema(), &whole).expect("concat");
    let want = tables::sort_dedupe(t, &all).expect("sort");
    let files = inputs
        .iter()
        .map(|b| {
            let mut f = tempfile::tempfile().expect("tmp");
            f.write_all(b).expect("write");
            f.seek(SeekFrom::Start(0)).expect("seek");
            f
        })
        .collect();
    let out = tempfile::tempfile().expect("tmp");
    let (mut out, count) = merge_files(t, files, out, 7_000).expect("merge");
    let mut got = Vec::new();
    out.seek(SeekFrom::Start(0)).expect("seek");
    std::io::Read::read_to_end(&mut out, &mut got).expect("read");
    assert_eq!(count as usize, want.num_rows());
    assert_eq!(read_all(got.into()), want);
}

/// A persist's sort over its buffered batches, gathered without concatenating them, against
/// the same rows sorted and de-duplicated here by their keys: (patient, code, effective time,
/// device) once each, the first received kept, in that order (nulls first).
#[test]
fn sorting_batches_gives_each_natural_key_once_in_order_first_received_kept() {
    use arrow_array::{Array, StringArray, TimestampMicrosecondArray};
    let t = Table::Observations;
    let rows = readings(25_000, 31);
    let mut want: Vec<(Option<String>, String, i64, String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.reading.patient_id.clone(),
                r.reading.vital.code.to_owned(),
                r.reading.effective_us,
                r.reading.device_id.clone(),
                r.received_us,
            )
        })
        .collect();
    want.sort();
    want.dedup_by(|b, a| (&a.0, &a.1, a.2, &a.3) == (&b.0, &b.1, b.2, &b.3));
    for per in [25_000, 4_096, 999, 1] {
        let got = tables::sort_dedupe_batches(t, &batches(&rows, per)).expect("sort");
        let s = |n: &str| {
            got.column_by_name(n)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                .expect(n)
        };
        let ts = |n: &str| {
            got.column_by_name(n)
                .and_then(|c| {
                    c.as_any()
                        .downcast_ref::<TimestampMicrosecondArray>()
                        .cloned()
                })
                .expect(n)
        };
        let (p, c, d, e, r) = (
            s("patient_id"),
            s("code"),
            s("device_id"),
            ts("effective_time"),
            ts("received_time"),
        );
        let keys: Vec<_> = (0..got.num_rows())
            .map(|i| {
                (
                    p.is_valid(i).then(|| p.value(i).to_owned()),
                    c.value(i).to_owned(),
                    e.value(i),
                    d.value(i).to_owned(),
                    r.value(i),
                )
            })
            .collect();
        assert!(want.len() < rows.len(), "no duplicates to drop");
        assert_eq!(keys, want, "batches of {per}");
    }
}
