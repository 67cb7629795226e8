//! Size-tiered compaction: a day is merged in parts within the memory bound (before, a day
//! whose files added up to more than the bound was never compacted again, so its files piled
//! up at one per persist), and a merged file is not rewritten each time the next small files
//! of its day are merged (before, every compaction rewrote the whole day).

use std::time::Duration;

use carewatch_store::{Config, Row, Store, Table};

mod support;

/// Readings start here, so the files of a test all fall on one day.
const DAY: i64 = 1_700_006_400_000_000; // 2023-11-15T00:00:00Z

fn quiet(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.tick = Duration::from_secs(3600);
    c.delete_grace = Duration::ZERO;
    c
}

/// `n` heart-rate readings of one device from `start`, with values that do not compress away
/// (a file of 5,000 is some tens of kB).
fn rows(start: i64, n: i64, seed: &mut u64) -> Vec<Row> {
    let mut out = support::rows("d1", 0, n);
    for (i, r) in (0..).zip(out.iter_mut()) {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        r.reading.value = 40.0 + (*seed >> 11) as f64 / (1u64 << 53) as f64 * 100.0;
        r.reading.effective_us = start + i * 1_000_003;
    }
    out
}

/// Appends and persists `files` files of `per` rows each, continuing at `*at`.
async fn persist_files(s: &Store, files: usize, per: i64, at: &mut i64, seed: &mut u64) {
    for _ in 0..files {
        s.append(rows(*at, per, seed), vec![])
            .await
            .expect("append");
        *at += per * 1_000_003;
        s.persist().await.expect("persist");
    }
}

async fn count(s: &Store) -> usize {
    s.read_all(Table::Observations)
        .await
        .expect("read")
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

#[tokio::test]
async fn a_day_larger_than_one_merge_is_still_compacted_in_parts() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut at, mut seed) = (DAY, 7u64);
    let s = Store::open(quiet(dir.path())).await.expect("open");
    persist_files(&s, 12, 500, &mut at, &mut seed).await;
    let biggest = s
        .snapshot()
        .files
        .iter()
        .map(|f| f.size)
        .max()
        .expect("files");
    drop(s);
    // One merge may read about four files: the day (twelve) is more than that.
    let mut c = quiet(dir.path());
    c.compact_min_files = 8;
    c.compact_max_bytes = biggest * 9 / 2;
    let s = Store::open(c).await.expect("reopen");
    let merges = s.compact().await.expect("compact");
    assert!(merges >= 2, "{merges} merges");
    let files = s.snapshot().files.len();
    assert!(
        files <= 12 - 2 * merges,
        "{files} files after {merges} merges"
    );
    assert_eq!(count(&s).await, 12 * 500);
}

#[tokio::test]
async fn a_merged_file_is_not_rewritten_when_the_next_small_files_merge() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = quiet(dir.path());
    c.compact_min_files = 4;
    let s = Store::open(c).await.expect("open");
    let (mut at, mut seed) = (DAY, 11u64);
    persist_files(&s, 4, 5000, &mut at, &mut seed).await;
    let sizes: Vec<u64> = s.snapshot().files.iter().map(|f| f.size).collect();
    // The premise: the new files are in the smallest tier (under 64 kB), their merge is not.
    assert!(sizes.iter().all(|&b| b < 64 << 10), "{sizes:?}");
    assert!(sizes.iter().sum::<u64>() >= 64 << 10, "{sizes:?}");
    assert_eq!(s.compact().await.expect("compact"), 1);
    let merged = s.snapshot().files;
    assert_eq!(merged.len(), 1);
    persist_files(&s, 4, 5000, &mut at, &mut seed).await;
    assert_eq!(s.compact().await.expect("compact"), 1);
    let after = s.snapshot().files;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().any(|f| f.path == merged[0].path),
        "the first merge's file was rewritten"
    );
    assert_eq!(count(&s).await, 8 * 5000);
}

