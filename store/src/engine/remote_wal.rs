//! Cluster mode: the WAL on the object store (issue 13, "stateless nodes").
//!
//! Every group commit's frames are also PUT as one object `_wal/<node id>/<segment>-<seq>.frame`
//! (a WAL segment's bytes: magic, then the frames with their checksums, read back with
//! [`wal::scan`]) under the tables' prefix, and the group is acknowledged only when that PUT has
//! returned (and the local fsync, kept for a fast local replay). Up to [`IN_FLIGHT`] PUTs run at
//! once ([`upload`]); acknowledgements still go in WAL order. A node that vanishes with its data
//! directory thus leaves every acknowledged frame behind on the shared store.
//!
//! Liveness: each node keeps a row `carewatch_wal_nodes(node, seen_until)` in PostgreSQL
//! renewed every `ttl / 4`, `seen_until` being PostgreSQL's `now() + ttl`. A node acknowledges
//! an append only while its last renewal is younger than `ttl × 3/4` on its own monotonic
//! clock; another node may take its frames only once `seen_until` has passed on PostgreSQL's
//! clock. So every frame a node acknowledged was on the store before anyone could decide it was
//! dead. The taking over itself, fenced by the dead node's `txn` in the Delta log, is in
//! [`takeover`].
//!
//! After a persist, the node's frames of the persisted segments are deleted, as the local
//! segments are.

mod takeover;
mod upload;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjPath;
use postgres::Client;

use super::{Inner, io, lock};
use crate::tables::Table;
use crate::wal;
use crate::{Error, Result};

pub(super) use takeover::adopt;
pub(super) use upload::{Job, Upload, run as uploader};

/// The WAL objects' folder under the tables' prefix.
const ROOT: &str = "_wal";
/// PUTs of group commits running at once.
pub(super) const IN_FLIGHT: usize = 4;
/// The advisory lock taken while creating the liveness table (two nodes starting at once).
const SCHEMA_KEY: i64 = 0x6361_7265_7761_6c31;
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS carewatch_wal_nodes (
    node TEXT PRIMARY KEY,
    seen_until TIMESTAMPTZ NOT NULL
)";
/// The `txn` app id prefix of a node's WAL position (as [`super::node`] makes it).
const APP_ID_PREFIX: &str = "carewatch-wal-";

fn pg_err(e: postgres::Error) -> Error {
    crate::pg_error("cluster WAL liveness", e)
}

/// The `txn` app id of node `id`'s WAL position.
fn app_id_of(id: &str) -> String {
    format!("{APP_ID_PREFIX}{id}")
}

/// The object of one group commit of `node`.
fn frame_path(node: &str, segment: u64, seq: u64) -> ObjPath {
    ObjPath::from(format!("{ROOT}/{node}/{segment:020}-{seq:020}.frame"))
}

/// (segment, seq) of a frame object's name.
fn parse_frame(name: &str) -> Option<(u64, u64)> {
    let (seg, seq) = name.strip_suffix(".frame")?.split_once('-')?;
    Some((seg.parse().ok()?, seq.parse().ok()?))
}

/// One group commit's frames as one object: a WAL segment's bytes.
pub(super) fn body(frames: &[Vec<&[u8]>]) -> Bytes {
    let n: usize = frames.iter().flatten().map(|p| p.len()).sum();
    let mut b = Vec::with_capacity(wal::MAGIC.len() + n + wal::FRAME_HEADER * frames.len());
    b.extend_from_slice(wal::MAGIC);
    for parts in frames {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // The writer cut frames to at most MAX_FRAME bytes (u32).
        b.extend_from_slice(&wal::frame_header(len as u32, parts));
        parts.iter().for_each(|p| b.extend_from_slice(p));
    }
    Bytes::from(b)
}

/// A PostgreSQL connection used from the blocking pool.
struct Pg {
    url: String,
    client: Mutex<Option<Client>>,
}

