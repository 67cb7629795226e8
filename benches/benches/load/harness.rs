//! What the load benches share (`load.rs`: one node; `load_cluster.rs`: a cluster behind a
//! round-robin balancer): the plan from the environment, the HTTP client, the line after
//! enrolment, the report every 10 s (per node), the run itself and the final checks.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::hook;
use crate::phones::{self, Live, Plan, Role, Sent, Targets};
use crate::server::{self, Server};
use crate::util::{env_or, pct};

/// `CAREWATCH_BIN`, or the release binary of the bench target directory.
pub fn bin() -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    std::env::var("CAREWATCH_BIN")
        .unwrap_or_else(|_| format!("{home}/.cache/carewatch-bench-target/release/carewatch"))
}

/// The plan from `LOAD_*`, with these defaults for patients and seconds.
pub fn plan(patients: usize, secs: u64) -> Plan {
    Plan {
        patients: env_or("LOAD_PATIENTS", patients),
        secs: env_or("LOAD_SECS", secs),
        fevers_per_min: env_or("LOAD_FEVERS_PER_MIN", 10),
        hr_episodes: env_or("LOAD_HR_EPISODES", 5),
        late: env_or("LOAD_LATE", 1) == 1,
        concurrency: env_or("LOAD_CONCURRENCY", 512),
    }
}

pub fn client(plan: &Plan) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"))
}

/// The line after enrolment: the plan's roles, how long enrolment took, each node's RSS.
pub fn describe(plan: &Plan, enrolled_in: Duration, nodes: &[Arc<Server>]) {
    let count = |f: &dyn Fn(Role) -> bool| (0..plan.patients).filter(|i| f(plan.role(*i))).count();
    let rss: Vec<String> = nodes
        .iter()
        .map(|n| format!("{:.0}", n.rss_mib()))
        .collect();
    println!(
        "{} patients, {} s, {} phones late, {} fevers, {} heart-rate episodes; enrolled in {:.1} s; server RSS {} MiB",
        plan.patients,
        plan.secs,
        count(&|r| r == Role::Late),
        count(&|r| matches!(r, Role::Fever { .. })),
        count(&|r| matches!(r, Role::Hr { .. })),
        enrolled_in.as_secs_f64(),
        rss.join(" / ")
    );
}

/// What a run leaves for the checks.
pub struct Run {
    pub plan: Arc<Plan>,
    /// When the phones started.
    pub start: Instant,
    pub sent: Vec<Sent>,
    pub fired: hook::Arrivals,
    /// Per node, its RSS (MiB) every 10 s.
    pub rss: Vec<Vec<f64>>,
}

/// Runs the phones from `start` against `targets`, reporting on `nodes` every 10 s, then waits
/// 10 s for the last episodes' alerts.
pub async fn drive(
    plan: Arc<Plan>,
    http: &reqwest::Client,
    nodes: Vec<Arc<Server>>,
    targets: Arc<Targets>,
    secrets: Arc<Vec<String>>,
    fired: hook::Arrivals,
    start: Instant,
) -> Run {
    let live = Arc::new(Live::default());
    let stop = Arc::new(AtomicBool::new(false));
    let rep = tokio::spawn(report(nodes, http.clone(), live.clone(), stop.clone()));
    let start_ms = chrono::Utc::now().timestamp_millis()
        + start.saturating_duration_since(Instant::now()).as_millis() as i64;
    let sent = phones::run(
        plan.clone(),
        http.clone(),
        targets,
        secrets,
        live,
        start,
        start_ms,
    )
    .await;
    // Late episodes' alerts: a few evaluation rounds at most.
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let rss = rep.await.unwrap_or_else(|e| panic!("report: {e}"));
    Run {
        plan,
        start,
        sent,
        fired,
        rss,
    }
}

