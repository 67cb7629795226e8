//! Who alerts for which patient (cluster mode, issue 13): patients hash to [`PARTITIONS`]
//! fixed partitions, and each partition is owned by at most one live node at any moment
//! through a lease row in PostgreSQL. One interface, [`Ownership`], two implementations:
//! [`Everything`] (a single node owns every partition; no configuration, no files) and
//! [`Leases`] (PostgreSQL).
//!
//! Tables: `carewatch_alert_leases(part, owner, expires_at)` (one row per partition) and
//! `carewatch_alert_nodes(node, seen_until)` (heartbeats). Every [`Config::renew`] each node
//! runs one round, in one transaction serialised by an advisory lock (rounds are a few
//! statements, so nodes never wait long): heartbeat; `share` = ⌈partitions / live nodes⌉;
//! renew its own unexpired leases; claim expired or free ones up to `share`; release what it
//! holds beyond `share` (so a joining node gets its part). Every time is PostgreSQL's
//! `now()`, so the nodes' clocks do not matter.
//!
//! No two nodes believe they own a partition at once: a node counts a lease as its own only
//! until `round start + ttl − margin` on its own monotonic clock, while PostgreSQL lets another
//! node take it only after `now() + ttl` of that round's transaction, which began after the
//! round started. A node that cannot reach PostgreSQL thus stops alerting for its partitions
//! before anyone else starts; a killed node's partitions are taken within `ttl + renew`.
//! Shutting down releases the leases at once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use postgres::Client;
use sha2::{Digest, Sha256};

use crate::engine::connect;
use crate::{Error, Result};

/// The number of partitions patients hash to. Fixed: changing it moves patients.
pub const PARTITIONS: u16 = 64;

/// The partition whose owner also delivers the cluster's webhooks (one deliverer at a time,
/// moving with the lease).
pub const DELIVERY_PARTITION: u16 = 0;

/// The partition of a patient (the first 8 bytes of SHA-256 of its id, modulo
/// [`PARTITIONS`]): the same on every node and every version.
pub fn partition_of(patient: &str) -> u16 {
    let d = Sha256::digest(patient.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) % u64::from(PARTITIONS)) as u16
}

/// Whether this node alerts for a partition (and so for a patient).
pub trait Ownership: Send + Sync + std::fmt::Debug {
    /// Whether this node owns partition `p` now.
    fn owns_partition(&self, p: u16) -> bool;
    /// The partitions this node owns now.
    fn owned(&self) -> BTreeSet<u16>;
    /// Whether this node alerts for `patient` now.
    fn owns(&self, patient: &str) -> bool {
        self.owns_partition(partition_of(patient))
    }
    /// The node's name in the lease table, which fences its writes for its partitions
    /// (`None`: a single node, nothing to fence).
    fn node(&self) -> Option<&str> {
        None
    }
}

/// A single node: every partition is its own.
#[derive(Debug, Default, Clone, Copy)]
pub struct Everything;

impl Ownership for Everything {
    fn owns_partition(&self, p: u16) -> bool {
        p < PARTITIONS
    }
    fn owned(&self) -> BTreeSet<u16> {
        (0..PARTITIONS).collect()
    }
}

/// Timing of the leases.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name in the lease table (unique per live node).
    pub node: String,
    /// A lease not renewed for this long expires.
    pub ttl: Duration,
    /// How often a node renews (and claims, and rebalances).
    pub renew: Duration,
    /// Kept off the local end of a lease, for the round trip and scheduling delays.
    pub margin: Duration,
}

