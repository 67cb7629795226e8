//! Where each webhook receiver's position is kept: on a single node its own file
//! (`alerts/webhook.<kind>-<hash of the URL>.offset`, written durably: temp file, fsync,
//! rename); in a cluster a row of `carewatch_webhook_positions` in PostgreSQL, saved only
//! while this node holds the deliverer's lease.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::deliver::{Ctx, Receiver, hex};

/// Where a receiver's position is kept: its file, or (cluster) the shared table, by name.
pub(super) enum Position {
    File(PathBuf),
    Shared(String),
}

impl Position {
    /// Saves `n`; `false` when this node no longer delivers (cluster), so it must stop.
    pub(super) async fn save(&self, ctx: &Ctx, n: u64) -> bool {
        match self {
            Position::File(p) => {
                save_offset(p.clone(), n).await;
                true
            }
            Position::Shared(name) => {
                let (h, name) = (ctx.engine.history().clone(), name.clone());
                match tokio::task::spawn_blocking(move || h.save_shared_position(&name, n)).await {
                    Ok(Ok(held)) => held,
                    _ => {
                        tracing::warn!("webhook position not saved in PostgreSQL");
                        false
                    }
                }
            }
        }
    }
}

/// `webhook.<kind>-<hash of the URL>`: a receiver's name for its position (no URL or team name
/// in it).
pub(super) fn position_name(r: &Receiver) -> String {
    let h = hex(&Sha256::digest(r.url.as_bytes()));
    format!("webhook.{}-{}", r.kind.as_str(), &h[..16])
}

/// `alerts/webhook.<kind>-<hash of the URL>.offset`.
pub(super) fn offset_file(history: &Path, r: &Receiver) -> PathBuf {
    history.with_file_name(format!("{}.offset", position_name(r)))
}

fn read_offset(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Each receiver's starting position: its own file; else, on the first start with
/// per-receiver positions, the old shared `alerts/webhook.offset` (0 without it); else (a
/// receiver added to a running deployment) the end of the history, as before, when one shared
/// position made a new receiver hear only of new transitions. Blocking: call off the workers.
pub(super) fn start_positions(history: &Path, receivers: &[Receiver], end: u64) -> Vec<u64> {
    let own: Vec<Option<u64>> = receivers
        .iter()
        .map(|r| read_offset(&offset_file(history, r)))
        .collect();
    let upgraded = std::fs::read_dir(history.with_file_name(""))
        .map(|d| {
            d.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("webhook.") && n.ends_with(".offset") && n != "webhook.offset"
            })
        })
        .unwrap_or(false);
    let seed = if upgraded {
        end
    } else {
        read_offset(&history.with_file_name("webhook.offset")).unwrap_or(0)
    };
    // Written at once, so that a restart before a receiver's first delivery still finds it.
    for (r, o) in receivers.iter().zip(&own) {
        if o.is_none() && write_offset(&offset_file(history, r), seed).is_err() {
            tracing::warn!("webhook position not saved");
        }
    }
    own.into_iter().map(|o| o.unwrap_or(seed)).collect()
}

fn write_offset(p: &Path, n: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = p.with_extension("offset.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(n.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, p)
}

/// Writes the position durably (temp file, fsync, rename) on the blocking pool.
async fn save_offset(p: PathBuf, n: u64) {
    let r = tokio::task::spawn_blocking(move || write_offset(&p, n)).await;
    if !matches!(r, Ok(Ok(()))) {
        tracing::warn!("webhook position not saved");
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use crate::notify::Routes;
    use crate::notify::deliver::receivers;

    #[test]
    fn the_old_shared_offset_seeds_every_receiver_once() {
        let routes = Routes {
            webhook_url: Some("http://a/".into()),
            escalation_url: Some("http://c/".into()),
            ..Routes::default()
        };
        let r = receivers(&routes);
        let dir = tempfile::tempdir().expect("tmp");
        let h = dir.path().join("history.jsonl");
        assert_eq!(start_positions(&h, &r, 9), [0, 0], "fresh: from the start");
        // Upgrade: the old shared position seeds both, and is written at once.
        let dir = tempfile::tempdir().expect("tmp");
        let h = dir.path().join("history.jsonl");
        std::fs::write(dir.path().join("webhook.offset"), "5").expect("write");
        assert_eq!(start_positions(&h, &r, 9), [5, 5], "upgrade");
        // One receiver delivered, the other not yet; a restart: both keep their place.
        std::fs::write(offset_file(&h, &r[0]), "7").expect("write");
        assert_eq!(start_positions(&h, &r, 9), [7, 5], "restart mid-upgrade");
        // A receiver added to a running deployment starts at the end.
        std::fs::remove_file(offset_file(&h, &r[1])).expect("rm");
        assert_eq!(start_positions(&h, &r, 9), [7, 9], "added later");
    }
}