impl Pg {
    /// Runs `f` on the blocking pool; an error forgets the connection.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Client) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pg = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut slot = pg
                .client
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(super::connect(&pg.url, "cluster WAL liveness")?);
            }
            let out = match slot.as_mut() {
                Some(c) => f(c),
                None => Err(Error::Io("cluster WAL liveness: no connection".into())),
            };
            if out.is_err() {
                *slot = None;
            }
            out
        })
        .await
        .map_err(io)?
    }
}

impl Drop for Pg {
    /// The synchronous client closes its connection by blocking on its own runtime, which must
    /// not happen on an async worker (where the last handle may go): it closes on a thread.
    fn drop(&mut self) {
        let client = self
            .client
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(c) = client {
            let _ = std::thread::Builder::new()
                .name("wal-liveness-close".into())
                .spawn(move || drop(c));
        }
    }
}

/// This node's WAL on the shared store, and its liveness.
pub(super) struct RemoteWal {
    objects: Arc<dyn ObjectStore>,
    node: String,
    pg: Arc<Pg>,
    ttl: Duration,
    /// Until when this node may acknowledge (its last renewal + ttl × 3/4).
    valid_until: Mutex<Option<Instant>>,
    seq: AtomicU64,
    /// Tests only: renewals stopped (the node looks dead to the others while it runs).
    stopped: AtomicBool,
}

