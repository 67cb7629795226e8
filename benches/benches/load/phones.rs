//! The phones: each posts once a minute, with its own device credential, the minute it
//! batched (a heart rate each second, an SpO2 every 10 s, the minute's steps), at its own
//! offset in the minute so the fleet's requests are spread evenly. Some phones sync late,
//! some carry an episode at a known moment:
//! - late: `i % 100 == 1` post only every fifth minute, the five minutes they batched;
//! - fever: `i % 100 == 3` (the `j`-th of them) put one 39.0 °C temperature at the end of the
//!   minute they post in cycle `1 + j / fevers_per_min`: that request completes a `fever`;
//! - heart rate: `i % 100 == 7` (the `j`-th, up to `hr_episodes`) stay silent until cycle
//!   `1 + 2j`, then sync the 11 minutes before it at 130/min and 0 steps (a phone that was
//!   offline during a tachycardia at rest): that request completes an `hr_high_at_rest`; after
//!   it they post normal minutes.
//!
//! Times are the scheduled ones (cycle start + the phone's offset), so a phone's posts cover
//! consecutive minutes exactly and no reading is sent twice. Requests go to the [`Targets`]
//! in turn, as a load balancer would spread them over a cluster's nodes.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// What a phone does beyond its minutes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Normal,
    Late,
    Fever { cycle: u64 },
    Hr { cycle: u64 },
}

pub struct Plan {
    pub patients: usize,
    pub secs: u64,
    pub fevers_per_min: usize,
    pub hr_episodes: usize,
    pub late: bool,
    pub concurrency: usize,
}

impl Plan {
    pub fn cycles(&self) -> u64 {
        self.secs.div_ceil(60)
    }
    pub fn role(&self, i: usize) -> Role {
        let j = (i / 100) as u64;
        match i % 100 {
            1 if self.late => Role::Late,
            3 if (j as usize) < self.fevers_per_min * self.cycles().saturating_sub(1) as usize => {
                Role::Fever {
                    cycle: 1 + j / self.fevers_per_min.max(1) as u64,
                }
            }
            7 if (j as usize) < self.hr_episodes && 1 + 2 * j < self.cycles() => {
                Role::Hr { cycle: 1 + 2 * j }
            }
            _ => Role::Normal,
        }
    }
}

/// The `/v1/readings` URLs requests go to, round-robin over those not marked down (a load
/// balancer whose health check noticed a dead node).
pub struct Targets {
    urls: Vec<String>,
    down: Vec<AtomicBool>,
    next: AtomicUsize,
}

impl Targets {
    pub fn new(urls: Vec<String>) -> Targets {
        let down = urls.iter().map(|_| AtomicBool::new(false)).collect();
        Targets {
            urls,
            down,
            next: AtomicUsize::new(0),
        }
    }

    /// Sends no more requests to target `i`.
    pub fn set_down(&self, i: usize) {
        self.down[i].store(true, Ordering::Relaxed);
    }

    /// The next target up (the next one at all when every target is down): its index and URL.
    fn pick(&self) -> (usize, &str) {
        let n = self.urls.len();
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let i = (0..n)
            .map(|d| (k + d) % n)
            .find(|i| !self.down[*i].load(Ordering::Relaxed))
            .unwrap_or(k % n);
        (i, &self.urls[i])
    }
}

/// One request's outcome, for the report.
pub struct Sent {
    pub phone: usize,
    /// Which target it went to.
    pub node: usize,
    pub cycle: u64,
    pub status: u16,
    pub accepted: u64,
    /// Readings in the body (what an unanswered request may or may not have stored).
    pub readings: u64,
    pub ack: Duration,
    /// When the answer came (for alert latency: the request that completes an episode).
    pub at: Instant,
}

/// Shared counters the 10-second report reads.
#[derive(Default)]
pub struct Live {
    pub requests: AtomicU64,
    pub accepted: AtomicU64,
    pub failed: AtomicU64,
    pub in_flight: AtomicU64,
    /// Most milliseconds a request was dispatched after its slot.
    pub max_lag_ms: AtomicU64,
}

