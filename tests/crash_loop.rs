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
fn post(addr: &str, token: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "POST /v1/readings HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    // A server refusing a too-large body may answer and close before reading it all.
    let wrote = s.write_all(body);
    let mut resp = Vec::new();
    let read = s.read_to_end(&mut resp);
    let incomplete = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "incomplete");
    let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        wrote?;
        read?;
        return Err(incomplete());
    };
    let head = String::from_utf8_lossy(&resp[..end]).to_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(incomplete)?;
    let rest = &resp[end + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut r = rest;
        loop {
            let nl = r
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(incomplete)?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&r[..nl]).trim(), 16)
                .map_err(|_| incomplete())?;
            if size == 0 {
                break;
            }
            let chunk = r.get(nl + 2..nl + 2 + size).ok_or_else(incomplete)?;
            out.extend_from_slice(chunk);
            r = r.get(nl + 4 + size..).ok_or_else(incomplete)?;
        }
        out
    } else {
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        match len {
            Some(n) if rest.len() < n => return Err(incomplete()),
            Some(n) => rest[..n].to_vec(),
            None => rest.to_vec(),
        }
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Records items sent without a definite answer.
fn unanswered(l: &mut Ledger, device: &str, items: &[Item], body: &[u8]) {
    for it in items {
        let key = (device.to_owned(), it.time_ms);
        match it.kind {
            Kind::Valid => l.unknown.push(key),
            Kind::OutOfRange => l.never.push((key, "out_of_range, unanswered")),
            Kind::Malformed => {}
        }
    }
    let bad = items.iter().filter(|i| i.kind != Kind::Valid).count();
    if bad > 0 {
        l.dead_unknown.push((sha_hex(body), bad));
    }
}

/// One HTTP worker: bounded batches until told to stop or the server is gone.
fn http_worker(
    addr: String,
    device: &'static str,
    secret: String,
    cycle: usize,
    seed: u64,
    clock: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) -> Ledger {
    let mut rng = Rng(seed | 1);
    let mut l = Ledger::default();
    for _ in 0..HTTP_REQUESTS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        l.http_requests += 1;
        let shape = rng.below(12);
        let items: Vec<Item> = match shape {
            // Oversized: a few good readings padded (JSON whitespace) past max_payload_bytes.
            0 => (0..3).map(|_| item(&clock, Kind::Valid)).collect(),
            // Nothing good: one out-of-range object (422, still dead-lettered).
            1 => vec![item(&clock, Kind::OutOfRange)],
            // A mixed NDJSON batch; its first line is good so the body reads as NDJSON.
            _ => (0..LINES_PER_BATCH)
                .map(|i| {
                    let kind = match (i, rng.below(10)) {
                        (0, _) => Kind::Valid,
                        (_, 0) => Kind::Malformed,
                        (_, 1) => Kind::OutOfRange,
                        _ => Kind::Valid,
                    };
                    item(&clock, kind)
                })
                .collect(),
        };
        let mut body = items
            .iter()
            .map(|i| i.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        if shape == 0 {
            body.insert_str(1, &" ".repeat(MAX_PAYLOAD + 1));
        }
        let body = body.into_bytes();
        match post(&addr, &secret, &body) {
            Err(_) => {
                // Killed mid-request (or just before): nothing is known about this one.
                unanswered(&mut l, device, &items, &body);
                l.http_cut += 1;
                break;
            }
            Ok((413, _)) if shape == 0 => {
                l.http_413 += 1;
                for it in &items {
                    l.never.push((
                        (device.to_owned(), it.time_ms),
                        "in a body refused with 413",
                    ));
                }
            }
            Ok((503, _)) => unanswered(&mut l, device, &items, &body),
            Ok((status @ (202 | 422), text)) if shape != 0 => {
                let v: serde_json::Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(_) => {
                        l.surprises
                            .push(format!("cycle {cycle}: {status} with a non-JSON body"));
                        unanswered(&mut l, device, &items, &body);
                        continue;
                    }
                };
                let rejected = v["rejected"].as_array().cloned().unwrap_or_default();
                let mut bad: HashMap<usize, String> = HashMap::new();
                for r in &rejected {
                    let reason = r["reason"].as_str().unwrap_or("").to_owned();
                    match r["index"].as_u64() {
                        Some(i) => {
                            bad.insert(i as usize, reason);
                        }
                        // No index: the whole message.
                        None => bad.extend((0..items.len()).map(|i| (i, reason.clone()))),
                    }
                }
                for (i, it) in items.iter().enumerate() {
                    let key = (device.to_owned(), it.time_ms);
                    let want = match it.kind {
                        Kind::Valid => None,
                        Kind::OutOfRange => Some("out_of_range"),
                        Kind::Malformed => Some("invalid_json"),
                    };
                    let got = bad.get(&i).map(String::as_str);
                    if got != want {
                        l.surprises.push(format!(
                            "cycle {cycle}: HTTP item {i} ({:?}) answered {got:?}, expected {want:?}",
                            it.kind
                        ));
                    }
                    match (it.kind, got) {
                        (Kind::Valid, None) => l.acked.push((key, cycle, "http")),
                        (Kind::Valid, Some(_)) => l.unknown.push(key),
                        (Kind::OutOfRange, _) => l.never.push((key, "out_of_range, answered")),
                        (Kind::Malformed, _) => {}
                    }
                }
                let accepted = v["accepted"].as_u64().unwrap_or(u64::MAX) as usize;
                if accepted != items.len() - bad.len() {
                    l.surprises.push(format!(
                        "cycle {cycle}: accepted {accepted} of {} items with {} rejected",
                        items.len(),
                        bad.len()
                    ));
                }
                if !rejected.is_empty() {
                    l.dead_acked.push((sha_hex(&body), rejected.len(), cycle));
                }
            }
            Ok((status, text)) => {
                l.surprises.push(format!(
                    "cycle {cycle}: shape {shape} answered {status}: {}",
                    text.chars().take(200).collect::<String>()
                ));
                unanswered(&mut l, device, &items, &body);
            }
        }
    }
    l
}

