//! Where the alert engine keeps its own files in the data directory: the history
//! (`history.jsonl`) and the webhook positions beside it, in `<data-dir>/alerts/_carewatch/`.
//!
//! `<data-dir>/alerts/` is the `alerts` Delta table (its `_delta_log/` and date partitions) when
//! the tables are in the data directory. A Delta VACUUM — ours, or an analyst's Spark or
//! `deltalake` — deletes files under a table that its log does not list, except in directories
//! whose names start with `_` or `.`; the engine's files therefore live in `_carewatch/`. A data
//! directory from before the table has them directly in `alerts/`: a writable open moves them
//! in (webhook positions first, the history last, so a crash between leaves the history where
//! the next open looks first and the move is simply finished then).

use std::path::{Path, PathBuf};

/// The subdirectory of `<data-dir>/alerts/` holding the engine's files.
const DIR: &str = "_carewatch";

/// `<data-dir>/alerts/_carewatch/history.jsonl`, after moving an older layout's files there
/// (`writable`); a read-only open of an older layout reads them where they are.
pub(super) fn history_path(data_dir: &Path, writable: bool) -> std::io::Result<PathBuf> {
    let old = data_dir.join("alerts");
    let new = old.join(DIR);
    let name = "history.jsonl";
    if new.join(name).exists() || !old.join(name).exists() {
        return Ok(new.join(name));
    }
    if !writable {
        return Ok(old.join(name));
    }
    std::fs::create_dir_all(&new)?;
    let mut moving: Vec<std::ffi::OsString> = std::fs::read_dir(&old)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| {
            let s = n.to_string_lossy();
            s.starts_with("webhook") && s.ends_with(".offset")
        })
        .collect();
    moving.push(name.into());
    for n in &moving {
        std::fs::rename(old.join(n), new.join(n))?;
    }
    for d in [&new, &old] {
        std::fs::File::open(d)?.sync_all()?;
    }
    tracing::info!("alert history moved to alerts/_carewatch/ (alerts/ is the alerts Delta table)");
    Ok(new.join(name))
}

#[cfg(test)]
mod tests {
    use super::history_path;

    #[test]
    fn an_older_layouts_history_and_positions_move_into_carewatch() {
        let dir = tempfile::tempdir().expect("tmp");
        let old = dir.path().join("alerts");
        std::fs::create_dir_all(&old).expect("dir");
        std::fs::write(old.join("history.jsonl"), "{}\n").expect("write");
        std::fs::write(old.join("webhook.generic-0123.offset"), "7").expect("write");
        std::fs::write(old.join("webhook.offset"), "5").expect("write");

        let ro = history_path(dir.path(), false).expect("read-only");
        assert_eq!(
            ro,
            old.join("history.jsonl"),
            "a read-only open moves nothing"
        );
        let p = history_path(dir.path(), true).expect("writable");
        let new = old.join("_carewatch");
        assert_eq!(p, new.join("history.jsonl"));
        for n in [
            "history.jsonl",
            "webhook.generic-0123.offset",
            "webhook.offset",
        ] {
            assert!(new.join(n).exists(), "{n} moved");
            assert!(!old.join(n).exists(), "{n} left behind");
        }
        assert_eq!(
            history_path(dir.path(), false).expect("again"),
            new.join("history.jsonl")
        );
    }

    #[test]
    fn a_new_data_directory_starts_in_carewatch() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = history_path(dir.path(), true).expect("path");
        assert_eq!(p, dir.path().join("alerts/_carewatch/history.jsonl"));
    }
}
