//! Partitioned alerting with failover on real engines (issue 13): three `carewatch serve`
//! nodes share the tables on an S3-compatible store (Garage) and the registry, the alert
//! partitions' leases and the alert history in PostgreSQL (real servers started for the test);
//! one local webhook receiver. Readings for a patient arrive at any node.
//!
//! Node A owns the partitions of four patients. Two get a whole episode of elevated heart rate
//! at rest (one posted to A, one to B): each is raised once. Two get the first half of an
//! episode (to A and to C). A is killed (`kill -9`) and its data directory deleted; the second
//! halves go to B and C. The nodes that took A's partitions raise the two split episodes — once
//! each — and do not raise the two A had already raised again, although they rebuild those
//! patients' samples and see those episodes whole.
//!
//! The same scenario with `partitioned_alerting = false` (each node alerts for what it
//! received, with its own history: the behaviour before) misses the split episodes (and its
//! replacement node raises the earlier ones again): the test's checks fail without the
//! leases.
//!
//! Readings also stream through Mosquitto (a shared subscription of the three nodes) before
//! and after the kill, and the `deltalake` Python package reads the table throughout: its row
//! count never goes down, no natural key appears twice, and in the end it holds every reading
//! acknowledged, once — as Polars reads it too. A is killed right after acknowledging readings
//! it has not persisted (its buffer was empty, so none is older than its persist age): they
//! survive only as A's WAL objects on the shared store, which the deliverer adopts once A's
//! liveness runs out. The broker keeps A's share of the messages published
//! after the kill in A's session; A's replacement (a new empty data directory, the same MQTT
//! client id, as a rescheduled pod) takes them, and its share of the partitions, without
//! raising any alert again.
//!
//! Webhook delivery is at least once: a deliverer killed between a POST and saving its
//! position makes the next one send that transition again, with the same `fingerprint` and
//! `seq` (receivers de-duplicate on them). What must never happen, and is checked, is an
//! episode raised as two alerts, or not at all.

mod common;
#[path = "mqtt_broker/mosquitto.rs"]
mod mosquitto;
#[path = "cluster_nodes/mod.rs"]
mod nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use carewatch_fixtures::postgres::Postgres;
use carewatch_store::lease::partition_of;

use common::{Server, Webhook, delta_counts, wait_until};
use nodes::{
    Engines, alert_history, count, engines, minutes, node, node_name, owned, owners, polars_counts,
    post, publish, raised, watch_table,
};

/// What the scenario ended with.
struct Outcome {
    /// Patient → alerts raised for it (fingerprint → seqs it was delivered with).
    raised: BTreeMap<String, BTreeMap<String, BTreeSet<u64>>>,
    /// Whole episodes before the kill, split episodes across it.
    whole: Vec<String>,
    split: Vec<String>,
    /// The episode of the second killed node's patient (partitioned runs only).
    second: Vec<String>,
    /// From the kill to the split episodes' alerts (`None`: they never came).
    resumed_after: Option<Duration>,
    /// Readings acknowledged (HTTP 202, broker PUBACK), and the table's rows and distinct keys
    /// at the end as `deltalake` reads them.
    acked: i64,
    last: (i64, i64),
    /// Every read of the table during the run.
    reads: Vec<(i64, i64)>,
    /// The table's rows and distinct keys at the end as Polars reads them.
    polars: (i64, i64),
    /// The `alerts` Delta table at the end (partitioned runs): each row's `seq`, and the
    /// alerts of its `firing` rows.
    history: (Vec<i64>, Vec<String>),
}

/// Four patients of A's partitions (the first whose partition A holds a lease on).
fn patients_of(pg: &Postgres, owner: &str) -> Vec<String> {
    let owners = owners(pg);
    (0..2000)
        .map(|i| format!("cp{i}"))
        .filter(|p| owners.get(&partition_of(p)).map(String::as_str) == Some(owner))
        .take(4)
        .collect()
}

