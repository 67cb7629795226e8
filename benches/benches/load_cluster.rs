//! Load over the network path on a cluster (plain harness; prints Markdown), issue 13.
//!
//! The load bench (`load.rs`, issue 19) against `LOAD_NODES` (3) `carewatch serve` nodes
//! (`CAREWATCH_BIN`, the same default) in cluster mode on a real PostgreSQL and a real Garage
//! (S3) started for the bench (`carewatch_fixtures`; `scripts/setup-test-deps.sh` installs
//! them): every node with `--postgres-url`, `--object-store-url s3://<bucket>/tables`, the
//! store's `AWS_*`, its own data directory and the same webhook receiver. The devices are
//! enrolled once, on the first node (the registry is PostgreSQL's); the phones' requests go to
//! the nodes in turn, as a round-robin load balancer would send them, so most readings land
//! on a node that does not own their patient's alert partition (the owner hears of them from
//! the shared tables). Before the phones start, the alert partitions' leases are left to
//! spread over the nodes.
//!
//! The same figures as `load.rs` (`load/harness.rs`): every 10 s each node's RSS, cores and
//! buffered rows; at the end ack p50/p99 (overall and per node), alert latency p50/p99 from
//! the ack of the request that completed an episode to the webhook's arrival, episodes
//! delivered exactly once / missing / more than once across the cluster (by fingerprint),
//! readings acknowledged against `count(*)` of `observations` on one node (asked until equal,
//! at most 30 s, after the 10 s the run waits for the last alerts).
//!
//! `LOAD_KILL_AT` (seconds after the phones start; off by default): `kill -9` of one node at
//! that moment — `LOAD_KILL_NODE` (1-based), by default the owner of alert partition 0, which
//! also delivers the webhooks — which the balancer then takes out of its rotation at once
//! (requests in flight to it fail: status 0). Its leases move to the others within ~6.5 s and
//! its WAL is adopted once its liveness runs out (10 s), so the row count is awaited up to
//! 60 s; episodes are reported also split by whether their request was acknowledged before
//! or after the kill.
//!
//! Run (defaults `LOAD_PATIENTS=10000 LOAD_SECS=120 LOAD_NODES=3`): with
//! `CARGO_TARGET_DIR=$HOME/.cache/carewatch-bench-target`, `cargo build --release --bin
//! carewatch` then `cargo bench --profile release -p carewatch-benches --bench load_cluster`.

#[path = "load/harness.rs"]
mod harness;
#[path = "load/hook.rs"]
mod hook;
#[path = "load/phones.rs"]
mod phones;
#[path = "alerts/procfs.rs"]
#[allow(dead_code)]
mod procfs;
#[path = "load/server.rs"]
#[allow(dead_code)] // shared with the other load bench
mod server;
#[path = "util.rs"]
mod util;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use carewatch_fixtures::garage::Garage;
use carewatch_fixtures::postgres::Postgres;
use carewatch_store::lease::{PARTITIONS, partition_of};
use phones::Targets;
use server::Server;
use tempfile::TempDir;
use util::env_or;

/// Starts a node per directory on the engines, one after the other; the first prints the
/// cluster's admin token, the others are given it.
fn start_nodes(dirs: &[TempDir], hook: &str, pg: &Postgres, g: &Garage) -> Vec<Arc<Server>> {
    let args = [
        "--postgres-url".to_owned(),
        pg.url.clone(),
        "--object-store-url".to_owned(),
        format!("s3://{}/tables", g.bucket),
    ];
    let mut env = g.env();
    // The lease name (to find the owner of partition 0) is logged at info.
    env.push((
        "CAREWATCH_LOG".into(),
        "warn,carewatch::serve::leases=info".into(),
    ));
    let (bin, mut admin) = (harness::bin(), String::new());
    let mut out = Vec::new();
    for d in dirs {
        let mut s = Server::start_with(&bin, d.path(), hook, &args, &env);
        if admin.is_empty() {
            admin = s.admin.clone();
            assert!(!admin.is_empty(), "the first node prints the admin token");
        }
        s.admin = admin.clone();
        out.push(Arc::new(s));
    }
    out
}

/// Each node's `carewatch_alert_partitions_owned` (0 when it does not answer).
async fn owned(http: &reqwest::Client, nodes: &[Arc<Server>]) -> Vec<f64> {
    let mut out = Vec::new();
    for n in nodes {
        let o = n.metric(http, "carewatch_alert_partitions_owned").await;
        out.push(o.unwrap_or(0.0));
    }
    out
}

