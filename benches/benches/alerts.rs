//! Alert latency under load (plain harness; prints Markdown).
//!
//! 10,000 patients each send a heart rate every second (and a step count every minute), in
//! real time, through durable store appends; all shipped rules run every second; every second
//! five patients send a fever temperature (one reading completes a fever episode). Latency is
//! from the moment that reading is durable (its append acknowledged) to the moment a local
//! webhook receiver has the alert's `firing` POST. Every delivery is counted: a fingerprint
//! delivered twice is reported, not overwritten.
//!
//! The rules run as `carewatch serve` runs them: their own session and memory pool
//! (`rules_context`) on their own runtime thread (`spawn_dedicated`). Each scenario is a row;
//! by default one without analysts and one with two analysts running heavy SQL back to back
//! through the query gate (self-joins and aggregations over everything stored), on the same
//! store, in the same run.
//!
//! Run: `cargo bench -p carewatch-benches --bench alerts` (release). Optional environment:
//! `ALERT_BENCH_PATIENTS` (10000), `ALERT_BENCH_SECS` (120), `ALERT_BENCH_ANALYSTS` (`0,2`: the
//! scenarios, as numbers of concurrent analysts).

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
use carewatch_store::{Config, Row, Store};
use carewatch_transform::{Format, Reading, Source, catalogue};
use tokio_util::sync::CancellationToken;

fn row(p: usize, key: &str, value: f64, t: i64) -> Row {
    Row {
        reading: Reading {
            device_id: format!("dev-{p}"),
            patient_id: Some(format!("pat-{p}")),
            vital: catalogue::by_key(key).expect("vital"),
            value,
            effective_us: t,
            effective_end_us: None,
            offset_min: Some(0),
            extra: None,
        },
        received_us: t,
        source: Source::Http,
        format: Format::Carewatch,
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let patients: usize = std::env::var("ALERT_BENCH_PATIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let secs: u64 = std::env::var("ALERT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let analysts: Vec<usize> = std::env::var("ALERT_BENCH_ANALYSTS")
        .unwrap_or_else(|_| "0,2".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("**{patients} patients at 1 Hz, {secs} s per scenario, all shipped rules**\n");
    println!(
        "| analysts | readings appended | rate | fever episodes | delivered | missing | delivered twice | p50 | p99 | max | rule runs | analyst queries |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    for n in analysts {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        if let Some(note) = rt.block_on(run(patients, secs, n)) {
            notes.push(note);
        }
        rt.shutdown_timeout(Duration::from_secs(5));
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

/// One scenario; returns a note when the load generator fell behind.
async fn run(patients: usize, secs: u64, analysts: usize) -> Option<String> {
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
    let rules = carewatch_alert::rules::load(None).expect("rules");
    let config = carewatch_alert::Config::default();
    let rules_ctx =
        carewatch_alert::engine::rules_context(&store, registry.clone(), config.memory_bytes)
            .expect("rules session");
    let token = registry.create_token(Role::Analyst, None).expect("token");
    let caller = Caller::user(registry.authenticate(&token).expect("analyst"), "bench");
    let engine = AlertEngine::new(config, rules, rules_ctx, &store, registry, history);
    // The webhook receiver: records when each episode's `firing` deliveries arrive.
    let arrived: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let a = arrived.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let a = a.clone();
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
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    let stop = CancellationToken::new();
    let rules_task = engine.clone().spawn_dedicated(1, stop.clone());
    let ran = Arc::new(AtomicU64::new(0));
    for _ in 0..analysts {
        tokio::spawn(analyst(
            q.clone(),
            caller.clone(),
            stop.clone(),
            ran.clone(),
        ));
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

    // Load: every second, one heart rate per patient (steps at each minute), plus 5 fevers.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut appended = 0u64;
    let mut late_ticks = 0u32;
    let mut fever_next = 0usize;
    for s in 0..secs {
        tick.tick().await;
        let t = now_us();
        let t0 = Instant::now();
        let mut rows = Vec::with_capacity(patients + patients / 60 + 8);
        for p in 0..patients {
            let hr = 62.0 + ((p * 7 + s as usize) % 15) as f64;
            rows.push(row(p, "heart_rate", hr, t));
        }
        if s % 60 == 0 {
            for p in 0..patients {
                rows.push(row(p, "steps", ((p + s as usize) % 40) as f64, t));
            }
        }
        appended += rows.len() as u64;
        // Bulk load in chunks (like many devices' messages), then the fevers on their own so
        // their durable time is theirs.
        for chunk in rows.chunks(2000) {
            store
                .append(chunk.to_vec(), Vec::new())
                .await
                .expect("append");
        }
        if s >= 5 {
            let mut fevers = Vec::new();
            for _ in 0..5 {
                let p = fever_next % patients;
                fever_next += 1;
                fevers.push(row(p, "body_temperature", 39.0, t));
            }
            let keys: Vec<String> = fevers
                .iter()
                .map(|r| {
                    format!(
                        "{}|{}",
                        r.reading.patient_id.as_deref().unwrap_or_default(),
                        carewatch_alert::backtest::iso(t - t.rem_euclid(60_000_000))
                    )
                })
                .collect();
            store.append(fevers, Vec::new()).await.expect("append");
            let at = Instant::now();
            let mut m = sent.lock().expect("lock");
            for k in keys {
                m.insert(k, at);
            }
        }
        if t0.elapsed() > Duration::from_secs(1) {
            late_ticks += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.cancel();
    let _ = rules_task.await;
    let sent = sent.lock().expect("lock").clone();
    let arrived = arrived.lock().expect("lock").clone();
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
    let (runs, _) = engine.runs();
    let elapsed = started.elapsed().as_secs_f64();
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    let max = lat.iter().copied().fold(0.0, f64::max);
    println!(
        "| {analysts} | {appended} | {:.0}/s | {} | {} | {missing} | {twice} | {p50:.2} s | {p99:.2} s | {max:.2} s | {runs} | {} |",
        appended as f64 / elapsed,
        sent.len(),
        lat.len(),
        ran.load(Ordering::Relaxed),
    );
    (late_ticks > 0).then(|| {
        format!("(with {analysts} analysts the load generator fell behind real time in {late_ticks} of {secs} seconds)")
    })
}
