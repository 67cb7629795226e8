//! Two nodes committing to the same Delta tables at the same moment, on a real S3-compatible
//! store without put-if-absent (Garage 2.5.0 accepts a second create-only PUT of a key and
//! replaces the first), with the commit lock in a real PostgreSQL server (cluster mode). Each
//! round both nodes append and persist at once, so their Delta commits race for the same
//! version: every commit must survive. Without the lock some commits replace others, and
//! acknowledged, persisted readings vanish from the table (the test then fails).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use arrow_array::{Array, RecordBatch, StringArray};
use carewatch_fixtures::garage::Garage;
use carewatch_fixtures::postgres::Postgres;
use carewatch_store::{Config, Store, Table};

mod support;
use support::rows;

const ROUNDS: i64 = 16;
const PER: i64 = 5;

/// A node on the tables at `s3://<bucket>/tables`, in cluster mode when `pg` is given.
fn config(dir: &Path, g: &Garage, pg: Option<&Postgres>) -> Config {
    let mut c = Config::new(dir);
    c.tables_url = Some(format!("s3://{}/tables", g.bucket));
    c.object_store_options = g.env();
    c.postgres_url = pg.map(|p| p.url.clone());
    c.persist_age = Duration::from_secs(3600);
    c.compact_min_files = 1000;
    c
}

/// Device ids of every row of `observations`, and the table's files, read by a fresh node.
async fn table(dir: &Path, g: &Garage, pg: &Postgres) -> (Vec<String>, HashSet<String>) {
    let reader = Store::open(config(dir, g, Some(pg))).await.expect("open");
    let batches = reader.read_all(Table::Observations).await.expect("read");
    let files = reader
        .snapshot()
        .files
        .iter()
        .filter(|f| f.table == Table::Observations)
        .map(|f| f.path.to_string())
        .collect();
    (batches.iter().flat_map(device_ids).collect(), files)
}

/// Nodes `a` and `b` on the tables, in cluster mode.
async fn two_nodes(dir: &Path, g: &Garage, pg: &Postgres) -> (Store, Store) {
    let a = Store::open(config(&dir.join("a"), g, Some(pg)))
        .await
        .expect("open a");
    let b = Store::open(config(&dir.join("b"), g, Some(pg)))
        .await
        .expect("open b");
    (a, b)
}

fn device_ids(b: &RecordBatch) -> Vec<String> {
    let col = b.column_by_name("device_id").expect("device_id");
    let s = col
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("utf8 device_id");
    (0..s.len()).map(|i| s.value(i).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_of_two_nodes_all_survive_on_a_store_without_put_if_absent() {
    let (pg, g, t) = (
        Postgres::start(),
        Garage::start(),
        tempfile::tempdir().expect("tmp"),
    );
    let (a, b) = two_nodes(t.path(), &g, &pg).await;
    for round in 0..ROUNDS {
        let (ra, rb) = tokio::join!(
            async {
                a.append(rows("a", round * PER, PER), vec![]).await?;
                a.persist().await
            },
            async {
                b.append(rows("b", round * PER, PER), vec![]).await?;
                b.persist().await
            }
        );
        assert_eq!(ra.expect("persist a"), 1, "round {round}: one file");
        assert_eq!(rb.expect("persist b"), 1, "round {round}: one file");
    }
    assert_eq!(a.stats().buffered_rows, 0, "A persisted everything");
    assert_eq!(b.stats().buffered_rows, 0, "B persisted everything");

    let (ids, files) = table(&t.path().join("reader"), &g, &pg).await;
    let per = |d: &str| ids.iter().filter(|x| *x == d).count() as i64;
    assert_eq!(
        (per("a"), per("b")),
        (ROUNDS * PER, ROUNDS * PER),
        "every acknowledged and persisted reading of both nodes is in the table"
    );
    assert_eq!(files.len() as i64, 2 * ROUNDS, "{files:?}");
}

/// Two nodes compacting the same day at once: deltalake does not count two compactions'
/// removes of one file (both `dataChange: false`) as a conflict, so both merged files used to
/// be committed and every row of the day was in the table twice (found by
/// tests/cluster_alerts.rs: 775 rows, 424 distinct). Under the commit lock, a compaction
/// whose inputs another node already removed is not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_compacting_one_day_at_once_leave_each_row_once() {
    let (pg, g, t) = (
        Postgres::start(),
        Garage::start(),
        tempfile::tempdir().expect("tmp"),
    );
    let (a, b) = two_nodes(t.path(), &g, &pg).await;
    for round in 0..4 {
        a.append(rows("a", round * PER, PER), vec![])
            .await
            .expect("a");
        a.persist().await.expect("persist a");
    }
    // b's snapshot has a's files: both now see the same day to merge.
    b.append(rows("b", 0, PER), vec![]).await.expect("b");
    b.persist().await.expect("persist b");
    let (ca, cb) = tokio::join!(a.compact_all(), b.compact_all());
    let merged = [ca, cb].into_iter().filter(|r| matches!(r, Ok(1))).count();
    assert!(merged >= 1, "one node merged the day");
    let (ids, _) = table(&t.path().join("reader"), &g, &pg).await;
    assert_eq!(ids.len(), 5 * PER as usize, "every row once: {ids:?}");
}

/// A merge on the object store: its inputs are downloaded into temporary files and its output
/// (past one 8 MiB part) goes up as a multipart upload; the merged file holds every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_on_the_object_store_uploads_its_output_in_parts() {
    let (g, t) = (Garage::start(), tempfile::tempdir().expect("tmp"));
    let mut c = config(&t.path().join("a"), &g, None);
    c.compact_min_files = 2;
    // No maintenance tick: with 2 files a day it would merge before the test asks (CI: the
    // background merge had taken the day, `compact_all` found nothing left and said 0).
    c.tick = Duration::from_secs(3600);
    let s = Store::open(c).await.expect("open");
    for rows in support::bulky_days(support::T0 - support::T0 % 86_400_000_000, &mut 5) {
        s.append(rows, vec![]).await.expect("append");
        s.persist().await.expect("persist");
    }
    assert_eq!(s.compact_all().await.expect("compact"), 1);
    let files = s.snapshot().files;
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].size > 8 << 20, "{} bytes", files[0].size);
    drop(s);
    let reader = Store::open(config(&t.path().join("r"), &g, None))
        .await
        .expect("open");
    let batches = reader.read_all(Table::Observations).await.expect("read");
    let ids: Vec<String> = batches.iter().flat_map(device_ids).collect();
    assert_eq!(ids.len(), 160_000);
    assert_eq!(ids.iter().filter(|d| *d == "d1").count(), 80_000);
}
