//! Fleet enrolment bench (plain harness; prints Markdown), issue #18:
//! - API: 100 000 devices enrolled through `POST /v1/devices` in batches of 1 000 (JSON arrays,
//!   4 clients) over real HTTP against the real router, store and registry; meanwhile 4 probe
//!   clients POST one reading at a time with device credentials, and the latency of those
//!   authenticated, durably acknowledged requests is reported (p50 / p99 / max), next to the
//!   same probe with no enrolment running;
//! - the `carewatch devices import` path: a 100 000-row CSV read and enrolled offline in
//!   batches of 1 000 by the functions the CLI calls; and, when `CAREWATCH_BIN` names a built
//!   `carewatch` binary, the real CLI, offline and against the server (`--server`).
//!
//! Run: `cargo bench -p carewatch-benches --bench fleet` (release). `FLEET_DEVICES=N` changes the
//! fleet size.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use carewatch_ingest::http::{HttpState, router};
use carewatch_ingest::pipeline::TemplateSlot;
use carewatch_ingest::{Pipeline, device_file, fleet};
use carewatch_store::registry::Registry;
use carewatch_store::{Config, Store};
use carewatch_transform::ZonePolicy;
use serde_json::{Value, json};

const BATCH: usize = 1000;
const CLIENTS: usize = 4;
const PROBES: usize = 4;

fn devices() -> usize {
    std::env::var("FLEET_DEVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

struct Server {
    addr: std::net::SocketAddr,
    admin: String,
    pipeline: Arc<Pipeline>,
}

async fn server(dir: &std::path::Path) -> Server {
    let store = Store::open(Config::new(dir)).await.expect("store");
    let (registry, admin) = Registry::open(dir).expect("registry");
    let pipeline = Arc::new(Pipeline {
        store,
        registry: Arc::new(registry),
        templates: TemplateSlot::default(),
        tz: ZonePolicy::Reject,
        max_bytes: 8 << 20,
        max_future_skew_us: carewatch_ingest::pipeline::DEFAULT_MAX_FUTURE_SKEW_US,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // As `serve` wires it: the credential check every route's `Caller` uses.
    let auth = carewatch_auth::Authenticator::new(pipeline.registry.clone());
    let app = router(HttpState {
        pipeline: pipeline.clone(),
    })
    .layer(axum::Extension(auth));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        addr,
        admin: admin.expect("fresh registry"),
        pipeline,
    }
}

fn items(from: usize, n: usize) -> Value {
    Value::Array(
        (from..from + n)
            .map(|i| json!({"device_id": format!("dev-{i:07}"), "patient_id": format!("pat-{i:07}")}))
            .collect(),
    )
}

async fn post_batch(http: &reqwest::Client, s: &Server, body: &Value) -> Value {
    let res = http
        .post(format!("http://{}/v1/devices", s.addr))
        .bearer_auth(&s.admin)
        .json(body)
        .send()
        .await
        .expect("post");
    assert!(res.status().is_success(), "{}", res.status());
    res.json().await.expect("json")
}

/// Probe clients: one reading per request with a device credential until `stop`; latencies.
async fn probe(
    addr: std::net::SocketAddr,
    secrets: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for secret in secrets {
        let (http, stop) = (http.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let ms = chrono::Utc::now().timestamp_millis();
                let t = Instant::now();
                let res = http
                    .post(format!("http://{addr}/v1/readings"))
                    .bearer_auth(&secret)
                    .body(format!("{{\"time\":{ms},\"heart_rate\":70}}"))
                    .send()
                    .await
                    .expect("reading");
                assert_eq!(res.status().as_u16(), 202, "probe refused");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("probe"));
    }
    all.sort();
    all
}

fn pct(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    format!("{:.2} ms", sorted[i].as_secs_f64() * 1e3)
}

/// Enrols the probe devices and runs the probe alone for a while: the baseline.
async fn probe_setup(s: &Server) -> (Vec<String>, Vec<Duration>) {
    let http = reqwest::Client::new();
    let body = Value::Array(
        (0..PROBES)
            .map(|i| json!({"device_id": format!("probe-{i}"), "patient_id": format!("probe-pat-{i}")}))
            .collect(),
    );
    let v = post_batch(&http, s, &body).await;
    let secrets: Vec<String> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["secret"].as_str().expect("secret").to_owned())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let p = tokio::spawn(probe(s.addr, secrets.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    (secrets, p.await.expect("baseline"))
}

async fn api(n: usize) {
    let dir = tempfile::tempdir().expect("tmp");
    let s = server(dir.path()).await;
    let (secrets, base) = probe_setup(&s).await;
    let stop = Arc::new(AtomicBool::new(false));
    let p = tokio::spawn(probe(s.addr, secrets, stop.clone()));
    let next = Arc::new(AtomicUsize::new(0));
    let s = Arc::new(s);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (s, next) = (s.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut lat = Vec::new();
            loop {
                let from = next.fetch_add(BATCH, Ordering::Relaxed);
                if from >= n {
                    return lat;
                }
                let body = items(from, BATCH.min(n - from));
                let t = Instant::now();
                let v = post_batch(&http, &s, &body).await;
                lat.push(t.elapsed());
                assert_eq!(
                    v["enrolled"].as_u64(),
                    Some(BATCH.min(n - from) as u64),
                    "{v}"
                );
            }
        }));
    }
    let mut batch_lat = Vec::new();
    for t in tasks {
        batch_lat.extend(t.await.expect("client"));
    }
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = p.await.expect("probe");
    batch_lat.sort();
    // Re-sending is a no-op per item.
    let http = reqwest::Client::new();
    let t2 = Instant::now();
    let again = post_batch(&http, &s, &items(0, BATCH)).await;
    assert_eq!(again["unchanged"].as_u64(), Some(BATCH as u64));
    let resend = t2.elapsed();
    let listed = s.pipeline.registry.devices().len();
    assert_eq!(listed, n + PROBES);
    println!(
        "**API: {n} devices in batches of {BATCH}, {CLIENTS} clients, {PROBES} device probes**\n"
    );
    println!(
        "| devices | time | devices/s | batch p50 | batch p99 | re-send of a batch (all unchanged) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {:.1} s | {:.0} | {} | {} | {:.1} ms |\n",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        pct(&batch_lat, 0.5),
        pct(&batch_lat, 0.99),
        resend.as_secs_f64() * 1e3
    );
    println!("Device-authenticated readings (one per request, acknowledged when durable):\n");
    println!("| probe | requests | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, l) in [
        ("alone (baseline, 5 s)", &base),
        ("during enrolment", &during),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} |",
            l.len(),
            pct(l, 0.5),
            pct(l, 0.99),
            pct(l, 1.0)
        );
    }
    println!();
}