/// Cluster mode on shared tables: only the holder of the maintenance partition compacts in
/// the background, and the role moves with its lease. Node `owner` never ticks; `other`
/// ticks every 100 ms but does not hold the partition, so nothing is merged (without the
/// gate `other` merges at its next tick) — until `owner` shuts down and `other` takes it.
#[tokio::test]
async fn only_the_maintenance_partitions_owner_compacts_shared_tables() {
    use carewatch_store::lease::{self, DELIVERY_PARTITION, Leases, Ownership as _};
    use std::sync::Arc;
    let pg = carewatch_fixtures::postgres::Postgres::start();
    let t = tempfile::tempdir().expect("tmp");
    let tables = t.path().join("tables");
    std::fs::create_dir_all(&tables).expect("mkdir");
    let node = |name: &str, tick_ms: u64| {
        let mut c = quiet(&t.path().join(name));
        c.tables_url = Some(format!("file://{}", tables.display()));
        c.tick = Duration::from_millis(tick_ms);
        c.persist_age = Duration::from_secs(3600);
        c.compact_min_files = 4;
        c
    };
    let lease_config = |name: &str| {
        let mut c = lease::Config::new(name);
        c.ttl = Duration::from_secs(2);
        c.renew = Duration::from_millis(300);
        c.margin = Duration::from_millis(300);
        c
    };
    let url = pg.url.clone();
    let (la, lb) = tokio::task::spawn_blocking(move || {
        let la = Leases::start(&url, lease_config("a")).expect("leases a");
        let lb = Leases::start(&url, lease_config("b")).expect("leases b");
        // Rebalanced: each holds half; wait until `a`'s extra half is released to `b`.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while la.owned().len() + lb.owned().len() != usize::from(lease::PARTITIONS)
            || la.owned().is_empty()
            || lb.owned().is_empty()
        {
            assert!(std::time::Instant::now() < deadline, "never rebalanced");
            std::thread::sleep(Duration::from_millis(50));
        }
        (Arc::new(la), Arc::new(lb))
    })
    .await
    .expect("leases");
    let (owner_l, other_l) = if la.owns_partition(DELIVERY_PARTITION) {
        (la, lb)
    } else {
        (lb, la)
    };
    let owner = Store::open(node("owner", 3_600_000)).await.expect("owner");
    let other = Store::open(node("other", 100)).await.expect("other");
    owner.maintain_while(owner_l.clone());
    other.maintain_while(other_l.clone());
    let (mut at, mut seed) = (DAY, 3u64);
    persist_files(&owner, 3, 50, &mut at, &mut seed).await;
    persist_files(&other, 3, 50, &mut at, &mut seed).await;
    let merged = |s: &Store| {
        s.snapshot()
            .files
            .iter()
            .filter(|f| f.path.as_ref().contains("-c"))
            .count()
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        other.snapshot().files.len(),
        6,
        "a node without the partition compacted"
    );
    assert_eq!(merged(&other), 0);
    // The owner shuts down (its leases given back): the other node takes the partition and,
    // with it, the compaction.
    tokio::task::spawn_blocking(move || owner_l.stop(true))
        .await
        .expect("stop");
    drop(owner);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while merged(&other) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new owner never compacted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&other).await, 6 * 50);
    tokio::task::spawn_blocking(move || other_l.stop(true))
        .await
        .expect("stop");
}

/// Persists go on while a merge runs (issue 19's soak: a ~64 M-row merge once held back the
/// persists for a minute, the buffer reached its bound and appends were refused). The merge is
/// held at its start; readings appended meanwhile reach a file by the background tick and by
/// an explicit persist, and nothing is lost or doubled once the merge ends.
#[tokio::test]
async fn persists_go_on_while_a_merge_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = quiet(dir.path());
    c.tick = Duration::from_millis(50);
    c.persist_rows = 100;
    c.compact_min_files = 4;
    let s = Store::open(c).await.expect("open");
    let (reached, release) = s.pause_next_merge();
    let (mut at, mut seed) = (DAY, 5u64);
    persist_files(&s, 4, 100, &mut at, &mut seed).await;
    tokio::time::timeout(Duration::from_secs(30), reached)
        .await
        .expect("the background merge never started")
        .expect("merge");
    // The background persist, while the merge is held.
    s.append(rows(at, 100, &mut seed), vec![])
        .await
        .expect("append");
    at += 100 * 1_000_003;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.snapshot().files.len() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "no persist while a merge ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An explicit persist, too.
    s.append(rows(at, 10, &mut seed), vec![])
        .await
        .expect("append");
    let persisted = tokio::time::timeout(Duration::from_secs(30), s.persist())
        .await
        .expect("persist waited for the merge")
        .expect("persist");
    assert_eq!(persisted, 1, "files written");
    assert_eq!(s.snapshot().files.len(), 6);
    drop(release);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.snapshot().files.len() > 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the merge never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&s).await, 4 * 100 + 100 + 10);
}

/// A merge is written to a temporary file and uploaded in parts (8 MiB): an output larger than
/// one part comes out whole, in the table and after a restart, with no part or staging file left
/// beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_larger_than_an_upload_part_comes_out_whole() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = quiet(dir.path());
    c.compact_min_files = 2;
    let s = Store::open(c.clone()).await.expect("open");
    for rows in support::bulky_days(DAY, &mut 13) {
        s.append(rows, vec![]).await.expect("append");
        s.persist().await.expect("persist");
    }
    assert_eq!(s.compact().await.expect("compact"), 1);
    let files = s.snapshot().files;
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].size > 8 << 20,
        "{} bytes: not past one part",
        files[0].size
    );
    assert_eq!(count(&s).await, 160_000);
    drop(s);
    let s = Store::open(c).await.expect("reopen");
    assert_eq!(count(&s).await, 160_000);
    let day_dir = dir
        .path()
        .join(files[0].path.as_ref())
        .parent()
        .map(|p| p.to_owned());
    let names: Vec<String> = std::fs::read_dir(day_dir.expect("dir"))
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.ends_with(".parquet")),
        "left beside the files: {names:?}"
    );
}
