//! Cluster mode's checks around a commit made under the table's commit lock
//! ([`super::super::commit_lock`]): before it, that the files it removes are still in the
//! table and that the `txn` of the WAL it persists was not moved by another node (an
//! adoption of that WAL's frames, `remote_wal`); after it, that the log entry written is
//! this node's.

use object_store::path::Path as ObjPath;

use super::super::commit_lock::Held;
use super::{DeltaLog, Expect, contains, delta};
use crate::Result;
use crate::tables::FileMeta;

impl DeltaLog {
    /// Cluster mode, under the commit lock: every file to remove is still in the latest
    /// snapshot. deltalake does not count two removes of one file as a conflict when both are
    /// `dataChange: false`, so two nodes compacting the same day would both commit their
    /// merges and every row of the day would be in the table twice
    /// (`store/tests/cluster_commits.rs`). A file already removed by another node's commit
    /// refuses this one (nothing committed; the snapshot is reloaded on the next refresh, which
    /// then reports it moved).
    pub(super) async fn removes_still_live(&mut self, removes: &[FileMeta]) -> Result<()> {
        self.refresh().await?;
        let live: std::collections::HashSet<ObjPath> =
            self.files().into_iter().map(|f| f.path).collect();
        if removes.iter().all(|f| live.contains(&f.path)) {
            return Ok(());
        }
        self.stale = true;
        Err(delta(format!(
            "table {}: another node removed a file this commit removes (a concurrent compaction or retention); not committed",
            self.table.name()
        )))
    }

    /// Cluster mode, after writing `version` under the lock: it counts if the log entry there
    /// is ours. A replaced entry (a writer without the lock) is an error: nothing committed.
    /// The lock lost meanwhile (its connection dropped) is only reported when the entry is
    /// ours; an entry that cannot be read back is taken as written (the PUT succeeded).
    pub(super) async fn check(&self, held: Held, version: u64, nonce: &str) -> Result<()> {
        let alive = held.still_held().await;
        drop(held);
        let mut read = Err(delta("not read"));
        for _ in 0..3 {
            read = self
                .log_store
                .read_commit_entry(version)
                .await
                .map_err(delta);
            if read.is_ok() {
                break;
            }
        }
        let table = self.table.name();
        match read {
            Ok(Some(bytes)) if contains(&bytes, nonce.as_bytes()) => {
                if let Err(e) = alive {
                    tracing::warn!(error = %e, table, version, "the commit lock was lost during a commit that stands; another node may have written the same version");
                }
                Ok(())
            }
            Ok(_) => {
                tracing::error!(
                    table,
                    version,
                    "a delta commit was replaced by another writer's (one not taking the commit lock?); its rows stay buffered and are committed again"
                );
                Err(delta(format!(
                    "table {table}: commit {version} replaced by another writer"
                )))
            }
            Err(e) => {
                tracing::warn!(error = %e, table, version, "reading a delta commit back failed; taking it as written");
                Ok(())
            }
        }
    }

    /// Cluster mode, under the commit lock: the `txn` position the commit builds on is the
    /// latest snapshot's. A persist of this node's finding its own position moved was adopted
    /// by another node (its frames are in the table): refused, and the position kept for
    /// [`DeltaLog::take_adopted`]. An adoption finding the dead node's position moved was
    /// beaten to it: refused.
    pub(super) async fn txn_as_expected(&mut self, expect: &Expect) -> Result<()> {
        let (app, want) = match expect {
            Expect::Nothing => return Ok(()),
            Expect::Mine => (self.app_id.clone(), self.mine),
            Expect::Other(app, at) => (app.clone(), *at),
        };
        self.refresh().await?;
        let now = self.position_of(&app).await?;
        if now == want {
            return Ok(());
        }
        let table = self.table.name();
        if matches!(expect, Expect::Mine) {
            self.adopted = now;
            self.mine = now;
            tracing::warn!(
                table,
                "another node adopted this node's WAL frames (it was taken for dead); this persist is refused and the adopted rows leave the buffer"
            );
            return Err(delta(format!(
                "table {table}: this node's WAL was adopted by another node; not committed"
            )));
        }
        Err(delta(format!(
            "table {table}: another node adopted these WAL frames first; not committed"
        )))
    }
}
