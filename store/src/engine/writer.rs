//! The WAL writer thread: group commit.
//!
//! Whatever queued while the previous fsync ran is one group: it is cut into frames no larger
//! than replay accepts ([`wal::MAX_FRAME`]), written, and synced once. Then the group's rows
//! become buffer chunks (one batch per frame, so no Arrow array nears its 2 GiB offset limit)
//! and every append of the group is answered — in cluster mode by the uploader
//! ([`remote_wal`]) once the group's frames are also an object on the shared store. A writer that cannot go on says so through
//! [`Health`]; it never dies quietly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use tokio::sync::{mpsc, oneshot};

use super::{Chunk, Health, Inner, chunk_bytes, dead_batch, lock, remote_wal, rows_batch};
use crate::tables::Table;
use crate::wal::{self, Wal};
use crate::{Config, DeadLetter, Error, Result, Row};

/// One append waiting for its group commit.
pub(super) struct Append {
    /// The encoded records.
    pub payload: Vec<u8>,
    pub rows: Vec<Row>,
    pub dead: Vec<DeadLetter>,
    pub done: oneshot::Sender<Result<()>>,
}

/// What the writer thread is asked to do.
pub(super) enum Cmd {
    Append(Append),
    Rotate {
        done: oneshot::Sender<Result<u64>>,
    },
    /// Tests only: the writer fails as a bug would (a panic), to prove it is seen.
    InjectPanic,
}

/// Appends sharing one WAL frame.
#[derive(Default)]
struct Frame {
    appends: Vec<Append>,
    bytes: usize,
}

/// Appends sharing one fsync, cut into frames.
struct Group {
    frames: Vec<Frame>,
    items: usize,
}

impl Group {
    fn new(first: Append) -> Group {
        let mut g = Group {
            frames: vec![Frame::default()],
            items: 0,
        };
        g.push(first);
        g
    }

    fn push(&mut self, a: Append) {
        self.items += a.rows.len() + a.dead.len();
        let fits = self
            .frames
            .last()
            .is_some_and(|f| f.appends.is_empty() || f.bytes + a.payload.len() <= wal::MAX_FRAME);
        if !fits {
            self.frames.push(Frame::default());
        }
        if let Some(f) = self.frames.last_mut() {
            f.bytes += a.payload.len();
            f.appends.push(a);
        }
    }

    fn appends(self) -> impl Iterator<Item = Append> {
        self.frames.into_iter().flat_map(|f| f.appends)
    }

    fn fail(self, e: &std::io::Error) {
        for a in self.appends() {
            let _ = a.done.send(Err(Error::Wal(std::io::Error::new(
                e.kind(),
                e.to_string(),
            ))));
        }
    }
}

/// Gathers what else is queued (up to `max_commit_rows`, waiting up to `commit_delay`). A
/// rotation request ends the group and is returned to run next.
fn gather(first: Append, rx: &mut mpsc::Receiver<Cmd>, config: &Config) -> (Group, Option<Cmd>) {
    let mut g = Group::new(first);
    let deadline = Instant::now() + config.commit_delay;
    while g.items < config.max_commit_rows {
        match rx.try_recv() {
            Ok(Cmd::Append(a)) => g.push(a),
            Ok(other) => return (g, Some(other)),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(200)),
            Err(_) => break,
        }
    }
    (g, None)
}

