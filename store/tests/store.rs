//! Store behaviour: durability, visibility, dedupe, late data, compaction, retention, WAL damage,
//! backpressure and disk-full.

use std::time::Duration;

use arrow_array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use carewatch_store::{Config, DeadLetter, Error, Row, Store, Table};
use carewatch_transform::catalogue;
use carewatch_transform::{Format, Reading, Reason, Source};

const T0: i64 = 1_700_000_000_000_000; // 2023-11-14T22:13:20Z

fn row(device: &str, code_key: &str, value: f64, t_us: i64) -> Row {
    Row {
        reading: Reading {
            device_id: device.to_owned(),
            patient_id: Some(format!("p-{device}")),
            vital: catalogue::by_key(code_key).expect("vital"),
            value,
            effective_us: t_us,
            effective_end_us: None,
            offset_min: Some(60),
            extra: None,
        },
        received_us: T0,
        source: Source::Http,
        format: Format::Carewatch,
    }
}

/// A config whose background task never fires on its own during a test.
fn quiet(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.tick = Duration::from_secs(3600);
    c.delete_grace = Duration::ZERO;
    c
}

fn keys(batches: &[RecordBatch]) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for b in batches {
        let d = b
            .column_by_name("device_id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
            .expect("device");
        let t = b
            .column_by_name("effective_time")
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .cloned()
            })
            .expect("time");
        for i in 0..b.num_rows() {
            out.push((d.value(i).to_owned(), t.value(i)));
        }
    }
    out.sort();
    out
}

fn rows_in(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

#[tokio::test]
async fn appended_rows_are_visible_at_once_and_survive_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(quiet(dir.path())).await.expect("open");
    s.append(
        vec![
            row("d1", "heart_rate", 70.0, T0),
            row("d1", "spo2", 97.0, T0),
        ],
        vec![],
    )
    .await
    .expect("append");
    // Visible in the buffer the moment the append returns.
    assert_eq!(rows_in(&s.snapshot().observations), 2);
    drop(s);
    // No persist happened: a new process finds them by replaying the WAL.
    let s = Store::open(quiet(dir.path())).await.expect("reopen");
    assert_eq!(s.stats().replayed_frames, 1);
    assert_eq!(
        keys(&s.read_all(Table::Observations).await.expect("read")),
        vec![("d1".into(), T0), ("d1".into(), T0)]
    );
}

#[tokio::test]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(quiet(dir.path())).await.expect("open");
    let mut tasks = Vec::new();
    for w in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                s.append(
                    vec![row(
                        &format!("d{w}"),
                        "heart_rate",
                        70.0,
                        T0 + i * 1_000_000,
                    )],
                    vec![],
                )
                .await
                .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let st = s.stats();
    assert_eq!(st.buffered_rows, 800);
    assert!(
        st.commits < 800,
        "group commit should batch appends, got {} commits",
        st.commits
    );
}

