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
//! The plan, the report and the checks are `load/harness.rs`, shared with the cluster variant
//! (`load_cluster.rs`).
//!
//! Run: `cargo build --release --bin carewatch` then
//! `cargo bench --profile release -p carewatch-benches --bench load` (both with
//! `CARGO_TARGET_DIR=$HOME/.cache/carewatch-bench-target`).

#[path = "load/harness.rs"]
#[allow(dead_code)] // shared with the other load bench
mod harness;
#[path = "load/hook.rs"]
mod hook;
#[path = "load/phones.rs"]
#[allow(dead_code)] // shared with the other load bench
mod phones;
#[path = "alerts/procfs.rs"]
#[allow(dead_code)]
mod procfs;
#[path = "load/server.rs"]
#[allow(dead_code)] // shared with the other load bench
mod server;
#[path = "util.rs"]
mod util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use phones::Targets;
use server::Server;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let plan = Arc::new(harness::plan(100_000, 300));
    let dir = tempfile::tempdir().expect("tmp");
    let fired: hook::Arrivals = Arc::default();
    let url = hook::start(fired.clone()).await;
    let srv = Arc::new(Server::start(&harness::bin(), dir.path(), &url));
    let http = harness::client(&plan);
    let t = Instant::now();
    let secrets = Arc::new(srv.enrol(&http, plan.patients).await);
    harness::describe(&plan, t.elapsed(), std::slice::from_ref(&srv));
    let targets = Arc::new(Targets::new(vec![format!("{}/v1/readings", srv.http)]));
    let run = harness::drive(
        plan,
        &http,
        vec![srv.clone()],
        targets,
        secrets,
        fired,
        Instant::now(),
    )
    .await;
    let _ = harness::finish(&run, &http, &srv, Duration::ZERO, None).await;
    if let Ok(srv) = Arc::try_unwrap(srv) {
        srv.stop();
    }
}
