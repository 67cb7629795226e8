//! `carewatch simulate`: a device fleet for demos, tests and load.
//!
//! N patients, each with one device, produce carewatch JSON multi-vital samples: heart rate every
//! second (circadian baseline, activity-driven rises, noise), steps per minute, SpO2 every minute,
//! blood pressure and temperature every hour. Injected episodes: tachycardia at rest (HR ~120
//! with zero steps), desaturation (SpO2 85–88 %), fever (38.6–39.2 °C), device silence.
//! Generation is deterministic for a seed. Devices are registered through the admin API, then
//! publish over MQTT (each device logs in with its own secret) or POST over HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

/// What to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeKind {
    /// Heart rate ~120/min while steps are 0.
    Tachycardia,
    /// SpO2 85–88 %.
    Desaturation,
    /// Temperature 38.6–39.2 °C.
    Fever,
    /// No data at all.
    Silence,
}

impl EpisodeKind {
    /// Parses `tachycardia`, `desaturation`, `fever`, `silence`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tachycardia" => Some(Self::Tachycardia),
            "desaturation" => Some(Self::Desaturation),
            "fever" => Some(Self::Fever),
            "silence" => Some(Self::Silence),
            _ => None,
        }
    }
    /// Name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tachycardia => "tachycardia",
            Self::Desaturation => "desaturation",
            Self::Fever => "fever",
            Self::Silence => "silence",
        }
    }
}

/// One injected episode: `kind:patient@start+length`, offsets in simulated seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode {
    /// What.
    pub kind: EpisodeKind,
    /// Patient index (0-based).
    pub patient: usize,
    /// Start, seconds after the simulation start.
    pub start_s: i64,
    /// Length in seconds.
    pub len_s: i64,
}

impl Episode {
    /// Parses `tachycardia:0@300+900` (patient 0, from 300 s, for 900 s).
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = || {
            format!(
                "episode {s:?}: expected kind:patient@start_s+len_s, e.g. tachycardia:0@300+900"
            )
        };
        let (kind, rest) = s.split_once(':').ok_or_else(err)?;
        let (p, rest) = rest.split_once('@').ok_or_else(err)?;
        let (start, len) = rest.split_once('+').ok_or_else(err)?;
        Ok(Episode {
            kind: EpisodeKind::parse(kind).ok_or_else(err)?,
            patient: p.parse().map_err(|_| err())?,
            start_s: start.parse().map_err(|_| err())?,
            len_s: len.parse().map_err(|_| err())?,
        })
    }
    fn covers(&self, patient: usize, s: i64) -> bool {
        self.patient == patient && s >= self.start_s && s < self.start_s + self.len_s
    }
}

/// Transport.
#[derive(Debug, Clone)]
pub enum Target {
    /// Embedded listener or a broker that authenticates devices the same way.
    Mqtt {
        /// host:port
        addr: String,
        /// QoS 0 or 1.
        qos: u8,
    },
    /// `POST {url}/v1/readings`.
    Http,
}

/// Simulation settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Patients (one device each).
    pub patients: usize,
    /// Simulated seconds.
    pub duration_s: i64,
    /// Simulated start, epoch ms.
    pub start_ms: i64,
    /// `None`: as fast as possible; `Some(x)`: x simulated seconds per wall second.
    pub speed: Option<f64>,
    /// Samples per message.
    pub batch: usize,
    /// Injected episodes.
    pub episodes: Vec<Episode>,
    /// RNG seed.
    pub seed: u64,
    /// Device / patient id prefix.
    pub prefix: String,
    /// Where devices send.
    pub target: Target,
    /// The server's HTTP base URL (registration, and the HTTP transport).
    pub http_url: String,
    /// Admin token for registering devices.
    pub admin_token: String,
}

/// What was sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Readings in all messages.
    pub readings: u64,
    /// Messages published / requests made.
    pub messages: u64,
    /// Readings the server acknowledged (MQTT PUBACK of their message, HTTP `accepted`).
    pub acknowledged: u64,
    /// Per vital.
    pub per_vital: std::collections::BTreeMap<String, u64>,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + self.unit() * (hi - lo)
    }
}

/// Device id of patient `i`.
pub fn device_id(prefix: &str, i: usize) -> String {
    format!("{prefix}dev-{i:05}")
}
/// Patient id of patient `i`.
pub fn patient_id(prefix: &str, i: usize) -> String {
    format!("{prefix}pat-{i:05}")
}