fn csv(path: &std::path::Path, n: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("csv"));
    writeln!(f, "device_id,patient_id").expect("csv");
    for i in 0..n {
        writeln!(f, "dev-{i:07},pat-{i:07}").expect("csv");
    }
    f.flush().expect("csv");
}

/// What `carewatch devices import FILE --data-dir D` does, in process.
fn import_in_process(file: &std::path::Path, dir: &std::path::Path) -> usize {
    let bytes = std::fs::read(file).expect("read");
    let records = device_file::read(&bytes, true).expect("parse");
    let (reg, _) = Registry::open(dir).expect("registry");
    let mut enrolled = 0;
    for chunk in records.chunks(BATCH) {
        let items = chunk.iter().cloned().map(fleet::item).collect();
        let (_, v) = fleet::enrol(&reg, items).expect("enrol");
        enrolled += v["enrolled"].as_u64().expect("n") as usize;
    }
    enrolled
}

fn run_cli(bin: &str, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = std::process::Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .output()
        .expect("carewatch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

async fn cli(n: usize) {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("fleet.csv");
    csv(&file, n);
    let data = dir.path().join("inproc");
    let t = Instant::now();
    assert_eq!(import_in_process(&file, &data), n);
    let took = t.elapsed();
    println!("**`carewatch devices import` of a {n}-row CSV, batches of {BATCH}**\n");
    println!("| how | time | devices/s |");
    println!("|---|---:|---:|");
    let row = |how: &str, d: Duration| {
        println!(
            "| {how} | {:.1} s | {:.0} |",
            d.as_secs_f64(),
            n as f64 / d.as_secs_f64()
        );
    };
    row("its code path in process, offline (`--data-dir`)", took);
    if let Ok(bin) = std::env::var("CAREWATCH_BIN") {
        let f = file.to_str().expect("utf8");
        let d = dir.path().join("offline");
        row(
            "the binary, offline (`--data-dir`)",
            run_cli(
                &bin,
                &[
                    "devices",
                    "import",
                    f,
                    "--data-dir",
                    d.to_str().expect("utf8"),
                ],
            ),
        );
        let s = server(&dir.path().join("served")).await;
        let url = format!("http://{}", s.addr);
        row(
            "the binary, against a server (`--server`)",
            run_cli(
                &bin,
                &[
                    "devices", "import", f, "--server", &url, "--token", &s.admin,
                ],
            ),
        );
    }
    println!();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    let n = devices();
    rt.block_on(api(n));
    rt.block_on(cli(n));
}
