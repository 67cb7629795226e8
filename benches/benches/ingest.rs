//! Ingest benchmarks (plain harness; prints Markdown):
//! - HTTP: NDJSON readings/s end to end, acknowledged only once durable (fsync on);
//! - MQTT through a real Mosquitto broker: carewatch's subscriber versus a do-nothing subscriber
//!   that only acks, draining the same queued messages from a persistent session, with
//!   single-reading and batched (60 readings) messages.
//!
//! Run: `cargo bench -p carewatch-benches --bench ingest` (release; needs `mosquitto` on PATH or
//! at /usr/sbin/mosquitto for the MQTT part — scripts/setup-test-deps.sh installs it).

/// The allocator the server binary runs with (src/main.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use carewatch_ingest::http::{HttpState, router};
use carewatch_ingest::pipeline::TemplateSlot;
use carewatch_ingest::{Pipeline, mqtt_client};
use carewatch_store::registry::Registry;
use carewatch_store::{Config, Store};
use carewatch_transform::ZonePolicy;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

const T0_MS: i64 = 1_714_550_400_000;

async fn pipeline(dir: &std::path::Path, devices: usize) -> (Arc<Pipeline>, Vec<String>) {
    let mut c = Config::new(dir);
    c.buffer_limit_rows = 50_000_000;
    let store = Store::open(c).await.expect("store");
    let (registry, _) = Registry::open(dir).expect("registry");
    let mut secrets = Vec::new();
    for d in 0..devices {
        secrets.push(
            registry
                .register_device(&format!("dev-{d}"), &format!("pat-{d}"), Some(0))
                .expect("device"),
        );
    }
    let p = Arc::new(Pipeline {
        store,
        registry: Arc::new(registry),
        templates: TemplateSlot::default(),
        tz: ZonePolicy::Reject,
        max_bytes: 8 << 20,
        max_future_skew_us: carewatch_ingest::pipeline::DEFAULT_MAX_FUTURE_SKEW_US,
    });
    (p, secrets)
}

async fn http_bench(clients: usize, lines: usize, requests: usize) -> f64 {
    let dir = tempfile::tempdir().expect("tmp");
    let (p, secrets) = pipeline(dir.path(), clients).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // As `serve` wires it: the one credential check is an extension of the app.
    let auth = carewatch_auth::Authenticator::new(p.registry.clone());
    let app = router(HttpState {
        pipeline: p.clone(),
    })
    .layer(axum::Extension(auth));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let accepted = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (c, secret) in secrets.into_iter().enumerate() {
        let http = http.clone();
        let accepted = accepted.clone();
        tasks.push(tokio::spawn(async move {
            for r in 0..requests {
                let mut body = String::with_capacity(lines * 48);
                for l in 0..lines {
                    let ms = T0_MS + ((r * lines + l) as i64) * 1000;
                    body.push_str(&format!(
                        "{{\"time\":{ms},\"heart_rate\":{}}}\n",
                        60 + (l + c) % 50
                    ));
                }
                let res = http
                    .post(format!("http://{addr}/v1/readings"))
                    .bearer_auth(&secret)
                    .body(body)
                    .send()
                    .await
                    .expect("post");
                let v: serde_json::Value = res.json().await.expect("json");
                accepted.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let n = accepted.load(Ordering::Relaxed);
    assert_eq!(n as usize, clients * lines * requests);
    n as f64 / t.elapsed().as_secs_f64()
}

fn mosquitto_bin() -> Option<&'static str> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

struct Broker(std::process::Child);
impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn broker(dir: &std::path::Path) -> (Broker, u16) {
    let port = carewatch_fixtures::free_port();
    let conf = dir.join("m.conf");
    std::fs::write(
        &conf,
        format!("user root\nlistener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 10000000\nmax_inflight_messages 1000\nmax_queued_bytes 0\n"),
    )
    .expect("conf");
    let child = std::process::Command::new(mosquitto_bin().expect("mosquitto"))
        .args(["-c", conf.to_str().expect("utf8")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (Broker(child), port)
}

/// Connects a persistent session and subscribes, then disconnects (so messages queue).
async fn prepare_session(port: u16, id: &str) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false);
    let (c, mut el) = AsyncClient::new(o, 10);
    c.subscribe("devices/+/readings", QoS::AtLeastOnce)
        .await
        .expect("sub");
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
            break;
        }
    }
    let _ = c.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while el.poll().await.is_ok() {}
    })
    .await;
}

async fn publish_all(port: u16, messages: usize, per_message: usize) {
    let mut o = MqttOptions::new("bench-publisher", "127.0.0.1", port);
    o.set_inflight(500);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut el) = AsyncClient::new(o, 1000);
    let done = tokio::spawn(async move {
        let mut acks = 0;
        while acks < messages {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = el.poll().await {
                acks += 1;
            }
        }
    });
    for m in 0..messages {
        let body = if per_message == 1 {
            format!(
                "{{\"time\":{},\"heart_rate\":{}}}",
                T0_MS + m as i64 * 1000,
                60 + m % 50
            )
        } else {
            let items: Vec<String> = (0..per_message)
                .map(|k| {
                    format!(
                        "{{\"time\":{},\"heart_rate\":{}}}",
                        T0_MS + (m * per_message + k) as i64 * 1000,
                        60 + k % 50
                    )
                })
                .collect();
            format!("[{}]", items.join(","))
        };
        c.publish(
            format!("devices/dev-{}/readings", m % 8),
            QoS::AtLeastOnce,
            false,
            body,
        )
        .await
        .expect("publish");
    }
    done.await.expect("acks");
    let _ = c.disconnect().await;
}

