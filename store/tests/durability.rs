//! Durability without exceptions (issue #12): what the store acknowledged is replayed whole,
//! counted once, and a writer that cannot go on says so.

use std::time::Duration;

use arrow_array::RecordBatch;
use carewatch_store::{Config, DeadLetter, Error, Row, Store, Table};
use carewatch_transform::catalogue;
use carewatch_transform::{Format, Reading, Reason, Source};

const T0: i64 = 1_700_000_000_000_000; // 2023-11-14T22:13:20Z

fn row(device: &str, t_us: i64) -> Row {
    Row {
        reading: Reading {
            device_id: device.to_owned(),
            patient_id: Some(format!("p-{device}")),
            vital: catalogue::by_key("heart_rate").expect("vital"),
            value: 70.0,
            effective_us: t_us,
            effective_end_us: None,
            offset_min: Some(0),
            extra: None,
        },
        received_us: T0,
        source: Source::Http,
        format: Format::Carewatch,
    }
}

fn dead(index: u32, raw: Vec<u8>) -> DeadLetter {
    DeadLetter {
        received_us: T0,
        source: Source::Http,
        device_id: Some("d1".into()),
        reason: Reason::WrongType,
        message: "item is not an object".into(),
        index: Some(index),
        raw,
        raw_sha256: None,
    }
}

/// A config whose background task never fires on its own during a test.
fn quiet(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.tick = Duration::from_secs(3600);
    c.delete_grace = Duration::ZERO;
    c
}

fn rows_in(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// Incompressible bytes (xorshift), so Parquet cannot shrink them below the tmpfs size.
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(n);
    v
}

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "2m") at `dir` (CI runs as root).
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir.to_owned())
    }
    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("remount");
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Three appends of 100 MiB each share one group commit (a commit delay gathers them): more
/// than the 256 MiB replay accepts in one frame. Every acknowledged dead letter replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_larger_than_replay_cap_replays_completely() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = quiet(dir.path());
    c.commit_delay = Duration::from_secs(3);
    let s = Store::open(c).await.expect("open");
    let mut tasks = Vec::new();
    for a in 0..3u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let dead: Vec<DeadLetter> = (0..100)
                .map(|i| DeadLetter {
                    // Given, so hashing 100 MiB (slow in a debug build) cannot split the group.
                    raw_sha256: Some([a as u8; 32]),
                    ..dead(a * 100 + i, vec![a as u8; 1 << 20])
                })
                .collect();
            s.append(vec![], dead).await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("append acknowledged");
    }
    assert_eq!(s.stats().commits, 1, "the three appends shared one group");
    drop(s);
    let s = Store::open(quiet(dir.path())).await.expect("reopen");
    assert_eq!(s.stats().wal_damage, Vec::<String>::new());
    assert_eq!(
        rows_in(&s.read_all(Table::DeadLetters).await.expect("read")),
        300
    );
}

/// Disk full half-way through a persist: the observations file is written, the dead-letters
/// file does not fit. Once space returns the next persist succeeds, and after a restart every
/// acknowledged row is there exactly once (the first attempt's file is not counted again).
#[tokio::test]
async fn persist_that_fails_half_way_leaves_no_row_counted_twice() {
    let dir = tempfile::tempdir().expect("tmp");
    let mnt = dir.path().join("small");
    let fs = Tmpfs::mount(&mnt, "2m");
    let s = Store::open(quiet(&mnt)).await.expect("open");
    let rows: Vec<Row> = (0..100).map(|i| row("d1", T0 + i * 1_000_000)).collect();
    s.append(rows, vec![dead(0, noise(1_200_000, 7))])
        .await
        .expect("append");
    let err = s
        .persist()
        .await
        .expect_err("the dead letter does not fit twice");
    assert!(
        matches!(err, Error::Io(_)),
        "persist fails with a storage error: {err}"
    );
    // Nothing was lost meanwhile, nothing doubled.
    assert_eq!(
        rows_in(&s.read_all(Table::Observations).await.expect("read")),
        100
    );
    fs.resize("64m");
    s.persist().await.expect("persist once space returns");
    assert_eq!(
        rows_in(&s.read_all(Table::Observations).await.expect("read")),
        100
    );
    drop(s);
    let s = Store::open(quiet(&mnt)).await.expect("reopen");
    assert_eq!(
        rows_in(&s.read_all(Table::Observations).await.expect("read")),
        100,
        "files: {:?}",
        s.snapshot().files
    );
    assert_eq!(
        rows_in(&s.read_all(Table::DeadLetters).await.expect("read")),
        1
    );
}

