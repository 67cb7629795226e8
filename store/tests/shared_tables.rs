//! Two nodes (two data directories, each with its own WAL) writing the same Delta tables
//! through one tables URL, as a cluster does on an object store (here `file://`; the same on
//! S3 in tests/cluster_object_store.rs). Each node keeps its WAL position in the tables under
//! its own id: a node's unpersisted readings survive its restart however far the other node
//! moved the tables, neither node deletes or replaces the other's files, each reads what the
//! other persisted, and a node whose snapshot is behind commits after the newer commit.

use std::path::Path;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use carewatch_store::{Config, Store, Table};

mod support;
use support::rows;

/// A node on `tables`, its background task (which follows the other node's commits) on a
/// short tick, persisting only when told.
fn config(dir: &Path, tables: &Path) -> Config {
    let mut c = Config::new(dir);
    c.tables_url = Some(format!("file://{}", tables.display()));
    c.tick = Duration::from_millis(50);
    c.persist_age = Duration::from_secs(3600);
    c.compact_min_files = 1000;
    c.delete_grace = Duration::ZERO;
    c
}

fn n(b: &[RecordBatch]) -> usize {
    b.iter().map(RecordBatch::num_rows).sum()
}

async fn count(s: &Store) -> usize {
    n(&s.read_all(Table::Observations).await.expect("read"))
}

