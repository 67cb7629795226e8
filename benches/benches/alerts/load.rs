//! The load: every second, a heart rate per patient, an SpO2 for a tenth of them (every 10 s
//! each), steps for all at each minute, appended in chunks of 2,000 readings (like many
//! devices' messages); then five fevers on their own, so their durable time is theirs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use carewatch_store::{Row, Store};
use carewatch_transform::{Format, Reading, Source, catalogue};
use futures::StreamExt;

use super::{Plan, procfs};

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

/// Second `s`'s readings, effective at `t`.
fn tick_rows(patients: usize, s: usize, t: i64) -> Vec<Row> {
    let mut rows = Vec::with_capacity(patients + patients / 10 + 8);
    for p in 0..patients {
        let hr = 62.0 + ((p * 7 + s) % 15) as f64;
        rows.push(row(p, "heart_rate", hr, t));
    }
    if s % 60 == 0 {
        for p in 0..patients {
            rows.push(row(p, "steps", ((p + s) % 40) as f64, t));
        }
    }
    // SpO2 every 10 s per patient, a tenth of the patients each second.
    for p in (s % 10..patients).step_by(10) {
        rows.push(row(p, "spo2", 95.0 + ((p + s) % 4) as f64, t));
    }
    rows
}

/// What the load did.
pub struct Load {
    /// Readings appended (fevers included).
    pub appended: u64,
    /// When each fever was durable, by `patient|episode_start`.
    pub sent: HashMap<String, Instant>,
    /// Seconds in which the generator needed more than the second.
    pub late_ticks: u32,
    /// Wall time of the load, seconds.
    pub secs: f64,
    /// CPU seconds of the rules' threads and of the process during the load.
    pub rules_cpu: f64,
    pub process_cpu: f64,
    /// CPU seconds per second of load by thread name, largest first.
    pub cpu_by_group: String,
}

impl Load {
    /// Readings per second asked for: everything appended over the planned seconds.
    pub fn offered(&self, plan: &Plan) -> f64 {
        self.appended as f64 / plan.secs as f64
    }
}

async fn append_all(store: &Store, rows: Vec<Row>, concurrency: usize) {
    let mut rows = rows.into_iter();
    let chunks = std::iter::from_fn(|| {
        let c: Vec<Row> = rows.by_ref().take(2000).collect();
        (!c.is_empty()).then_some(c)
    });
    futures::stream::iter(chunks)
        .map(|c| store.append(c, Vec::new()))
        .buffer_unordered(concurrency)
        .for_each(|r| async move { r.expect("append") })
        .await;
}

/// Five fevers, appended on their own; their keys and the moment they were durable.
async fn fevers(store: &Store, patients: usize, next: &mut usize, t: i64) -> Vec<String> {
    let rows: Vec<Row> = (0..5)
        .map(|i| row((*next + i) % patients, "body_temperature", 39.0, t))
        .collect();
    *next += 5;
    let minute = carewatch_alert::backtest::iso(t - t.rem_euclid(60_000_000));
    let keys = rows
        .iter()
        .map(|r| {
            format!(
                "{}|{minute}",
                r.reading.patient_id.as_deref().unwrap_or_default()
            )
        })
        .collect();
    store.append(rows, Vec::new()).await.expect("append");
    keys
}

/// CPU per second by thread name since `before`, largest first (threads that ended are lost).
fn by_group(before: &HashMap<u64, (String, f64)>, secs: f64) -> String {
    let mut g: HashMap<String, f64> = HashMap::new();
    for (tid, (name, now)) in procfs::threads() {
        let was = before.get(&tid).map_or(0.0, |(_, b)| *b);
        *g.entry(name).or_default() += now - was;
    }
    let mut g: Vec<(String, f64)> = g.into_iter().filter(|(_, c)| *c / secs >= 0.01).collect();
    g.sort_by(|a, b| b.1.total_cmp(&a.1));
    let parts: Vec<String> = g
        .iter()
        .map(|(n, c)| format!("`{n}` {:.2}", c / secs))
        .collect();
    parts.join(", ")
}

/// Runs the load in real time for `plan.secs` seconds.
pub async fn run(store: &Store, plan: &Plan) -> Load {
    let threads = procfs::threads();
    let cpu0 = procfs::process_cpu();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut appended, mut late_ticks, mut fever_next) = (0u64, 0u32, 0usize);
    let mut sent = HashMap::new();
    for s in 0..plan.secs as usize {
        tick.tick().await;
        let t = chrono::Utc::now().timestamp_micros();
        let t0 = Instant::now();
        let rows = tick_rows(plan.patients, s, t);
        appended += rows.len() as u64;
        append_all(store, rows, plan.concurrency).await;
        if s >= 5 {
            let keys = fevers(store, plan.patients, &mut fever_next, t).await;
            appended += keys.len() as u64;
            let at = Instant::now();
            sent.extend(keys.into_iter().map(|k| (k, at)));
        }
        if t0.elapsed() > Duration::from_secs(1) {
            late_ticks += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Load {
        appended,
        sent,
        late_ticks,
        secs,
        rules_cpu: procfs::cpu_since(&threads, "carewatch-rules"),
        process_cpu: procfs::process_cpu() - cpu0,
        cpu_by_group: by_group(&threads, secs),
    }
}
