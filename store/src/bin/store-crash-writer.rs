//! Test support for the crash test (`store/tests/crash.rs`): opens a store, runs concurrent
//! writers and prints `ack <device> <n>` for every acknowledged append, until killed.
//! Usage: `store-crash-writer <data-dir> <writers> <start>`; `store-crash-writer --dump <data-dir>`
//! prints every stored observation as `<device> <micros>`.

use std::io::Write;
use std::time::Duration;

use carewatch_store::{Config, Row, Store, Table};
use carewatch_transform::catalogue;
use carewatch_transform::{Format, Reading, Source};

fn config(dir: &str) -> Config {
    let mut c = Config::new(dir);
    // Small thresholds so persists, segment rotations and compactions happen while we kill.
    c.persist_rows = 300;
    c.persist_age = Duration::from_millis(50);
    c.segment_bytes = 16 << 10;
    c.compact_min_files = 3;
    c.delete_grace = Duration::from_millis(20);
    c.tick = Duration::from_millis(10);
    c
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--dump") {
        // The restart the test checks: open recovers and compacts as after any crash, but the
        // files a compaction replaces stay readable while the dump reads (with the writers'
        // 20 ms grace a merge at open deleted files the dump had listed and not yet read:
        // "not found", in 5 of 6 runs on a 2-core machine).
        let mut c = config(&args[2]);
        c.delete_grace = Duration::from_secs(3600);
        let store = Store::open(c).await?;
        let mut out = std::io::stdout().lock();
        for b in store.read_all(Table::Observations).await? {
            let rows = carewatch_transform::schema::readings_from_batch(&b)?;
            for r in rows {
                writeln!(out, "{} {}", r.device_id, r.effective_us)?;
            }
        }
        return Ok(());
    }
    let dir = args.get(1).ok_or("data dir")?.clone();
    let writers: usize = args.get(2).ok_or("writers")?.parse()?;
    let start: i64 = args.get(3).ok_or("start")?.parse()?;
    let store = Store::open(config(&dir)).await?;
    let hr = catalogue::by_key("heart_rate").ok_or("catalogue")?;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let device = format!("w{w}");
            let mut n = start;
            loop {
                // 1..4 rows per append, ids n, n+1, …
                let k = 1 + (n as usize % 4);
                let rows: Vec<Row> = (0..k as i64)
                    .map(|j| Row {
                        reading: Reading {
                            device_id: device.clone(),
                            patient_id: Some(format!("p{w}")),
                            vital: hr,
                            value: 60.0 + ((n + j) % 60) as f64,
                            effective_us: 1_700_000_000_000_000 + (n + j) * 1_000_000,
                            effective_end_us: None,
                            offset_min: Some(0),
                            extra: None,
                        },
                        received_us: 1_700_000_000_000_000,
                        source: Source::Cli,
                        format: Format::Carewatch,
                    })
                    .collect();
                match store.append(rows, vec![]).await {
                    Ok(()) => {
                        let mut out = std::io::stdout().lock();
                        for j in 0..k as i64 {
                            let _ = writeln!(
                                out,
                                "ack {device} {}",
                                1_700_000_000_000_000 + (n + j) * 1_000_000
                            );
                        }
                        let _ = out.flush();
                        n += k as i64;
                    }
                    Err(carewatch_store::Error::Busy) => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    Err(e) => {
                        eprintln!("append failed: {e}");
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}
