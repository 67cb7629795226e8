//! Load over the network path (plain harness; prints Markdown), issue 19.
//!
//! Starts the release `carewatch serve` binary (`CAREWATCH_BIN`, default
//! `$HOME/.cache/carewatch-bench-target/release/carewatch`) with all shipped rules and a local
//! webhook receiver, enrols `LOAD_PATIENTS` (100000) devices through `POST /v1/devices`, then
//! for `LOAD_SECS` (300) runs phones in real time (`load/phones.rs`): each posts once a minute,
//! with its own device credential, its last minute — 60 heart rates, 6 SpO2, the minute's steps —
//! as one JSON array to `POST /v1/readings`, the phones spread evenly over the minute; a
//! hundredth sync late (five minutes at once), and fever and tachycardia episodes complete in
//! known requests.
//!
//! Every 10 s: the server's resident set (`/proc/<pid>/status` VmRSS), its CPU (cores used over
//! the 10 s), the store's buffered rows (`carewatch_buffer_rows` from `/metrics`), requests and
//! readings acknowledged, and the generator's own CPU and dispatch lag (a lag near zero and
//! requests never waiting on `LOAD_CONCURRENCY` (512) mean the generator kept up).
//! At the end: readings acknowledged (sum of `accepted` of every 202) vs rows in `observations`
//! (`count(*)` over `/v1/sql`); ack latency p50/p99 per request; alert latency p50/p99 from the
//! acknowledgement of the request that completed an episode (its readings durable) to the
//! webhook's arrival; episodes delivered, missing and delivered twice (by fingerprint); other
//! alerts. Optional: `LOAD_FEVERS_PER_MIN` (10), `LOAD_HR_EPISODES` (5), `LOAD_LATE` (1: on).
//!
//! Run: `cargo build --release --bin carewatch` then
//! `cargo bench --profile release -p carewatch-benches --bench load` (both with
//! `CARGO_TARGET_DIR=$HOME/.cache/carewatch-bench-target`).

#[path = "load/hook.rs"]
mod hook;
#[path = "load/phones.rs"]
mod phones;
#[path = "alerts/procfs.rs"]
#[allow(dead_code)]
mod procfs;
#[path = "load/server.rs"]
mod server;
#[path = "util.rs"]
mod util;

use util::{env_or, pct};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use phones::{Live, Plan, Role, Sent};
use server::Server;

