//! Alert latency under load (plain harness; prints Markdown).
//!
//! 10,000 patients each send a heart rate every second (a step count every minute, an SpO2
//! every 10 s), in real time, through durable store appends; all shipped rules run on the
//! appends (micro-batched) and every second; every second five patients send a fever
//! temperature (one reading completes a fever episode). Latency is
//! from the moment that reading is durable (its append acknowledged) to the moment a local
//! webhook receiver has the alert's `firing` POST. Every delivery is counted: a fingerprint
//! delivered twice is reported, not overwritten.
//!
//! The rules run as `carewatch serve` runs them: their own session and memory pool
//! (`rules_context`) on their own runtime thread (`spawn_dedicated`). Each scenario is a row;
//! by default one without analysts and one with two analysts running heavy SQL back to back
//! through the query gate (self-joins and aggregations over everything stored), on the same
//! store, in the same run. `ALERT_BENCH_RULES` (`bins`) picks the rule set per scenario:
//! `bins` are the shipped rules over the in-memory minute bins (`vital_minutes`), `raw` the same
//! rules as they were before the bins, over raw `observations`
//! (`alert/tests/fixtures/raw_rules/`) — the before/after comparison in one run.
//!
//! Each row also gives the load offered and achieved (readings per second; the generator, the
//! store's appends and the bins' fold share the bench's main thread), the mean and p99 bucket
//! of an evaluation run, the CPU the rules' threads (`carewatch-rules`) and the whole process
//! used per second of load, the resident set before and after the scenario (the process's:
//! store buffer, bins, rules' samples, the generator) and the bins and rule samples held at the
//! end. After the table, per scenario, the CPU per thread group and the mean time of a run's
//! phases (gather: the rules' SQL; absorb: samples and episodes; commit: plan, history, apply),
//! for where the time goes, and when each run over a second ended (seconds into the scenario,
//! wall-clock second of the minute: a minute boundary is :00).
//!
//! Run: `cargo bench -p carewatch-benches --bench alerts` (release). Optional environment:
//! `ALERT_BENCH_PATIENTS` (10000), `ALERT_BENCH_SECS` (120), `ALERT_BENCH_ANALYSTS` (`0,2`: the
//! scenarios, as numbers of concurrent analysts), `ALERT_BENCH_RULES` (`bins`, or e.g.
//! `raw,bins`: each analysts scenario with each rule set), `ALERT_BENCH_CONCURRENCY` (1: how many
//! 2,000-reading appends are in flight at once, as from that many devices; concurrent appends
//! share an fsync).

#[path = "alerts/load.rs"]
mod load;
#[path = "alerts/procfs.rs"]
mod procfs;
#[path = "util.rs"]
mod util;

use util::{env_or, pct};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carewatch_alert::engine::AlertEngine;
use carewatch_alert::history::History;
use carewatch_alert::notify::{Counters, Routes};
use carewatch_query::gate::{Caller, Settings};
use carewatch_query::{QueryEngine, QueryLimits};
use carewatch_store::registry::{Registry, Role};
use carewatch_store::{Config, Store};
use tokio_util::sync::CancellationToken;

/// Arrival times of each episode's `firing` deliveries, by `patient|episode_start`.
type Arrivals = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

/// What every scenario shares.
struct Plan {
    patients: usize,
    secs: u64,
    concurrency: usize,
}