#[tokio::test]
async fn persist_sorts_dedupes_and_partitions_by_day() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(quiet(dir.path())).await.expect("open");
    let day = 86_400_000_000;
    // A duplicate (redelivery) and a late reading from two days earlier.
    s.append(
        vec![
            row("d1", "heart_rate", 70.0, T0 + 2_000_000),
            row("d1", "heart_rate", 71.0, T0),
        ],
        vec![],
    )
    .await
    .expect("a");
    s.append(vec![row("d1", "heart_rate", 70.0, T0 + 2_000_000)], vec![])
        .await
        .expect("redelivery");
    s.append(vec![row("d1", "heart_rate", 65.0, T0 - 2 * day)], vec![])
        .await
        .expect("late");
    let dead = DeadLetter {
        received_us: T0,
        source: Source::Mqtt,
        device_id: Some("d1".into()),
        reason: Reason::InvalidJson,
        message: "payload is not valid JSON".into(),
        index: None,
        raw: b"{nope".to_vec(),
        raw_sha256: None,
    };
    s.append(vec![], vec![dead]).await.expect("dead");
    assert_eq!(s.persist().await.expect("persist"), 3);
    let snap = s.snapshot();
    assert!(snap.observations.is_empty());
    let mut dates: Vec<(String, String)> = snap
        .files
        .iter()
        .map(|f| (f.table.name().to_owned(), f.date.clone()))
        .collect();
    dates.sort();
    assert_eq!(
        dates,
        vec![
            ("dead_letters".into(), "2023-11-14".into()),
            ("observations".into(), "2023-11-12".into()),
            ("observations".into(), "2023-11-14".into())
        ]
    );
    for f in &snap.files {
        let p = dir.path().join(f.path.as_ref());
        assert!(p.exists(), "{}", p.display());
        assert!(
            f.path
                .as_ref()
                .starts_with(&format!("{}/date={}/", f.table.name(), f.date))
        );
    }
    let all = s.read_all(Table::Observations).await.expect("read");
    assert_eq!(
        keys(&all),
        vec![
            ("d1".into(), T0 - 2 * day),
            ("d1".into(), T0),
            ("d1".into(), T0 + 2_000_000)
        ]
    );
    let dl = s.read_all(Table::DeadLetters).await.expect("dead");
    assert_eq!(rows_in(&dl), 1);
    // The WAL was truncated: a restart replays nothing and finds the same rows.
    drop(s);
    let s = Store::open(quiet(dir.path())).await.expect("reopen");
    assert_eq!(s.stats().replayed_frames, 0);
    assert_eq!(
        rows_in(&s.read_all(Table::Observations).await.expect("read")),
        3
    );
}

#[tokio::test]
async fn compaction_merges_a_day_while_readers_hold_old_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = quiet(dir.path());
    c.delete_grace = Duration::from_secs(3600);
    let s = Store::open(c).await.expect("open");
    for i in 0..5 {
        s.append(
            vec![row("d1", "heart_rate", 70.0, T0 + i * 1_000_000)],
            vec![],
        )
        .await
        .expect("append");
        // A redelivered copy of the first reading lands in a later file.
        if i == 3 {
            s.append(vec![row("d1", "heart_rate", 70.0, T0)], vec![])
                .await
                .expect("dup");
        }
        s.persist().await.expect("persist");
    }
    let before = s.snapshot();
    assert_eq!(before.files.len(), 5);
    assert_eq!(s.compact_all().await.expect("compact"), 1);
    let after = s.snapshot();
    assert_eq!(after.files.len(), 1);
    // A reader that listed the old files can still read them (deletion waits for the grace).
    for f in &before.files {
        assert!(dir.path().join(f.path.as_ref()).exists());
    }
    let all = s.read_all(Table::Observations).await.expect("read");
    assert_eq!(rows_in(&all), 5, "the redelivered copy is merged away");
    // After a restart, the compacted file is the only copy (the intent cleans up the inputs).
    drop(s);
    let s = Store::open(quiet(dir.path())).await.expect("reopen");
    assert_eq!(s.snapshot().files.len(), 1);
    assert_eq!(
        rows_in(&s.read_all(Table::Observations).await.expect("read")),
        5
    );
    for f in &before.files {
        assert!(
            !dir.path().join(f.path.as_ref()).exists(),
            "input {} left behind",
            f.path
        );
    }
}

#[tokio::test]
async fn retention_drops_whole_old_days() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(quiet(dir.path())).await.expect("open");
    let day = 86_400_000_000;
    s.append(
        vec![
            row("d1", "heart_rate", 70.0, T0 - 3 * day),
            row("d1", "heart_rate", 70.0, T0),
        ],
        vec![],
    )
    .await
    .expect("a");
    s.persist().await.expect("persist");
    assert_eq!(
        s.drop_days_before("2023-11-13").await.expect("retention"),
        1
    );
    assert_eq!(
        keys(&s.read_all(Table::Observations).await.expect("read")),
        vec![("d1".into(), T0)]
    );
}

