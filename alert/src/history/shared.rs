//! The history shared by a cluster's nodes in PostgreSQL ([`carewatch_store::shared_log`]):
//! every node holds every transition in memory, as a single node does with its file; a
//! thread follows what the other nodes append (woken by PostgreSQL NOTIFY at each append's
//! commit, and every 250 ms) and tells the engine
//! ([`History::follow_foreign`]) so that its alerts stand as everyone wrote them. An append
//! first takes in what others wrote since; it is refused, with nothing written, when one of
//! those touched an alert it is about to change (the engine decides again next run) or when
//! this node no longer holds the lease of a patient's partition it writes for (a
//! transition a person made, such as an acknowledgement, is not fenced: any node takes it).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use carewatch_store::lease::{DELIVERY_PARTITION, partition_of};
use carewatch_store::shared_log::{AppendWatch, Entry, Refusal, SharedLog};

use super::{History, Transition, parse_line};

/// Told of transitions other nodes wrote, in history order.
pub type ForeignListener = Box<dyn Fn(&[Arc<Transition>]) + Send + Sync>;

/// Entries read per query (a node opening a long history reads it in such steps).
const READ_AT_ONCE: i64 = 10_000;

/// How often a node reads what the others appended when no notification woke it.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// The shared part of a [`History`].
pub(super) struct Shared {
    log: SharedLog,
    /// This node's lease name (fences its transitions).
    node: Option<String>,
    /// Serialises the follower and appends: the rows' length is the log position.
    sync: Mutex<()>,
    listeners: Mutex<Vec<ForeignListener>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn io(e: carewatch_store::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl History {
    /// The history in PostgreSQL at `url` (creating its table), read whole, then followed by
    /// a thread of its own while the returned history lives. `node`: this node's lease name.
    /// `data_dir` only names the history (webhook positions stay beside it). Blocking.
    pub fn open_shared(
        url: &str,
        data_dir: &std::path::Path,
        node: Option<String>,
    ) -> std::io::Result<Arc<History>> {
        let log = SharedLog::open(url).map_err(io)?;
        let h = Arc::new(History {
            path: super::files::history_path(data_dir, true)?,
            file: Mutex::new(None),
            rows: Default::default(),
            shared: Some(Shared {
                log,
                node,
                sync: Mutex::new(()),
                listeners: Mutex::new(Vec::new()),
            }),
        });
        // Listening before the first read, so no append after it goes unheard.
        let watch = Watch::open(url);
        h.follow_once().map_err(io)?;
        let weak = Arc::downgrade(&h);
        std::thread::Builder::new()
            .name("alert-history".into())
            .spawn(move || follow(weak, watch))?;
        Ok(h)
    }

    /// Whether the history is shared by a cluster.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Registers `f` for the transitions other nodes write from now on, and returns every
    /// transition before them (the caller folds those; none is missed or told twice).
    pub fn follow_foreign(&self, f: ForeignListener) -> Vec<Arc<Transition>> {
        let Some(s) = &self.shared else {
            return self.since(0);
        };
        let _g = lock(&s.sync);
        lock(&s.listeners).push(f);
        self.since(0)
    }

    /// Webhook receiver `name`'s position in the cluster, and whether any receiver has one
    /// (`None` on a single node's history). Blocking.
    pub fn shared_position(&self, name: &str) -> std::io::Result<Option<(Option<u64>, bool)>> {
        let Some(s) = &self.shared else {
            return Ok(None);
        };
        s.log.position(name).map(Some).map_err(io)
    }

    /// Saves receiver `name`'s position while this node delivers (holds the lease of
    /// [`DELIVERY_PARTITION`]): `false` when it no longer does. Blocking.
    pub fn save_shared_position(&self, name: &str, next: u64) -> std::io::Result<bool> {
        let Some(s) = &self.shared else {
            return Ok(false);
        };
        let Some(node) = &s.node else {
            return Ok(false);
        };
        s.log
            .save_position(name, next, node, DELIVERY_PARTITION)
            .map_err(io)
    }

    /// Reads what other nodes appended and tells the listeners.
    fn follow_once(&self) -> carewatch_store::Result<()> {
        let Some(s) = &self.shared else { return Ok(()) };
        let _g = lock(&s.sync);
        loop {
            let from = self.len() as u64;
            let found = s.log.read_from(from, READ_AT_ONCE)?;
            let more = found.len() as i64 == READ_AT_ONCE;
            self.take_foreign(s, found)?;
            if !more {
                return Ok(());
            }
        }
    }

    /// Adds other nodes' entries to the rows and tells the listeners. Under `sync`. An entry
    /// that does not parse (a newer version's?) stops it there: the rows stay numbered as the
    /// log is, and following resumes once a node that reads it runs.
    fn take_foreign(&self, s: &Shared, found: Vec<(u64, Vec<u8>)>) -> carewatch_store::Result<()> {
        let mut ts = Vec::with_capacity(found.len());
        let mut bad = None;
        for (seq, body) in found {
            match parse_line(&body) {
                Some(mut t) => {
                    t.seq = seq;
                    ts.push(Arc::new(t));
                }
                None => {
                    bad = Some(seq);
                    break;
                }
            }
        }
        if !ts.is_empty() {
            self.rows
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .extend(ts.iter().cloned());
            for l in lock(&s.listeners).iter() {
                l(&ts);
            }
        }
        match bad {
            Some(seq) => Err(carewatch_store::Error::Io(format!(
                "alert history: entry {seq} of the shared log does not parse"
            ))),
            None => Ok(()),
        }
    }

    /// Appends to the shared log (see the module's doc); the rows get the log's numbering.
    pub(super) fn append_shared(
        &self,
        s: &Shared,
        mut ts: Vec<Transition>,
    ) -> std::io::Result<Vec<Arc<Transition>>> {
        let _g = lock(&s.sync);
        let from = self.len() as u64;
        let entries = ts
            .iter()
            .map(|t| {
                Ok(Entry {
                    key: t.alert_id.clone(),
                    part: t.actor.is_none().then(|| partition_of(&t.patient_id)),
                    body: serde_json::to_vec(t).map_err(std::io::Error::other)?,
                })
            })
            .collect::<std::io::Result<Vec<Entry>>>()?;
        let done = s
            .log
            .append(from, &entries, s.node.as_deref(), &|b| {
                parse_line(b).is_some()
            })
            .map_err(io)?;
        let first = from + done.foreign.len() as u64;
        self.take_foreign(s, done.foreign).map_err(io)?;
        match done.refused {
            Some(Refusal::Conflict) => {
                return Err(std::io::Error::other(
                    "another node changed the same alert meanwhile",
                ));
            }
            Some(Refusal::Unreadable) => {
                return Err(std::io::Error::other(
                    "an entry of the shared alert history does not parse",
                ));
            }
            Some(Refusal::NotOwner) => {
                return Err(std::io::Error::other(
                    "this node no longer owns the patient's alert partition",
                ));
            }
            None => {}
        }
        for (i, t) in ts.iter_mut().enumerate() {
            t.seq = first + i as u64;
        }
        Ok(self.visible(ts))
    }
}

/// What wakes the follower: an append any node commits (PostgreSQL NOTIFY), or
/// [`FOLLOW_EVERY`] passing — the poll stays, for a notification lost with a connection.
struct Watch {
    url: String,
    watch: Option<AppendWatch>,
    /// The last attempt to listen succeeded (or none was made yet).
    listened: bool,
}

impl Watch {
    fn open(url: &str) -> Watch {
        let mut w = Watch {
            url: url.to_owned(),
            watch: None,
            listened: true,
        };
        w.connect();
        w
    }

    /// Listens again; only the first of a run of failures is logged.
    fn connect(&mut self) {
        let was_listening = self.listened;
        self.watch = SharedLog::watch(&self.url)
            .inspect_err(|e| {
                if was_listening {
                    tracing::warn!(error = %e, "alert history: cannot listen for appends; polling");
                }
            })
            .ok();
        self.listened = self.watch.is_some();
    }

    /// Until an append or [`FOLLOW_EVERY`]; a lost connection is opened again on the next
    /// wait (the poll covers the gap).
    fn wait(&mut self) {
        match &mut self.watch {
            Some(w) => {
                if w.wait(FOLLOW_EVERY).is_err() {
                    self.watch = None;
                    std::thread::sleep(FOLLOW_EVERY);
                }
            }
            None => {
                std::thread::sleep(FOLLOW_EVERY);
                self.connect();
            }
        }
    }
}

/// Follows the shared log until the history is dropped.
fn follow(h: Weak<History>, mut watch: Watch) {
    let mut failing = false;
    loop {
        watch.wait();
        let Some(h) = h.upgrade() else { return };
        match h.follow_once() {
            Ok(()) if failing => {
                tracing::info!("alert history: following the shared log again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "alert history: cannot read the shared log; retrying");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
