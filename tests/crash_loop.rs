//! Crash loop with the real binary (issue #12, "How we will know"): `carewatch serve` takes mixed
//! HTTP and MQTT load — good readings, malformed lines, out-of-range values, oversized bodies —
//! while small persist thresholds make it persist all the time, and is killed with SIGKILL at a
//! random moment, 20 times, restarting on the same data directory. At the end every reading the
//! server acknowledged is stored exactly once, nothing it refused or rejected is stored, and
//! every acknowledged malformed item has its dead letter.
//!
//! Every reading has its own natural key (device, heart rate, a unique second), so counts are
//! exact. `CAREWATCH_CRASH_SEED=<n>` replays a run's choices (kill delays, payload mix); the
//! seed is printed and named in every assertion message.

mod common;
#[path = "crash_loop/http.rs"]
mod http;
#[path = "crash_loop/mqtt.rs"]
mod mqtt;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use arrow_array::Array;
use carewatch_store::Table;
use common::*;
use http::*;
use mqtt::*;

const CYCLES: usize = 20;
/// Readings are dated from 2024-01-01T00:00:00Z on, one second apart: in the past, unique.
const BASE_MS: i64 = 1_704_067_200_000;
/// LOINC heart rate: the only vital the test sends.
const HEART_RATE: &str = "8867-4";
/// Small, so oversized bodies are cheap to build and send.
const MAX_PAYLOAD: usize = 64 * 1024;
/// Requests per HTTP worker per cycle, and MQTT publishes per cycle (bounds the load).
const HTTP_REQUESTS: usize = 250;
const MQTT_MESSAGES: usize = 200;
const LINES_PER_BATCH: usize = 8;

const HTTP_DEVICES: [&str; 2] = ["cl-h1", "cl-h2"];
const MQTT_DEVICE: &str = "cl-m1";
const PATIENT: &str = "cl-p1";

/// xorshift64: deterministic from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A reading's natural key as the test knows it: (device, effective time in ms).
type Key = (String, i64);

