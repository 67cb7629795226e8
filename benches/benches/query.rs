//! Analyst queries, carewatch (DataFusion over the store) versus DuckDB on the same Parquet files
//! in the same run, with the same number of threads, each engine given its best form of each
//! query (`query/forms.rs` lists the forms; every form must give the same answer).
//!
//! Two data sets, loaded through the store as carewatch writes them: 1 day × 1000 patients and
//! 30 days × 100 patients of 1 Hz heart rate (86.4 M and 259.2 M rows), each device enrolled in
//! the registry and each patient in one of ten care teams (the `devices` and `care_teams` tables,
//! exported with carewatch's own SQL to Parquet for DuckDB).
//!
//! Run: `cargo bench -p carewatch-benches --bench query` (release). `QUERY_BENCH_SETS` picks data
//! sets (`day1000,month100`; `PATIENTSxDAYS` for others, e.g. `200x1`), `QUERY_BENCH_RUNS` the
//! runs per form (default 3, the median is reported), `QUERY_BENCH_ONLY` the questions whose name
//! contains it (e.g. `p5`). DuckDB runs from the test venv
//! (`scripts/setup-test-deps.sh`).

#[path = "query/forms.rs"]
mod forms;

/// The allocator the server binary runs with (src/main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, Float64Array, RecordBatch};
use arrow_schema::DataType;
use carewatch_query::audit::AuditLog;
use carewatch_query::{QueryEngine, QueryLimits};
use carewatch_store::registry::Registry;
use carewatch_store::{Config, Row, Store};
use carewatch_transform::catalogue;
use carewatch_transform::{Format, Reading, Source};

const T0: i64 = 1_700_006_400_000_000; // 2023-11-15T00:00:00Z
const DAY_US: i64 = 86_400_000_000;

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.tick = Duration::from_secs(3600);
    c.buffer_limit_rows = usize::MAX;
    c.buffer_limit_bytes = usize::MAX;
    c
}

/// One patient-day of 1 Hz heart rate: a slow random walk with occasional sustained climbs.
fn patient_day(p: usize, day: i64, bpm: &mut f64, x: &mut u64) -> Vec<Row> {
    let hr = catalogue::by_key("heart_rate").expect("hr");
    let mut rows = Vec::with_capacity(86_400);
    for s in 0..86_400i64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        let drift = if ((day * 86_400 + s) / 1800 + p as i64) % 17 == 0 {
            1.0
        } else {
            -0.02 * (*bpm - 72.0)
        };
        *bpm = (*bpm + drift * 0.1 + ((*x % 5) as f64 - 2.0) * 0.5).clamp(45.0, 170.0);
        let t = T0 + day * DAY_US + s * 1_000_000;
        rows.push(Row {
            reading: Reading {
                device_id: format!("dev-{p:05}"),
                patient_id: Some(format!("pat-{p:05}")),
                vital: hr,
                value: bpm.round(),
                effective_us: t,
                effective_end_us: None,
                offset_min: Some(60),
                extra: None,
            },
            received_us: t + 300_000 + ((s * 7919) % 600) * 1000,
            source: Source::Mqtt,
            format: Format::Carewatch,
        });
    }
    rows
}

async fn load(dir: &std::path::Path, patients: usize, days: i64) -> (u64, f64) {
    let store = Store::open(config(dir)).await.expect("open");
    let (registry, _) = Registry::open(dir).expect("registry");
    for p in 0..patients {
        let (dev, pat) = (format!("dev-{p:05}"), format!("pat-{p:05}"));
        registry.register_device(&dev, &pat, None).expect("device");
        registry
            .set_care_team(&pat, &format!("team-{:02}", p % 10))
            .expect("team");
    }
    drop(registry);
    let t = Instant::now();
    let (mut total, mut unpersisted) = (0u64, 0usize);
    for p in 0..patients {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (p as u64 + 1);
        let mut bpm: f64 = 70.0 + (p % 20) as f64;
        for day in 0..days {
            let rows = patient_day(p, day, &mut bpm, &mut x);
            total += rows.len() as u64;
            for chunk in rows.chunks(43_200) {
                store.append(chunk.to_vec(), vec![]).await.expect("append");
            }
            unpersisted += 1;
            if unpersisted == 50 {
                store.persist().await.expect("persist");
                unpersisted = 0;
            }
        }
    }
    store.persist().await.expect("persist");
    store.close().await.expect("close");
    (total, t.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A one-row answer as numbers, whatever the column types.
fn numbers(batches: &[RecordBatch]) -> Vec<f64> {
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return vec![];
    };
    (0..b.num_columns())
        .map(|c| {
            let col = arrow_cast::cast(b.column(c), &DataType::Float64).expect("cast");
            let f = col.as_any().downcast_ref::<Float64Array>().expect("f64");
            if f.is_null(0) { f64::NAN } else { f.value(0) }
        })
        .collect()
}

fn same(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0)
        })
}