fn main() {
    let plan = Plan {
        patients: env_or("ALERT_BENCH_PATIENTS", 10_000),
        secs: env_or("ALERT_BENCH_SECS", 120),
        concurrency: env_or("ALERT_BENCH_CONCURRENCY", 1usize).max(1),
    };
    let analysts: Vec<usize> = std::env::var("ALERT_BENCH_ANALYSTS")
        .unwrap_or_else(|_| "0,2".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let variants: Vec<String> = std::env::var("ALERT_BENCH_RULES")
        .unwrap_or_else(|_| "bins".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| s == "bins" || s == "raw")
        .collect();
    println!(
        "**{} patients at 1 Hz, {} s per scenario, all shipped rules, {} append(s) in flight**\n",
        plan.patients, plan.secs, plan.concurrency
    );
    println!(
        "| rules | analysts | offered | achieved | fever episodes | delivered | missing | delivered twice | p50 | p99 | max | rule runs | run mean | run p99 | runs > 1 s | rules CPU | process CPU | RSS start → end | bins held | samples held | analyst queries |"
    );
    println!("|---|{}", "---:|".repeat(20));
    let mut notes = Vec::new();
    for n in analysts {
        for v in &variants {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            notes.extend(rt.block_on(run(&plan, n, v)));
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
    for n in notes {
        println!("\n{n}");
    }
}

/// Heavy analyst SQL: self-joins per patient and aggregations over everything stored.
const HEAVY: &[&str] = &[
    "SELECT a.patient_id, count(*), avg(a.value * b.value) FROM observations a JOIN observations b ON a.patient_id = b.patient_id AND a.code = b.code GROUP BY 1 ORDER BY 3 DESC LIMIT 10",
    "SELECT patient_id, code, median(value), stddev(value), count(DISTINCT effective_time) FROM observations GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 10",
    "SELECT date_trunc('minute', effective_time) AS m, patient_id, avg(value) FROM observations GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 10",
];

/// One analyst: heavy queries back to back through the gate until `stop`.
async fn analyst(q: QueryEngine, caller: Caller, stop: CancellationToken, ran: Arc<AtomicU64>) {
    use futures::StreamExt;
    let mut i = 0;
    while !stop.is_cancelled() {
        let sql = HEAVY[i % HEAVY.len()];
        i += 1;
        if let Ok(mut s) = q.query(&caller, sql, &Settings::default(), None).await {
            let mut ok = true;
            while let Some(b) = s.next().await {
                ok &= b.is_ok();
            }
            if ok {
                ran.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The rule set: shipped (`bins`) or as before the bins (`raw`).
fn rule_set(variant: &str) -> Vec<carewatch_alert::rules::Rule> {
    if variant == "raw" {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../alert/tests/fixtures/raw_rules");
        carewatch_alert::rules::load(Some(&dir)).expect("raw rules")
    } else {
        carewatch_alert::rules::load(None).expect("rules")
    }
}

/// The webhook receiver: records when each episode's `firing` deliveries arrive. Returns its
/// URL.
async fn receiver(arrived: Arrivals) -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let a = arrived.clone();
            async move {
                if v["event"] == "firing" {
                    let key = format!(
                        "{}|{}",
                        v["patient_id"].as_str().unwrap_or_default(),
                        v["episode_start"].as_str().unwrap_or_default()
                    );
                    a.lock()
                        .expect("lock")
                        .entry(key)
                        .or_default()
                        .push(Instant::now());
                }
                "ok"
            }
        }),
    );
    util::serve_hook(app).await
}

/// A store, an alert engine on it as `serve` wires them (own session, own runtime thread,
/// webhook notifier), and the analysts.
struct Rig {
    _dir: tempfile::TempDir,
    store: Store,
    engine: AlertEngine,
    arrived: Arrivals,
    analyst_queries: Arc<AtomicU64>,
    stop: CancellationToken,
    rules_task: tokio::task::JoinHandle<()>,
}

async fn setup(analysts: usize, variant: &str) -> Rig {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = Config::new(dir.path());
    c.buffer_limit_rows = 50_000_000;
    let store = Store::open(c).await.expect("store");
    let (registry, _) = Registry::open(dir.path()).expect("registry");
    let registry = Arc::new(registry);
    let q = QueryEngine::new(
        store.clone(),
        registry.clone(),
        QueryLimits::default(),
        Arc::new(carewatch_query::audit::AuditLog::open(dir.path(), false).expect("audit")),
    )
    .expect("engine");
    let history = Arc::new(History::open(dir.path(), false).expect("history"));
    let config = carewatch_alert::Config::default();
    let rules_ctx =
        carewatch_alert::engine::rules_context(&store, registry.clone(), config.memory_bytes)
            .expect("rules session");
    let token = registry.create_token(Role::Analyst, None).expect("token");
    let caller = Caller::user(registry.authenticate(&token).expect("analyst"), "bench");
    let engine = AlertEngine::new(
        config,
        rule_set(variant),
        rules_ctx,
        &store,
        registry,
        history,
    );
    let arrived = Arrivals::default();
    let url = receiver(arrived.clone()).await;
    let stop = CancellationToken::new();
    let rules_task = engine.clone().spawn_dedicated(1, stop.clone());
    let analyst_queries = Arc::new(AtomicU64::new(0));
    for _ in 0..analysts {
        let (q, c, s, r) = (
            q.clone(),
            caller.clone(),
            stop.clone(),
            analyst_queries.clone(),
        );
        tokio::spawn(analyst(q, c, s, r));
    }
    tokio::spawn(carewatch_alert::notify::run(
        engine.clone(),
        Routes {
            webhook_url: Some(url),
            attempts: 3,
            backoff: Duration::from_millis(100),
            ..Routes::default()
        },
        Arc::new(Counters::default()),
        stop.clone(),
    ));
    Rig {
        _dir: dir,
        store,
        engine,
        arrived,
        analyst_queries,
        stop,
        rules_task,
    }
}

/// When runs over a second end: (seconds since the scenario started, wall-clock second of the
/// minute), from the engine's run histogram polled every 50 ms.
fn slow_runs(engine: AlertEngine, stop: CancellationToken) -> Arc<Mutex<Vec<(f64, u32)>>> {
    let out: Arc<Mutex<Vec<(f64, u32)>>> = Arc::default();
    let o = out.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        let over = |e: &AlertEngine| {
            let h = e.run_seconds();
            let bound = carewatch_store::Histogram::BOUNDS
                .iter()
                .position(|b| *b >= 1.0)
                .unwrap_or(0);
            h.counts.iter().skip(bound + 1).sum::<u64>()
        };
        let mut seen = over(&engine);
        while !stop.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = over(&engine);
            if n > seen {
                let sec = (chrono::Utc::now().timestamp() % 60) as u32;
                let mut g = o.lock().expect("lock");
                g.extend((seen..n).map(|_| (start.elapsed().as_secs_f64(), sec)));
                seen = n;
            }
        }
    });
    out
}

