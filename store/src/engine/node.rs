//! This data directory's node id. Several nodes may write the same tables (an object-store
//! URL shared by a cluster), each with its own WAL in its own data directory, so a WAL
//! position means something only with the node it belongs to: each node records its position
//! in a table's log under its own `txn` app id (`carewatch-wal-<id>`), and names its files
//! with its id, so no node skips, deletes or overwrites what another wrote.
//!
//! The id is made (random) when a new data directory is first opened and kept in the file
//! `node_id` beside the WAL, so it lives and dies with that WAL. A directory that already held
//! a WAL before ids existed keeps the empty id: its position stays under the app id
//! `carewatch-wal` and its files keep their names.

use std::path::Path;

use super::io;
use super::persist::write_atomic;
use crate::{Error, Result};

const FILE: &str = "node_id";
/// The `txn` app id of a directory without a node id.
const LEGACY_APP_ID: &str = "carewatch-wal";

/// One node's identity in the tables.
#[derive(Debug, Clone, Default)]
pub(crate) struct Node {
    id: String,
}

impl Node {
    /// The `txn` app id under which this node's WAL position is kept in each table's log.
    pub(crate) fn app_id(&self) -> String {
        if self.id.is_empty() {
            LEGACY_APP_ID.to_owned()
        } else {
            format!("{LEGACY_APP_ID}-{}", self.id)
        }
    }

    /// What this node's file names carry (`wal-<first>-<last>-n<id>….parquet`).
    pub(crate) fn file_suffix(&self) -> String {
        if self.id.is_empty() {
            String::new()
        } else {
            format!("-n{}", self.id)
        }
    }

    /// Whether a table file was written by this node (by its name).
    pub(crate) fn wrote(&self, path: &object_store::path::Path) -> bool {
        let name = path.filename().unwrap_or_default();
        let marker = name
            .strip_suffix(".parquet")
            .unwrap_or(name)
            .split('-')
            .find_map(|part| part.strip_prefix('n'));
        marker.unwrap_or_default() == self.id
    }

    /// The node of a data directory: read, or made for a new one (not when read-only).
    pub(crate) fn of_dir(dir: &Path, wal_dir: &Path, read_only: bool) -> Result<Node> {
        match std::fs::read_to_string(dir.join(FILE)) {
            Ok(s) => {
                let id = s.trim().to_owned();
                if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::Io(format!(
                        "corrupt {FILE} file in the data directory"
                    )));
                }
                return Ok(Node { id });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let had_wal = dir.join("checkpoint").exists()
            || std::fs::read_dir(wal_dir).is_ok_and(|mut d| d.next().is_some());
        if read_only || had_wal {
            return Ok(Node::default());
        }
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).map_err(|e| Error::Io(format!("node id: {e}")))?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_atomic(dir, FILE, id.as_bytes())?;
        Ok(Node { id })
    }
}

#[cfg(test)]
mod tests {
    use object_store::path::Path as ObjPath;

    use super::*;

    #[test]
    fn a_node_knows_its_files_by_name() {
        let n = Node { id: "0a1b".into() };
        let legacy = Node::default();
        let mine = ObjPath::from(format!(
            "observations/date=2024-05-01/wal-0000000000000001-0000000000000002{}.parquet",
            n.file_suffix()
        ));
        let merged = ObjPath::from(format!(
            "observations/date=2024-05-01/wal-1-9{}-c1700000000.parquet",
            n.file_suffix()
        ));
        let old = ObjPath::from("observations/date=2024-05-01/wal-1-2.parquet");
        assert!(n.wrote(&mine) && n.wrote(&merged) && !n.wrote(&old));
        assert!(legacy.wrote(&old) && !legacy.wrote(&mine));
        assert_eq!(n.app_id(), "carewatch-wal-0a1b");
        assert_eq!(legacy.app_id(), "carewatch-wal");
    }

    #[test]
    fn a_new_directory_gets_an_id_that_stays() {
        let t = tempfile::tempdir().expect("tmp");
        let wal = t.path().join("wal");
        std::fs::create_dir_all(&wal).expect("wal");
        let a = Node::of_dir(t.path(), &wal, false).expect("node");
        assert_eq!(a.id.len(), 16);
        assert_eq!(Node::of_dir(t.path(), &wal, false).expect("again").id, a.id);
        let other = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(other.path().join("wal")).expect("wal");
        let b = Node::of_dir(other.path(), &other.path().join("wal"), false).expect("node");
        assert_ne!(a.id, b.id);
    }
}
