//! Cluster mode's WAL on the object store (issue 13): append ack latency of a store on shared
//! tables on a real S3-compatible server (Garage, started for the bench) with the WAL only on
//! the local disk (`--object-store-url` alone: one writer, no PostgreSQL) against cluster mode
//! (`--postgres-url` too: every group commit is also PUT to the store before its ack, up to 4
//! PUTs in flight). Store-level appends, as the store bench measures them (no HTTP).
//!
//! Run: `cargo bench -p carewatch-benches --bench cluster_wal` (release; needs
//! `scripts/setup-test-deps.sh`'s Garage and PostgreSQL).

#[path = "appends.rs"]
mod appends;

use std::time::Duration;

use carewatch_fixtures::garage::Garage;
use carewatch_fixtures::postgres::Postgres;
use carewatch_store::{Config, Row, Store};
use carewatch_transform::catalogue;
use carewatch_transform::{Format, Reading, Source};

const T0: i64 = 1_700_006_400_000_000;

fn row(patient: usize, second: i64) -> Row {
    Row {
        reading: Reading {
            device_id: format!("dev-{patient:05}"),
            patient_id: Some(format!("pat-{patient:05}")),
            vital: catalogue::by_key("heart_rate").expect("hr"),
            value: 72.0,
            effective_us: T0 + second * 1_000_000,
            effective_end_us: None,
            offset_min: Some(60),
            extra: None,
        },
        received_us: T0 + second * 1_000_000,
        source: Source::Http,
        format: Format::Carewatch,
    }
}

/// `writers` tasks appending `per` single-reading appends each: rows/s, ack p50, p99.
async fn run(c: Config, writers: usize, per: usize) -> (f64, Duration, Duration) {
    let store = Store::open(c).await.expect("open");
    appends::concurrent(&store, writers, per, |w, i| vec![row(w, i as i64)]).await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (g, pg) = (Garage::start(), Postgres::start());
    println!("| WAL | writers | appends | rows/s | ack p50 | ack p99 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, (writers, per)) in [(1usize, 300usize), (16, 100), (64, 50)]
        .into_iter()
        .enumerate()
    {
        for remote in [false, true] {
            let dir = tempfile::tempdir().expect("tmp");
            let mut c = Config::new(dir.path());
            c.tables_url = Some(format!("s3://{}/bench{i}{remote}", g.bucket));
            c.object_store_options = g.env();
            c.postgres_url = remote.then(|| pg.url.clone());
            c.persist_age = Duration::from_secs(3600);
            let (rps, p50, p99) = run(c, writers, per).await;
            let wal = if remote {
                "local + object store"
            } else {
                "local only"
            };
            println!(
                "| {wal} | {writers} | {} | {rps:.0} | {p50:.2?} | {p99:.2?} |",
                writers * per
            );
        }
    }
}