/// Waits for the split episodes' alerts for up to 30 s after `killed`.
fn wait_resumed(hook: &Webhook, split: &[String], killed: Instant) -> Option<Duration> {
    while killed.elapsed() < Duration::from_secs(30) {
        let r = raised(hook);
        if split.iter().all(|p| r.contains_key(p)) {
            return Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A scenario's cluster: the engines, the nodes by name, and what was acknowledged.
struct Run {
    e: Engines,
    /// Data directories: a, b, c and A's replacement.
    dirs: Vec<tempfile::TempDir>,
    nodes: BTreeMap<&'static str, Server>,
    admin: String,
    partitioned: bool,
    acked: usize,
    /// The episodes' first minute (14 minutes before the start).
    t0: i64,
}

impl Run {
    /// Three nodes (`a`, `b`, `c`) sharing the partitions.
    fn start(tmp: &Path, partitioned: bool) -> Run {
        let e = engines(tmp);
        let dirs: Vec<tempfile::TempDir> =
            (0..4).map(|_| tempfile::tempdir().expect("tmp")).collect();
        let a = node(&e, dirs[0].path(), "a", partitioned);
        let admin = a.admin().to_owned();
        let mut nodes = BTreeMap::from([("a", a)]);
        for (name, dir) in [("b", &dirs[1]), ("c", &dirs[2])] {
            let mut n = node(&e, dir.path(), name, partitioned);
            n.admin = Some(admin.clone());
            nodes.insert(name, n);
        }
        let run = Run {
            e,
            dirs,
            nodes,
            admin,
            partitioned,
            acked: 0,
            t0: chrono::Utc::now().timestamp_millis() / 60_000 * 60_000 - 14 * 60_000,
        };
        wait_until(
            "the nodes to share the partitions",
            Duration::from_secs(30),
            || {
                let n: Vec<i64> = run.nodes.values().map(|s| owned(s, &run.admin)).collect();
                n.iter().all(|x| (20..=22).contains(x)) && n.iter().sum::<i64>() == 64
            },
        );
        run
    }

    fn n(&self, name: &str) -> &Server {
        &self.nodes[name]
    }

    /// Registers a device per patient (on `b`), and waits for every node to know them (the
    /// nodes re-read the shared registry twice a second; a broker message for a device a node
    /// does not know yet would be a dead letter).
    fn register(&self, devices: &[(String, String)]) -> Vec<String> {
        let s = devices
            .iter()
            .map(|(d, p)| self.n("b").register(d, p))
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        s
    }

    fn post(&mut self, on: &str, secret: &str, body: &str) {
        self.acked += post(self.n(on), secret, body);
    }

    fn publish(&mut self, from_ms: i64, n: i64) {
        self.acked += publish(self.e.mqtt_port, "cwm", from_ms, n);
    }

    /// `kill -9`, and its data directory deleted.
    fn kill(&mut self, name: &str) -> Instant {
        let mut n = self.nodes.remove(name).expect("node");
        n.child.kill().expect("kill -9");
        let _ = n.child.wait();
        let _ = std::fs::remove_dir_all(&n.dir);
        Instant::now()
    }

    /// Until the table holds every acknowledged reading (60 s at most): the last read.
    fn table_settles(&self) -> (i64, i64) {
        let table = format!("s3://{}/tables/observations", self.e.g.bucket);
        let want = (self.acked as i64, self.acked as i64);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = delta_counts(&self.e.g, &table);
        while last != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            last = delta_counts(&self.e.g, &table);
        }
        last
    }

    fn stop(self) {
        for (_, n) in self.nodes {
            assert_eq!(n.stop(), 0);
        }
        self.e.broker.stop();
    }
}

/// Before the kill: whole episodes (to the owner A and to B), first halves (to A and C), and
/// readings through the broker, all persisted.
fn before_kill(run: &mut Run, ps: &[String], secrets: &[String]) {
    let t0 = run.t0;
    let whole = minutes(t0, 1, 70.0) + &minutes(t0 + 60_000, 12, 125.0);
    let first = minutes(t0, 1, 70.0) + &minutes(t0 + 60_000, 5, 125.0);
    run.post("b", &secrets[0], &whole);
    run.post("a", &secrets[1], &whole);
    run.post("a", &secrets[2], &first);
    run.post("c", &secrets[3], &first);
    run.publish(t0, 30);
    wait_until("the whole episodes raised", Duration::from_secs(60), || {
        let r = raised(&run.e.hook);
        ps[..2].iter().all(|p| r.contains_key(p))
    });
    wait_until(
        "every reading persisted to the shared table",
        Duration::from_secs(60),
        || count(run.n("b"), &run.admin) == run.acked as i64,
    );
}

/// A's replacement: a new pod, a new empty data directory, the same MQTT client id. A's
/// share of the broker's messages since the kill waits in A's session (a shared subscription
/// keeps a persistent session's place in the group): the replacement takes them, and its
/// share of the partitions, whose alerts it must not raise again.
fn replace_a(run: &mut Run) {
    let dir = run.dirs[3].path().to_owned();
    let mut a2 = node(&run.e, &dir, "a", run.partitioned);
    a2.admin = Some(run.admin.clone());
    wait_until(
        "the replacement to take its share",
        Duration::from_secs(30),
        || owned(&a2, &run.admin) > 0,
    );
    run.nodes.insert("a2", a2);
    // Room for a wrong second alert to show up: the new owners' catch-up has run (they raised
    // the split episodes), and the deliverer had time to send anything else it wrote.
    std::thread::sleep(Duration::from_secs(5));
}

/// Later, another node dies: C. A patient of C's gets a whole episode (posted to B) after the
/// kill; the node that takes C's partition raises it.
fn second_kill(run: &mut Run) -> String {
    let c = node_name(run.n("c"));
    let owners = owners(&run.e.pg);
    let p = (0..2000)
        .map(|i| format!("cq{i}"))
        .find(|p| owners.get(&partition_of(p)) == Some(&c))
        .expect("C owns partitions");
    let secret = run.register(&[("cwq".into(), p.clone())]).remove(0);
    run.kill("c");
    let whole = minutes(run.t0, 1, 70.0) + &minutes(run.t0 + 60_000, 12, 125.0);
    run.post("b", &secret, &whole);
    wait_until(
        "the second killed node's patient raised",
        Duration::from_secs(60),
        || raised(&run.e.hook).contains_key(&p),
    );
    p
}

fn scenario(partitioned: bool) -> Outcome {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut run = Run::start(tmp.path(), partitioned);
    let done = Arc::new(AtomicBool::new(false));
    let reader = watch_table(&run.e.g, done.clone());
    let ps = patients_of(&run.e.pg, &node_name(run.n("a")));
    assert_eq!(ps.len(), 4, "A owns partitions");
    let mut devices: Vec<(String, String)> = ps
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("cw{i}"), p.clone()))
        .collect();
    devices.push(("cwm".into(), "cpm".into()));
    devices.push(("cwk".into(), "cpk".into()));
    let secrets = run.register(&devices);
    before_kill(&mut run, &ps, &secrets);

    // Acknowledged by A and not persisted (A's buffer was empty; these are younger than its
    // persist age when it dies): only its WAL objects on the shared store keep them.
    run.post("a", &secrets[5], &minutes(run.t0, 10, 70.0));
    let killed = run.kill("a");
    let rest = minutes(run.t0 + 6 * 60_000, 7, 125.0);
    run.post("b", &secrets[2], &rest);
    run.post("c", &secrets[3], &rest);
    run.publish(run.t0 + 30_000, 30);
    let resumed_after = wait_resumed(&run.e.hook, &ps[2..], killed);
    replace_a(&mut run);
    let last = run.table_settles();
    let acked = run.acked as i64;
    let polars = polars_counts(
        &run.e.g,
        &format!("s3://{}/tables/observations", run.e.g.bucket),
    );
    eprintln!("acknowledged {acked}; the table has {last:?} (deltalake), {polars:?} (Polars)");
    let second = if partitioned {
        vec![second_kill(&mut run)]
    } else {
        Vec::new()
    };
    std::thread::sleep(Duration::from_secs(3));
    done.store(true, Ordering::SeqCst);
    let history = if partitioned {
        exported_history(&run, &raised(&run.e.hook))
    } else {
        (Vec::new(), Vec::new())
    };
    let out = Outcome {
        history,
        raised: raised(&run.e.hook),
        whole: ps[..2].to_vec(),
        split: ps[2..].to_vec(),
        second,
        resumed_after,
        acked,
        last,
        reads: reader.join().expect("reader"),
        polars,
    };
    run.stop();
    out
}

