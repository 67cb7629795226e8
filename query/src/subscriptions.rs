//! Topic-based subscriptions, kept and delivered: each subscription is a file in
//! `fhir-subscriptions/` of the data directory (`{id}.json`: what the client asked for, who
//! asked, the status) and its events an append-only `{id}.events.jsonl`, fsynced on the
//! blocking pool before the event is delivered, so a restart forgets no subscription and an
//! event number is never reused or goes backwards.
//!
//! [`Subscriptions::publish`] never blocks (a full queue drops the event for this process with
//! a warning; the client sees the gap in the numbers). One dispatcher task matches events to
//! subscriptions (topic, filters, and whether the subscription's owner may see the patient, the
//! one authorization path); one worker per subscription sends the handshake, each event in its
//! own notification (three tries with back-off, then it moves on: the client recovers the event
//! with `$events`), and heartbeats when idle.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use carewatch_fhir::subscription::{Content, Event, Kind, Spec, Status, notification};
use carewatch_store::registry::{Principal, Registry};

/// Something that happened, offered to every subscription on its topic.
#[derive(Debug, Clone)]
pub struct Published {
    /// Topic canonical.
    pub topic: &'static str,
    /// The patient it is about.
    pub patient: String,
    /// The patient's care team when it happened.
    pub care_team: Option<String>,
    /// The code (Observation topic).
    pub code: Option<String>,
    /// `Type/id` of the focus.
    pub focus: String,
    /// The focus resource.
    pub resource: Value,
    /// When it happened, RFC 3339.
    pub timestamp: String,
}

/// What is kept of a subscription.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    /// Id.
    pub id: String,
    /// What the client asked for.
    pub spec: Spec,
    /// Who asked.
    pub owner: Principal,
    /// The base URL the client used (references in notifications).
    pub base: String,
    /// `requested`, `active`, `error` or `off`.
    pub status: String,
}

/// One subscription at run time.
#[derive(Debug)]
pub struct Sub {
    /// What is kept.
    pub stored: Mutex<Stored>,
    /// Its events, in number order.
    pub events: Mutex<Vec<Event>>,
    file: Mutex<std::fs::File>,
    wake: Notify,
}

