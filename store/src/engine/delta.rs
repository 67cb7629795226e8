//! The Delta Lake log of one table (`<table>/_delta_log/`), through the `deltalake-core` crate.
//!
//! Every change of a table's file set is one Delta commit: a persist adds its files (and
//! records the last WAL segment it covers as the `txn` action of the node's app id
//! (`carewatch-wal-<node id>`, see `node`), so a restart knows exactly which of its segments are
//! in the table even when the checkpoint file did not move, whatever other nodes committed); a compaction removes a day's small files (`dataChange: false`) and adds their merge;
//! retention removes old days. Delta checkpoints are written every [`CHECKPOINT_INTERVAL`]
//! commits by the crate's post-commit hook. The table's file list for queries is the
//! snapshot's, never a directory listing.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, PostCommit};
use deltalake_core::kernel::{Action, Add, DataType, Remove, StructField, StructType, Transaction};
use deltalake_core::logstore::{LogStoreRef, StorageConfig, default_logstore};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::table::state::DeltaTableState;
use deltalake_core::{DeltaTable, TableProperty};
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjPath;
use url::Url;

use super::commit_lock::{self, CommitLock, Held};

mod cluster;
use crate::tables::{self, FileMeta, Table};
use crate::{Error, Result};

/// The `commitInfo` field that tells a node's commit from any other (cluster mode checks it).
const NONCE_KEY: &str = "carewatchCommit";

/// A random id for one commit.
fn nonce() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| Error::Io(format!("commit id: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A Delta checkpoint (`_delta_log/*.checkpoint.parquet`) every this many commits.
pub(crate) const CHECKPOINT_INTERVAL: u64 = 10;
/// The partition column (a Delta `date`; not stored in the Parquet files).
const PARTITION: &str = "date";

fn delta(e: impl std::fmt::Display) -> Error {
    Error::Io(format!("delta log: {e}"))
}

/// Where the tables live: the object store at the root of `url` (as Delta resolves paths),
/// and the tables' root URL (`file:///…/data-dir/` or `s3://bucket/prefix/`).
#[derive(Debug, Clone)]
pub(crate) struct Location {
    pub(crate) root: Arc<dyn ObjectStore>,
    pub(crate) url: Url,
}

impl Location {
    fn table_url(&self, table: Table) -> Result<Url> {
        let mut base = self.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        base.join(&format!("{}/", table.name())).map_err(delta)
    }
}

/// What a commit does, for the log's `commitInfo`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op<'a> {
    /// A persist: new files.
    Persist,
    /// A compaction: a day's files merged into one.
    Compact,
    /// Retention: days before the date dropped.
    Retain(&'a str),
}

impl Op<'_> {
    fn operation(self) -> DeltaOperation {
        match self {
            Op::Persist => DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(vec![PARTITION.to_owned()]),
                predicate: None,
            },
            Op::Compact => DeltaOperation::Optimize {
                predicate: None,
                target_size: 0,
            },
            Op::Retain(date) => DeltaOperation::Delete {
                predicate: Some(format!("{PARTITION} < '{date}'")),
            },
        }
    }
    fn data_change(self) -> bool {
        !matches!(self, Op::Compact)
    }
}

/// One file a commit adds, with its row count (the `numRecords` statistic).
#[derive(Debug, Clone)]
pub(crate) struct NewFile {
    pub(crate) meta: FileMeta,
    pub(crate) rows: Option<u64>,
}

impl NewFile {
    /// A file of `rows` rows of `table` for `date` at `path`, holding WAL segments
    /// `wal.0..=wal.1`.
    pub(crate) fn new(
        table: Table,
        path: object_store::path::Path,
        date: String,
        wal: (u64, u64),
        size: u64,
        rows: u64,
    ) -> NewFile {
        NewFile {
            meta: FileMeta {
                table,
                path,
                date,
                wal_first: wal.0,
                wal_last: wal.1,
                size,
            },
            rows: Some(rows),
        }
    }
}

/// One table's Delta log.
pub(crate) struct DeltaLog {
    table: Table,
    /// This node's `txn` app id: its version is the node's last WAL segment in the table.
    app_id: String,
    log_store: LogStoreRef,
    /// `None` until the table exists.
    state: Option<DeltaTableState>,
    /// A commit went through but the snapshot after it could not be loaded yet.
    stale: bool,
    /// Cluster mode: the lock every node takes around its commits to this table, and its key.
    lock: Option<(Arc<CommitLock>, i64)>,
    /// This node's WAL position in the table as this node last set or saw it. Cluster mode: a
    /// persist finding a higher one under the commit lock was adopted by another node.
    mine: Option<u64>,
    /// The position another node's adoption moved this node's `txn` to, found by a refused
    /// persist ([`DeltaLog::take_adopted`]).
    adopted: Option<u64>,
}