/// One scenario: a row of the table, and notes (CPU per thread group; whether the load
/// generator fell behind).
async fn run(plan: &Plan, analysts: usize, variant: &str) -> Vec<String> {
    let rss_start = procfs::rss_mib();
    let rig = setup(analysts, variant).await;
    let slow = slow_runs(rig.engine.clone(), rig.stop.clone());
    let l = load::run(&rig.store, plan).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    rig.stop.cancel();
    let _ = rig.rules_task.await;
    let sent = l.sent.clone();
    let arrived = rig.arrived.lock().expect("lock").clone();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(k, s)| {
            arrived
                .get(k)?
                .first()
                .map(|a| a.duration_since(*s).as_secs_f64())
        })
        .collect();
    let twice = arrived.values().filter(|v| v.len() > 1).count();
    let missing = sent.len() - lat.len();
    let (runs, _) = rig.engine.runs();
    let h = rig.engine.run_seconds();
    let run_mean = h.sum_us as f64 / 1e6 / h.count().max(1) as f64;
    let bounds = carewatch_store::Histogram::BOUNDS;
    // Runs longer than a second: the buckets above the 1 s bound.
    let bound = bounds.iter().position(|b| *b >= 1.0).unwrap_or(0);
    let over_1s: u64 = h.counts.iter().skip(bound + 1).sum();
    // The p99 bucket: the first bound with ≥ 99 % of the runs at or below it.
    let mut below = 0;
    let run_p99 = h
        .counts
        .iter()
        .position(|c| {
            below += c;
            below as f64 >= 0.99 * h.count() as f64
        })
        .map_or("-".to_owned(), |i| {
            bounds.get(i).map_or("> 5 s".into(), |b| format!("≤ {b} s"))
        });
    let rss = procfs::rss_mib();
    let (_, bins) = rig.engine.bins_size();
    let (_, samples) = rig.engine.samples_size();
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    let max = lat.iter().copied().fold(0.0, f64::max);
    println!(
        "| {variant} | {analysts} | {:.0}/s | {:.0}/s | {} | {} | {missing} | {twice} | {p50:.2} s | {p99:.2} s | {max:.2} s | {runs} | {run_mean:.3} s | {run_p99} | {over_1s} | {:.2} s/s | {:.2} s/s | {rss_start:.0} → {rss:.0} MiB | {bins} | {samples} | {} |",
        l.offered(plan),
        l.appended as f64 / l.secs,
        sent.len(),
        lat.len(),
        l.rules_cpu / l.secs,
        l.process_cpu / l.secs,
        rig.analyst_queries.load(Ordering::Relaxed),
    );
    let per_run = rig
        .engine
        .phase_seconds()
        .map(|(name, secs)| format!("{name} {:.3} s", secs / runs.max(1) as f64))
        .join(", ");
    let mut notes = vec![
        format!(
            "{variant} rules, {analysts} analysts, CPU per second of load by thread group: {}",
            l.cpu_by_group
        ),
        format!("{variant} rules, {analysts} analysts, mean time per run by phase: {per_run}"),
    ];
    let slow = slow.lock().expect("lock").clone();
    if !slow.is_empty() {
        notes.push(format!(
            "{variant} rules, {analysts} analysts: runs over 1 s ended at (s into the scenario, wall-clock second of the minute): {}",
            slow.iter()
                .map(|(s, m)| format!("{s:.0} s (:{m:02})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if l.late_ticks > 0 {
        notes.push(format!(
            "({variant} rules, {analysts} analysts: the load generator fell behind real time in {} of {} seconds)",
            l.late_ticks, plan.secs
        ));
    }
    notes
}