impl Sub {
    /// A status for notifications and `$status`.
    pub fn status_line(&self) -> (Stored, u64) {
        let st = lock(&self.stored).clone();
        let n = lock(&self.events).last().map_or(0, |e| e.number);
        (st, n)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The subscriptions of this server (cheap to clone).
#[derive(Debug, Clone)]
pub struct Subscriptions {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    subs: Mutex<BTreeMap<String, Arc<Sub>>>,
    registry: Arc<Registry>,
    feed: mpsc::Sender<Published>,
    client: reqwest::Client,
    shutdown: CancellationToken,
    retry_base: Duration,
}

/// A fresh random-enough id (not a secret): 32 hex digits.
pub fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_i64(chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

fn load_events(path: &Path) -> std::io::Result<(Vec<Event>, u64)> {
    let mut events = Vec::new();
    let mut good = 0u64;
    if let Ok(f) = std::fs::File::open(path) {
        let mut r = std::io::BufReader::new(f);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            if let Ok(e) = serde_json::from_slice::<Event>(&line) {
                events.push(e);
            }
            good += n as u64;
        }
    }
    Ok((events, good))
}

fn open_sub(dir: &Path, stored: Stored) -> std::io::Result<Sub> {
    let path = dir.join(format!("{}.events.jsonl", stored.id));
    let (events, good) = load_events(&path)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    if file.metadata()?.len() != good {
        file.set_len(good)?; // a torn last line from a crash
    }
    Ok(Sub {
        stored: Mutex::new(stored),
        events: Mutex::new(events),
        file: Mutex::new(file),
        wake: Notify::new(),
    })
}

impl Subscriptions {
    /// Opens `data_dir/fhir-subscriptions` (blocking: call at start-up) and starts the
    /// dispatcher and one worker per kept subscription. `retry_base` is the first back-off.
    pub fn open(
        data_dir: &Path,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
        retry_base: Duration,
    ) -> std::io::Result<Subscriptions> {
        let dir = data_dir.join("fhir-subscriptions");
        std::fs::create_dir_all(&dir)?;
        let mut subs = BTreeMap::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            match serde_json::from_slice::<Stored>(&std::fs::read(e.path())?) {
                Ok(st) => {
                    subs.insert(st.id.clone(), Arc::new(open_sub(&dir, st)?));
                }
                Err(_) => tracing::warn!("fhir subscriptions: skipped an unreadable file"),
            }
        }
        let (feed, rx) = mpsc::channel(4096);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(std::io::Error::other)?;
        let me = Subscriptions {
            inner: Arc::new(Inner {
                dir,
                subs: Mutex::new(subs),
                registry,
                feed,
                client,
                shutdown,
                retry_base,
            }),
        };
        tracing::info!(
            subscriptions = lock(&me.inner.subs).len(),
            "fhir subscriptions open"
        );
        for s in lock(&me.inner.subs).values() {
            tokio::spawn(me.clone().worker(s.clone(), false));
        }
        tokio::spawn(me.clone().dispatch(rx));
        Ok(me)
    }

    /// Offers an event to the subscriptions; never blocks.
    pub fn publish(&self, p: Published) {
        if lock(&self.inner.subs).is_empty() {
            return;
        }
        if self.inner.feed.try_send(p).is_err() {
            tracing::warn!("fhir subscriptions: dispatcher behind, an event was dropped");
        }
    }

    /// Whether any subscription listens on `topic` (so a feed can skip its look-ups).
    pub fn wants(&self, topic: &str) -> bool {
        lock(&self.inner.subs)
            .values()
            .any(|s| lock(&s.stored).spec.topic == topic)
    }

    /// A subscription by id.
    pub fn get(&self, id: &str) -> Option<Arc<Sub>> {
        lock(&self.inner.subs).get(id).cloned()
    }

    /// Keeps a new subscription durably (off the async workers) and starts its worker, which
    /// sends the handshake.
    pub async fn create(
        &self,
        spec: Spec,
        owner: Principal,
        base: String,
    ) -> std::io::Result<Arc<Sub>> {
        let stored = Stored {
            id: new_id(),
            spec,
            owner,
            base,
            status: "requested".into(),
        };
        let dir = self.inner.dir.clone();
        let sub = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
            write_atomic(&dir, &format!("{}.json", stored.id), &bytes)?;
            open_sub(&dir, stored)
        })
        .await
        .map_err(std::io::Error::other)??;
        let sub = Arc::new(sub);
        let id = lock(&sub.stored).id.clone();
        lock(&self.inner.subs).insert(id, sub.clone());
        tokio::spawn(self.clone().worker(sub.clone(), true));
        Ok(sub)
    }

    fn matches(&self, st: &Stored, p: &Published) -> bool {
        st.spec.topic == p.topic
            && st.status != "off"
            && st.spec.filters.iter().all(|(k, v)| match k.as_str() {
                "patient" => *v == p.patient,
                "care-team" => p.care_team.as_deref() == Some(v.as_str()),
                "code" => p.code.as_deref() == Some(v.as_str()),
                _ => false,
            })
            && carewatch_auth::may_see_patient(&self.inner.registry, &st.owner, &p.patient)
    }

    async fn dispatch(self, mut rx: mpsc::Receiver<Published>) {
        loop {
            let p = tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            };
            let subs: Vec<Arc<Sub>> = lock(&self.inner.subs)
                .values()
                .filter(|s| self.matches(&lock(&s.stored), &p))
                .cloned()
                .collect();
            for s in subs {
                let (s2, p2) = (s.clone(), p.clone());
                let kept = tokio::task::spawn_blocking(move || record(&s2, p2)).await;
                match kept {
                    Ok(Ok(())) => s.wake.notify_one(),
                    _ => tracing::error!("fhir subscriptions: an event could not be kept"),
                }
            }
        }
    }

    async fn send(&self, sub: &Sub, kind: Kind, events: &[Event]) -> bool {
        let (st, n) = sub.status_line();
        let status = Status {
            base: &st.base,
            id: &st.id,
            topic: &st.spec.topic,
            status: if kind == Kind::Handshake {
                "requested"
            } else {
                st.status.as_str()
            },
            events_since_start: n,
            content: st.spec.content,
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let id = new_id();
        let uuid = format!(
            "{}-{}-{}-{}-{}",
            &id[..8],
            &id[8..12],
            &id[12..16],
            &id[16..20],
            &id[20..]
        );
        let body = notification(&status, kind, events, &uuid, &now).to_string();
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::select! {
                    () = self.inner.shutdown.cancelled() => return false,
                    () = tokio::time::sleep(self.inner.retry_base * 2u32.pow(attempt - 1)) => {}
                }
            }
            let r = self
                .inner
                .client
                .post(&st.spec.endpoint)
                .header("content-type", "application/fhir+json")
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) => tracing::debug!(
                    status = r.status().as_u16(),
                    "subscription endpoint refused"
                ),
                Err(e) => tracing::debug!(error = %e, "subscription endpoint unreachable"),
            }
        }
        tracing::warn!(kind = ?kind, "fhir subscription: notification not delivered after 3 tries");
        false
    }

    async fn set_status(&self, sub: &Sub, status: &str) {
        let st = {
            let mut st = lock(&sub.stored);
            if st.status == status {
                return;
            }
            st.status = status.to_owned();
            st.clone()
        };
        let dir = self.inner.dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&st).map_err(std::io::Error::other)?;
            write_atomic(&dir, &format!("{}.json", st.id), &bytes)
        })
        .await;
    }

    async fn worker(self, sub: Arc<Sub>, handshake: bool) {
        // Events kept before this worker started were notified (or not) by an earlier run.
        let mut done = sub.status_line().1;
        if handshake {
            let ok = self.send(&sub, Kind::Handshake, &[]).await;
            self.set_status(&sub, if ok { "active" } else { "error" })
                .await;
        }
        let heartbeat = lock(&sub.stored).spec.heartbeat_s.map(Duration::from_secs);
        loop {
            let idle = tokio::time::sleep(heartbeat.unwrap_or(Duration::from_secs(3600)));
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
                () = sub.wake.notified() => {}
                () = idle => {
                    if heartbeat.is_some() {
                        self.send(&sub, Kind::Heartbeat, &[]).await;
                    }
                    continue;
                }
            }
            loop {
                let next: Option<Event> =
                    lock(&sub.events).iter().find(|e| e.number > done).cloned();
                let Some(e) = next else { break };
                done = e.number;
                let ok = self
                    .send(&sub, Kind::EventNotification, std::slice::from_ref(&e))
                    .await;
                self.set_status(&sub, if ok { "active" } else { "error" })
                    .await;
            }
        }
    }
}

/// Numbers and keeps one event (blocking: the append is fsynced before anyone is told).
fn record(sub: &Sub, p: Published) -> std::io::Result<()> {
    let mut file = lock(&sub.file);
    let number = lock(&sub.events).last().map_or(0, |e| e.number) + 1;
    let content = lock(&sub.stored).spec.content;
    let e = Event {
        number,
        timestamp: p.timestamp,
        focus: p.focus,
        resource: if content == Content::Empty {
            Value::Null
        } else {
            p.resource
        },
    };
    let mut line = serde_json::to_vec(&e).map_err(std::io::Error::other)?;
    line.push(b'\n');
    file.write_all(&line)?;
    file.sync_data()?;
    lock(&sub.events).push(e);
    Ok(())
}
