//! Query benchmarks over 1 day × N patients × 1 Hz heart rate (N = 1000 → 86.4 M rows),
//! carewatch (DataFusion over the store) versus DuckDB on the same Parquet files in the same
//! run, plus cold start (open the store and answer a first query).
//!
//! Run: `cargo bench -p carewatch-benches --bench query` (release). `BENCH_PATIENTS` scales it.
//! DuckDB runs from the test venv (`scripts/setup-test-deps.sh`), with 2 threads like DataFusion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use carewatch_query::audit::AuditLog;
use carewatch_query::{QueryEngine, QueryLimits};
use carewatch_store::registry::Registry;
use carewatch_store::{Config, Row, Store};
use carewatch_transform::catalogue;
use carewatch_transform::{Format, Reading, Source};

const T0: i64 = 1_700_006_400_000_000; // 2023-11-15T00:00:00Z

const ONE_PATIENT_DAY: &str = "SELECT count(*) AS n, avg(value) AS mean, min(value) AS lo, max(value) AS hi FROM observations \
     WHERE patient_id = 'pat-00042' AND code = '8867-4' \
     AND effective_time >= TIMESTAMP '2023-11-15T00:00:00Z' AND effective_time < TIMESTAMP '2023-11-16T00:00:00Z'";

const EPISODES: &str = "WITH m AS (SELECT patient_id, date_trunc('minute', effective_time) AS minute, avg(value) AS hr \
       FROM observations WHERE code = '8867-4' GROUP BY 1, 2), \
     f AS (SELECT patient_id, minute, hr > 100 AS high, \
       row_number() OVER (PARTITION BY patient_id ORDER BY minute) \
       - row_number() OVER (PARTITION BY patient_id, hr > 100 ORDER BY minute) AS grp FROM m) \
     SELECT count(*) AS episodes, sum(minutes) AS minutes FROM ( \
       SELECT patient_id, grp, count(*) AS minutes FROM f WHERE high GROUP BY patient_id, grp HAVING count(*) >= 10) e";

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.tick = Duration::from_secs(3600);
    c.buffer_limit_rows = usize::MAX;
    c
}

async fn load(dir: &std::path::Path, patients: usize) -> (u64, f64) {
    let store = Store::open(config(dir)).await.expect("open");
    let hr = catalogue::by_key("heart_rate").expect("hr");
    let t = Instant::now();
    let mut total = 0u64;
    for p in 0..patients {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (p as u64 + 1);
        let mut bpm: f64 = 70.0 + (p % 20) as f64;
        let mut rows = Vec::with_capacity(86_400);
        for s in 0..86_400i64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // A slow random walk with occasional sustained climbs above 100.
            let drift = if (s / 1800 + p as i64) % 17 == 0 {
                1.0
            } else {
                -0.02 * (bpm - 72.0)
            };
            bpm = (bpm + drift * 0.1 + ((x % 5) as f64 - 2.0) * 0.5).clamp(45.0, 170.0);
            rows.push(Row {
                reading: Reading {
                    device_id: format!("dev-{p:05}"),
                    patient_id: Some(format!("pat-{p:05}")),
                    vital: hr,
                    value: bpm.round(),
                    effective_us: T0 + s * 1_000_000,
                    effective_end_us: None,
                    offset_min: Some(60),
                    extra: None,
                },
                received_us: T0 + s * 1_000_000 + 300_000 + ((s * 7919) % 600) * 1000,
                source: Source::Mqtt,
                format: Format::Carewatch,
            });
        }
        total += rows.len() as u64;
        for chunk in rows.chunks(43_200) {
            store.append(chunk.to_vec(), vec![]).await.expect("append");
        }
        if p % 100 == 99 {
            store.persist().await.expect("persist");
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

fn duckdb(dir: &std::path::Path, sql: &str, runs: usize) -> Option<(f64, String)> {
    let venv = std::env::var("CAREWATCH_VENV").unwrap_or_else(|_| {
        format!(
            "{}/.cache/carewatch-venv",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let script = r#"
import sys, time, duckdb
root, q, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect(); con.execute("SET threads=2"); con.execute("SET TimeZone='UTC'"); con.execute("SET enable_progress_bar=false")
con.execute(f"CREATE VIEW observations AS SELECT * FROM read_parquet('{root}/observations/*/*.parquet')")
ts = []
for _ in range(runs):
    t = time.perf_counter(); r = con.execute(q).fetchall(); ts.append(time.perf_counter() - t)
ts.sort(); print(ts[len(ts)//2]); print(r)
"#;
    let out = std::process::Command::new(format!("{venv}/bin/python"))
        .args(["-c", script, dir.to_str()?, sql, &runs.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("duckdb: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = text.lines();
    let secs: f64 = lines.next()?.trim().parse().ok()?;
    Some((secs, lines.next().unwrap_or("").to_owned()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let patients: usize = std::env::var("BENCH_PATIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().expect("tmp");
    let (rows, secs) = load(dir.path(), patients).await;
    let bytes: u64 = walk(dir.path());
    println!(
        "data: {patients} patients × 1 day × 1 Hz = {rows} rows, {:.1} MB of Parquet, loaded and persisted in {secs:.0} s\n",
        bytes as f64 / 1e6
    );

    // Cold start: open the data directory and answer a first query.
    let t = Instant::now();
    let mut c = config(dir.path());
    c.read_only = true;
    let store = Store::open(c).await.expect("open");
    let (registry, _) = Registry::open(dir.path()).expect("registry");
    let audit = Arc::new(AuditLog::open(dir.path(), true).expect("audit"));
    let engine =
        QueryEngine::new(store, Arc::new(registry), QueryLimits::default(), audit).expect("engine");
    let first = engine
        .collect("SELECT count(*) FROM observations")
        .await
        .expect("count");
    let cold = t.elapsed().as_secs_f64();
    let rows = first[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .map_or(-1, |a| a.value(0));
    println!("cold start (open + first `SELECT count(*)`, {rows} rows): {cold:.3} s\n");

    println!("| query | carewatch (median of 5) | DuckDB (median of 5) | carewatch ÷ DuckDB |");
    println!("|---|---:|---:|---:|");
    for (name, sql) in [
        ("one patient, one day", ONE_PATIENT_DAY),
        (
            "sustained HR > 100 for ≥ 10 min (gaps and islands on 1-min bins)",
            EPISODES,
        ),
    ] {
        let mut ts = Vec::new();
        let mut answer = String::new();
        for _ in 0..5 {
            let t = Instant::now();
            let b = engine.collect(sql).await.expect("query");
            ts.push(t.elapsed().as_secs_f64());
            answer = arrow_cast_pretty(&b);
        }
        let ours = median(ts);
        match duckdb(dir.path(), sql, 5) {
            Some((theirs, their_answer)) => {
                println!(
                    "| {name} | {:.3} s | {:.3} s | {:.2}× |",
                    ours,
                    theirs,
                    ours / theirs
                );
                eprintln!("  carewatch: {answer}\n  duckdb:    {their_answer}");
            }
            None => println!("| {name} | {ours:.3} s | (duckdb unavailable) | |"),
        }
    }
}

fn arrow_cast_pretty(b: &[arrow_array::RecordBatch]) -> String {
    b.iter()
        .flat_map(|b| (0..b.num_columns()).map(move |c| format!("{:?}", b.column(c))))
        .collect::<Vec<_>>()
        .join(" ")
        .replace('\n', " ")
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