/// Waits (up to 60 s) until every partition is owned and no node owns more than its share.
async fn balanced(http: &reqwest::Client, nodes: &[Arc<Server>]) {
    let all = f64::from(PARTITIONS);
    let share = (all / nodes.len() as f64).ceil();
    let t = Instant::now();
    loop {
        let o = owned(http, nodes).await;
        let done = o.iter().sum::<f64>() == all && o.iter().all(|n| *n <= share);
        if done || t.elapsed() > Duration::from_secs(60) {
            let how = if done { "balanced" } else { "NOT balanced" };
            println!(
                "alert partitions per node {o:?}: {how} {:.1} s after the last node started",
                t.elapsed().as_secs_f64()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A node's lease name, from its log line at start-up.
fn lease_name(dir: &Path) -> Option<String> {
    let log = std::fs::read_to_string(dir.join("serve.log")).ok()?;
    let line = log
        .lines()
        .find(|l| l.contains("holding alert partition leases"))?;
    let at = line.find("node=")? + 5;
    Some(
        line[at..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .collect(),
    )
}

/// The node to kill: `LOAD_KILL_NODE` (1-based), else the owner of partition 0.
fn victim(pg: &Postgres, dirs: &[TempDir]) -> usize {
    if let Some(i) = std::env::var("LOAD_KILL_NODE")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    {
        return i.clamp(1, dirs.len()) - 1;
    }
    let owner = pg
        .psql("SELECT owner FROM carewatch_alert_leases WHERE part = 0 AND expires_at > now()")
        .into_iter()
        .next()
        .unwrap_or_default();
    dirs.iter()
        .position(|d| lease_name(d.path()).as_deref() == Some(owner.trim()))
        .unwrap_or_else(|| {
            println!("owner of partition 0 not found; killing node 1");
            0
        })
}

/// Partition → index of the node holding its lease now.
fn owners(pg: &Postgres, dirs: &[TempDir]) -> HashMap<u16, usize> {
    let names: Vec<Option<String>> = dirs.iter().map(|d| lease_name(d.path())).collect();
    pg.psql("SELECT part, owner FROM carewatch_alert_leases WHERE expires_at > now() AND owner IS NOT NULL")
        .iter()
        .filter_map(|l| {
            let (p, o) = l.split_once('|')?;
            let i = names.iter().position(|n| n.as_deref() == Some(o))?;
            Some((p.parse().ok()?, i))
        })
        .collect()
}

/// The episodes by where the request that completed them landed: on the node owning their
/// patient's partition at the end of the run, or another (whose readings reach the owner
/// through a persist and the owner's follow of the tables); the three slowest.
fn by_owner(eps: &[harness::Episode], owners: &HashMap<u16, usize>, start: Instant) {
    let owner = |e: &harness::Episode| owners.get(&partition_of(&server::patient(e.phone)));
    let (own, other): (Vec<_>, Vec<_>) = eps.iter().partition(|e| owner(e) == Some(&e.node));
    harness::summarise(
        " whose request landed on the patient's owner (at the end)",
        &own,
    );
    harness::summarise(" whose request landed on another node", &other);
    let mut slow: Vec<_> = eps.iter().filter(|e| e.latency.is_some()).collect();
    slow.sort_by(|a, b| {
        b.latency
            .unwrap_or(0.0)
            .total_cmp(&a.latency.unwrap_or(0.0))
    });
    for e in slow.iter().take(3) {
        println!(
            "slow: {} acknowledged by node {} at {:.1} s (owner: node {}), alert after {:.2} s",
            e.rule,
            e.node + 1,
            e.acked.saturating_duration_since(start).as_secs_f64(),
            owner(e).map_or("?".into(), |o| (o + 1).to_string()),
            e.latency.unwrap_or(f64::NAN)
        );
    }
}

/// At `at`, `kill -9` node `i` and take it out of the balancer's rotation.
async fn kill(node: Arc<Server>, i: usize, targets: Arc<Targets>, at: Instant, start: Instant) {
    tokio::time::sleep_until(at.into()).await;
    node.kill9();
    targets.set_down(i);
    println!(
        "killed node {} (kill -9) at {:.1} s",
        i + 1,
        start.elapsed().as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let plan = Arc::new(harness::plan(10_000, 120));
    let n: usize = env_or("LOAD_NODES", 3).max(1);
    let kill_at: Option<u64> = std::env::var("LOAD_KILL_AT")
        .ok()
        .and_then(|s| s.parse().ok());
    let (pg, g) = (Postgres::start(), Garage::start());
    let fired: hook::Arrivals = Arc::default();
    let url = hook::start(fired.clone()).await;
    let dirs: Vec<TempDir> = (0..n)
        .map(|_| tempfile::tempdir().unwrap_or_else(|e| panic!("tmp: {e}")))
        .collect();
    let nodes = start_nodes(&dirs, &url, &pg, &g);
    let http = harness::client(&plan);
    balanced(&http, &nodes).await;
    let t = Instant::now();
    let secrets = Arc::new(nodes[0].enrol(&http, plan.patients).await);
    harness::describe(&plan, t.elapsed(), &nodes);
    let urls = nodes.iter().map(|s| format!("{}/v1/readings", s.http));
    let targets = Arc::new(Targets::new(urls.collect()));
    let start = Instant::now();
    let kill_at = kill_at.map(|s| (victim(&pg, &dirs), start + Duration::from_secs(s)));
    if let Some((i, at)) = kill_at {
        let k = kill(nodes[i].clone(), i, targets.clone(), at, start);
        tokio::spawn(k);
    }
    let run = harness::drive(plan, &http, nodes.clone(), targets, secrets, fired, start).await;
    println!(
        "alert partitions per node at the end: {:?}",
        owned(&http, &nodes).await
    );
    let parts = owners(&pg, &dirs);
    let dead = kill_at.map(|(i, _)| i);
    let query = (0..n).find(|i| Some(*i) != dead).unwrap_or(0);
    let settle = Duration::from_secs(if dead.is_some() { 60 } else { 30 });
    harness::stages(&nodes, &http, dead).await;
    let eps = harness::finish(&run, &http, &nodes[query], settle, kill_at.map(|k| k.1)).await;
    by_owner(&eps, &parts, start);
    for s in nodes {
        if let Ok(s) = Arc::try_unwrap(s) {
            s.stop();
        }
    }
    drop((pg, g));
}
