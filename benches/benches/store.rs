//! Store benchmarks (plain harness; prints a Markdown table):
//! - append throughput (rows/s) and ack latency p50/p99 at several writer concurrencies, fsync on;
//! - bytes on disk per heart-rate reading at 1 Hz (a day of 100 patients, integer bpm);
//! - WAL replay rate on open;
//! - persist at 100 000 patients (issue 19): 1M buffered rows (a heart rate per patient per
//!   second for 9 s and an SpO2 each, arriving in 2,000-row appends), per phase (`concat`,
//!   `sort_dedupe`, `split_by_day`, `encode_parquet` on one thread, and
//!   `sorted::encode_parallel`, what the persist encodes with), and `Store::persist` end to end.
//!   `PERSIST_ONLY=1` runs this part only;
//! - compaction's memory (issue 19): 8 persisted files of 1M rows of 100,000 patients merged
//!   by `Store::compact` (a streaming merge), against decoding, sorting and encoding them whole
//!   (what compaction did before) in the same run: peak resident set above the start, time.
//!   `COMPACT_ONLY=1` runs this part only.
//!
//! Run: `cargo bench -p carewatch-benches --bench store` (release). Uses a temp dir on the
//! same file system as `$TMPDIR`.

#[path = "appends.rs"]
mod appends;
#[path = "store/compact.rs"]
mod compact;

use std::time::{Duration, Instant};

use carewatch_store::{Config, Row, Store, Table};
use carewatch_transform::catalogue;
use carewatch_transform::{Format, Reading, Source};

const T0: i64 = 1_700_006_400_000_000; // 2023-11-15T00:00:00Z

fn hr_row(patient: usize, second: i64, bpm: f64) -> Row {
    Row {
        reading: Reading {
            device_id: format!("dev-{patient:05}"),
            patient_id: Some(format!("pat-{patient:05}")),
            vital: catalogue::by_key("heart_rate").expect("hr"),
            value: bpm,
            effective_us: T0 + second * 1_000_000,
            effective_end_us: None,
            offset_min: Some(60),
            extra: None,
        },
        // Arrival jitters 0.3-0.9 s behind the measurement, at millisecond resolution.
        received_us: T0
            + second * 1_000_000
            + 300_000
            + ((second * 7919 + patient as i64 * 104_729) % 600) * 1000,
        source: Source::Mqtt,
        format: Format::Carewatch,
    }
}

fn quiet(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.tick = Duration::from_secs(3600);
    c.buffer_limit_rows = usize::MAX;
    c
}

async fn append_bench(
    writers: usize,
    rows_per_append: usize,
    appends_per_writer: usize,
) -> (f64, Duration, Duration) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(quiet(dir.path())).await.expect("open");
    appends::concurrent(&store, writers, appends_per_writer, move |w, i| {
        (0..rows_per_append)
            .map(|j| hr_row(w, (i * rows_per_append + j) as i64, 72.0))
            .collect()
    })
    .await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var("PERSIST_ONLY").is_ok_and(|v| v == "1") {
        persist_bench().await;
        return;
    }
    if std::env::var("COMPACT_ONLY").is_ok_and(|v| v == "1") {
        compact::bench().await;
        return;
    }
    println!("| writers | rows/append | appends | rows/s | ack p50 | ack p99 |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (writers, per, n) in [
        (1, 1, 2000),
        (16, 1, 500),
        (64, 1, 200),
        (256, 1, 50),
        (16, 100, 200),
    ] {
        let (rate, p50, p99) = append_bench(writers, per, n).await;
        println!(
            "| {writers} | {per} | {} | {rate:.0} | {p50:.2?} | {p99:.2?} |",
            writers * n
        );
    }

    // Bytes per heart-rate reading at 1 Hz: one day for 100 patients, a realistic slow walk of
    // integer bpm values, persisted as one day of sorted ZSTD Parquet.
    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(quiet(dir.path())).await.expect("open");
    let patients = 100;
    let mut total = 0usize;
    for p in 0..patients {
        let mut bpm = 70.0 + (p % 20) as f64;
        let mut rows = Vec::with_capacity(86_400);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ p as u64;
        for s in 0..86_400i64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bpm = (bpm + (x % 3) as f64 - 1.0).clamp(45.0, 160.0);
            rows.push(hr_row(p, s, bpm));
        }
        total += rows.len();
        for chunk in rows.chunks(20_000) {
            store.append(chunk.to_vec(), vec![]).await.expect("append");
        }
    }
    let t = Instant::now();
    store.persist().await.expect("persist");
    let persist_secs = t.elapsed().as_secs_f64();
    let bytes: u64 = store
        .snapshot()
        .files
        .iter()
        .filter(|f| f.table == Table::Observations)
        .map(|f| f.size)
        .sum();
    println!();
    println!(
        "bytes on disk per 1 Hz heart-rate reading: {:.2} ({} rows, {} bytes, persisted in {:.2} s = {:.0} rows/s)",
        bytes as f64 / total as f64,
        total,
        bytes,
        persist_secs,
        total as f64 / persist_secs
    );

    // Where the bytes go, per column.
    let mut per_col: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for f in store
        .snapshot()
        .files
        .iter()
        .filter(|f| f.table == Table::Observations)
    {
        let bytes = std::fs::read(dir.path().join(f.path.as_ref())).expect("file");
        let reader = parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(bytes))
            .expect("parquet");
        use parquet::file::reader::FileReader;
        for rg in reader.metadata().row_groups() {
            for c in rg.columns() {
                *per_col.entry(c.column_path().string()).or_default() += c.compressed_size();
            }
        }
    }
    for (c, b) in &per_col {
        println!("  column {c}: {:.3} bytes/row", *b as f64 / total as f64);
    }

    // WAL replay: 1M rows in the WAL, then open.
    let dir = tempfile::tempdir().expect("tmp");
    {
        let store = Store::open(quiet(dir.path())).await.expect("open");
        for c in 0..100 {
            let rows: Vec<Row> = (0..10_000).map(|j| hr_row(c, j, 72.0)).collect();
            store.append(rows, vec![]).await.expect("append");
        }
    }
    let t = Instant::now();
    let store = Store::open(quiet(dir.path())).await.expect("reopen");
    let secs = t.elapsed().as_secs_f64();
    let n = store.stats().buffered_rows;
    println!(
        "WAL replay on open: {n} rows in {secs:.2} s = {:.0} rows/s",
        n as f64 / secs
    );
}

