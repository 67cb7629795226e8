//! The uploader: group commits the WAL writer thread wrote and fsynced are PUT to the object
//! store, up to [`IN_FLIGHT`] at once, and made visible and acknowledged in WAL order when
//! their PUT returned. A rotation (a persist's) waits behind the groups before it, so a
//! persist never misses a group of the segments it closes.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjPath;
use tokio::sync::{mpsc, oneshot};

use super::super::Inner;
use super::super::writer::{Append, Built, publish};
use super::{IN_FLIGHT, RemoteWal};
use crate::{Error, Result};

/// One written group commit waiting for its PUT.
pub(in crate::engine) struct Upload {
    pub(in crate::engine) path: ObjPath,
    pub(in crate::engine) body: Bytes,
    pub(in crate::engine) segment: u64,
    pub(in crate::engine) built: Built,
    /// The local write and fsync's time (the PUT's is added).
    pub(in crate::engine) took: Duration,
    pub(in crate::engine) appends: Vec<Append>,
}

/// What the writer thread hands the uploader, in WAL order.
pub(in crate::engine) enum Job {
    Group(Box<Upload>),
    /// A rotation's answer, given once every group before it is answered.
    Barrier(oneshot::Sender<Result<u64>>, Result<u64>),
}

fn fail(appends: Vec<Append>, why: &str) {
    for a in appends {
        let _ = a
            .done
            .send(Err(Error::Wal(std::io::Error::other(why.to_owned()))));
    }
}

/// Runs one job's PUT (a barrier has none).
async fn start(remote: Arc<RemoteWal>, mut job: Job) -> (Job, Instant, Result<()>) {
    let started = Instant::now();
    let res = match &mut job {
        Job::Group(u) => {
            let body = std::mem::take(&mut u.body);
            remote
                .objects
                .put(&u.path, body.into())
                .await
                .map(|_| ())
                .map_err(super::io)
        }
        Job::Barrier(..) => Ok(()),
    };
    (job, started, res)
}

/// Answers one job whose PUT ended.
fn finish(
    inner: &Weak<Inner>,
    remote: &RemoteWal,
    (job, started, res): (Job, Instant, Result<()>),
) {
    let u = match job {
        Job::Barrier(done, r) => {
            let _ = done.send(r);
            return;
        }
        Job::Group(u) => u,
    };
    if let Err(e) = res {
        tracing::error!(error = %e, "writing a WAL object to the object store failed; the group commit is refused");
        fail(
            u.appends,
            "the WAL object could not be written to the object store",
        );
        return;
    }
    if !remote.valid() {
        tracing::error!(
            "this node's cluster liveness lapsed (PostgreSQL unreachable?); appends are refused until it is renewed"
        );
        fail(
            u.appends,
            "this node's cluster liveness lapsed; appends are refused until it is renewed",
        );
        return;
    }
    let Some(inner) = inner.upgrade() else {
        return;
    };
    publish(&inner, u.segment, u.built, u.took + started.elapsed());
    for a in u.appends {
        let _ = a.done.send(Ok(()));
    }
}

/// The uploader task: ends when the store (the writer's sender) is gone.
pub(in crate::engine) async fn run(
    mut rx: mpsc::Receiver<Job>,
    inner: Weak<Inner>,
    remote: Arc<RemoteWal>,
) {
    let mut inflight = FuturesOrdered::new();
    loop {
        tokio::select! {
            biased;
            Some(done) = inflight.next(), if !inflight.is_empty() => finish(&inner, &remote, done),
            job = rx.recv(), if inflight.len() < IN_FLIGHT => match job {
                Some(j) => inflight.push_back(start(remote.clone(), j)),
                None => break,
            },
        }
    }
    while let Some(done) = inflight.next().await {
        finish(&inner, &remote, done);
    }
}