/// The samples of one patient, second by second: `(second, sample JSON)`. Deterministic.
pub fn samples(cfg: &SimConfig, patient: usize) -> Vec<(i64, Value)> {
    let mut rng = Rng(cfg.seed ^ (patient as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut out = Vec::with_capacity(cfg.duration_s as usize);
    let base = rng.range(58.0, 72.0);
    let mut activity = 0u8; // 0 rest, 1 walking, 2 exercise
    let mut steps_this_minute = 0.0;
    let phase = (patient as i64 * 137) % 3600;
    for s in 0..cfg.duration_s {
        let ep = |k: EpisodeKind| {
            cfg.episodes
                .iter()
                .any(|e| e.kind == k && e.covers(patient, s))
        };
        if s % 60 == 0 {
            let r = rng.unit();
            activity = match activity {
                0 if r < 0.08 => 1,
                1 if r < 0.25 => 0,
                1 if r < 0.30 => 2,
                2 if r < 0.30 => 1,
                a => a,
            };
            if ep(EpisodeKind::Tachycardia) {
                activity = 0;
            }
        }
        let t_ms = cfg.start_ms + s * 1000;
        let hour = ((t_ms / 3_600_000) % 24) as f64;
        let circadian = 6.0 * ((hour - 4.0) / 24.0 * std::f64::consts::TAU).sin();
        let bump = [0.0, 22.0, 55.0][activity as usize];
        let mut hr = base + circadian + bump + rng.range(-3.0, 3.0);
        if ep(EpisodeKind::Tachycardia) {
            hr = rng.range(118.0, 127.0);
        }
        steps_this_minute += [0.0, rng.range(1.2, 1.9), rng.range(2.4, 2.9)][activity as usize];
        if ep(EpisodeKind::Silence) {
            continue;
        }
        let mut sample = json!({"time": t_ms, "heart_rate": hr.round()});
        if s % 60 == 59 {
            // Steps counted over the minute that ends now.
            let steps = if ep(EpisodeKind::Tachycardia) {
                0.0
            } else {
                steps_this_minute.round()
            };
            sample["steps"] = json!(steps);
            steps_this_minute = 0.0;
        }
        if s % 60 == 30 {
            let spo2 = if ep(EpisodeKind::Desaturation) {
                rng.range(85.0, 88.9)
            } else {
                rng.range(95.0, 99.4)
            };
            sample["spo2"] = json!(spo2.floor());
        }
        if (s + phase) % 3600 == 0 {
            sample["blood_pressure"] = json!({"systolic": rng.range(112.0, 132.0).round(), "diastolic": rng.range(70.0, 86.0).round()});
            let temp = if ep(EpisodeKind::Fever) {
                rng.range(38.6, 39.2)
            } else {
                rng.range(36.4, 37.2)
            };
            sample["body_temperature"] = json!((temp * 10.0).round() / 10.0);
        }
        if ep(EpisodeKind::Fever) && s % 600 == 0 && (s + phase) % 3600 != 0 {
            sample["body_temperature"] = json!((rng.range(38.6, 39.2) * 10.0).round() / 10.0);
        }
        out.push((s, sample));
    }
    out
}

fn count_readings(sample: &Value, per: &mut std::collections::BTreeMap<String, u64>) -> u64 {
    let mut n = 0;
    if let Some(o) = sample.as_object() {
        for k in o.keys().filter(|k| *k != "time") {
            let c = if k == "blood_pressure" { 2 } else { 1 };
            *per.entry(k.clone()).or_default() += c;
            n += c;
        }
    }
    n
}

async fn register(client: &reqwest::Client, cfg: &SimConfig, i: usize) -> Result<String, String> {
    let from = chrono::DateTime::from_timestamp_millis(cfg.start_ms - 86_400_000)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let r = client
        .post(format!("{}/v1/devices", cfg.http_url))
        .bearer_auth(&cfg.admin_token)
        .json(&json!({"device_id": device_id(&cfg.prefix, i), "patient_id": patient_id(&cfg.prefix, i), "valid_from": from}))
        .send()
        .await
        .map_err(|e| format!("registering device: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("registering device: HTTP {}", r.status()));
    }
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    v["secret"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "no secret in registration answer".to_owned())
}

/// Runs the fleet; returns what was sent and acknowledged.
pub async fn run(cfg: SimConfig) -> Result<Report, String> {
    let cfg = Arc::new(cfg);
    let http = reqwest::Client::new();
    let acked = Arc::new(AtomicU64::new(0));
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..cfg.patients {
        let secret = register(&http, &cfg, i).await?;
        let cfg = cfg.clone();
        let http = http.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            device(cfg, i, secret, http, acked, t0).await
        }));
    }
    let mut report = Report::default();
    for t in tasks {
        let r = t.await.map_err(|e| e.to_string())??;
        report.readings += r.readings;
        report.messages += r.messages;
        for (k, v) in r.per_vital {
            *report.per_vital.entry(k).or_default() += v;
        }
    }
    report.acknowledged = acked.load(Ordering::SeqCst);
    Ok(report)
}