#[tokio::test]
async fn torn_wal_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(quiet(dir.path())).await.expect("open");
    s.append(vec![row("d1", "heart_rate", 70.0, T0)], vec![])
        .await
        .expect("append");
    drop(s);
    // Simulate a crash mid-write: garbage after the last good frame of the newest segment.
    let wal = dir.path().join("wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .expect("wal")
        .flatten()
        .map(|e| e.path())
        .collect();
    segs.sort();
    let last_nonempty = segs
        .iter()
        .rev()
        .find(|p| std::fs::metadata(p).map(|m| m.len() > 8).unwrap_or(false))
        .expect("seg");
    let mut data = std::fs::read(last_nonempty).expect("read");
    data.extend_from_slice(&[0xff, 0x00, 0x00, 0x00, 0xde, 0xad]);
    std::fs::write(last_nonempty, &data).expect("write");
    let s = Store::open(quiet(dir.path())).await.expect("reopen");
    let st = s.stats();
    assert_eq!(st.wal_damage.len(), 1, "{:?}", st.wal_damage);
    assert!(st.wal_damage[0].contains("torn"), "{:?}", st.wal_damage);
    assert_eq!(
        rows_in(&s.read_all(Table::Observations).await.expect("read")),
        1
    );
}

#[tokio::test]
async fn full_buffer_answers_busy() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = quiet(dir.path());
    c.buffer_limit_rows = 3;
    let s = Store::open(c).await.expect("open");
    s.append(
        (0..3)
            .map(|i| row("d1", "heart_rate", 70.0, T0 + i))
            .collect(),
        vec![],
    )
    .await
    .expect("fits");
    assert!(matches!(
        s.append(vec![row("d1", "heart_rate", 70.0, T0 + 9)], vec![])
            .await,
        Err(Error::Busy)
    ));
    s.persist().await.expect("persist");
    s.append(vec![row("d1", "heart_rate", 70.0, T0 + 9)], vec![])
        .await
        .expect("room again");
}

#[tokio::test]
async fn files_from_an_unfinished_persist_are_removed_on_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(quiet(dir.path())).await.expect("open");
    s.append(vec![row("d1", "heart_rate", 70.0, T0)], vec![])
        .await
        .expect("append");
    drop(s);
    // A persist that crashed after writing its file but before the checkpoint.
    let stray = dir
        .path()
        .join("observations/date=2023-11-14/wal-0000000000000001-0000000000000099.parquet");
    std::fs::create_dir_all(stray.parent().expect("parent")).expect("mkdir");
    std::fs::write(&stray, b"partial").expect("write");
    let s = Store::open(quiet(dir.path())).await.expect("reopen");
    assert!(!stray.exists());
    assert_eq!(
        rows_in(&s.read_all(Table::Observations).await.expect("read")),
        1
    );
}

