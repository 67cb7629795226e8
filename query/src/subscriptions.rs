//! Topic-based subscriptions, kept and delivered: each subscription is a file in
//! `fhir-subscriptions/` of the data directory (`{id}.json`: what the client asked for, who
//! asked, the status) and its events an append-only `{id}.events.jsonl`, fsynced on the
//! blocking pool before the event is delivered, so a restart forgets no subscription and an
//! event number is never reused or goes backwards.
//!
//! Each keeps its latest events only ([`Retention`]: 1000 events, 7 days by default, always
//! the latest one); `$events` answers an OperationOutcome for pruned numbers. A deleted
//! subscription's worker stops and its files are removed.
//!
//! [`Subscriptions::publish`] never blocks (a full queue drops the event for this process with
//! a warning; the client sees the gap in the numbers). One dispatcher task matches events to
//! subscriptions (topic, filters, and whether the subscription's owner may see the patient, the
//! one authorization path); one worker per subscription sends the handshake, each event in its
//! own notification (three tries with back-off, then it moves on: the client recovers the event
//! with `$events`), and heartbeats when idle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use carewatch_fhir::subscription::{Event, Kind, Spec, Status, notification};
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

/// How many events a subscription keeps for `$events`: the latest `max_events`, none older
/// than `max_age` — but always the latest one, so numbers go on after a restart. Pruning runs
/// when an event is kept (and at start), once the count passes `max_events` by a quarter or
/// the oldest passes `max_age` by an eighth, so the file is not rewritten for every event.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Events kept per subscription.
    pub max_events: usize,
    /// Age (by the event's timestamp) past which events are dropped.
    pub max_age: Duration,
}

impl Default for Retention {
    /// 1000 events, 7 days.
    fn default() -> Self {
        Retention {
            max_events: 1000,
            max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

/// One subscription at run time.
#[derive(Debug)]
pub struct Sub {
    /// What is kept.
    pub stored: Mutex<Stored>,
    /// Its events, in number order (the pruned ones gone).
    pub events: Mutex<Vec<Event>>,
    file: Mutex<std::fs::File>,
    wake: Notify,
    /// Cancelled when the subscription is deleted: its worker stops.
    gone: CancellationToken,
}

impl Sub {
    /// A status for notifications and `$status`.
    pub fn status_line(&self) -> (Stored, u64) {
        let st = lock(&self.stored).clone();
        let n = lock(&self.events).last().map_or(0, |e| e.number);
        (st, n)
    }

    /// The lowest event number still kept when earlier ones were pruned (`None`: none were).
    pub fn first_kept(&self) -> Option<u64> {
        lock(&self.events)
            .first()
            .map(|e| e.number)
            .filter(|n| *n > 1)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

mod keep;
use keep::{events_path, open_sub, record, write_atomic};

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
    retention: Retention,
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

impl Subscriptions {
    /// Opens `data_dir/fhir-subscriptions` (blocking: call at start-up) and starts the
    /// dispatcher and one worker per kept subscription. `retry_base` is the first back-off.
    pub fn open(
        data_dir: &Path,
        registry: Arc<Registry>,
        shutdown: CancellationToken,
        retry_base: Duration,
        retention: Retention,
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
                    subs.insert(st.id.clone(), Arc::new(open_sub(&dir, st, retention)?));
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
                retention,
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

    /// Every subscription, by id.
    pub fn all(&self) -> Vec<Arc<Sub>> {
        lock(&self.inner.subs).values().cloned().collect()
    }

    /// What each subscription keeps for `$events`.
    pub fn retention(&self) -> Retention {
        self.inner.retention
    }

    /// Deletes a subscription: no more notifications (its worker stops), its files removed
    /// (off the async workers). `false` when there is no such subscription.
    pub async fn delete(&self, id: &str) -> std::io::Result<bool> {
        let Some(sub) = lock(&self.inner.subs).remove(id) else {
            return Ok(false);
        };
        sub.gone.cancel();
        let (dir, id) = (self.inner.dir.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || {
            // Under the file lock, so no event is being kept meanwhile.
            let _file = lock(&sub.file);
            for p in [dir.join(format!("{id}.json")), events_path(&dir, &id)] {
                match std::fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(true)
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
        let (dir, keep) = (self.inner.dir.clone(), self.inner.retention);
        let sub = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&stored).map_err(std::io::Error::other)?;
            write_atomic(&dir, &format!("{}.json", stored.id), &bytes)?;
            open_sub(&dir, stored, keep)
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
                let (dir, keep) = (self.inner.dir.clone(), self.inner.retention);
                let kept = tokio::task::spawn_blocking(move || record(&dir, &s2, p2, keep)).await;
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
                () = sub.gone.cancelled() => return,
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
                if sub.gone.is_cancelled() {
                    return;
                }
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
