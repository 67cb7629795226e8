//! Compaction (a day's small files merged into one, one Delta commit), retention (one commit
//! of removes per table), vacuum (removed files deleted once their grace period is over), and
//! the background tasks that persist and maintain on a tick (and, on tables other nodes write too,
//! catches up with their commits). Intent files are what compaction used
//! before the Delta log; open still finishes one a crash left in a pre-Delta directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::delta::{NewFile, Op};
use super::persist::{blocking, delete_all, persist, sync_local, sync_log};
use super::priority::{MERGE_NICE, yielding};
use super::{Inner, Store, io, lock, spool};
use crate::Result;
use crate::merge::merge_files;
use crate::tables::{self, FileMeta, Table};

#[derive(Debug)]
pub(super) struct Intent {
    pub(super) output: String,
    pub(super) inputs: Vec<String>,
}

impl Intent {
    pub(super) fn decode(s: &str) -> Option<Intent> {
        let mut lines = s.lines().filter(|l| !l.is_empty());
        let output = lines.next()?.to_owned();
        Some(Intent {
            output,
            inputs: lines.map(str::to_owned).collect(),
        })
    }
}

pub(super) fn intent_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "intent"))
        .collect();
    v.sort();
    v
}

/// Finishes or undoes compactions a crash interrupted.
pub(super) async fn recover_compaction(dir: &Path, objects: &dyn ObjectStore) -> Result<()> {
    for path in intent_files(dir) {
        let text = std::fs::read_to_string(&path).map_err(io)?;
        if let Some(intent) = Intent::decode(&text) {
            let out = ObjPath::from(intent.output.as_str());
            match objects.head(&out).await {
                Ok(_) => {
                    // The merged file is complete: the inputs are redundant.
                    for i in &intent.inputs {
                        match objects.delete(&ObjPath::from(i.as_str())).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(io(e)),
                        }
                    }
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io(e)),
            }
        }
        std::fs::remove_file(&path).map_err(io)?;
    }
    Ok(())
}

/// The groups of files to merge (size-tiered, within the memory bound: `merge_plan`).
fn due_merges(inner: &Inner, min_files: usize) -> Vec<Vec<FileMeta>> {
    let st = lock(&inner.state);
    super::merge_plan::plan_merges(&st.files, min_files, inner.config.compact_max_bytes)
}

/// Whether the background maintenance (compaction, retention) is this node's to do: always
/// on a single node; in cluster mode only while it holds the maintenance partition.
pub(super) fn maintains(inner: &Inner) -> bool {
    inner
        .maintainer
        .get()
        .is_none_or(|o| o.owns_partition(crate::lease::DELIVERY_PARTITION))
}

pub(super) async fn compact(inner: &Inner, min_files: usize) -> Result<usize> {
    if inner.config.read_only {
        return Ok(0);
    }
    // One merge at a time; it holds the persist lock only to commit, so persists go on meanwhile.
    let _m = inner.maintain_lock.lock().await;
    let mut done = 0;
    for inputs in due_merges(inner, min_files) {
        compact_day(inner, inputs).await?;
        done += 1;
    }
    Ok(done)
}

/// Merges files of one table and day: the merged file is written and made durable, then one commit
/// removes the inputs (`dataChange: false`) and adds it. The inputs go to the graveyard
/// (deleted after the grace period). A crash before the commit leaves the merged file
/// unreferenced: open deletes it.
async fn compact_day(inner: &Inner, inputs: Vec<FileMeta>) -> Result<()> {
    let Some(head) = inputs.first() else {
        return Ok(());
    };
    let (table, date) = (head.table, head.date.clone());
    let first = inputs.iter().map(|f| f.wal_first).min().unwrap_or(0);
    let last = inputs.iter().map(|f| f.wal_last).max().unwrap_or(0);
    // The inputs as files (downloaded when the tables are elsewhere); the merge decodes a batch
    // of each at a time and writes its output to a temporary file.
    let mut files = Vec::with_capacity(inputs.len());
    for f in &inputs {
        files.push(spool::input(inner, &f.path).await?);
    }
    let merged = spool::temp_file(inner).await?;
    let pause = lock(&inner.state).merge_pause.take();
    if let Some((reached, release)) = pause {
        let _ = reached.send(());
        let _ = release.await;
    }
    let rgs = inner.config.row_group_rows;
    let merge = move || merge_files(table, files, merged, rgs);
    let (merged, rows) = yielding("carewatch-merge", MERGE_NICE, merge).await?;
    let stamp = chrono::Utc::now().timestamp_micros();
    let path = tables::file_path(
        table,
        &date,
        first,
        last,
        &format!("{}-c{stamp}", inner.node.file_suffix()),
    );
    let size = spool::upload(inner, &path, merged).await?;
    if let Some(root) = inner.local_root.clone() {
        let p = vec![path.clone()];
        if let Err(e) = blocking(move || sync_local(&root, &p)).await {
            let _ = delete_all(inner.objects.as_ref(), vec![path]).await;
            return Err(e);
        }
    }
    let out = NewFile::new(table, path.clone(), date, (first, last), size, rows);
    let _g = inner.persist_lock.lock().await;
    let mut deltas = inner.deltas.lock().await;
    let Some(log) = deltas.get_mut(&table) else {
        return Ok(());
    };
    let log_file = match log.commit(Op::Compact, &[out], &inputs, None).await {
        Ok(p) => p,
        Err(e) => {
            let left = delete_all(inner.objects.as_ref(), vec![path]).await;
            lock(&inner.state).leftovers.extend(left);
            return Err(e);
        }
    };
    sync_log(inner, log_file).await;
    let files = log.files();
    let mut st = lock(&inner.state);
    super::follow::take_files(inner, &mut st, table, files);
    let grace = Instant::now() + inner.config.delete_grace;
    st.graveyard
        .extend(inputs.iter().map(|f| (grace, f.path.clone())));
    st.stats.compactions += 1;
    Ok(())
}