async fn wait_count(s: &Store, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(s).await != want {
        assert!(Instant::now() < deadline, "never saw {want} rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_nodes_keep_their_own_wal_positions_in_shared_tables() {
    let t = tempfile::tempdir().expect("tmp");
    let tables = t.path().join("tables");
    std::fs::create_dir_all(&tables).expect("mkdir");
    let (da, db) = (t.path().join("a"), t.path().join("b"));

    let b = Store::open(config(&db, &tables)).await.expect("open b");
    b.append(rows("b", 0, 10), vec![]).await.expect("append b");
    let a = Store::open(config(&da, &tables)).await.expect("open a");
    for k in 0..3 {
        a.append(rows("a", k * 10, 10), vec![])
            .await
            .expect("append a");
        a.persist().await.expect("persist a");
    }
    wait_count(&b, 40).await; // its own 10 buffered, A's 30 from the table
    assert_eq!(count(&a).await, 30, "B's readings are only in B's WAL");

    // B stops without persisting (its WAL holds its 10) and comes back.
    drop(b);
    let b = Store::open(config(&db, &tables)).await.expect("reopen b");
    assert_eq!(
        count(&b).await,
        40,
        "B replays its WAL although A moved the table on"
    );
    b.persist().await.expect("persist b");
    wait_count(&a, 40).await;

    // Every file of both nodes is in the table, none replaced; a third reader agrees.
    let files: Vec<String> = b
        .snapshot()
        .files
        .iter()
        .map(|f| f.path.to_string())
        .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    drop(b);

    // A node that has not caught up (no tick) commits on top of the other's newer commit:
    // its commit goes in after it, and its snapshot then holds both.
    let mut late = config(&t.path().join("c"), &tables);
    late.tick = Duration::from_secs(3600);
    let c = Store::open(late).await.expect("open c");
    assert_eq!(count(&c).await, 40);
    a.append(rows("a", 100, 10), vec![])
        .await
        .expect("append a");
    a.persist().await.expect("persist a");
    c.append(rows("c", 0, 5), vec![]).await.expect("append c");
    c.persist().await.expect("persist c");
    assert_eq!(count(&c).await, 55);
    wait_count(&a, 55).await;
}

/// What a node's append observers heard: (patient, readings) per patient of each summary.
type Heard = std::sync::Arc<std::sync::Mutex<Vec<(String, usize)>>>;

fn listen(s: &Store) -> Heard {
    let heard: Heard = Heard::default();
    let h = heard.clone();
    s.observe_appends(std::sync::Arc::new(
        move |sum: &carewatch_store::AppendSummary| {
            let mut h = h.lock().expect("lock");
            for (i, (p, _, _)) in sum.patients.iter().enumerate() {
                let n = sum.readings.iter().filter(|r| r.0 as usize == i).count();
                h.push((p.clone(), n));
            }
        },
    ));
    heard
}

/// With `observe_other_nodes`, a node's append observers hear of the rows another node
/// persisted (read from its new files when the tick follows its commit): once each, with
/// patient, time range and every reading; a compaction's merge adds nothing to hear, and the
/// node's own persisted rows are not told twice. A node without the flag hears only its own.
#[tokio::test]
async fn observers_hear_of_rows_other_nodes_persisted_once() {
    let t = tempfile::tempdir().expect("tmp");
    let tables = t.path().join("tables");
    std::fs::create_dir_all(&tables).expect("mkdir");
    let a = Store::open(config(&t.path().join("a"), &tables))
        .await
        .expect("open a");
    let mut cb = config(&t.path().join("b"), &tables);
    cb.observe_other_nodes = true;
    let b = Store::open(cb).await.expect("open b");
    let c = Store::open(config(&t.path().join("c"), &tables))
        .await
        .expect("open c");
    let (hb, hc) = (listen(&b), listen(&c));

    b.append(rows("b", 0, 3), vec![]).await.expect("append b");
    b.persist().await.expect("persist b");
    a.append(rows("a", 0, 10), vec![]).await.expect("append a");
    a.persist().await.expect("persist a");
    a.append(rows("a", 10, 5), vec![]).await.expect("append a");
    a.persist().await.expect("persist a");
    wait_count(&b, 18).await;
    wait_count(&c, 18).await;
    assert_eq!(
        a.compact_all().await.expect("compact"),
        1,
        "a merges the day"
    );
    wait_until_files(&b, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // a few more ticks

    let heard = hb.lock().expect("lock").clone();
    assert_eq!(
        heard,
        [
            ("p-b".to_owned(), 3),
            ("p-a".to_owned(), 10),
            ("p-a".to_owned(), 5)
        ],
        "b hears its own append, then a's two persists, once each"
    );
    assert_eq!(
        hc.lock().expect("lock").clone(),
        Vec::<(String, usize)>::new(),
        "c, without the flag, hears nothing of the others"
    );
}

async fn wait_until_files(s: &Store, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while s
        .snapshot()
        .files
        .iter()
        .filter(|f| f.table == Table::Observations)
        .count()
        != want
    {
        assert!(Instant::now() < deadline, "never saw {want} files");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node whose own persist commits after another node's commit (its commit catches up over
/// it, before any tick followed) still hears of the other node's rows. The alert engine of the
/// rows' owner missed them (tests/cluster_alerts.rs) when the catch-up happened inside a
/// persist: the tick then found nothing new to follow.
#[tokio::test]
async fn a_persist_that_catches_up_over_another_nodes_commit_tells_its_rows() {
    let t = tempfile::tempdir().expect("tmp");
    let tables = t.path().join("tables");
    std::fs::create_dir_all(&tables).expect("mkdir");
    let a = Store::open(config(&t.path().join("a"), &tables))
        .await
        .expect("open a");
    let mut cb = config(&t.path().join("b"), &tables);
    cb.observe_other_nodes = true;
    cb.tick = Duration::from_secs(3600); // no following but through its own commits
    let b = Store::open(cb).await.expect("open b");
    let heard = listen(&b);

    a.append(rows("a", 0, 10), vec![]).await.expect("append a");
    a.persist().await.expect("persist a");
    b.append(rows("b", 0, 3), vec![]).await.expect("append b");
    b.persist().await.expect("persist b");
    assert_eq!(count(&b).await, 13, "b's snapshot has a's file");
    assert_eq!(
        heard
            .lock()
            .expect("lock")
            .iter()
            .map(|h| h.0.clone())
            .collect::<Vec<_>>(),
        ["p-b", "p-a"],
        "b hears its own append, then a's persisted rows"
    );
}