/// What one worker saw in one cycle.
#[derive(Default)]
struct Ledger {
    /// Valid readings the server acknowledged (HTTP 202 item not rejected, MQTT PUBACK): (key, cycle, edge).
    acked: Vec<(Key, usize, &'static str)>,
    /// Valid readings sent without a definite answer (in flight at a kill, 503): stored at most once.
    unknown: Vec<Key>,
    /// Readings that must never be stored: out of range, or in a body refused as too large.
    never: Vec<(Key, &'static str)>,
    /// Messages with rejected items that the server acknowledged: (sha256 hex, rejected items, cycle).
    dead_acked: Vec<(String, usize, usize)>,
    /// Messages with malformed items sent without a definite answer: (sha256 hex, items): 0 or all.
    dead_unknown: Vec<(String, usize)>,
    /// Answers the test did not expect (a valid item rejected, an odd status): failures.
    surprises: Vec<String>,
    http_requests: usize,
    http_413: usize,
    /// HTTP requests cut by a kill (no answer).
    http_cut: usize,
    mqtt_oversized: usize,
}

impl Ledger {
    fn merge(&mut self, o: Ledger) {
        self.acked.extend(o.acked);
        self.unknown.extend(o.unknown);
        self.never.extend(o.never);
        self.dead_acked.extend(o.dead_acked);
        self.dead_unknown.extend(o.dead_unknown);
        self.surprises.extend(o.surprises);
        self.http_requests += o.http_requests;
        self.http_413 += o.http_413;
        self.http_cut += o.http_cut;
        self.mqtt_oversized += o.mqtt_oversized;
    }
}

fn sha_hex(bytes: &[u8]) -> String {
    carewatch_store::dead::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One NDJSON line / MQTT payload and what it should become.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Valid,
    OutOfRange,
    Malformed,
}

struct Item {
    time_ms: i64,
    kind: Kind,
    text: String,
}

/// A new item with a unique time (the malformed ones use theirs only to be unique bytes).
fn item(clock: &AtomicI64, kind: Kind) -> Item {
    let n = clock.fetch_add(1, Ordering::SeqCst);
    let time_ms = BASE_MS + n * 1000;
    let text = match kind {
        Kind::Valid => format!(r#"{{"time":{time_ms},"heart_rate":{}}}"#, 50 + n % 60),
        Kind::OutOfRange => format!(r#"{{"time":{time_ms},"heart_rate":{}}}"#, 400 + n % 50),
        Kind::Malformed => format!(r#"{{"time":{time_ms},"heart_rate": not json"#),
    };
    Item {
        time_ms,
        kind,
        text,
    }
}

/// POST /v1/readings over a fresh connection (`Connection: close`). `Err`: no complete answer.
#[test]
fn acknowledged_readings_survive_twenty_sigkills_of_serve_exactly_once() {
    let t0 = Instant::now();
    let seed: u64 = std::env::var("CAREWATCH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("crash loop seed {seed} (CAREWATCH_CRASH_SEED={seed} replays its choices)");
    let mut rng = Rng(seed | 1);
    let tmp = tempfile::tempdir().expect("tmp");
    let conf = tmp.path().join("carewatch.toml");
    // Persist every 40 rows or every second, so kills land before, during and after persists.
    std::fs::write(
        &conf,
        format!(
            "max_payload_bytes = {MAX_PAYLOAD}\n[store]\npersist_rows = 40\npersist_age_secs = 1\n"
        ),
    )
    .expect("conf");
    let args = ["--config", conf.to_str().expect("utf8")];
    let clock = Arc::new(AtomicI64::new(0));
    let mut ledger = Ledger::default();
    let mut secrets: Vec<String> = Vec::new();
    let mut mqtt_secret = String::new();
    let mut admin = None;
    let mut logs = Vec::new();

    for cycle in 0..CYCLES {
        let mut srv = Server::start(tmp.path(), &args);
        logs.push(srv.stderr_log.clone());
        if cycle == 0 {
            admin = srv.admin.clone();
            secrets = HTTP_DEVICES
                .iter()
                .map(|d| srv.register(d, PATIENT))
                .collect();
            mqtt_secret = srv.register(MQTT_DEVICE, PATIENT);
        } else {
            assert!(srv.admin.is_none(), "the admin token is printed once");
            srv.admin = admin.clone();
        }
        let addr = srv
            .http
            .strip_prefix("http://")
            .expect("plain http")
            .to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = HTTP_DEVICES
            .iter()
            .zip(&secrets)
            .map(|(device, secret)| {
                let (addr, secret, clock, stop) =
                    (addr.clone(), secret.clone(), clock.clone(), stop.clone());
                let s = rng.next();
                std::thread::spawn(move || http_worker(addr, device, secret, cycle, s, clock, stop))
            })
            .collect();
        let mqtt = srv.mqtt.clone().expect("embedded mqtt");
        let run = mqtt_start(&mqtt, &mqtt_secret, cycle, &mut rng, &clock);
        // Kill at a random moment: before, during or after persists.
        let delay = Duration::from_millis(300 + rng.below(1200));
        std::thread::sleep(delay);
        if let Ok(Some(st)) = srv.child.try_wait() {
            panic!("seed {seed} cycle {cycle}: carewatch exited on its own: {st}");
        }
        srv.child.kill().expect("SIGKILL");
        let _ = srv.child.wait();
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            ledger.merge(w.join().expect("http worker"));
        }
        ledger.merge(mqtt_finish(run, cycle));
        drop(srv);
    }

    // A last start replays what the kills left; then a clean stop.
    let mut srv = Server::start(tmp.path(), &args);
    logs.push(srv.stderr_log.clone());
    srv.admin = admin.clone();
    let (s, b) = curl("GET", &format!("{}/healthz", srv.http), "", "");
    assert_eq!(s, 200, "seed {seed}: healthz after the last restart: {b}");
    // The admin token from the first start still works.
    assert!(
        srv.stats()["rows_appended"].is_number(),
        "seed {seed}: stats"
    );
    let dir = srv.dir.clone();
    assert_eq!(srv.stop(), 0, "seed {seed}: clean stop after the loop");

    assert!(
        ledger.surprises.is_empty(),
        "seed {seed}: unexpected answers ({}): {:#?}",
        ledger.surprises.len(),
        &ledger.surprises[..ledger.surprises.len().min(10)]
    );

    // Stored rows per natural key (device, code, effective time).
    let obs = read_table(&dir, Table::Observations);
    let devices = strings(&obs, "device_id");
    let codes = strings(&obs, "code");
    let mut times = Vec::new();
    for b in &obs {
        let a = b.column_by_name("effective_time").expect("effective_time");
        let a = a
            .as_any()
            .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
            .expect("timestamp µs");
        times.extend((0..a.len()).map(|i| a.value(i)));
    }
    let mut stored: HashMap<Key, usize> = HashMap::new();
    for ((d, c), t) in devices.iter().zip(&codes).zip(&times) {
        assert_eq!(c, HEART_RATE, "seed {seed}: only heart rates were sent");
        assert_eq!(t % 1_000_000, 0, "seed {seed}: whole seconds were sent");
        *stored.entry((d.clone(), t / 1000)).or_default() += 1;
    }

    let acked: HashMap<&Key, (usize, &str)> =
        ledger.acked.iter().map(|(k, c, e)| (k, (*c, *e))).collect();
    assert_eq!(
        acked.len(),
        ledger.acked.len(),
        "seed {seed}: keys are unique"
    );
    let lost: Vec<_> = ledger
        .acked
        .iter()
        .filter(|(k, _, _)| !stored.contains_key(k))
        .collect();
    let lost_cycles: HashSet<usize> = lost.iter().map(|(_, c, _)| *c).collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: {} of {} acknowledged readings LOST after SIGKILL (acknowledged in cycles {:?}); \
         first (key as (device, ms), cycle acknowledged, edge): {:?}",
        lost.len(),
        ledger.acked.len(),
        lost_cycles,
        &lost[..lost.len().min(5)]
    );
    let dupes: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dupes.is_empty(),
        "seed {seed}: {} natural keys stored MORE THAN ONCE (key as (device, ms) -> rows; \
         acknowledged in cycle/edge shown when it was): {:?}",
        dupes.len(),
        dupes
            .iter()
            .take(5)
            .map(|(k, n)| (k, n, acked.get(k)))
            .collect::<Vec<_>>()
    );
    let never: Vec<_> = ledger
        .never
        .iter()
        .filter(|(k, _)| stored.contains_key(k))
        .collect();
    assert!(
        never.is_empty(),
        "seed {seed}: {} readings stored that were rejected or refused: {:?}",
        never.len(),
        &never[..never.len().min(5)]
    );
    let unknown: HashSet<&Key> = ledger.unknown.iter().collect();
    let strays: Vec<_> = stored
        .keys()
        .filter(|k| !acked.contains_key(k) && !unknown.contains(k))
        .collect();
    assert!(
        strays.is_empty(),
        "seed {seed}: {} stored readings were never sent as valid: {:?}",
        strays.len(),
        &strays[..strays.len().min(5)]
    );

    // Dead letters: every acknowledged message with rejected items has one per item, once.
    let dead = read_table(&dir, Table::DeadLetters);
    let mut letters: HashMap<String, usize> = HashMap::new();
    for sha in strings(&dead, "raw_sha256") {
        *letters.entry(sha).or_default() += 1;
    }
    let wrong: Vec<_> = ledger
        .dead_acked
        .iter()
        .filter(|(sha, n, _)| letters.get(sha).copied().unwrap_or(0) != *n)
        .map(|(sha, n, c)| (&sha[..12], n, c, letters.get(sha).copied().unwrap_or(0)))
        .collect();
    assert!(
        wrong.is_empty(),
        "seed {seed}: {} acknowledged messages lack their dead letters or have them twice \
         (sha256 prefix, rejected items, cycle acknowledged, dead letters stored): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let maybe: HashMap<&str, usize> = ledger
        .dead_unknown
        .iter()
        .map(|(s, n)| (s.as_str(), *n))
        .collect();
    let known: HashSet<&str> = ledger
        .dead_acked
        .iter()
        .map(|(s, _, _)| s.as_str())
        .collect();
    let odd: Vec<_> = letters
        .iter()
        .filter(|(sha, n)| !known.contains(sha.as_str()) && maybe.get(sha.as_str()) != Some(*n))
        .map(|(sha, n)| (sha.get(..12).unwrap_or(sha), n))
        .collect();
    assert!(
        odd.is_empty(),
        "seed {seed}: {} dead-letter groups match no message sent (or a partial one): {:?}",
        odd.len(),
        &odd[..odd.len().min(5)]
    );

    // What the kills interrupted, as the restarts reported it (not asserted: timing decides).
    let said = |what: &str| {
        logs.iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .matches(what)
                    .count()
            })
            .sum::<usize>()
    };
    let (tails, persists) = (
        said("WAL tail cut"),
        said("removing file from an unfinished persist"),
    );
    // `store open replayed_frames=N buffered_rows=N files=N` at each start.
    let field = |text: &str, name: &str| -> usize {
        text.lines()
            .filter(|l| l.contains("store open"))
            .filter_map(|l| l.split(name).nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse::<usize>().ok())
            .sum()
    };
    let texts: Vec<String> = logs
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    let replayed: usize = texts.iter().map(|t| field(t, "replayed_frames=")).sum();
    let files_at_end = texts.last().map_or(0, |t| field(t, " files="));
    let by_edge = |e: &str| ledger.acked.iter().filter(|(_, _, x)| *x == e).count();
    let (http, mqtt) = (by_edge("http"), by_edge("mqtt"));
    assert!(
        http > 0 && mqtt > 0,
        "seed {seed}: both edges acknowledged readings ({http} http, {mqtt} mqtt)"
    );
    assert!(
        ledger.http_413 > 0,
        "seed {seed}: some oversized bodies were refused with 413"
    );
    eprintln!(
        "crash loop seed {seed}: {CYCLES} SIGKILLs; {} readings acknowledged ({http} http, {mqtt} mqtt), \
         all stored exactly once; {} stored in all ({} sent unanswered); {} messages with rejected \
         items acknowledged, dead letters complete; {} HTTP requests ({} cut by a kill), {} refused 413, {} oversized \
         MQTT publishes; restarts cut {tails} torn WAL tails and removed {persists} files of \
         unfinished persists, replayed {replayed} WAL frames; {files_at_end} Parquet files at the \
         last start; {:.1}s",
        ledger.acked.len(),
        stored.len(),
        ledger.unknown.len(),
        ledger.dead_acked.len(),
        ledger.http_requests,
        ledger.http_cut,
        ledger.http_413,
        ledger.mqtt_oversized,
        t0.elapsed().as_secs_f64()
    );
}