impl RemoteWal {
    /// Creates the liveness table if needed and renews this node's row once, so the row exists
    /// before any frame does.
    pub(super) async fn start(
        objects: Arc<dyn ObjectStore>,
        app_id: &str,
        url: &str,
        ttl: Duration,
    ) -> Result<Arc<RemoteWal>> {
        let node = match app_id.strip_prefix(APP_ID_PREFIX) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => {
                return Err(Error::Config(
                    "cluster mode needs a data directory with a node id (one made before node ids cannot keep its WAL on the object store); start the node on a new data directory".into(),
                ));
            }
        };
        let pg = Arc::new(Pg {
            url: url.to_owned(),
            client: Mutex::new(None),
        });
        pg.run(|c| {
            let mut tx = c.transaction().map_err(pg_err)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_KEY])
                .map_err(pg_err)?;
            tx.batch_execute(SCHEMA).map_err(pg_err)?;
            tx.commit().map_err(pg_err)
        })
        .await?;
        let r = Arc::new(RemoteWal {
            objects,
            node,
            pg,
            ttl,
            valid_until: Mutex::new(None),
            seq: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        r.heartbeat().await?;
        Ok(r)
    }

    /// Renews this node's liveness row.
    async fn heartbeat(&self) -> Result<()> {
        let started = Instant::now();
        let (node, ms) = (self.node.clone(), self.ttl.as_millis() as i64);
        self.pg
            .run(move |c| {
                c.execute(
                    "INSERT INTO carewatch_wal_nodes (node, seen_until)
                     VALUES ($1, now() + $2::BIGINT * INTERVAL '1 millisecond')
                     ON CONFLICT (node) DO UPDATE SET seen_until = EXCLUDED.seen_until",
                    &[&node, &ms],
                )
                .map_err(pg_err)
            })
            .await?;
        *self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(started + self.ttl - self.ttl / 4);
        Ok(())
    }

    /// Whether this node may acknowledge now (no other node can have taken it for dead).
    pub(super) fn valid(&self) -> bool {
        self.valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| Instant::now() < t)
    }

    /// Tests only: stops renewing, as a node cut off from PostgreSQL would.
    pub(super) fn stop_heartbeat(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// The object name of the next group commit in `segment`.
    pub(super) fn next_path(&self, segment: u64) -> ObjPath {
        frame_path(
            &self.node,
            segment,
            self.seq.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// The nodes with frames on the store.
    async fn nodes(&self) -> Result<Vec<String>> {
        let listed = self
            .objects
            .list_with_delimiter(Some(&ObjPath::from(ROOT)))
            .await
            .map_err(io)?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// The nodes whose liveness row has not run out.
    async fn live(&self) -> Result<HashSet<String>> {
        self.pg
            .run(|c| {
                let rows = c
                    .query(
                        "SELECT node FROM carewatch_wal_nodes WHERE seen_until > now()",
                        &[],
                    )
                    .map_err(pg_err)?;
                Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
            })
            .await
    }

    /// A node's frame objects, in WAL order: (segment, path).
    async fn frames_of(&self, node: &str) -> Result<Vec<(u64, u64, ObjPath)>> {
        let prefix = ObjPath::from(format!("{ROOT}/{node}"));
        let metas: Vec<_> = self
            .objects
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(io)?;
        let mut out: Vec<(u64, u64, ObjPath)> = metas
            .into_iter()
            .filter_map(|m| {
                let (seg, seq) = parse_frame(m.location.filename()?)?;
                Some((seg, seq, m.location))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Deletes `node`'s frames of segments up to `upto` (persisted or adopted), in one bulk
    /// request per 1,000 where the store has one (S3's DeleteObjects): a persist after a
    /// second of load has some fifty frames, deleted one by one they held the persist lock —
    /// and so the follow of the others' commits — for a round trip each.
    async fn delete_frames(&self, node: &str, upto: u64) -> Result<()> {
        use futures::StreamExt as _;
        let paths: Vec<object_store::Result<ObjPath>> = self
            .frames_of(node)
            .await?
            .into_iter()
            .take_while(|(seg, _, _)| *seg <= upto)
            .map(|(_, _, path)| Ok(path))
            .collect();
        let mut deleted = self
            .objects
            .delete_stream(futures::stream::iter(paths).boxed());
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(())
    }

    /// After a persist: this node's frames of the persisted segments go (a failure only
    /// leaves them for the next persist, or for an adoption that skips them by the `txn`).
    pub(super) async fn persisted(&self, upto: u64) {
        if let Err(e) = self.delete_frames(&self.node.clone(), upto).await {
            tracing::warn!(error = %e, "deleting persisted WAL objects failed; the next persist retries");
        }
    }
}

/// Renews the node's liveness every `ttl / 4` while the store is open.
pub(super) async fn keep_alive(inner: Weak<Inner>) {
    loop {
        let Some((remote, ttl)) = inner
            .upgrade()
            .and_then(|i| i.remote.clone())
            .map(|r| (r.clone(), r.ttl))
        else {
            return;
        };
        if remote.stopped.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = remote.heartbeat().await {
            tracing::warn!(error = %e, "renewing this node's cluster WAL liveness failed; appends are refused once it lapses");
        }
        drop(remote);
        tokio::time::sleep(ttl / 4).await;
    }
}

/// A persist refused because another node adopted this node's frames up to `upto`: the
/// buffered rows of `table` from those segments are in the table already, so they leave the
/// buffer (never committed twice).
pub(super) fn drop_adopted(inner: &Inner, table: Table, upto: u64) {
    let rows = super::persist::drop_buffered(&mut lock(&inner.state), table, upto);
    tracing::warn!(
        table = table.name(),
        rows,
        "rows another node adopted from this node's WAL left the buffer"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_names_sort_in_wal_order_and_parse_back() {
        let a = frame_path("0a1b", 2, 9);
        let b = frame_path("0a1b", 10, 0);
        assert!(a.as_ref() < b.as_ref());
        assert_eq!(parse_frame(b.filename().expect("name")), Some((10, 0)));
        assert_eq!(parse_frame("x.frame"), None);
        assert_eq!(app_id_of("0a1b"), "carewatch-wal-0a1b");
    }

    #[test]
    fn a_frame_object_reads_back_as_a_segment() {
        let (p, q) = (b"one".as_slice(), b"two".as_slice());
        let body = body(&[vec![p, q], vec![q]]);
        let (frames, damage) = wal::scan(&body);
        assert!(damage.is_none());
        assert_eq!(frames, vec![b"onetwo".as_slice(), b"two".as_slice()]);
    }
}