fn header(nodes: &[Arc<Server>]) -> String {
    let mut h = String::from("| s |");
    for i in 0..nodes.len() {
        let l = if nodes.len() == 1 {
            "server".to_owned()
        } else {
            format!("n{}", i + 1)
        };
        let _ = write!(
            h,
            " {l} RSS MiB | {l} allocated MiB | {l} cores | {l} buffer rows | {l} bins MiB | {l} rule samples k |"
        );
    }
    h.push_str(" requests | readings/s | in flight | generator cores | dispatch lag max ms |\n|");
    h.push_str(&"---:|".repeat(6 * nodes.len() + 6));
    h
}

/// Prints a line every 10 s until `stop`; returns each node's RSS samples (MiB).
async fn report(
    nodes: Vec<Arc<Server>>,
    http: reqwest::Client,
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
) -> Vec<Vec<f64>> {
    println!("{}", header(&nodes));
    let t0 = Instant::now();
    let mut cpu: Vec<f64> = nodes.iter().map(|n| n.cpu_secs()).collect();
    let mut gen_cpu = server::cpu_of("/proc/self/stat");
    let (mut acc, mut rss) = (0u64, vec![Vec::new(); nodes.len()]);
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut line = format!("| {:.0} |", t0.elapsed().as_secs_f64());
        for (i, n) in nodes.iter().enumerate() {
            let (c, r) = (n.cpu_secs(), n.rss_mib());
            let buffer = n.metric(&http, "carewatch_buffer_rows").await;
            let b = buffer.map_or("?".into(), |b| format!("{b:.0}"));
            let bins = n.metric(&http, "carewatch_minute_bins_bytes").await;
            let bins = bins.map_or("?".into(), |b| format!("{:.0}", b / 1048576.0));
            // What jemalloc says the server holds (RSS less this: pages not returned yet).
            let held = n.metric(&http, "carewatch_allocator_allocated_bytes").await;
            let held = held.map_or("?".into(), |b| format!("{:.0}", b / 1048576.0));
            let samples = n.metric(&http, "carewatch_rule_samples").await;
            let samples = samples.map_or("?".into(), |s| format!("{:.0}", s / 1000.0));
            let _ = write!(
                line,
                " {r:.0} | {held} | {:.2} | {b} | {bins} | {samples} |",
                (c - cpu[i]) / 10.0
            );
            rss[i].push(r);
            cpu[i] = c;
        }
        let g = server::cpu_of("/proc/self/stat");
        let a = live.accepted.load(Ordering::Relaxed);
        println!(
            "{line} {} | {:.0} | {} | {:.2} | {} |",
            live.requests.load(Ordering::Relaxed),
            (a - acc) as f64 / 10.0,
            live.in_flight.load(Ordering::Relaxed),
            (g - gen_cpu) / 10.0,
            live.max_lag_ms.swap(0, Ordering::Relaxed),
        );
        (gen_cpu, acc) = (g, a);
    }
    rss
}

/// An expected episode: its phone and rule, the node and moment that acknowledged the request
/// that completed it, and its alert's latency (s) and number of `firing` deliveries.
pub struct Episode {
    pub phone: usize,
    pub rule: String,
    pub node: usize,
    pub acked: Instant,
    pub latency: Option<f64>,
    pub deliveries: usize,
}

/// The expected episodes; prints the other alerts.
pub fn episodes(run: &Run) -> Vec<Episode> {
    // The request that completes each expected episode: (patient, rule) -> its ack.
    let mut want: HashMap<(String, &str), &Sent> = HashMap::new();
    for s in run.sent.iter().filter(|s| s.status == 202) {
        let rule = match run.plan.role(s.phone) {
            Role::Fever { cycle } if cycle == s.cycle => "fever",
            Role::Hr { cycle } if cycle == s.cycle => "hr_high_at_rest",
            _ => continue,
        };
        want.insert((server::patient(s.phone), rule), s);
    }
    let fired = run.fired.lock().expect("lock");
    let mut other = HashMap::<String, usize>::new();
    let mut got: HashMap<(String, &str), &hook::Fired> = HashMap::new();
    for f in fired.values() {
        match want.get_key_value(&(f.patient.clone(), f.rule.as_str())) {
            Some((k, _)) => {
                got.insert(k.clone(), f);
            }
            None => *other.entry(f.rule.clone()).or_default() += 1,
        }
    }
    println!("other alerts: {other:?}");
    want.iter()
        .map(|(k, s)| Episode {
            phone: s.phone,
            rule: k.1.to_owned(),
            node: s.node,
            acked: s.at,
            latency: got
                .get(k)
                .map(|f| f.arrivals[0].saturating_duration_since(s.at).as_secs_f64()),
            deliveries: got.get(k).map_or(0, |f| f.arrivals.len()),
        })
        .collect()
}

