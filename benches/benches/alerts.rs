//! Alert latency under load (plain harness; prints Markdown).
//!
//! 10,000 patients each send a heart rate every second (and a step count every minute), in
//! real time, through durable store appends; all shipped rules run every second; every second
//! five patients send a fever temperature (one reading completes a fever episode). Latency is
//! from the moment that reading is durable (its append acknowledged) to the moment a local
//! webhook receiver has the alert's `firing` POST.
//!
//! Run: `cargo bench -p carewatch-benches --bench alerts` (release). Optional environment:
//! `ALERT_BENCH_PATIENTS` (10000), `ALERT_BENCH_SECS` (120).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carewatch_alert::engine::AlertEngine;
use carewatch_alert::history::History;
use carewatch_alert::notify::{Counters, Routes};
use carewatch_query::{QueryEngine, QueryLimits};
use carewatch_store::registry::Registry;
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(patients, secs));
}

async fn run(patients: usize, secs: u64) {
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
    let engine = AlertEngine::new(
        carewatch_alert::Config::default(),
        rules,
        q.context().clone(),
        &store,
        registry,
        history,
    );
    // The webhook receiver: records when each fingerprint's `firing` arrives.
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
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
                    a.lock().expect("lock").insert(key, Instant::now());
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
    tokio::spawn(engine.clone().run(stop.clone()));
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
    let sent = sent.lock().expect("lock").clone();
    let arrived = arrived.lock().expect("lock").clone();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(k, s)| arrived.get(k).map(|a| a.duration_since(*s).as_secs_f64()))
        .collect();
    let missing = sent.len() - lat.len();
    let (runs, _) = engine.runs();
    let elapsed = started.elapsed().as_secs_f64();
    println!("**{patients} patients at 1 Hz, {secs} s, all shipped rules**\n");
    println!(
        "| readings appended | rate | fever episodes | delivered | missing | p50 | p99 | max | rule runs |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    let max = lat.iter().copied().fold(0.0, f64::max);
    println!(
        "| {appended} | {:.0}/s | {} | {} | {missing} | {p50:.2} s | {p99:.2} s | {max:.2} s | {runs} |",
        appended as f64 / elapsed,
        sent.len(),
        lat.len(),
    );
    if late_ticks > 0 {
        println!("\n(the load generator fell behind real time in {late_ticks} of {secs} seconds)");
    }
}