impl Config {
    /// Leases of 5 s renewed every 1.5 s, under a random node name (a restarted process is a
    /// new node: it claims afresh rather than resuming a dead process's leases).
    pub fn random() -> Result<Config> {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| Error::Io(format!("lease node name: {e}")))?;
        Ok(Config::new(
            b.iter().map(|x| format!("{x:02x}")).collect::<String>(),
        ))
    }

    /// Leases of 5 s renewed every 1.5 s.
    pub fn new(node: impl Into<String>) -> Config {
        Config {
            node: node.into(),
            ttl: Duration::from_secs(5),
            renew: Duration::from_millis(1500),
            margin: Duration::from_millis(500),
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS carewatch_alert_leases (
    part INT PRIMARY KEY,
    owner TEXT,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS carewatch_alert_nodes (
    node TEXT PRIMARY KEY,
    seen_until TIMESTAMPTZ NOT NULL
);
";
/// The advisory lock that serialises lease rounds ("cwleases").
const ROUND_KEY: i64 = 0x6377_6c65_6173_6573;

fn pg_err(e: postgres::Error) -> Error {
    crate::pg_error("alert leases", e)
}

#[derive(Debug, Default)]
struct Held {
    parts: BTreeSet<u16>,
    /// Local end of every lease in `parts`.
    until: Option<Instant>,
    /// Stopped: a round still running must not make it own anything again.
    stopped: bool,
}

/// Leases in PostgreSQL, kept by a thread of their own.
#[derive(Debug)]
pub struct Leases {
    node: String,
    held: Arc<Mutex<Held>>,
    stop: Mutex<Option<mpsc::Sender<bool>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Ownership for Leases {
    fn owns_partition(&self, p: u16) -> bool {
        let h = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        h.until.is_some_and(|u| Instant::now() < u) && h.parts.contains(&p)
    }
    fn node(&self) -> Option<&str> {
        Some(&self.node)
    }
    fn owned(&self) -> BTreeSet<u16> {
        let h = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match h.until {
            Some(u) if Instant::now() < u => h.parts.clone(),
            _ => BTreeSet::new(),
        }
    }
}

impl Leases {
    /// Whether this node is in touch with PostgreSQL: its last lease round succeeded less
    /// than a lease's life ago (less the margin). A node out of touch owns nothing, cannot
    /// commit to shared tables nor append to the shared alert history: `/readyz` says so.
    pub fn in_touch(&self) -> bool {
        let h = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        h.until.is_some_and(|u| Instant::now() < u)
    }

    /// Connects, creates the tables if they are missing, runs a first round and keeps renewing.
    pub fn start(url: &str, config: Config) -> Result<Leases> {
        let mut client = connect(url, "alert leases")?;
        setup(&mut client)?;
        let held = Arc::new(Mutex::new(Held::default()));
        round(&mut client, &config, &held)?;
        let (stop, stopped) = mpsc::channel::<bool>();
        let node = config.node.clone();
        let (url, h) = (url.to_owned(), held.clone());
        let thread = std::thread::Builder::new()
            .name("alert-leases".into())
            .spawn(move || keep(url, client, config, h, stopped))
            .map_err(|e| Error::Io(format!("alert leases thread: {e}")))?;
        Ok(Leases {
            node,
            held,
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops renewing. `release`: ownership ends now and the leases are given back at once (a
    /// clean shutdown); else they run out as a killed or cut-off node's would, and this node's
    /// ownership lapses before they do. Blocks until the leases thread has finished (call it
    /// off the async workers).
    pub fn stop(&self, release: bool) {
        self.signal(release);
        let t = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    fn signal(&self, release: bool) {
        {
            let mut h = self
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            h.stopped = true;
            // Not released: the leases stand in PostgreSQL until they expire, and this node's
            // view lapses by itself before that (as a node cut off from PostgreSQL does).
            if release {
                *h = Held {
                    stopped: true,
                    ..Held::default()
                };
            }
        }
        let tx = self
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(release);
        }
    }
}

impl Drop for Leases {
    /// Releases the leases from the leases thread, without waiting for it.
    fn drop(&mut self) {
        self.signal(true);
    }
}

fn setup(c: &mut Client) -> Result<()> {
    let mut tx = c.transaction().map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ROUND_KEY])
        .map_err(pg_err)?;
    tx.batch_execute(SCHEMA).map_err(pg_err)?;
    tx.execute(
        "INSERT INTO carewatch_alert_leases (part, owner, expires_at)
         SELECT g, NULL, '-infinity' FROM generate_series(0, $1::INT - 1) g
         ON CONFLICT DO NOTHING",
        &[&i32::from(PARTITIONS)],
    )
    .map_err(pg_err)?;
    tx.commit().map_err(pg_err)
}

/// The renewing loop: a round every `renew`, reconnecting after a failure (ownership lapses
/// locally meanwhile), until told to stop.
fn keep(
    url: String,
    client: Client,
    config: Config,
    held: Arc<Mutex<Held>>,
    stop: mpsc::Receiver<bool>,
) {
    let mut client = Some(client);
    loop {
        match stop.recv_timeout(config.renew) {
            Ok(release) => {
                if release && let Some(c) = client.as_mut() {
                    if let Err(e) = give_back(c, &config.node) {
                        tracing::warn!(error = %e, "releasing the alert leases failed; they run out");
                    }
                }
                return;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if client.is_none() {
            client = connect(&url, "alert leases")
                .inspect_err(|e| tracing::warn!(error = %e, "alert leases: reconnecting failed"))
                .ok();
        }
        let Some(c) = client.as_mut() else { continue };
        if let Err(e) = round(c, &config, &held) {
            tracing::warn!(error = %e, "renewing the alert leases failed; retrying");
            client = None;
        }
    }
}

/// One round (see the module's description). The local view changes only after the commit,
/// except that released partitions leave it before (never owned twice).
fn round(c: &mut Client, config: &Config, held: &Mutex<Held>) -> Result<()> {
    let started = Instant::now();
    let ttl = config.ttl.as_millis() as i64;
    let me = config.node.as_str();
    let mut tx = c.transaction().map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ROUND_KEY])
        .map_err(pg_err)?;
    tx.execute(
        "INSERT INTO carewatch_alert_nodes (node, seen_until) VALUES ($1, now() + $2::BIGINT * INTERVAL '1 millisecond')
         ON CONFLICT (node) DO UPDATE SET seen_until = EXCLUDED.seen_until",
        &[&me, &ttl],
    )
    .map_err(pg_err)?;
    let live: i64 = tx
        .query_one(
            "SELECT count(*) FROM carewatch_alert_nodes WHERE seen_until > now()",
            &[],
        )
        .map_err(pg_err)?
        .get(0);
    let live = live.max(1);
    let share = (i64::from(PARTITIONS) + live - 1) / live;
    let parts = |rows: Vec<postgres::Row>| -> BTreeSet<u16> {
        rows.iter().map(|r| r.get::<_, i32>(0) as u16).collect()
    };
    let mut mine = parts(
        tx.query(
            "UPDATE carewatch_alert_leases SET expires_at = now() + $2::BIGINT * INTERVAL '1 millisecond'
             WHERE owner = $1 AND expires_at > now() RETURNING part",
            &[&me, &ttl],
        )
        .map_err(pg_err)?,
    );
    let want = share - mine.len() as i64;
    if want > 0 {
        mine.extend(parts(
            tx.query(
                "UPDATE carewatch_alert_leases SET owner = $1, expires_at = now() + $2::BIGINT * INTERVAL '1 millisecond'
                 WHERE part IN (SELECT part FROM carewatch_alert_leases
                                WHERE expires_at <= now() ORDER BY part LIMIT $3)
                 RETURNING part",
                &[&me, &ttl, &want],
            )
            .map_err(pg_err)?,
        ));
    }
    let extra: Vec<i32> = mine
        .iter()
        .rev()
        .take((-want).max(0) as usize)
        .map(|p| i32::from(*p))
        .collect();
    if !extra.is_empty() {
        {
            let mut h = held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for p in &extra {
                h.parts.remove(&(*p as u16));
                mine.remove(&(*p as u16));
            }
        }
        tx.execute(
            "UPDATE carewatch_alert_leases SET owner = NULL, expires_at = '-infinity'
             WHERE owner = $1 AND part = ANY($2)",
            &[&me, &extra],
        )
        .map_err(pg_err)?;
    }
    tx.commit().map_err(pg_err)?;
    let until = started + config.ttl.saturating_sub(config.margin);
    let mut h = held
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !h.stopped {
        (h.parts, h.until) = (mine, Some(until));
    }
    Ok(())
}

fn give_back(c: &mut Client, me: &str) -> Result<()> {
    c.execute(
        "UPDATE carewatch_alert_leases SET owner = NULL, expires_at = '-infinity' WHERE owner = $1",
        &[&me],
    )
    .map_err(pg_err)?;
    c.execute("DELETE FROM carewatch_alert_nodes WHERE node = $1", &[&me])
        .map_err(pg_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition_of("p-1"), partition_of("p-1"));
        let used: BTreeSet<u16> = (0..1000).map(|i| partition_of(&format!("p-{i}"))).collect();
        assert_eq!(
            used.len(),
            usize::from(PARTITIONS),
            "1000 patients reach every partition"
        );
        assert!(Everything.owns("anyone") && Everything.owned().len() == 64);
    }
}