/// Retention: one commit per table removes the days before `cutoff_date`; the files wait
/// out the grace period in the graveyard. Returns the number of files dropped.
pub(super) async fn retain(inner: &Inner, cutoff_date: &str) -> Result<usize> {
    if inner.config.read_only {
        return Ok(0);
    }
    let _m = inner.maintain_lock.lock().await;
    let _g = inner.persist_lock.lock().await;
    let old: Vec<FileMeta> = lock(&inner.state)
        .files
        .iter()
        .filter(|f| f.date.as_str() < cutoff_date)
        .cloned()
        .collect();
    let mut deltas = inner.deltas.lock().await;
    let mut n = 0;
    for table in Table::ALL {
        let gone: Vec<FileMeta> = old.iter().filter(|f| f.table == table).cloned().collect();
        let Some(log) = deltas.get_mut(&table).filter(|_| !gone.is_empty()) else {
            continue;
        };
        let log_file = log
            .commit(Op::Retain(cutoff_date), &[], &gone, None)
            .await?;
        sync_log(inner, log_file).await;
        let files = log.files();
        let mut st = lock(&inner.state);
        super::follow::take_files(inner, &mut st, table, files);
        let grace = Instant::now() + inner.config.delete_grace;
        n += gone.len();
        st.graveyard
            .extend(gone.into_iter().map(|f| (grace, f.path)));
    }
    Ok(n)
}

/// Tables shared through a URL: catches up with the commits of other nodes, so queries read
/// what they persisted and compaction and retention see their files. (Local tables have one
/// writer, this process: nothing to catch up with.)
async fn follow(inner: &Inner) -> Result<()> {
    if inner.config.tables_url.is_none() {
        return Ok(());
    }
    let started = Instant::now();
    {
        let _g = inner.persist_lock.lock().await;
        let mut deltas = inner.deltas.lock().await;
        for (table, log) in deltas.iter_mut() {
            if log.refresh().await? {
                let files = log.files();
                let mut st = lock(&inner.state);
                super::follow::take_files(inner, &mut st, *table, files);
            }
        }
    }
    // Outside the locks: reading the files waits on the object store.
    let told = super::follow::tell_untold(inner).await;
    lock(&inner.state)
        .stats
        .follow_seconds
        .observe(started.elapsed());
    told
}

/// Deletes the files whose grace period is over.
async fn vacuum(inn: &Inner) {
    let expired: Vec<ObjPath> = {
        let mut st = lock(&inn.state);
        let now = Instant::now();
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.graveyard)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        st.graveyard = keep;
        gone.into_iter().map(|(_, p)| p).collect()
    };
    for p in expired {
        match inn.objects.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "deleting replaced file failed"),
        }
    }
}

/// Runs `step` on every tick while the store is open. Ticks are at a fixed rate (a step that
/// outlasts one runs again at once, missed ticks are not made up), so a step's own duration
/// does not add to the wait before the next — the persist check and the follow of other nodes'
/// commits come every tick, not every tick plus a persist.
async fn each_tick<F, Fut>(inner: std::sync::Weak<Inner>, step: F)
where
    F: Fn(std::sync::Arc<Inner>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(tick) = inner.upgrade().map(|i| i.config.tick) else {
        return;
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inn) = inner.upgrade() else { return };
        step(inn).await;
    }
}

/// The persist loop: on each tick, other nodes' commits (shared tables), then a persist when
/// the buffer is due. Compaction has a loop of its own ([`maintenance`]) so a long merge never
/// holds back the persists the buffer's bound depends on (a ~64 M-row merge once refused appends
/// for a minute at 100,000 patients).
pub(super) async fn background(inner: std::sync::Weak<Inner>) {
    each_tick(inner, |inn| async move {
        if let Err(e) = follow(&inn).await {
            tracing::warn!(error = %e, "reading other nodes' commits failed; will retry");
        }
        let due = {
            let st = lock(&inn.state);
            st.rows >= inn.config.persist_rows
                || st.bytes >= inn.config.persist_bytes
                || st
                    .chunks
                    .first()
                    .is_some_and(|c| c.at.elapsed() >= inn.config.persist_age)
        };
        if due && let Err(e) = persist(&inn).await {
            tracing::error!(error = %e, "persist failed; will retry");
        }
    })
    .await
}

/// The maintenance loop: compaction, retention and vacuum on each tick, beside the persists.
pub(super) async fn maintenance(inner: std::sync::Weak<Inner>) {
    each_tick(inner, |inn| async move {
        if !maintains(&inn) {
            vacuum(&inn).await;
            return;
        }
        if let Err(e) = compact(&inn, inn.config.compact_min_files).await {
            tracing::error!(error = %e, "compaction failed; will retry");
        }
        if let Some(keep) = inn.config.retention {
            let cutoff = chrono::Utc::now() - chrono::Duration::from_std(keep).unwrap_or_default();
            let date = cutoff.format("%Y-%m-%d").to_string();
            if let Err(e) = (Store { inner: inn.clone() }).drop_days_before(&date).await {
                tracing::error!(error = %e, "retention failed");
            }
        }
        vacuum(&inn).await;
    })
    .await
}