/// Exports the registry tables with carewatch's SQL, for DuckDB to join on.
async fn export_registry(engine: &QueryEngine, dir: &std::path::Path) {
    for table in ["devices", "care_teams"] {
        let b = engine
            .collect(&format!("SELECT * FROM {table}"))
            .await
            .expect("registry table");
        let file = std::fs::File::create(dir.join(format!("{table}.parquet"))).expect("create");
        let mut w = parquet::arrow::ArrowWriter::try_new(file, b[0].schema(), None).expect("w");
        for batch in &b {
            w.write(batch).expect("write");
        }
        w.close().expect("close");
    }
}

/// Runs every DuckDB form `runs` times: per form, the median seconds and the answer.
fn duckdb(dir: &std::path::Path, forms: &[String], runs: usize) -> Option<Vec<(f64, Vec<f64>)>> {
    let venv = std::env::var("CAREWATCH_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/carewatch-venv",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let script = r#"
import json, sys, time, duckdb
from deltalake import DeltaTable
root, runs = sys.argv[1], int(sys.argv[2]); forms = json.load(sys.stdin)
con = duckdb.connect(); con.execute("SET threads=2"); con.execute("SET TimeZone='UTC'"); con.execute("SET enable_progress_bar=false")
# The table's live files, as the Delta log lists them (a glob would also take the log's
# checkpoints and the files a compaction replaced until they are vacuumed).
files = ", ".join(repr(f) for f in DeltaTable(f"{root}/observations").file_uris())
con.execute(f"CREATE VIEW observations AS SELECT * FROM read_parquet([{files}])")
con.execute(f"CREATE VIEW devices AS SELECT * FROM read_parquet('{root}/devices.parquet')")
con.execute(f"CREATE VIEW care_teams AS SELECT * FROM read_parquet('{root}/care_teams.parquet')")
for q in forms:
    ts = []
    for _ in range(runs):
        t = time.perf_counter(); r = con.execute(q).fetchall(); ts.append(time.perf_counter() - t)
    ts.sort()
    print(json.dumps([ts[len(ts)//2], [None if x is None else float(x) for x in r[0]]]))
"#;
    let mut child = std::process::Command::new(format!("{venv}/bin/python"))
        .args(["-c", script, dir.to_str()?, &runs.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let input = serde_json::to_vec(forms).ok()?;
    std::io::Write::write_all(&mut child.stdin.take()?, &input).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        eprintln!("duckdb: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (secs, answer) = serde_json::from_str::<(f64, Vec<Option<f64>>)>(l).ok()?;
            Some((
                secs,
                answer.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect(),
            ))
        })
        .collect()
}

/// Runs every carewatch form `runs` times: the median seconds per form (infinite for a form that
/// failed), the answer, and what failed.
async fn carewatch(
    engine: &QueryEngine,
    q: &forms::Query,
    runs: usize,
) -> (Vec<f64>, Option<Vec<f64>>, Vec<String>) {
    let (mut times, mut answer, mut failed) = (Vec::new(), None::<Vec<f64>>, Vec::new());
    for (i, sql) in q.carewatch.iter().enumerate() {
        let mut ts = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let b = match engine.collect(sql).await {
                Ok(b) => b,
                Err(e) => {
                    failed.push(format!("form {} {e:?}", i + 1));
                    ts = vec![f64::INFINITY];
                    break;
                }
            };
            ts.push(t.elapsed().as_secs_f64());
            let n = numbers(&b);
            match &answer {
                Some(a) => assert!(same(a, &n), "{}: carewatch forms disagree", q.name),
                None => answer = Some(n),
            }
        }
        times.push(median(ts));
    }
    (times, answer, failed)
}

/// The fastest form: (index, seconds).
fn best(times: &[f64]) -> (usize, f64) {
    times
        .iter()
        .copied()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("a form")
}

async fn run_set(patients: usize, days: i64, runs: usize) {
    let dir = tempfile::tempdir().expect("tmp");
    let (rows, secs) = load(dir.path(), patients, days).await;
    println!(
        "**{patients} patients × {days} day(s) × 1 Hz = {rows} rows, {:.1} MB of Parquet** \
         (loaded and persisted in {secs:.0} s)\n",
        walk(dir.path()) as f64 / 1e6
    );
    let t = Instant::now();
    let mut c = config(dir.path());
    c.read_only = true;
    let store = Store::open(c).await.expect("open");
    let registry = Registry::open_read_only(dir.path()).expect("registry");
    let audit = Arc::new(AuditLog::open(dir.path(), true).expect("audit"));
    // DuckDB may use 80 % of the machine's memory by default; carewatch gets 8 GiB per query
    // here (its server default is 1 GiB, a safety limit for many concurrent analysts).
    let limits = QueryLimits {
        timeout: Duration::from_secs(900),
        memory_bytes: 8 << 30,
        ..QueryLimits::default()
    };
    let engine = QueryEngine::new(store, Arc::new(registry), limits, audit).expect("engine");
    engine
        .collect("SELECT count(*) FROM observations")
        .await
        .expect("count");
    println!(
        "cold start (open + first `SELECT count(*)`): {:.3} s\n",
        t.elapsed().as_secs_f64()
    );
    export_registry(&engine, dir.path()).await;

    println!(
        "| query | carewatch (best form) | DuckDB (best form) | carewatch ÷ DuckDB | DuckDB, plain form |"
    );
    println!("|---|---:|---:|---:|---:|");
    let day = |d: i64| {
        chrono::DateTime::from_timestamp_micros(T0 + d * DAY_US)
            .expect("day")
            .format("%Y-%m-%d")
            .to_string()
    };
    let mid = days / 2;
    let patient = format!("pat-{:05}", 42.min(patients - 1));
    // `QUERY_BENCH_ONLY=<part of a question's name>`: only the questions it names.
    let only = std::env::var("QUERY_BENCH_ONLY").unwrap_or_default();
    for q in forms::queries(&patient, &day(mid), &day(mid + 1)) {
        if !q.name.contains(only.as_str()) {
            continue;
        }
        let (ours, answer, failed) = carewatch(&engine, &q, runs).await;
        let Some(answer) = answer else {
            println!(
                "| {} | every form failed: {} | | | |",
                q.name,
                failed.join("; ")
            );
            continue;
        };
        let (oi, o) = best(&ours);
        let Some(theirs) = duckdb(dir.path(), &q.duckdb, runs) else {
            println!(
                "| {} | {o:.3} s (form {}) | (duckdb unavailable) | | |",
                q.name,
                oi + 1
            );
            continue;
        };
        for (i, (_, a)) in theirs.iter().enumerate() {
            assert!(
                same(&answer, a),
                "{}: DuckDB form {} answers {a:?}, carewatch {answer:?}",
                q.name,
                i + 1
            );
        }
        let times: Vec<f64> = theirs.iter().map(|t| t.0).collect();
        let (di, d) = best(&times);
        let note = if failed.is_empty() {
            String::new()
        } else {
            format!(" ({} failed)", failed.join(", "))
        };
        println!(
            "| {} | {o:.3} s (form {}){note} | {d:.3} s (form {}) | {:.2}× | {:.3} s |",
            q.name,
            oi + 1,
            di + 1,
            o / d,
            times[0]
        );
        eprintln!("  {}: answer {answer:?}", q.name);
    }
    println!();
}

fn sets() -> Vec<(usize, i64)> {
    let spec = std::env::var("QUERY_BENCH_SETS").unwrap_or_else(|_| "day1000,month100".into());
    spec.split(',')
        .filter_map(|s| match s.trim() {
            "day1000" => Some((1000, 1)),
            "month100" => Some((100, 30)),
            other => {
                let (p, d) = other.split_once('x')?;
                Some((p.parse().ok()?, d.parse().ok()?))
            }
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("QUERY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for (patients, days) in sets() {
        run_set(patients, days, runs).await;
    }
}

fn walk(p: &std::path::Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                n += walk(&path);
            } else if path.extension().is_some_and(|x| x == "parquet") {
                n += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    n
}
