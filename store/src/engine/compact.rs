//! Compaction (a day's small files merged into one, crash-safe through an intent file),
//! retention, and the background task that persists, compacts and retains on a tick.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::persist::{blocking, persist, sync_local, write_atomic};
use super::{Inner, Store, io, lock, read_file};
use crate::Result;
use crate::tables::{self, FileMeta, Table};

#[derive(Debug)]
pub(super) struct Intent {
    pub(super) output: String,
    pub(super) inputs: Vec<String>,
}

impl Intent {
    fn encode(&self) -> String {
        std::iter::once(self.output.as_str())
            .chain(self.inputs.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("\n")
    }
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

/// Days (per table) with enough files to merge, within the memory bound.
fn due_days(inner: &Inner, min_files: usize) -> Vec<Vec<FileMeta>> {
    let st = lock(&inner.state);
    let mut by: BTreeMap<(Table, String), Vec<FileMeta>> = BTreeMap::new();
    for f in &st.files {
        by.entry((f.table, f.date.clone()))
            .or_default()
            .push(f.clone());
    }
    let max = inner.config.compact_max_bytes;
    by.into_values()
        .filter(|v| v.len() >= min_files.max(2) && v.iter().map(|f| f.size).sum::<u64>() <= max)
        .collect()
}

pub(super) async fn compact(inner: &Inner, min_files: usize) -> Result<usize> {
    if inner.config.read_only {
        return Ok(0);
    }
    let _g = inner.persist_lock.lock().await;
    let mut done = 0;
    for inputs in due_days(inner, min_files) {
        compact_day(inner, inputs).await?;
        done += 1;
    }
    Ok(done)
}

/// Merges one day's files: intent first, then the merged file (made durable), then the inputs
/// go to the graveyard (deleted after the grace period; the intent makes a crash safe).
async fn compact_day(inner: &Inner, inputs: Vec<FileMeta>) -> Result<()> {
    let Some(head) = inputs.first() else {
        return Ok(());
    };
    let (table, date) = (head.table, head.date.clone());
    let first = inputs.iter().map(|f| f.wal_first).min().unwrap_or(0);
    let last = inputs.iter().map(|f| f.wal_last).max().unwrap_or(0);
    let mut batches = Vec::new();
    for f in &inputs {
        batches.extend(read_file(inner.objects.as_ref(), &f.path).await?);
    }
    let rgs = inner.config.row_group_rows;
    let bytes = blocking(move || {
        let all = tables::concat(&table.schema(), &batches)?;
        tables::encode_parquet(&tables::sort_dedupe(table, &all)?, rgs)
    })
    .await?;
    let stamp = chrono::Utc::now().timestamp_micros();
    let path = tables::file_path(table, &date, first, last, &format!("-c{stamp}"));
    let intent = Intent {
        output: path.to_string(),
        inputs: inputs.iter().map(|f| f.path.to_string()).collect(),
    };
    let dir = inner.config.data_dir.clone();
    blocking(move || {
        write_atomic(
            &dir,
            &format!("compaction-{stamp}.intent"),
            intent.encode().as_bytes(),
        )
    })
    .await?;
    let size = bytes.len() as u64;
    inner.objects.put(&path, bytes.into()).await.map_err(io)?;
    if let Some(root) = inner.local_root.clone() {
        let p = vec![path.clone()];
        blocking(move || sync_local(&root, &p)).await?;
    }
    let mut st = lock(&inner.state);
    let grace = Instant::now() + inner.config.delete_grace;
    st.files
        .retain(|f| !inputs.iter().any(|i| i.path == f.path));
    st.files.push(FileMeta {
        table,
        path,
        date,
        wal_first: first,
        wal_last: last,
        size,
    });
    st.files
        .sort_by(|a, b| (a.table, &a.date, a.wal_first).cmp(&(b.table, &b.date, b.wal_first)));
    st.graveyard
        .extend(inputs.iter().map(|f| (grace, f.path.clone())));
    st.stats.compactions += 1;
    Ok(())
}

pub(super) async fn background(inner: std::sync::Weak<Inner>) {
    loop {
        let tick = match inner.upgrade() {
            Some(i) => i.config.tick,
            None => return,
        };
        tokio::time::sleep(tick).await;
        let Some(inn) = inner.upgrade() else { return };
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
        // An intent is no longer needed once none of its inputs waits in the graveyard.
        let waiting: Vec<String> = lock(&inn.state)
            .graveyard
            .iter()
            .map(|(_, p)| p.to_string())
            .collect();
        for path in intent_files(&inn.config.data_dir) {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if Intent::decode(&text).is_none_or(|i| !i.inputs.iter().any(|x| waiting.contains(x))) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