/// The persist's input at 100 000 patients: 9 s of heart rate and one SpO2 per patient, in
/// 2,000-row appends whose patients interleave (as many phones' requests do).
fn fleet_rows(patients: usize, from_second: i64) -> Vec<Vec<Row>> {
    let spo2 = catalogue::by_key("spo2").expect("spo2");
    let mut all: Vec<Row> = Vec::with_capacity(patients * 10);
    for s in from_second..from_second + 10 {
        for p in 0..patients {
            let mut r = hr_row(p, s, 60.0 + ((p as i64 * 7 + s) % 40) as f64);
            r.reading.device_id = format!("dev-{p:07}");
            r.reading.patient_id = Some(format!("pat-{p:07}"));
            if s % 10 == 9 {
                r.reading.vital = spo2;
                r.reading.value = 94.0 + (p % 5) as f64;
            }
            all.push(r);
        }
    }
    all.chunks(2000).map(<[Row]>::to_vec).collect()
}

async fn persist_bench() {
    use carewatch_store::{sorted, tables};
    let patients = 100_000;
    let appends = fleet_rows(patients, 0);
    let rows: usize = appends.iter().map(Vec::len).sum();
    let batches: Vec<arrow_array::RecordBatch> = appends
        .iter()
        .map(|a| {
            let mut b = carewatch_transform::schema::ObservationBatchBuilder::new(a.len());
            for r in a {
                b.push(&r.reading, r.received_us, r.source, r.format);
            }
            b.finish()
        })
        .collect();
    let t = Table::Observations;
    let rgs = Config::new("/").row_group_rows;
    let ms = |i: Instant| i.elapsed().as_secs_f64() * 1000.0;
    println!(
        "persist phases, {rows} rows of {patients} patients in {} batches:",
        batches.len()
    );
    let i = Instant::now();
    let all = tables::concat(&t.schema(), &batches).expect("concat");
    let concat = ms(i);
    let i = Instant::now();
    let sorted_all = tables::sort_dedupe(t, &all).expect("sort");
    let sort = ms(i);
    let i = Instant::now();
    let days = tables::split_by_day(t, &sorted_all).expect("split");
    let split = ms(i);
    let i = Instant::now();
    let old: Vec<bytes::Bytes> = days
        .iter()
        .map(|(_, b)| tables::encode_parquet(b, rgs).expect("encode"))
        .collect();
    let encode = ms(i);
    println!(
        "  one thread: concat {concat:.0} ms, sort_dedupe {sort:.0} ms, split {split:.0} ms, encode {encode:.0} ms = {:.0} rows/s",
        rows as f64 / ((concat + sort + split + encode) / 1000.0)
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let i = Instant::now();
    let new: Vec<bytes::Bytes> = days
        .iter()
        .map(|(_, b)| sorted::encode_parallel(b, rgs, threads).expect("encode"))
        .collect();
    let encode_par = ms(i);
    println!(
        "  persist now: the same sort, encode_parallel ({threads} threads) {encode_par:.0} ms = {:.0} rows/s",
        rows as f64 / ((concat + sort + split + encode_par) / 1000.0)
    );
    assert_eq!(old, new, "encode_parallel wrote another file");
    let size = |v: &[bytes::Bytes]| v.iter().map(bytes::Bytes::len).sum::<usize>();
    println!("  file bytes: old {}, new {}", size(&old), size(&new));
    drop((all, sorted_all, days, old, new));

    let dir = tempfile::tempdir().expect("tmp");
    let store = Store::open(quiet(dir.path())).await.expect("open");
    for a in appends {
        store.append(a, vec![]).await.expect("append");
    }
    let i = Instant::now();
    store.persist().await.expect("persist");
    let secs = i.elapsed().as_secs_f64();
    println!(
        "  Store::persist end to end (sort, encode, fsync, Delta commit): {rows} rows in {secs:.2} s = {:.0} rows/s",
        rows as f64 / secs
    );
}