/// The `alerts` Delta table once it holds every alert the webhook received (partition 0's
/// owner exports the shared history every 10 s), or as it is after 40 s.
fn exported_history(
    run: &Run,
    raised: &BTreeMap<String, BTreeMap<String, BTreeSet<u64>>>,
) -> (Vec<i64>, Vec<String>) {
    let want: BTreeSet<&String> = raised.values().flat_map(BTreeMap::keys).collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let h = alert_history(&run.e.g);
        if want.iter().all(|f| h.1.contains(f)) || Instant::now() > deadline {
            return h;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The alert history as a Delta table on the shared store: no transition twice, and each
/// alert raised (as the webhook got it) fired once in it.
fn history_once(o: &Outcome) {
    let (seqs, firing) = &o.history;
    let mut distinct = seqs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        seqs.len(),
        "a transition twice in the alerts Delta table"
    );
    for f in o.raised.values().flat_map(BTreeMap::keys) {
        let n = firing.iter().filter(|x| *x == f).count();
        assert_eq!(n, 1, "alert {f}: {n} firing rows in the alerts Delta table");
    }
}

/// The outside reader's view: never fewer rows than before, never a key twice, and in the
/// end every acknowledged reading once.
fn reads_consistent(o: &Outcome) {
    assert!(
        o.reads.len() >= 3,
        "the reader read the table during the run"
    );
    for w in o.reads.windows(2) {
        assert!(w[1].0 >= w[0].0, "the row count went down: {w:?}");
    }
    for r in &o.reads {
        assert_eq!(r.0, r.1, "a natural key twice in one snapshot");
    }
    assert_eq!(o.last, (o.acked, o.acked));
    assert_eq!(o.polars, (o.acked, o.acked), "Polars reads the same");
}

/// Every episode raised as exactly one alert (a delivery repeated with the same seq is the
/// at-least-once contract; a second seq for one alert would be a second `firing`).
fn each_once(o: &Outcome, patients: &[String]) -> Result<(), String> {
    for p in patients {
        let alerts = o.raised.get(p).cloned().unwrap_or_default();
        if alerts.len() != 1 {
            return Err(format!("an episode raised {} alerts", alerts.len()));
        }
        if alerts.values().any(|seqs| seqs.len() != 1) {
            return Err("an alert fired twice".into());
        }
    }
    Ok(())
}

#[test]
fn a_killed_nodes_patients_are_alerted_by_the_others_once_each() {
    let o = scenario(true);
    each_once(&o, &o.whole).expect("the episodes raised before the kill, once each");
    each_once(&o, &o.split).expect("the episodes split across the kill, once each");
    each_once(&o, &o.second).expect("the second killed node's patient, once");
    let after = o.resumed_after.expect("alerting resumed");
    eprintln!("alerting for the killed node's patients resumed {after:?} after the kill");
    reads_consistent(&o);
    history_once(&o);
    eprintln!(
        "{} reads of the table by deltalake, {} readings acknowledged",
        o.reads.len(),
        o.acked
    );
}

#[test]
fn without_partitioned_alerting_an_episode_split_across_nodes_is_missed() {
    let o = scenario(false);
    assert!(
        each_once(&o, &o.split).is_err() && o.resumed_after.is_none(),
        "without the leases, the split episodes are missed"
    );
    // The episodes raised before the kill may also come twice: A's replacement has a history
    // of its own and raises again what the tables show it.
    eprintln!(
        "whole episodes without the leases: {:?}",
        each_once(&o, &o.whole)
    );
}