/// Drain rate of a subscriber that only acks (event loop in its own task, as carewatch does).
async fn do_nothing(port: u16, messages: usize) -> f64 {
    let mut o = MqttOptions::new("bench-null", "127.0.0.1", port);
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_inflight(1000);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut el) = AsyncClient::new(o, 1000);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let mut got = 0;
    let mut t = None;
    while got < messages {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(p)) => {
                t.get_or_insert_with(Instant::now);
                c.ack(&p).await.expect("ack");
                got += 1;
            }
            _ => {
                eprintln!("do-nothing subscriber stalled at {got}/{messages}");
                break;
            }
        }
    }
    let secs = t.map(|t| t.elapsed().as_secs_f64()).unwrap_or(1.0);
    let _ = c.disconnect().await;
    poller.abort();
    got as f64 / secs
}

async fn carewatch_drain(port: u16, messages: usize, readings: u64) -> f64 {
    let dir = tempfile::tempdir().expect("tmp");
    let (p, _) = pipeline(dir.path(), 8).await;
    let stop = CancellationToken::new();
    let cfg = mqtt_client::ClientConfig {
        url: format!("mqtt://127.0.0.1:{port}"),
        client_id: "bench-carewatch".into(),
        credentials: None,
        shared_group: None,
    };
    let (p2, s2) = (p.clone(), stop.clone());
    let task = tokio::spawn(async move { mqtt_client::run(cfg, p2, s2).await });
    let mut t = None;
    loop {
        let n = p.store.stats().rows_appended;
        if n > 0 {
            t.get_or_insert_with(Instant::now);
        }
        if n >= readings {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let secs = t.map(|t| t.elapsed().as_secs_f64()).unwrap_or(1.0);
    stop.cancel();
    let _ = task.await;
    messages as f64 / secs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("HTTP NDJSON, acknowledged when durable:\n");
    println!("| clients | readings/request | requests/client | readings/s |");
    println!("|---:|---:|---:|---:|");
    for (clients, lines, reqs) in [(1, 1000, 50), (8, 1000, 20), (32, 100, 50)] {
        let rate = http_bench(clients, lines, reqs).await;
        println!("| {clients} | {lines} | {reqs} | {rate:.0} |");
    }
    if mosquitto_bin().is_none() {
        println!("\nMQTT: mosquitto not installed, skipped");
        return;
    }
    println!("\nMQTT through Mosquitto, draining a queued persistent session (QoS 1):\n");
    println!(
        "| readings/message | messages | do-nothing subscriber msg/s | carewatch msg/s | carewatch readings/s | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let scale: usize = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    for (per, messages) in [(1usize, 200 * scale), (60, 20 * scale)] {
        let dir = tempfile::tempdir().expect("tmp");
        let (_b, port) = broker(dir.path());
        prepare_session(port, "bench-null").await;
        publish_all(port, messages, per).await;
        let base = do_nothing(port, messages).await;
        prepare_session(port, "bench-carewatch").await;
        publish_all(port, messages, per).await;
        let cw = carewatch_drain(port, messages, (messages * per) as u64).await;
        println!(
            "| {per} | {messages} | {base:.0} | {cw:.0} | {:.0} | {:.2} |",
            cw * per as f64,
            cw / base
        );
    }
}