/// What a commit checks under the commit lock about a node's `txn` before it writes.
#[derive(Debug, Clone)]
enum Expect {
    /// Nothing (a commit without a WAL position).
    Nothing,
    /// This node's position is still the one it last knew (no other node adopted its WAL).
    Mine,
    /// Another node's app id is still at this position (no one adopted the frames meanwhile).
    Other(String, Option<u64>),
}

impl std::fmt::Debug for DeltaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaLog")
            .field("table", &self.table)
            .field("version", &self.version())
            .finish()
    }
}

impl DeltaLog {
    /// Loads a table's log (its latest snapshot), if the table exists.
    pub(crate) async fn open(
        loc: &Location,
        objects: &Arc<dyn ObjectStore>,
        table: Table,
        (app_id, lock): (String, Option<Arc<CommitLock>>),
    ) -> Result<DeltaLog> {
        let url = loc.table_url(table)?;
        let lock = lock.map(|l| (l, commit_lock::key(url.as_str())));
        let prefixed: Arc<dyn ObjectStore> =
            Arc::new(super::prefix::Prefixed::new(objects.clone(), table.name()));
        let log_store =
            default_logstore(prefixed, loc.root.clone(), &url, &StorageConfig::default());
        let state = if log_store.is_delta_table_location().await.map_err(delta)? {
            Some(
                DeltaTableState::try_new(log_store.as_ref(), None)
                    .await
                    .map_err(delta)?,
            )
        } else {
            None
        };
        let mut log = DeltaLog {
            table,
            app_id,
            log_store,
            state,
            stale: false,
            lock,
            mine: None,
            adopted: None,
        };
        log.mine = log.wal_position().await?;
        Ok(log)
    }

    /// Cluster mode: waits for this table's commit lock.
    async fn lock(&self) -> Result<Option<Held>> {
        match &self.lock {
            Some((l, key)) => Ok(Some(l.acquire(*key).await?)),
            None => Ok(None),
        }
    }

    /// Whether the table exists (has a `_delta_log`).
    pub(crate) fn exists(&self) -> bool {
        self.state.is_some()
    }

    /// The snapshot's version, when the table exists.
    pub(crate) fn version(&self) -> Option<u64> {
        self.state.as_ref().map(|s| s.version())
    }