/// A writer that cannot go on (here: its thread fails as a bug would) is visible: `healthy`
/// names it, appends fail instead of hanging, and a restart writes again.
#[tokio::test]
async fn a_failed_writer_is_reported_unhealthy() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(quiet(dir.path())).await.expect("open");
    s.append(vec![row("d1", T0)], vec![]).await.expect("append");
    assert_eq!(s.healthy(), Ok(()));
    s.inject_writer_failure().await;
    let mut unhealthy = None;
    for _ in 0..500 {
        if let Err(why) = s.healthy() {
            unhealthy = Some(why);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let why = unhealthy.expect("the store reports its writer failed");
    assert!(why.contains("WAL writer"), "{why}");
    assert!(matches!(
        s.append(vec![row("d1", T0 + 1)], vec![]).await,
        Err(Error::Closed)
    ));
    drop(s);
    let s = Store::open(quiet(dir.path())).await.expect("reopen");
    assert_eq!(s.healthy(), Ok(()));
    s.append(vec![row("d1", T0 + 2)], vec![])
        .await
        .expect("writes again");
    assert_eq!(
        rows_in(&s.read_all(Table::Observations).await.expect("read")),
        2
    );
}

/// The buffer limit counts bytes as well as rows: a few large dead letters fill it.
#[tokio::test]
async fn buffer_limit_counts_bytes() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = quiet(dir.path());
    c.buffer_limit_bytes = 1 << 20;
    let s = Store::open(c).await.expect("open");
    s.append(vec![], vec![dead(0, vec![1; 2 << 20])])
        .await
        .expect("fits");
    assert!(matches!(
        s.append(vec![row("d1", T0)], vec![]).await,
        Err(Error::Busy)
    ));
    s.persist().await.expect("persist");
    s.append(vec![row("d1", T0)], vec![])
        .await
        .expect("room again");
}

/// One raw copy per message: dead letters sharing a digest store the payload once, in the WAL
/// and in Parquet, and every one of them names the payload by its digest.
#[tokio::test]
async fn dead_letters_of_one_message_share_one_raw_copy() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(quiet(dir.path())).await.expect("open");
    let payload = vec![b'0'; 16 << 10];
    let sha = carewatch_store::dead::digest(&payload);
    let dead: Vec<DeadLetter> = (0..8000)
        .map(|i| DeadLetter {
            raw: if i == 0 { payload.clone() } else { Vec::new() },
            raw_sha256: Some(sha),
            ..dead(i, Vec::new())
        })
        .collect();
    s.append(vec![], dead).await.expect("append");
    let wal: u64 = std::fs::read_dir(dir.path().join("wal"))
        .expect("wal")
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(wal < 2 << 20, "WAL holds {wal} bytes for a 16 KiB payload");
    s.persist().await.expect("persist");
    let batches = s.read_all(Table::DeadLetters).await.expect("read");
    let mut raws = 0;
    let mut shas = std::collections::HashSet::new();
    for b in &batches {
        let raw = b
            .column_by_name("raw")
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<arrow_array::BinaryArray>()
                    .cloned()
            })
            .expect("raw");
        let h = b
            .column_by_name("raw_sha256")
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .cloned()
            })
            .expect("raw_sha256");
        for i in 0..b.num_rows() {
            raws += usize::from(!raw.value(i).is_empty());
            shas.insert(h.value(i).to_owned());
        }
    }
    assert_eq!((rows_in(&batches), raws, shas.len()), (8000, 1, 1));
}

/// `chattr +i` (root, ext4): makes a file or directory refuse writes, truncation and new
/// entries. Undone on drop so the temp dir can go.
struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    fn set(paths: &[std::path::PathBuf]) -> Immutable {
        for p in paths {
            let st = std::process::Command::new("chattr")
                .arg("+i")
                .arg(p)
                .status()
                .expect("run chattr");
            assert!(
                st.success(),
                "chattr +i needs root on ext4 (CI runs as root)"
            );
        }
        Immutable(paths.to_vec())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(p)
                .status();
        }
    }
}

/// The WAL segment refuses writes and cutting back, and no new segment can be created: the
/// writer cannot go on, and says so. Once the disk lets it, it starts a fresh segment and
/// is healthy again; every acknowledged row survives a restart.
#[tokio::test]
async fn a_writer_that_cannot_write_any_segment_is_unhealthy_until_it_can() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(quiet(dir.path())).await.expect("open");
    s.append(vec![row("d1", T0)], vec![]).await.expect("append");
    let wal = dir.path().join("wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .expect("wal")
        .flatten()
        .map(|e| e.path())
        .collect();
    segs.sort();
    let seg = segs.last().expect("segment").clone();
    let frozen = Immutable::set(&[seg, wal]);
    assert!(matches!(
        s.append(vec![row("d1", T0 + 1)], vec![]).await,
        Err(Error::Wal(_))
    ));
    let why = s
        .healthy()
        .expect_err("a writer that cannot go on is unhealthy");
    assert!(why.contains("WAL"), "{why}");
    drop(frozen);
    s.append(vec![row("d1", T0 + 2)], vec![])
        .await
        .expect("writes resume on a fresh segment");
    assert_eq!(s.healthy(), Ok(()));
    drop(s);
    let s = Store::open(quiet(dir.path())).await.expect("reopen");
    assert_eq!(s.stats().wal_damage, Vec::<String>::new());
    assert_eq!(
        rows_in(&s.read_all(Table::Observations).await.expect("read")),
        2
    );
}
