//! Cluster mode's WAL on the object store (issue 13, stateless nodes), on a real S3-compatible
//! store (Garage) and a real PostgreSQL server. A node killed with its data directory leaves
//! every acknowledged group commit behind as an object; a live node adopts them once the dead
//! node's liveness ran out, and the table then holds every acknowledged row exactly once. A
//! node taken for dead while it still runs (cut off from PostgreSQL) can neither acknowledge
//! more nor commit what was adopted from it.

use std::path::Path;
use std::time::Duration;

use arrow_array::{Array, RecordBatch, StringArray};
use carewatch_fixtures::garage::Garage;
use carewatch_fixtures::postgres::Postgres;
use carewatch_store::{Config, Store, Table};
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;

mod support;
use support::rows;

/// A cluster node on the tables at `s3://<bucket>/tables`; its liveness runs out 2 s after
/// its last renewal.
fn config(dir: &Path, g: &Garage, pg: &Postgres) -> Config {
    let mut c = Config::new(dir);
    c.tables_url = Some(format!("s3://{}/tables", g.bucket));
    c.object_store_options = g.env();
    c.postgres_url = Some(pg.url.clone());
    c.persist_age = Duration::from_secs(3600);
    c.compact_min_files = 1000;
    c.wal_node_ttl = Duration::from_secs(2);
    c
}

fn device_ids(b: &RecordBatch) -> Vec<String> {
    let s = b
        .column_by_name("device_id")
        .expect("device_id")
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("utf8");
    (0..s.len()).map(|i| s.value(i).to_owned()).collect()
}

/// How many rows of `device` the tables hold, read by a fresh node.
async fn count(dir: &Path, g: &Garage, pg: &Postgres, device: &str) -> usize {
    let reader = Store::open(config(dir, g, pg)).await.expect("open reader");
    let batches = reader.read_all(Table::Observations).await.expect("read");
    let ids: Vec<String> = batches.iter().flat_map(device_ids).collect();
    ids.iter().filter(|d| *d == device).count()
}

/// `node` adopts until something was adopted (the dead node's liveness must run out first).
async fn adopt(node: &Store) -> usize {
    for _ in 0..200 {
        let n = node.adopt_wals().await.expect("adopt");
        if n > 0 {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing was adopted within 20 s");
}

/// The WAL objects left on the store.
async fn wal_objects(node: &Store) -> Vec<ObjPath> {
    node.objects()
        .list(Some(&ObjPath::from("_wal")))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .expect("list")
}

/// Appends the readings of minutes `from..to` of `device` in appends of 10 (each
/// acknowledged).
async fn append(node: &Store, device: &str, from: i64, to: i64) {
    for i in (from..to).step_by(10) {
        node.append(rows(device, i, 10.min(to - i)), vec![])
            .await
            .expect("acknowledged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_with_its_disk_loses_nothing_it_acknowledged() {
    let (pg, g, t) = (
        Postgres::start(),
        Garage::start(),
        tempfile::tempdir().expect("tmp"),
    );
    let a = Store::open(config(&t.path().join("a"), &g, &pg))
        .await
        .expect("open a");
    let b = Store::open(config(&t.path().join("b"), &g, &pg))
        .await
        .expect("open b");
    append(&a, "dev-a", 0, 20).await;
    a.persist().await.expect("a persists the first 20");
    append(&a, "dev-a", 20, 70).await;
    append(&b, "dev-b", 0, 30).await;
    b.persist().await.expect("b persists");
    // Killed: no shutdown persist, and its data directory is gone.
    drop(a);
    std::fs::remove_dir_all(t.path().join("a")).expect("rm a");
    assert!(
        !wal_objects(&b).await.is_empty(),
        "a's acknowledged, unpersisted group commits are objects on the store"
    );
    let n = adopt(&b).await;
    assert_eq!(
        n, 50,
        "b adopts the 50 rows a acknowledged after its persist"
    );
    assert_eq!(b.adopt_wals().await.expect("again"), 0, "nothing twice");
    assert!(
        wal_objects(&b).await.is_empty(),
        "adopted and persisted frames are deleted"
    );
    // The 20 a persisted and the 50 adopted, each once (the 20 are not adopted again), and
    // b's own 30.
    assert_eq!(count(&t.path().join("r"), &g, &pg, "dev-a").await, 70);
    assert_eq!(count(&t.path().join("r"), &g, &pg, "dev-b").await, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_taken_for_dead_cannot_commit_what_was_adopted_from_it() {
    let (pg, g, t) = (
        Postgres::start(),
        Garage::start(),
        tempfile::tempdir().expect("tmp"),
    );
    let a_dir = t.path().join("a");
    let a = Store::open(config(&a_dir, &g, &pg)).await.expect("open a");
    let b = Store::open(config(&t.path().join("b"), &g, &pg))
        .await
        .expect("open b");
    append(&a, "dev-a", 0, 40).await;
    // Cut off from PostgreSQL: a stops renewing its liveness while it keeps running.
    a.inject_liveness_stop();
    assert_eq!(adopt(&b).await, 40);
    // Its liveness lapsed, so a acknowledges nothing more…
    let late = a.append(rows("dev-a", 100, 1), vec![]).await;
    assert!(
        matches!(late, Err(carewatch_store::Error::Wal(_))),
        "{late:?}"
    );
    // …and its persist of the adopted rows is refused by the txn check: never twice.
    assert!(a.persist().await.is_err(), "the adopted rows are refused");
    assert_eq!(
        a.stats().buffered_rows,
        0,
        "the adopted rows left a's buffer"
    );
    assert_eq!(a.persist().await.expect("nothing left"), 0);
    assert_eq!(count(&t.path().join("r1"), &g, &pg, "dev-a").await, 40);
    // Restarted on the same data directory: replay skips what was adopted.
    drop(a);
    let a = Store::open(config(&a_dir, &g, &pg))
        .await
        .expect("reopen a");
    assert_eq!(a.stats().buffered_rows, 0, "nothing adopted is replayed");
    append(&a, "dev-a", 100, 105).await;
    a.persist().await.expect("a persists again");
    assert_eq!(count(&t.path().join("r2"), &g, &pg, "dev-a").await, 45);
}