    /// Creates the table (version 0) holding `files` (adopted from a directory written before
    /// Delta, or none), with the WAL position they cover.
    pub(crate) async fn create(&mut self, files: Vec<NewFile>, wal: u64) -> Result<()> {
        let held = self.lock().await?;
        if held.is_some()
            && self
                .log_store
                .is_delta_table_location()
                .await
                .map_err(delta)?
        {
            // Another node created it meanwhile: this node joins it (and adds what it adopts).
            self.reload(None).await?;
            drop(held);
            if !files.is_empty() {
                self.commit(Op::Persist, &files, &[], Some(wal)).await?;
            }
            return Ok(());
        }
        let mut fields: Vec<StructField> = {
            let st: StructType = self
                .table
                .schema()
                .as_ref()
                .try_into_kernel()
                .map_err(delta)?;
            st.fields().cloned().collect()
        };
        fields.push(StructField::new(PARTITION, DataType::DATE, false));
        let now = chrono::Utc::now().timestamp_millis();
        let adds: Vec<Action> = files.iter().map(|f| self.add(f, now, true)).collect();
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&self.app_id, wal as i64));
        let table: DeltaTable = CreateBuilder::new()
            .with_log_store(self.log_store.clone())
            .with_table_name(self.table.name())
            .with_columns(fields)
            .with_partition_columns([PARTITION])
            .with_configuration_property(
                TableProperty::CheckpointInterval,
                Some(CHECKPOINT_INTERVAL.to_string()),
            )
            .with_actions(adds)
            .with_commit_properties(props)
            .await
            .map_err(delta)?;
        self.state = Some(table.snapshot().map_err(delta)?.clone());
        self.mine = Some(wal);
        Ok(())
    }

    /// The files of the current snapshot.
    pub(crate) fn files(&self) -> Vec<FileMeta> {
        let Some(state) = &self.state else {
            return Vec::new();
        };
        let mut out: Vec<FileMeta> = state
            .log_data()
            .iter()
            .map(|f| {
                let path = ObjPath::from(format!("{}/{}", self.table.name(), f.path()));
                let size = u64::try_from(f.size()).unwrap_or(0);
                tables::parse_path(&path, size).unwrap_or_else(|| FileMeta {
                    table: self.table,
                    date: f
                        .partition_values_map()
                        .get(PARTITION)
                        .cloned()
                        .flatten()
                        .unwrap_or_default(),
                    path,
                    wal_first: 0,
                    wal_last: 0,
                    size,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.date, a.wal_first, &a.path).cmp(&(&b.date, b.wal_first, &b.path)));
        out
    }

    /// The last WAL segment a commit recorded as persisted into this table.
    pub(crate) async fn wal_position(&self) -> Result<Option<u64>> {
        self.position_of(&self.app_id).await
    }

    /// The last WAL segment a commit recorded under the `txn` app id `app_id` (any node's).
    pub(crate) async fn position_of(&self, app_id: &str) -> Result<Option<u64>> {
        let Some(state) = &self.state else {
            return Ok(None);
        };
        let v = state
            .transaction_version(self.log_store.as_ref(), app_id)
            .await
            .map_err(delta)?;
        Ok(v.and_then(|v| u64::try_from(v).ok()))
    }

    /// Files the log removed, with when (UTC ms): readers of older snapshots may still read them.
    pub(crate) async fn tombstones(&self) -> Result<Vec<(ObjPath, i64)>> {
        let Some(state) = &self.state else {
            return Ok(Vec::new());
        };
        let views: Vec<_> = state
            .all_tombstones(self.log_store.as_ref())
            .try_collect()
            .await
            .map_err(delta)?;
        Ok(views
            .iter()
            .map(|t| {
                (
                    ObjPath::from(format!("{}/{}", self.table.name(), t.path())),
                    t.deletion_timestamp().unwrap_or(0),
                )
            })
            .collect())
    }

    fn relative(&self, p: &ObjPath) -> String {
        let s = p.as_ref();
        s.strip_prefix(self.table.name())
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(s)
            .to_owned()
    }

    fn partition(date: &str) -> HashMap<String, Option<String>> {
        HashMap::from([(PARTITION.to_owned(), Some(date.to_owned()))])
    }

    fn add(&self, f: &NewFile, now: i64, data_change: bool) -> Action {
        Action::Add(Add {
            path: self.relative(&f.meta.path),
            partition_values: Self::partition(&f.meta.date),
            size: f.meta.size as i64,
            modification_time: now,
            data_change,
            stats: f.rows.map(|n| format!("{{\"numRecords\":{n}}}")),
            ..Add::default()
        })
    }

    fn remove(&self, f: &FileMeta, now: i64, data_change: bool) -> Action {
        Action::Remove(Remove {
            path: self.relative(&f.path),
            data_change,
            deletion_timestamp: Some(now),
            extended_file_metadata: Some(true),
            partition_values: Some(Self::partition(&f.date)),
            size: Some(f.size as i64),
            ..Remove::default()
        })
    }

    /// One commit: `adds` and `removes` (and, for a persist, the WAL position `wal`). Returns
    /// the log file written (to make durable). An `Err` means nothing was committed. In
    /// cluster mode it runs under the table's commit lock, and is checked before it counts; a
    /// persist whose node's WAL was adopted meanwhile is refused ([`DeltaLog::take_adopted`]).
    pub(crate) async fn commit(
        &mut self,
        op: Op<'_>,
        adds: &[NewFile],
        removes: &[FileMeta],
        wal: Option<u64>,
    ) -> Result<ObjPath> {
        let (txn, expect) = match wal {
            Some(w) => (Some((self.app_id.clone(), w)), Expect::Mine),
            None => (None, Expect::Nothing),
        };
        let log = self.commit_txn(op, adds, removes, txn, expect).await?;
        if wal.is_some() {
            self.mine = wal;
        }
        Ok(log)
    }

    /// Cluster mode: commits `adds` (the rows of another node's WAL frames) with that node's
    /// `txn` (`app_id`) moved to `upto`, if under the commit lock its position is still
    /// `expect` (else nothing is committed: another node adopted them first).
    pub(crate) async fn commit_adopted(
        &mut self,
        adds: &[NewFile],
        app_id: &str,
        (expect, upto): (Option<u64>, u64),
    ) -> Result<ObjPath> {
        let txn = Some((app_id.to_owned(), upto));
        let expect = Expect::Other(app_id.to_owned(), expect);
        self.commit_txn(Op::Persist, adds, &[], txn, expect).await
    }

    /// The position an adoption moved this node's `txn` to, when a persist was refused for it
    /// (its buffered rows of segments up to there are in the table already).
    pub(crate) fn take_adopted(&mut self) -> Option<u64> {
        self.adopted.take()
    }

    async fn commit_txn(
        &mut self,
        op: Op<'_>,
        adds: &[NewFile],
        removes: &[FileMeta],
        txn: Option<(String, u64)>,
        expect: Expect,
    ) -> Result<ObjPath> {
        if self.stale {
            self.reload(None).await?;
        }
        let nonce = nonce()?;
        let held = self.lock().await?;
        if held.is_some() && !removes.is_empty() {
            self.removes_still_live(removes).await?;
        }
        if held.is_some() {
            self.txn_as_expected(&expect).await?;
        }
        let post = self.write(op, adds, removes, txn, &nonce).await?;
        let version = post.version;
        if let Some(h) = held
            && let Err(e) = self.check(h, version, &nonce).await
        {
            // Lost: its files are in no snapshot. The post-commit hook (a checkpoint of a
            // version that is not ours) must not run.
            drop(post);
            if let Err(e) = self.reload(None).await {
                tracing::warn!(error = %e, table = self.table.name(), "reloading the delta snapshot failed; will retry");
                self.stale = true;
            }
            return Err(e);
        }
        // Committed: whatever the post-commit hook (checkpoint, log cleanup) does, the new
        // version stands. A failed checkpoint only makes the log slower to read.
        let log = ObjPath::from(format!(
            "{}/_delta_log/{version:020}.json",
            self.table.name()
        ));
        match post.await {
            Ok(done) => self.state = Some(done.snapshot),
            Err(e) => {
                tracing::warn!(error = %e, table = self.table.name(), "delta post-commit (checkpoint) failed");
                if let Err(e) = self.reload(Some(version)).await {
                    tracing::error!(error = %e, table = self.table.name(), "reloading the delta snapshot failed; will retry");
                    self.stale = true;
                }
            }
        }
        Ok(log)
    }

    /// Writes the commit's log entry (deltalake finds the latest version, checks conflicts
    /// with the commits since this snapshot, and writes the next one).
    async fn write(
        &self,
        op: Op<'_>,
        adds: &[NewFile],
        removes: &[FileMeta],
        txn: Option<(String, u64)>,
        nonce: &str,
    ) -> Result<PostCommit> {
        let Some(state) = &self.state else {
            return Err(delta(format!("table {} has no log", self.table.name())));
        };
        let now = chrono::Utc::now().timestamp_millis();
        let dc = op.data_change();
        let mut actions: Vec<Action> = removes.iter().map(|f| self.remove(f, now, dc)).collect();
        actions.extend(adds.iter().map(|f| self.add(f, now, dc)));
        let mut props = CommitProperties::default()
            .with_metadata([(NONCE_KEY.to_owned(), serde_json::Value::from(nonce))]);
        if let Some((app, w)) = txn {
            props = props.with_application_transaction(Transaction::new(&app, w as i64));
        }
        CommitBuilder::from(props)
            .with_actions(actions)
            .build(Some(state), self.log_store.clone(), op.operation())
            .into_prepared_commit_future()
            .await
            .map_err(delta)?
            .await
            .map_err(delta)
    }

    /// Catches up with commits other nodes made since this snapshot. `Ok(true)`: the
    /// snapshot moved (its files may have changed).
    pub(crate) async fn refresh(&mut self) -> Result<bool> {
        if self.stale {
            self.reload(None).await?;
            return Ok(true);
        }
        let Some(state) = &mut self.state else {
            return Ok(false);
        };
        let before = state.version();
        state
            .update(self.log_store.as_ref(), None)
            .await
            .map_err(delta)?;
        Ok(state.version() != before)
    }

    /// Loads the snapshot at `version` (latest: `None`).
    async fn reload(&mut self, version: Option<u64>) -> Result<()> {
        let state = DeltaTableState::try_new(self.log_store.as_ref(), version)
            .await
            .map_err(delta)?;
        self.state = Some(state);
        self.stale = false;
        Ok(())
    }
}