/// Prints the episodes' counts and alert latency.
pub fn summarise(label: &str, eps: &[&Episode]) {
    let mut lat: Vec<f64> = eps.iter().filter_map(|e| e.latency).collect();
    let once = eps.iter().filter(|e| e.deliveries == 1).count();
    let twice = eps.iter().filter(|e| e.deliveries > 1).count();
    println!(
        "episodes{label}: {} expected, {} delivered ({once} exactly once), {} missing, {twice} delivered more than once; alert latency s p50 {:.2} p99 {:.2} max {:.2} (n = {})",
        eps.len(),
        lat.len(),
        eps.len() - lat.len(),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0),
        lat.len()
    );
}

/// Requests, ack latency (per node when several), status of those not accepted (the first
/// five with their node and time).
fn acks(sent: &[Sent], nodes: usize, start: Instant) {
    let mut failed: HashMap<u16, usize> = HashMap::new();
    for s in sent.iter().filter(|s| s.status != 202) {
        *failed.entry(s.status).or_default() += 1;
    }
    let mut ack: Vec<f64> = sent.iter().map(|s| s.ack.as_secs_f64() * 1000.0).collect();
    let mut refused: Vec<String> = failed
        .iter()
        .map(|(status, n)| match status {
            0 => format!("{n} unanswered"),
            s => format!("{n} answered {s}"),
        })
        .collect();
    refused.sort();
    let refused = if refused.is_empty() {
        "all 202".to_owned()
    } else {
        refused.join(", ")
    };
    println!(
        "requests: {} ({refused}); ack ms p50 {:.1} p99 {:.1} max {:.1}",
        sent.len(),
        pct(&mut ack, 0.5),
        pct(&mut ack, 0.99),
        pct(&mut ack, 1.0)
    );
    for s in sent.iter().filter(|s| s.status != 202).take(5) {
        println!(
            "  not accepted: {} from node {}, sent at {:.2} s, {} after {:.0} ms",
            s.status,
            s.node + 1,
            (s.at - s.ack)
                .saturating_duration_since(start)
                .as_secs_f64(),
            if s.status == 0 {
                "connection lost"
            } else {
                "answered"
            },
            s.ack.as_secs_f64() * 1000.0
        );
    }
    if nodes == 1 {
        return;
    }
    for i in 0..nodes {
        let mut a: Vec<f64> = sent
            .iter()
            .filter(|s| s.node == i)
            .map(|s| s.ack.as_secs_f64() * 1000.0)
            .collect();
        let n = a.len();
        let (p50, p99) = (pct(&mut a, 0.5), pct(&mut a, 0.99));
        println!(
            "  node {}: {n} requests, ack ms p50 {p50:.1} p99 {p99:.1}",
            i + 1
        );
    }
}

/// Most rows the final check counts distinct natural keys of (one DISTINCT in memory).
const DISTINCT_ROWS_MAX: i64 = 20_000_000;

