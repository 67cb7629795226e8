//! The alert history as a Delta table, `alerts`, beside `observations` and
//! `dead_letters` (issue 13): lakehouse readers (the `deltalake` package, Spark, DuckDB) get
//! every transition of every alert from the same place as the readings.
//!
//! The history itself stays where its appends are cheap and fenced (the data directory's
//! file, or PostgreSQL in a cluster); this table follows it. Each export is one Delta commit
//! that adds the transitions `seq` from..to and moves the `txn` of
//! [`EXPORT_APP_ID`](crate::alert_history::EXPORT_APP_ID) from `from` to `to` — under the
//! commit lock in a cluster, and only if the position is still `from` — so a transition is in
//! the table exactly once, whichever node exports it and however often one retries.

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjPath;

use super::delta::NewFile;
use super::persist::{blocking, delete_all, sync_local, sync_log};
use super::{Inner, Store, io};
use crate::alert_history::EXPORT_APP_ID;
use crate::tables::{self, FileMeta, Table};
use crate::{Error, Result};

/// Rows per row group of an export's file (an export is at most a few thousand rows).
const ROW_GROUP_ROWS: usize = 64 * 1024;

impl Store {
    /// How many transitions (`seq` 0 up to it) the `alerts` Delta table holds, as this
    /// node's snapshot last saw it after catching up with other nodes' commits.
    pub async fn alert_history_exported(&self) -> Result<u64> {
        let mut log = self.inner.history_table.lock().await;
        if log.exists() {
            log.refresh().await?;
        }
        Ok(log.position_of(EXPORT_APP_ID).await?.unwrap_or(0))
    }

    /// Appends `batch` — the transitions `seq` `from` up to `from + batch.num_rows()`, in
    /// order, with the columns of the `alerts` table — to the `alerts` Delta table in one
    /// Delta commit (creating the table first if it is missing). `Ok(false)`: nothing
    /// committed, because the table's position is no longer `from` (another node exported
    /// them), or because in a cluster this node does not hold the maintenance partition.
    pub async fn export_alert_history(
        &self,
        from: u64,
        batch: arrow_array::RecordBatch,
    ) -> Result<bool> {
        let inner = &self.inner;
        if inner.config.read_only || !super::compact::maintains(inner) {
            return Ok(false);
        }
        let n = batch.num_rows() as u64;
        let mut log = inner.history_table.lock().await;
        if !log.exists() {
            log.create(Vec::new(), 0).await?;
        } else {
            log.refresh().await?;
        }
        if log.position_of(EXPORT_APP_ID).await?.unwrap_or(0) != from || n == 0 {
            return Ok(false);
        }
        let batch = tables::conform(Table::Alerts, &batch)?;
        let files = write_files(inner, from, &batch).await?;
        let committed = log
            .commit_adopted(&files, EXPORT_APP_ID, (Some(from), from + n))
            .await;
        match committed {
            Ok(entry) => {
                if !sync_log(inner, entry).await {
                    tracing::warn!("the alerts Delta commit may not survive a power loss");
                }
                Ok(true)
            }
            Err(e) => {
                let paths = files.into_iter().map(|f| f.meta.path).collect();
                delete_all(inner.objects.as_ref(), paths).await;
                if log.position_of(EXPORT_APP_ID).await?.unwrap_or(0) != from {
                    return Ok(false);
                }
                Err(e)
            }
        }
    }
}

/// Writes the batch's rows as one Parquet file per UTC day of `at`, durable before the
/// commit that names them (on a local file system: fsynced, with their directories).
async fn write_files(
    inner: &Inner,
    from: u64,
    batch: &arrow_array::RecordBatch,
) -> Result<Vec<NewFile>> {
    let last = from + batch.num_rows() as u64 - 1;
    let nonce = {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).map_err(|e| Error::Io(format!("file id: {e}")))?;
        u32::from_le_bytes(b)
    };
    let mut files = Vec::new();
    for (date, part) in tables::split_by_day(Table::Alerts, batch)? {
        let path = ObjPath::from(format!(
            "{}/date={date}/seq-{from:016}-{last:016}-{nonce:08x}.parquet",
            Table::Alerts.name()
        ));
        let rows = part.num_rows() as u64;
        let bytes = blocking(move || tables::encode_parquet(&part, ROW_GROUP_ROWS)).await?;
        let size = bytes.len() as u64;
        let put = inner.objects.put(&path, bytes.into()).await;
        files.push(NewFile {
            meta: FileMeta {
                table: Table::Alerts,
                path,
                date,
                wal_first: from,
                wal_last: last,
                size,
            },
            rows: Some(rows),
        });
        if let Err(e) = put {
            let paths = files.into_iter().map(|f| f.meta.path).collect();
            delete_all(inner.objects.as_ref(), paths).await;
            return Err(io(e));
        }
    }
    if let Some(root) = inner.local_root.clone() {
        let paths: Vec<ObjPath> = files.iter().map(|f| f.meta.path.clone()).collect();
        if let Err(e) = blocking(move || sync_local(&root, &paths)).await {
            let paths = files.into_iter().map(|f| f.meta.path).collect();
            delete_all(inner.objects.as_ref(), paths).await;
            return Err(e);
        }
    }
    Ok(files)
}
