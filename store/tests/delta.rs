//! The tables are Delta Lake tables: read in place by the `deltalake` Python package and
//! Polars (installed into the test venv by scripts/setup-test-deps.sh) while carewatch
//! persists, compacts and drops days; a crash between a Delta commit and the checkpoint
//! neither loses nor duplicates rows; a data directory written before Delta is adopted.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use carewatch_store::{Config, DeadLetter, Row, Store, Table};
use carewatch_transform::catalogue;
use carewatch_transform::{Format, Reading, Reason, Source};

const T0: i64 = 1_700_000_000_000_000; // 2023-11-14T22:13:20Z
const DAY: i64 = 86_400_000_000;

fn row(device: &str, t_us: i64) -> Row {
    Row {
        reading: Reading {
            device_id: device.to_owned(),
            patient_id: Some(format!("p-{device}")),
            vital: catalogue::by_key("heart_rate").expect("vital"),
            value: 70.0,
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

fn dead(i: u32) -> DeadLetter {
    DeadLetter {
        received_us: T0 + i as i64,
        source: Source::Http,
        device_id: Some("d1".into()),
        reason: Reason::InvalidJson,
        message: format!("bad item {i}"),
        index: Some(i),
        raw: b"{}".to_vec(),
        raw_sha256: None,
    }
}

fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.tick = Duration::from_secs(3600);
    c.delete_grace = Duration::ZERO;
    c.compact_min_files = 1000;
    c
}

fn python() -> String {
    let venv = std::env::var("CAREWATCH_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/carewatch-venv",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    format!("{venv}/bin/python")
}

/// Reads a table with `deltalake` and Polars; prints `{"n", "dups", "polars"}` once, or in a
/// loop until the stop file exists (then once more). `dups` counts rows whose natural key
/// (observations: patient, code, effective time, device) is another row's. Any read error
/// ends it with status 1.
const READER: &str = r#"
import json, os, sys, deltalake, polars as pl
root, stop = sys.argv[1], sys.argv[2]
key = sys.argv[3].split(",")
while True:
    last = stop == "-" or os.path.exists(stop)
    t = deltalake.DeltaTable(root)
    tbl = t.to_pyarrow_table(columns=key)
    cols = [tbl[c].cast("string").to_pylist() for c in key]
    n = tbl.num_rows
    dups = n - len(set(zip(*cols)))
    out = {"v": t.version(), "n": n, "dups": dups}
    if last:
        out["polars"] = pl.read_delta(root).height
    print(json.dumps(out), flush=True)
    if last:
        break
"#;

/// The natural key of a table's rows.
fn key_of(table: &Path) -> &'static str {
    if table.ends_with("dead_letters") {
        "received_time,message,item_index"
    } else {
        "patient_id,code,effective_time,device_id"
    }
}

fn read_once(table: &Path) -> serde_json::Value {
    let out = Command::new(python())
        .args([
            "-c",
            READER,
            table.to_str().expect("utf8"),
            "-",
            key_of(table),
        ])
        .output()
        .expect("python venv (scripts/setup-test-deps.sh)");
    assert!(
        out.status.success(),
        "deltalake reader failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// A Python reader reading the table in a loop until [`Loop::finish`].
struct Loop {
    child: Child,
    stop: PathBuf,
}

impl Loop {
    fn start(table: &Path, stop: PathBuf) -> Loop {
        let child = Command::new(python())
            .args([
                "-c",
                READER,
                table.to_str().expect("utf8"),
                stop.to_str().expect("utf8"),
                key_of(table),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python venv");
        Loop { child, stop }
    }

    /// Every snapshot the reader saw, in order.
    fn finish(mut self) -> Vec<serde_json::Value> {
        std::fs::write(&self.stop, b"").expect("stop file");
        let stdout = self.child.stdout.take().expect("stdout");
        let seen: Vec<serde_json::Value> = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|l| serde_json::from_str(&l).expect("json line"))
            .collect();
        let out = self.child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "the reader failed while carewatch changed the table: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        seen
    }
}

async fn append_persist(s: &Store, device: &str, from: i64, n: i64) -> u64 {
    let rows: Vec<Row> = (0..n).map(|i| row(device, from + i * 1_000_000)).collect();
    s.append(rows, vec![]).await.expect("append");
    s.persist().await.expect("persist");
    n as u64
}

#[tokio::test]
async fn python_deltalake_and_polars_read_both_tables_in_place() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(config(dir.path())).await.expect("open");
    let mut n = append_persist(&s, "d1", T0 - DAY, 5).await;
    n += append_persist(&s, "d2", T0, 7).await;
    s.append(vec![], (0..3).map(dead).collect())
        .await
        .expect("dead");
    s.persist().await.expect("persist");
    let obs = read_once(&dir.path().join("observations"));
    assert_eq!(obs["n"], n, "{obs}");
    assert_eq!(obs["polars"], n, "{obs}");
    assert_eq!(obs["dups"], 0);
    let rows: usize = s
        .read_all(Table::Observations)
        .await
        .expect("read")
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(
        rows as u64, n,
        "carewatch reads what the Delta readers read"
    );
    let script = r#"
import sys, deltalake, polars as pl
t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()
df = pl.read_delta(sys.argv[1])
print(t.num_rows, df.height, sorted(df["message"].to_list()), str(df.schema["item_index"]))
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(dir.path().join("dead_letters"))
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "3 3 ['bad item 0', 'bad item 1', 'bad item 2'] Int32"
    );
}

#[tokio::test]
async fn compaction_under_a_reader_never_shows_a_row_twice_or_loses_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(dir.path());
    // Replaced files are deleted after a grace period longer than one read takes.
    c.delete_grace = Duration::from_secs(5);
    c.tick = Duration::from_millis(100);
    let s = Store::open(c).await.expect("open");
    let mut acked = append_persist(&s, "d0", T0, 3).await;
    let table = dir.path().join("observations");
    let reader = Loop::start(&table, dir.path().join("stop"));
    for round in 1..12 {
        acked += append_persist(&s, &format!("d{round}"), T0 + round * 60_000_000, 4).await;
        if round % 4 == 0 {
            assert_eq!(s.compact_all().await.expect("compact"), 1);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let inputs: Vec<_> = s.snapshot().files;
    assert_eq!(s.compact_all().await.expect("compact"), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = reader.finish();
    assert!(seen.len() >= 2, "{seen:?}");
    let mut last = 0;
    for v in &seen {
        let n = v["n"].as_u64().expect("n");
        assert_eq!(v["dups"], 0, "a natural key appeared twice: {v}");
        assert!(n >= last, "the count went down from {last}: {v}");
        last = n;
    }
    let end = seen.last().expect("last");
    assert_eq!(end["n"], acked, "{end}");
    assert_eq!(end["polars"], acked, "{end}");
    assert_eq!(
        s.snapshot().files.len(),
        1,
        "one file after the last compaction"
    );
    // Vacuum: once the grace period is over, the replaced files are deleted.
    for _ in 0..200 {
        if inputs
            .iter()
            .all(|f| !dir.path().join(f.path.as_ref()).exists())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("replaced files still there 20 s after a 5 s grace period");
}

#[tokio::test]
async fn retention_drops_old_days_in_one_commit() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(config(dir.path())).await.expect("open");
    append_persist(&s, "d1", T0 - 3 * DAY, 4).await;
    append_persist(&s, "d2", T0 - 2 * DAY, 4).await;
    let keep = append_persist(&s, "d3", T0, 5).await;
    let table = dir.path().join("observations");
    assert_eq!(read_once(&table)["n"], 13);
    let before = std::fs::read_dir(table.join("_delta_log"))
        .expect("log")
        .count();
    assert_eq!(s.drop_days_before("2023-11-14").await.expect("retain"), 2);
    let after = std::fs::read_dir(table.join("_delta_log"))
        .expect("log")
        .count();
    assert_eq!(after, before + 1, "one commit");
    let v = read_once(&table);
    assert_eq!(v["n"], keep, "{v}");
    assert_eq!(v["polars"], keep, "{v}");
}

/// The state a crash leaves between a persist's Delta commit and its checkpoint: the commit is
/// in the log, but the checkpoint file and the WAL segments are the ones from before. (Made
/// exactly, by putting back the checkpoint and segments saved before the persist.)
#[tokio::test]
async fn crash_between_commit_and_checkpoint_neither_loses_nor_duplicates() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let saved = dir.path().join("saved");
    let s = Store::open(config(&data)).await.expect("open");
    let mut acked = append_persist(&s, "d1", T0, 4).await;
    acked += 3;
    s.append(
        (0..3).map(|i| row("d2", T0 + i * 1_000_000)).collect(),
        (0..2).map(dead).collect(),
    )
    .await
    .expect("append");
    copy_dir(&data.join("wal"), &saved.join("wal"));
    std::fs::copy(data.join("checkpoint"), saved.join("checkpoint")).expect("checkpoint");
    s.persist().await.expect("persist");
    drop(s);
    // Back to the moment after the commit, before the checkpoint moved and the WAL went.
    std::fs::copy(saved.join("checkpoint"), data.join("checkpoint")).expect("restore");
    copy_dir(&saved.join("wal"), &data.join("wal"));
    let s = Store::open(config(&data)).await.expect("reopen");
    assert_eq!(
        s.stats().buffered_rows,
        0,
        "replay must skip what the Delta log already holds"
    );
    let rows: usize = s
        .read_all(Table::Observations)
        .await
        .expect("read")
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows as u64, acked);
    s.append(vec![row("d3", T0)], vec![]).await.expect("more");
    s.persist().await.expect("persist");
    acked += 1;
    drop(s);
    let v = read_once(&data.join("observations"));
    assert_eq!(
        (v["n"].as_u64(), v["dups"].as_u64()),
        (Some(acked), Some(0)),
        "{v}"
    );
    let v = read_once(&data.join("dead_letters"));
    assert_eq!(v["n"], 2, "{v}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("dir").flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

#[tokio::test]
async fn a_directory_written_before_delta_is_adopted_and_checkpointed() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = Store::open(config(dir.path())).await.expect("open");
    let mut acked = append_persist(&s, "d1", T0, 4).await;
    acked += append_persist(&s, "d2", T0 + DAY, 4).await;
    drop(s);
    // What an older carewatch left: the Parquet files, no log.
    for t in Table::ALL {
        std::fs::remove_dir_all(dir.path().join(t.name()).join("_delta_log")).expect("rm");
    }
    let s = Store::open(config(dir.path())).await.expect("adopt");
    assert_eq!(s.snapshot().files.len(), 2);
    let table = dir.path().join("observations");
    assert_eq!(read_once(&table)["n"], acked);
    // Ten commits later the log has a Delta checkpoint, and readers still agree.
    for i in 0..10 {
        acked += append_persist(&s, &format!("e{i}"), T0, 2).await;
    }
    let log = table.join("_delta_log");
    let checkpoints = std::fs::read_dir(&log)
        .expect("log")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".checkpoint.parquet")
        })
        .count();
    assert!(checkpoints >= 1, "no checkpoint in {}", log.display());
    let v = read_once(&table);
    assert_eq!(
        (v["n"].as_u64(), v["polars"].as_u64()),
        (Some(acked), Some(acked))
    );
}
