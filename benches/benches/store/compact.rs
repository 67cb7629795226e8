//! Compaction's memory at 100,000 patients: 8 persisted files of 1M rows each, merged once by
//! `Store::compact` (the streaming merge) and once the way compaction did before (every file
//! decoded, concatenated, sorted, encoded). Peak RSS is read from `VmHWM` after resetting it
//! (`/proc/self/clear_refs`), so each figure is that step's own peak above the RSS it started at.

use std::time::Instant;

use carewatch_store::{Store, Table, tables};

use super::{fleet_rows, quiet};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs `f`, returning its result, seconds, and its peak RSS above the RSS at its start (MiB).
async fn peak<T>(f: impl std::future::Future<Output = T>) -> (T, f64, f64) {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let start = status_kib("VmRSS:");
    let i = Instant::now();
    let out = f.await;
    let secs = i.elapsed().as_secs_f64();
    let hwm = status_kib("VmHWM:");
    (out, secs, hwm.saturating_sub(start) as f64 / 1024.0)
}

pub async fn bench() {
    let patients = 100_000;
    let files = 8;
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = quiet(dir.path());
    cfg.compact_min_files = 1_000;
    let store = Store::open(cfg).await.expect("open");
    let mut rows = 0;
    for f in 0..files {
        for a in fleet_rows(patients, 10 * f) {
            rows += a.len();
            store.append(a, vec![]).await.expect("append");
        }
        store.persist().await.expect("persist");
    }
    let snap = store.snapshot();
    let inputs: Vec<_> = snap
        .files
        .iter()
        .filter(|f| f.table == Table::Observations)
        .cloned()
        .collect();
    let bytes: u64 = inputs.iter().map(|f| f.size).sum();
    println!(
        "compaction of {} files, {rows} rows of {patients} patients, {bytes} bytes of Parquet:",
        inputs.len()
    );
    println!("| merge | time | peak RSS above start | RSS after |");
    println!("|---|---:|---:|---:|");

    // The streaming merge first, on a heap nothing large has been freed into yet.
    let (n, secs, mib) = peak(store.compact_all()).await;
    assert_eq!(n.expect("compact"), 1, "one merge");
    println!(
        "| streaming (`Store::compact_all`) | {secs:.2} s | {mib:.0} MiB | {:.0} MiB |",
        status_kib("VmRSS:") as f64 / 1024.0
    );

    // Before: decode every file, concatenate, sort, encode, everything held to the end as
    // compaction held it (the inputs wait out their grace period on disk).
    let (_, secs, mib) = peak(async {
        let mut batches = Vec::new();
        for f in &inputs {
            let b =
                bytes::Bytes::from(std::fs::read(dir.path().join(f.path.as_ref())).expect("read"));
            batches.extend(tables::decode_parquet(b).expect("decode"));
        }
        let t = Table::Observations;
        let all = tables::concat(&t.schema(), &batches).expect("concat");
        let merged = tables::sort_dedupe(t, &all).expect("sort");
        tables::encode_parquet(&merged, 1 << 20)
            .expect("encode")
            .len()
    })
    .await;
    println!(
        "| whole (before) | {secs:.2} s | {mib:.0} MiB | {:.0} MiB |",
        status_kib("VmRSS:") as f64 / 1024.0
    );
}