/// Per node: mean seconds of a WAL group commit, a persist and a follow of the other nodes'
/// commits (`/metrics`), the stages a reading takes to its patient's owner in cluster mode.
pub async fn stages(nodes: &[Arc<Server>], http: &reqwest::Client, skip: Option<usize>) {
    for (i, n) in nodes.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        let mut parts = Vec::new();
        for stage in ["wal_commit", "persist", "follow"] {
            let name = format!("carewatch_{stage}_seconds");
            let sum = n.metric(http, &format!("{name}_sum")).await.unwrap_or(0.0);
            let count = n
                .metric(http, &format!("{name}_count"))
                .await
                .unwrap_or(0.0);
            let mean = if count > 0.0 {
                sum / count * 1e3
            } else {
                f64::NAN
            };
            parts.push(format!("{stage} {count:.0} x {mean:.1} ms"));
        }
        println!("node {} stages (mean): {}", i + 1, parts.join(", "));
    }
}

/// `count(*)` of `observations` on `query`, asked every 2 s until it reaches `acked` or
/// `settle` has passed: (rows, seconds waited).
async fn rows(query: &Server, http: &reqwest::Client, acked: u64, settle: Duration) -> (i64, f64) {
    let token = query.analyst(http).await;
    let t = Instant::now();
    loop {
        let n = query
            .sql_count(http, &token, "SELECT count(*) AS n FROM observations")
            .await;
        if n as u64 >= acked || t.elapsed() >= settle {
            return (n, t.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The final checks: requests and ack latency, readings acknowledged against rows stored (on
/// `query`), episodes (also split at `kill` when a node was killed), RSS per node. Returns the
/// episodes.
pub async fn finish(
    run: &Run,
    http: &reqwest::Client,
    query: &Server,
    settle: Duration,
    kill: Option<Instant>,
) -> Vec<Episode> {
    let acked: u64 = run
        .sent
        .iter()
        .filter(|s| s.status == 202)
        .map(|s| s.accepted)
        .sum();
    let (n, waited) = rows(query, http, acked, settle).await;
    acks(&run.sent, run.rss.len(), run.start);
    // Requests left unanswered (a node killed with them in flight) may have been stored: at
    // least once is the contract, so their readings may or may not be rows.
    let in_doubt: u64 = run
        .sent
        .iter()
        .filter(|s| s.status == 0)
        .map(|s| s.readings)
        .sum();
    // Natural keys stored twice: a DISTINCT over every row, so only where it fits in memory.
    let distinct = if n <= DISTINCT_ROWS_MAX {
        let token = query.analyst(http).await;
        // The natural key: device, code, effective time (ARCHITECTURE.md, "Redelivery").
        let q = "SELECT count(*) AS n FROM \
                 (SELECT DISTINCT device_id, code, effective_time FROM observations) k";
        Some(query.sql_count(http, &token, q).await)
    } else {
        None
    };
    let rows = n as u64;
    let same = if rows == acked {
        "equal".to_owned()
    } else if rows > acked && rows <= acked + in_doubt {
        format!(
            "the {} more are of the {in_doubt} readings sent in requests left unanswered",
            rows - acked
        )
    } else {
        "DIFFERENT".to_owned()
    };
    let dup = match distinct {
        Some(d) if d == n => format!("natural keys {d}: none twice"),
        Some(d) => format!("natural keys {d}: SOME TWICE"),
        None => "natural keys not counted (too many rows)".to_owned(),
    };
    println!(
        "readings acknowledged {acked}, rows in observations {n} ({same}; after {waited:.0} s); {dup}"
    );
    let eps = episodes(run);
    summarise("", &eps.iter().collect::<Vec<_>>());
    if let Some(k) = kill {
        let (before, after): (Vec<&Episode>, Vec<&Episode>) = eps.iter().partition(|e| e.acked < k);
        summarise(" acknowledged before the kill", &before);
        summarise(" acknowledged after the kill", &after);
    }
    for (i, r) in run.rss.iter().enumerate() {
        let who = if run.rss.len() == 1 {
            "server".to_owned()
        } else {
            format!("node {}", i + 1)
        };
        println!(
            "{who} RSS MiB: first {:.0}, last {:.0}, max {:.0}",
            r.first().copied().unwrap_or(f64::NAN),
            r.last().copied().unwrap_or(f64::NAN),
            r.iter().copied().fold(f64::NAN, f64::max)
        );
    }
    eps
}