fn minute(b: &mut String, i: usize, end_ms: i64, cycle: u64, hr: Option<f64>, fever: bool) {
    let start = end_ms - 59_000;
    for k in 0..60i64 {
        let t = start + k * 1000;
        let bpm = hr.unwrap_or(62.0 + ((i as i64 * 7 + k) % 15) as f64);
        let _ = write!(b, "{{\"time\":{t},\"heart_rate\":{bpm}");
        if k % 10 == 0 {
            let _ = write!(b, ",\"spo2\":{}", 95 + (i as i64 + k) % 4);
        }
        if k == 59 {
            let steps = if hr.is_some() {
                0
            } else {
                (i as u64 + cycle) % 40
            };
            let _ = write!(b, ",\"steps\":{steps}");
            if fever {
                b.push_str(",\"body_temperature\":39.0");
            }
        }
        b.push_str("},");
    }
}

/// Readings in a body of [`body`]'s: each object's keys but its `time`.
fn readings_in(b: &str) -> u64 {
    let keys = b.bytes().filter(|c| *c == b':').count();
    let objects = b.bytes().filter(|c| *c == b'{').count();
    (keys - objects) as u64
}

/// The body a phone posts in `cycle` whose slot ends at `end_ms`; `None`: it posts nothing.
pub fn body(plan: &Plan, i: usize, cycle: u64, end_ms: i64) -> Option<String> {
    let (minutes, hr, fever) = match plan.role(i) {
        Role::Late if cycle % 5 != 4 && cycle + 1 != plan.cycles() => return None,
        Role::Late => (cycle % 5 + 1, None, false),
        Role::Hr { cycle: c } if cycle < c => return None,
        Role::Hr { cycle: c } if cycle == c => (11, Some(130.0), false),
        Role::Fever { cycle: c } => (1, None, cycle == c),
        _ => (1, None, false),
    };
    let mut b = String::with_capacity(minutes as usize * 60 * 40 + 2);
    b.push('[');
    for m in (0..minutes as i64).rev() {
        minute(&mut b, i, end_ms - m * 60_000, cycle, hr, fever && m == 0);
    }
    b.pop();
    b.push(']');
    Some(b)
}

/// Runs the phones for `plan.secs` from `start` (wall clock `start_ms`); returns every
/// request's outcome.
pub async fn run(
    plan: Arc<Plan>,
    http: reqwest::Client,
    targets: Arc<Targets>,
    secrets: Arc<Vec<String>>,
    live: Arc<Live>,
    start: Instant,
    start_ms: i64,
) -> Vec<Sent> {
    let n = plan.patients;
    let slot_us = 60_000_000 / n as u64;
    let sem = Arc::new(Semaphore::new(plan.concurrency));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sent>();
    let total = plan.cycles() * n as u64;
    for k in 0..total {
        let (cycle, i) = (k / n as u64, (k % n as u64) as usize);
        let due = Duration::from_micros(cycle * 60_000_000 + i as u64 * slot_us);
        if due.as_secs() >= plan.secs {
            break;
        }
        let end_ms = start_ms + due.as_millis() as i64;
        let Some(b) = body(&plan, i, cycle, end_ms) else {
            continue;
        };
        tokio::time::sleep_until((start + due).into()).await;
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let lag = start.elapsed().saturating_sub(due).as_millis() as u64;
        live.max_lag_ms.fetch_max(lag, Ordering::Relaxed);
        let (node, url) = targets.pick();
        let readings = readings_in(&b);
        let req = http.post(url).bearer_auth(&secrets[i]).body(b);
        let (tx, live) = (tx.clone(), live.clone());
        live.in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let t = Instant::now();
            let res = req.send().await;
            let (status, accepted) = match res {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    (status, v["accepted"].as_u64().unwrap_or(0))
                }
                Err(_) => (0, 0),
            };
            let at = Instant::now();
            drop(permit);
            live.in_flight.fetch_sub(1, Ordering::Relaxed);
            live.requests.fetch_add(1, Ordering::Relaxed);
            if status == 202 {
                live.accepted.fetch_add(accepted, Ordering::Relaxed);
            } else {
                live.failed.fetch_add(1, Ordering::Relaxed);
            }
            let _ = tx.send(Sent {
                phone: i,
                node,
                cycle,
                status,
                accepted,
                readings,
                ack: at - t,
                at,
            });
        });
    }
    drop(tx);
    let mut out = Vec::new();
    while let Some(s) = rx.recv().await {
        out.push(s);
    }
    out
}