/// Publishes stdin's `<index>\t<payload>` lines at QoS 1, one in flight at a time, and prints
/// each index once its PUBACK arrived; exits quietly when the connection goes.
const PAHO: &str = r#"
import sys, time
import paho.mqtt.client as mqtt
host, port, user, pw, cid = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
topic = "devices/%s/readings" % user
msgs = [l.rstrip("\n").split("\t", 1) for l in sys.stdin if l.strip()]
state = {"up": False, "gone": False}
def on_connect(c, u, flags, rc, props=None):
    if rc.is_failure:
        state["gone"] = True
    else:
        state["up"] = True
def on_disconnect(c, u, flags, rc, props=None):
    state["gone"] = True
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
c.username_pw_set(user, pw)
c.on_connect = on_connect
c.on_disconnect = on_disconnect
try:
    c.connect(host, port, keepalive=30)
    deadline = time.time() + 30
    while not state["up"]:
        if state["gone"] or time.time() > deadline or c.loop(timeout=0.05) != 0:
            sys.exit(0)
    for key, payload in msgs:
        info = c.publish(topic, payload, qos=1)
        deadline = time.time() + 30
        while not info.is_published():
            if state["gone"] or time.time() > deadline or c.loop(timeout=0.05) != 0:
                sys.exit(0)
        print(key, flush=True)
    c.disconnect()
except Exception:
    sys.exit(0)
"#;

/// The cycle's MQTT messages: single readings, out-of-range and malformed ones, and sometimes a
/// final oversized one (the listener drops the connection: never acknowledged).
struct MqttRun {
    items: Vec<Item>,
    payloads: Vec<String>,
    oversized: bool,
    child: std::process::Child,
    reader: std::thread::JoinHandle<Vec<usize>>,
}

fn mqtt_start(mqtt: &str, secret: &str, cycle: usize, rng: &mut Rng, clock: &AtomicI64) -> MqttRun {
    let mut items: Vec<Item> = (0..MQTT_MESSAGES)
        .map(|_| {
            let kind = match rng.below(10) {
                0 => Kind::Malformed,
                1 => Kind::OutOfRange,
                _ => Kind::Valid,
            };
            item(clock, kind)
        })
        .collect();
    let mut payloads: Vec<String> = items.iter().map(|i| i.text.clone()).collect();
    let oversized = rng.below(3) == 0;
    if oversized {
        let it = item(clock, Kind::Valid);
        let mut p = it.text.clone();
        p.insert_str(1, &" ".repeat(MAX_PAYLOAD + 2048));
        payloads.push(p);
        items.push(it);
    }
    let (host, port) = mqtt.rsplit_once(':').expect("mqtt addr");
    let mut child = Command::new(python())
        .args([
            "-c",
            PAHO,
            host,
            port,
            MQTT_DEVICE,
            secret,
            &format!("cl-paho-{cycle}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python with paho (scripts/setup-test-deps.sh)");
    let input: String = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{i}\t{p}\n"))
        .collect();
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    });
    MqttRun {
        items,
        payloads,
        oversized,
        child,
        reader,
    }
}

fn mqtt_finish(mut run: MqttRun, cycle: usize) -> Ledger {
    let _ = run.child.kill();
    let _ = run.child.wait();
    let acks: HashSet<usize> = run
        .reader
        .join()
        .expect("paho reader")
        .into_iter()
        .collect();
    let mut l = Ledger::default();
    let last = run.items.len() - 1;
    for (i, it) in run.items.iter().enumerate() {
        let key = (MQTT_DEVICE.to_owned(), it.time_ms);
        let acked = acks.contains(&i);
        if run.oversized && i == last {
            l.mqtt_oversized += 1;
            if acked {
                l.surprises.push(format!(
                    "cycle {cycle}: an MQTT publish over max_payload_bytes was acknowledged"
                ));
            }
            l.never.push((key, "in an oversized MQTT publish"));
            continue;
        }
        let sha = sha_hex(run.payloads[i].as_bytes());
        match (it.kind, acked) {
            (Kind::Valid, true) => l.acked.push((key, cycle, "mqtt")),
            (Kind::Valid, false) => l.unknown.push(key),
            (Kind::OutOfRange, a) => {
                l.never.push((key, "out_of_range over MQTT"));
                if a {
                    l.dead_acked.push((sha, 1, cycle));
                } else {
                    l.dead_unknown.push((sha, 1));
                }
            }
            (Kind::Malformed, true) => l.dead_acked.push((sha, 1, cycle)),
            (Kind::Malformed, false) => l.dead_unknown.push((sha, 1)),
        }
    }
    l
}

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