async fn device(
    cfg: Arc<SimConfig>,
    i: usize,
    secret: String,
    http: reqwest::Client,
    acked: Arc<AtomicU64>,
    t0: tokio::time::Instant,
) -> Result<Report, String> {
    let dev = device_id(&cfg.prefix, i);
    let mut report = Report::default();
    let samples = samples(&cfg, i);
    let mut mqtt = None;
    if let Target::Mqtt { addr, qos } = &cfg.target {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or("MQTT address must be host:port")?;
        let mut o = MqttOptions::new(
            format!("sim-{dev}"),
            host,
            port.parse::<u16>().map_err(|e| e.to_string())?,
        );
        o.set_credentials(&dev, &secret);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_inflight(100);
        let (client, mut el) = AsyncClient::new(o, 100);
        // Acks are counted per message; readings per message are remembered in order.
        let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let acked = acked.clone();
        let msgs = Arc::new(AtomicU64::new(0));
        let msgs2 = msgs.clone();
        let pending = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        if let Some(n) = prx.recv().await {
                            acked.fetch_add(n, Ordering::SeqCst);
                        }
                        msgs2.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(c)))
                        if c.code != rumqttc::ConnectReturnCode::Success =>
                    {
                        return Err(format!("MQTT login refused: {:?}", c.code));
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("MQTT: {e}")),
                }
            }
        });
        mqtt = Some((
            client,
            ptx,
            pending,
            if *qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            msgs,
        ));
    }
    for chunk in samples.chunks(cfg.batch.max(1)) {
        if let Some(speed) = cfg.speed {
            let due = Duration::from_secs_f64(chunk[0].0 as f64 / speed);
            tokio::time::sleep_until(t0 + due).await;
        }
        let mut n = 0;
        for (_, s) in chunk {
            n += count_readings(s, &mut report.per_vital);
        }
        let body: Value = if chunk.len() == 1 {
            chunk[0].1.clone()
        } else {
            Value::Array(chunk.iter().map(|(_, s)| s.clone()).collect())
        };
        report.readings += n;
        report.messages += 1;
        match &mqtt {
            Some((client, ptx, _, qos, _)) => {
                if *qos == QoS::AtLeastOnce {
                    let _ = ptx.send(n);
                }
                client
                    .publish(
                        format!("devices/{dev}/readings"),
                        *qos,
                        false,
                        body.to_string(),
                    )
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
            }
            None => loop {
                let r = http
                    .post(format!("{}/v1/readings", cfg.http_url))
                    .bearer_auth(&secret)
                    .body(body.to_string())
                    .send()
                    .await
                    .map_err(|e| format!("POST: {e}"))?;
                if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let v: Value = r.json().await.map_err(|e| e.to_string())?;
                acked.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::SeqCst);
                break;
            },
        }
    }
    if let Some((client, ptx, pending, qos, msgs)) = mqtt {
        drop(ptx);
        if qos == QoS::AtLeastOnce {
            // Wait for every PUBACK before disconnecting.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while msgs.load(Ordering::SeqCst) < report.messages {
                if pending.is_finished() || tokio::time::Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let _ = client.disconnect().await;
        match tokio::time::timeout(Duration::from_secs(30), pending).await {
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out waiting for MQTT acknowledgements".into()),
        }
        if qos == QoS::AtLeastOnce && msgs.load(Ordering::SeqCst) < report.messages {
            return Err(format!(
                "{} of {} messages unacknowledged",
                report.messages - msgs.load(Ordering::SeqCst),
                report.messages
            ));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimConfig {
        SimConfig {
            patients: 2,
            duration_s: 7200,
            start_ms: 1_714_550_400_000,
            speed: None,
            batch: 10,
            episodes: vec![
                Episode::parse("tachycardia:1@600+900").expect("ep"),
                Episode::parse("silence:0@100+50").expect("ep"),
            ],
            seed: 7,
            prefix: "t-".into(),
            target: Target::Http,
            http_url: String::new(),
            admin_token: String::new(),
        }
    }

    #[test]
    fn generation_is_deterministic_and_episodes_show() {
        let c = cfg();
        assert_eq!(samples(&c, 0), samples(&c, 0));
        let p0 = samples(&c, 0);
        assert_eq!(p0.len(), 7200 - 50, "silence removes 50 seconds");
        let p1 = samples(&c, 1);
        for (s, v) in &p1 {
            let hr = v["heart_rate"].as_f64().unwrap_or(0.0);
            if (600..1500).contains(s) {
                assert!((118.0..=127.0).contains(&hr), "tachycardia at {s}: {hr}");
                if let Some(steps) = v.get("steps") {
                    assert_eq!(steps, &json!(0.0));
                }
            } else {
                assert!((40.0..=140.0).contains(&hr), "{s}: {hr}");
            }
        }
        assert!(p1.iter().any(|(_, v)| v.get("blood_pressure").is_some()));
        assert!(Episode::parse("nonsense").is_err());
    }
}