/// Buffer batches and counters of a written group.
pub(super) struct Built {
    batches: Vec<(Table, RecordBatch)>,
    by_source: Vec<(&'static str, u64)>,
    by_reason: Vec<((&'static str, &'static str), u64)>,
}

fn count<K: PartialEq>(v: &mut Vec<(K, u64)>, k: K) {
    match v.iter_mut().find(|x| x.0 == k) {
        Some(x) => x.1 += 1,
        None => v.push((k, 1)),
    }
}

/// One batch per table per frame: a frame is at most [`wal::MAX_FRAME`] bytes, so no batch
/// column can overflow Arrow's 32-bit offsets.
fn build(group: &mut Group) -> Result<Built> {
    let mut b = Built {
        batches: Vec::new(),
        by_source: Vec::new(),
        by_reason: Vec::new(),
    };
    for f in &mut group.frames {
        let rows: Vec<Row> = f
            .appends
            .iter_mut()
            .flat_map(|a| std::mem::take(&mut a.rows))
            .collect();
        let dead: Vec<DeadLetter> = f
            .appends
            .iter_mut()
            .flat_map(|a| std::mem::take(&mut a.dead))
            .collect();
        rows.iter()
            .for_each(|r| count(&mut b.by_source, r.source.as_str()));
        dead.iter().for_each(|d| {
            count(&mut b.by_reason, (d.source.as_str(), d.reason.code()));
        });
        if !rows.is_empty() {
            b.batches.push((Table::Observations, rows_batch(&rows)?));
        }
        if !dead.is_empty() {
            b.batches.push((Table::DeadLetters, dead_batch(&dead)?));
        }
    }
    Ok(b)
}

/// Makes a written group visible in the buffer and counts it.
pub(super) fn publish(inner: &Inner, segment: u64, built: Built, took: Duration) {
    let mut st = lock(&inner.state);
    let now = Instant::now();
    for (table, batch) in built.batches {
        let n = batch.num_rows();
        st.rows += n;
        st.bytes += chunk_bytes(&batch);
        match table {
            Table::Observations => st.stats.rows_appended += n as u64,
            Table::DeadLetters => st.stats.dead_appended += n as u64,
            Table::Alerts => {}
        }
        st.chunks.push(Chunk {
            segment,
            at: now,
            table,
            batch,
        });
    }
    st.stats.commits += 1;
    st.stats.commit_seconds.observe(took);
    for (k, n) in built.by_source {
        *st.stats.rows_by_source.entry(k).or_default() += n;
    }
    for (k, n) in built.by_reason {
        *st.stats.dead_by_reason.entry(k).or_default() += n;
    }
}

/// A segment whose failed write could not be cut back must not be appended to: later frames
/// would sit behind garbage that replay stops at. Start a fresh segment first.
fn ensure_clean(wal: &mut Wal, health: &Health) -> std::io::Result<()> {
    if !wal.dirty() {
        return Ok(());
    }
    match wal.rotate() {
        Ok(_) => {
            health.set_broken(None);
            Ok(())
        }
        Err(e) => {
            health.set_broken(Some(format!(
                "WAL segment could not be cut back after a failed write and no new segment could be created: {e}"
            )));
            Err(e)
        }
    }
}

/// Writes, syncs once, publishes and answers one group.
fn commit(wal: &mut Wal, mut group: Group, inner: &Inner, health: &Health) {
    if let Err(e) = ensure_clean(wal, health) {
        group.fail(&e);
        return;
    }
    let frames: Vec<Vec<&[u8]>> = group
        .frames
        .iter()
        .map(|f| f.appends.iter().map(|a| a.payload.as_slice()).collect())
        .collect();
    let started = Instant::now();
    let res = wal.append_frames(&frames);
    let took = started.elapsed();
    // Cluster mode: the same frames as one object for the shared store.
    let body = inner.upload.as_ref().map(|_| remote_wal::body(&frames));
    drop(frames);
    if let Err(e) = res {
        tracing::error!(error = %e, "WAL write failed; appends refused until it succeeds");
        let _ = ensure_clean(wal, health);
        group.fail(&e);
        return;
    }
    match build(&mut group) {
        Ok(built) => match (&inner.upload, &inner.remote, body) {
            (Some(up), Some(remote), Some(body)) => {
                let job = remote_wal::Job::Group(Box::new(remote_wal::Upload {
                    path: remote.next_path(wal.id()),
                    body,
                    segment: wal.id(),
                    built,
                    took,
                    appends: group.appends().collect(),
                }));
                hand_over(up, job);
            }
            _ => {
                publish(inner, wal.id(), built, took);
                for a in group.appends() {
                    let _ = a.done.send(Ok(()));
                }
            }
        },
        Err(e) => {
            // Durable in the WAL but not buffered: replay will bring it back.
            tracing::error!(error = %e, "building buffer batch failed");
            for a in group.appends() {
                let _ = a.done.send(Err(Error::Encode(e.to_string())));
            }
        }
    }
    if wal.size() >= inner.config.segment_bytes
        && let Err(e) = wal.rotate()
    {
        tracing::error!(error = %e, "WAL rotation failed");
    }
}

/// Cluster mode: gives a written group (or a rotation's answer) to the uploader, which
/// answers it in order once its object is on the store.
fn hand_over(up: &mpsc::Sender<remote_wal::Job>, job: remote_wal::Job) {
    if let Err(mpsc::error::SendError(job)) = up.blocking_send(job) {
        let why = "the WAL uploader stopped";
        match job {
            remote_wal::Job::Group(u) => {
                for a in u.appends {
                    let _ = a.done.send(Err(Error::Wal(std::io::Error::other(why))));
                }
            }
            remote_wal::Job::Barrier(done, _) => {
                let _ = done.send(Err(Error::Closed));
            }
        }
    }
}

/// Marks the writer stopped when its thread ends, by return or by panic.
struct Guard(Arc<Health>);

impl Drop for Guard {
    fn drop(&mut self) {
        let why = if std::thread::panicking() {
            "the WAL writer failed (panic); appends are refused until restart"
        } else {
            "the WAL writer stopped"
        };
        self.0.set_dead(why);
    }
}

/// The writer thread.
pub(super) fn writer(
    mut wal: Wal,
    mut rx: mpsc::Receiver<Cmd>,
    inner: std::sync::Weak<Inner>,
    health: Arc<Health>,
) {
    let _guard = Guard(health.clone());
    let mut pending: Option<Cmd> = None;
    loop {
        let cmd = match pending.take() {
            Some(c) => c,
            None => match rx.blocking_recv() {
                Some(c) => c,
                None => return,
            },
        };
        let Some(inn) = inner.upgrade() else { return };
        match cmd {
            Cmd::Rotate { done } => {
                let r = ensure_clean(&mut wal, &health).and_then(|()| wal.rotate());
                let r = r.map_err(Error::Wal);
                match &inn.upload {
                    // Answered once the groups before it are on the store and visible.
                    Some(up) => hand_over(up, remote_wal::Job::Barrier(done, r)),
                    None => {
                        let _ = done.send(r);
                    }
                }
            }
            Cmd::InjectPanic => {
                #[allow(clippy::panic)]
                {
                    panic!("injected WAL writer failure (test)")
                }
            }
            Cmd::Append(first) => {
                let (group, next) = gather(first, &mut rx, &inn.config);
                pending = next;
                commit(&mut wal, group, &inn, &health);
            }
        }
    }
}