/// Prints a line every 10 s until `stop`; returns the RSS samples (MiB).
async fn report(
    srv: Arc<Server>,
    http: reqwest::Client,
    live: Arc<Live>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<f64> {
    println!(
        "| s | server RSS MiB | server cores | buffer rows | requests | readings/s | in flight | generator cores | dispatch lag max ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let t0 = Instant::now();
    let (mut cpu, mut gen_cpu) = (srv.cpu_secs(), server::cpu_of("/proc/self/stat"));
    let (mut acc, mut rss) = (0u64, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (c, g) = (srv.cpu_secs(), server::cpu_of("/proc/self/stat"));
        let a = live.accepted.load(Ordering::Relaxed);
        let buffer = srv.metric(&http, "carewatch_buffer_rows").await;
        let r = srv.rss_mib();
        rss.push(r);
        println!(
            "| {:.0} | {r:.0} | {:.2} | {} | {} | {:.0} | {} | {:.2} | {} |",
            t0.elapsed().as_secs_f64(),
            (c - cpu) / 10.0,
            buffer.map_or("?".into(), |b| format!("{b:.0}")),
            live.requests.load(Ordering::Relaxed),
            (a - acc) as f64 / 10.0,
            live.in_flight.load(Ordering::Relaxed),
            (g - gen_cpu) / 10.0,
            live.max_lag_ms.swap(0, Ordering::Relaxed),
        );
        (cpu, gen_cpu, acc) = (c, g, a);
    }
    rss
}

/// Alert latencies (s) of the expected episodes; prints what was missing, doubled or extra.
fn alerts(plan: &Plan, sent: &[Sent], fired: &hook::Arrivals) -> Vec<f64> {
    // The request that completes each expected episode: (patient, rule) -> its ack.
    let mut want: HashMap<(String, &str), Instant> = HashMap::new();
    for s in sent.iter().filter(|s| s.status == 202) {
        let rule = match plan.role(s.phone) {
            Role::Fever { cycle } if cycle == s.cycle => "fever",
            Role::Hr { cycle } if cycle == s.cycle => "hr_high_at_rest",
            _ => continue,
        };
        want.insert((server::patient(s.phone), rule), s.at);
    }
    let fired = fired.lock().expect("lock");
    let (mut lat, mut twice, mut other) = (Vec::new(), 0, HashMap::<String, usize>::new());
    let mut found = 0;
    for f in fired.values() {
        twice += usize::from(f.arrivals.len() > 1);
        match want.get(&(f.patient.clone(), f.rule.as_str())) {
            Some(at) => {
                found += 1;
                lat.push(f.arrivals[0].saturating_duration_since(*at).as_secs_f64());
            }
            None => *other.entry(f.rule.clone()).or_default() += 1,
        }
    }
    println!(
        "episodes: {} expected, {found} delivered, {} missing, {twice} delivered more than once; other alerts: {other:?}",
        want.len(),
        want.len() - found.min(want.len()),
    );
    lat
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let home = std::env::var("HOME").unwrap_or_default();
    let bin = std::env::var("CAREWATCH_BIN")
        .unwrap_or_else(|_| format!("{home}/.cache/carewatch-bench-target/release/carewatch"));
    let plan = Arc::new(Plan {
        patients: env_or("LOAD_PATIENTS", 100_000),
        secs: env_or("LOAD_SECS", 300),
        fevers_per_min: env_or("LOAD_FEVERS_PER_MIN", 10),
        hr_episodes: env_or("LOAD_HR_EPISODES", 5),
        late: env_or("LOAD_LATE", 1) == 1,
        concurrency: env_or("LOAD_CONCURRENCY", 512),
    });
    let dir = tempfile::tempdir().expect("tmp");
    let fired: hook::Arrivals = Arc::default();
    let url = hook::start(fired.clone()).await;
    let srv = Arc::new(Server::start(&bin, dir.path(), &url));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let t = Instant::now();
    let secrets = Arc::new(srv.enrol(&http, plan.patients).await);
    println!(
        "{} patients, {} s, {} phones late, {} fevers, {} heart-rate episodes; enrolled in {:.1} s; server RSS {:.0} MiB",
        plan.patients,
        plan.secs,
        (0..plan.patients)
            .filter(|i| plan.role(*i) == Role::Late)
            .count(),
        (0..plan.patients)
            .filter(|i| matches!(plan.role(*i), Role::Fever { .. }))
            .count(),
        (0..plan.patients)
            .filter(|i| matches!(plan.role(*i), Role::Hr { .. }))
            .count(),
        t.elapsed().as_secs_f64(),
        srv.rss_mib()
    );
    let live = Arc::new(Live::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rep = tokio::spawn(report(
        srv.clone(),
        http.clone(),
        live.clone(),
        stop.clone(),
    ));
    let (start, start_ms) = (Instant::now(), chrono::Utc::now().timestamp_millis());
    let readings = format!("{}/v1/readings", srv.http);
    let sent = phones::run(
        plan.clone(),
        http.clone(),
        readings,
        secrets,
        live,
        start,
        start_ms,
    )
    .await;
    // Late episodes' alerts: a few evaluation rounds at most.
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let rss = rep.await.expect("report");
    let acked: u64 = sent
        .iter()
        .filter(|s| s.status == 202)
        .map(|s| s.accepted)
        .sum();
    let failed: HashMap<u16, usize> =
        sent.iter()
            .filter(|s| s.status != 202)
            .fold(HashMap::new(), |mut m, s| {
                *m.entry(s.status).or_default() += 1;
                m
            });
    let analyst = srv.analyst(&http).await;
    let rows = srv
        .sql_count(&http, &analyst, "SELECT count(*) AS n FROM observations")
        .await;
    let mut ack: Vec<f64> = sent.iter().map(|s| s.ack.as_secs_f64() * 1000.0).collect();
    let mut lat = alerts(&plan, &sent, &fired);
    println!(
        "requests: {} ({failed:?} not accepted); ack ms p50 {:.1} p99 {:.1} max {:.1}",
        sent.len(),
        pct(&mut ack, 0.5),
        pct(&mut ack, 0.99),
        pct(&mut ack, 1.0)
    );
    println!(
        "readings acknowledged {acked}, rows in observations {rows} ({})",
        if rows as u64 == acked {
            "equal"
        } else {
            "DIFFERENT"
        }
    );
    println!(
        "alert latency s p50 {:.2} p99 {:.2} max {:.2} (n = {})",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0),
        lat.len()
    );
    println!(
        "server RSS MiB: first {:.0}, last {:.0}, max {:.0}",
        rss.first().copied().unwrap_or(f64::NAN),
        rss.last().copied().unwrap_or(f64::NAN),
        rss.iter().copied().fold(f64::NAN, f64::max)
    );
    if let Ok(srv) = Arc::try_unwrap(srv) {
        srv.stop();
    }
}