/// Disk full: a 1 MiB tmpfs (mounted by this test; CI runs as root). Appends fail with a WAL
/// error once it is full, nothing acknowledged is damaged, and writing resumes when space
/// returns.
#[tokio::test]
async fn disk_full_fails_appends_cleanly_and_recovers() {
    let dir = tempfile::tempdir().expect("tmp");
    let mnt = dir.path().join("small");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mounting a tmpfs needs root (CI runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let s = Store::open(quiet(&mnt)).await.expect("open");
    let mut acked = 0usize;
    let mut failed = false;
    for i in 0..100_000i64 {
        let rows: Vec<Row> = (0..50)
            .map(|j| row("d1", "heart_rate", 70.0, T0 + (i * 50 + j) * 1000))
            .collect();
        match s.append(rows, vec![]).await {
            Ok(()) => acked += 50,
            Err(Error::Wal(e)) => {
                assert!(e.to_string().to_lowercase().contains("space"), "{e}");
                failed = true;
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(failed, "the disk never filled");
    // Everything acknowledged is still readable.
    assert_eq!(rows_in(&s.snapshot().observations), acked);
    // Space returns: the file system grows.
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status()
        .expect("remount");
    assert!(status.success());
    s.append(vec![row("d2", "heart_rate", 70.0, T0)], vec![])
        .await
        .expect("writes resume");
    drop(s);
    // After a restart every acknowledged row is there exactly once, the failed ones are not.
    let s = Store::open(quiet(&mnt)).await.expect("reopen");
    assert_eq!(s.stats().wal_damage, Vec::<String>::new());
    assert_eq!(
        rows_in(&s.read_all(Table::Observations).await.expect("read")),
        acked + 1
    );
}

/// Writes a small store for the external readers (DuckDB, pyarrow) that `scripts/test.sh` runs
/// over `$CAREWATCH_PARQUET_OUT`, with the expected rows beside it as CSV. Without the variable
/// it still builds and checks the store in a temp dir.
#[tokio::test]
async fn write_store_for_external_readers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = match std::env::var_os("CAREWATCH_PARQUET_OUT") {
        Some(p) => std::path::PathBuf::from(p),
        None => tmp.path().to_owned(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    // Through the URL path of the object store too (file:// here, s3:// in production).
    let mut c = quiet(&dir);
    c.tables_url = Some(format!(
        "file://{}",
        std::fs::canonicalize(dir.parent().expect("parent"))
            .expect("abs")
            .join(dir.file_name().expect("name"))
            .display()
    ));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let s = Store::open(c).await.expect("open");
    let day = 86_400_000_000;
    let mut expected = String::from("patient_id,device_id,code,value,effective_us\n");
    let mut rows = Vec::new();
    for p in 0..3 {
        for i in 0..5i64 {
            let t = T0 + (i - 2) * day / 2;
            let mut r = row(
                &format!("d{p}"),
                if i % 2 == 0 { "heart_rate" } else { "spo2" },
                60.0 + i as f64 + p as f64,
                t,
            );
            r.reading.patient_id = Some(format!("p{p}"));
            expected.push_str(&format!(
                "p{p},d{p},{},{},{t}\n",
                r.reading.code(),
                r.reading.value
            ));
            rows.push(r);
        }
    }
    s.append(rows.clone(), vec![]).await.expect("append");
    s.persist().await.expect("persist");
    // One more, only in the buffer until close() persists it.
    let mut last = row("d9", "body_temperature", 37.2, T0);
    last.reading.patient_id = Some("p9".into());
    expected.push_str(&format!("p9,d9,8310-5,37.2,{T0}\n"));
    s.append(vec![last], vec![]).await.expect("append");
    s.close().await.expect("close");
    drop(s);
    std::fs::write(dir.join("expected.csv"), expected).expect("expected");
    let s = Store::open(quiet(&dir)).await.expect("reopen");
    assert_eq!(
        rows_in(&s.read_all(Table::Observations).await.expect("read")),
        16
    );
    assert!(s.snapshot().files.iter().any(|f| f.date == "2023-11-13"));
}

#[tokio::test]
async fn compaction_leaves_days_too_large_for_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = quiet(dir.path());
    c.compact_max_bytes = 1;
    let s = Store::open(c).await.expect("open");
    for i in 0..3 {
        s.append(
            vec![row("d1", "heart_rate", 70.0, T0 + i * 1_000_000)],
            vec![],
        )
        .await
        .expect("append");
        s.persist().await.expect("persist");
    }
    assert_eq!(s.compact_all().await.expect("compact"), 0);
    assert_eq!(s.snapshot().files.len(), 3);
}

#[tokio::test]
async fn one_writer_per_data_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(quiet(dir.path())).await.expect("open");
    let e = Store::open(quiet(dir.path())).await.unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    // Readers are welcome beside the writer.
    let mut ro = quiet(dir.path());
    ro.read_only = true;
    Store::open(ro).await.expect("read-only open");
    drop(s);
}
