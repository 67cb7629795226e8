//! The destination's durable position and status: `<data-dir>/fhir/destination-<hash>.json`,
//! replaced atomically (temporary file, fsync, rename, directory fsync) on the blocking pool.
//!
//! `position_us`: every stored reading received at or before it has been delivered (or dead
//! lettered). A crash loses at most the advance since the last write, so readings are
//! delivered again — harmless, the conditional update makes a resend an update.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What is persisted per destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The destination's base URL without credentials, query or fragment.
    pub url: String,
    /// Everything received up to this instant (UTC microseconds) is delivered.
    pub position_us: i64,
    /// Observations delivered since the state was created.
    pub delivered: u64,
    /// Observations the server refused (dead letters) since the state was created.
    pub failed: u64,
    /// Received time of the oldest reading not yet delivered when last looked, if any.
    pub oldest_pending_us: Option<i64>,
    /// The class of the last error (`network`, `timeout`, `auth`, `server`, `throttled`,
    /// `refused`, `token`, `store`, `bundle`), none after a success.
    pub last_error: Option<String>,
    /// When the last error happened.
    pub last_error_us: Option<i64>,
    /// When a Bundle was last accepted.
    pub last_success_us: Option<i64>,
    /// Alerts: every alert-history transition before this position is delivered (as its
    /// alert's Communication) or dead-lettered.
    #[serde(default)]
    pub alerts_seq: u64,
    /// Communications delivered since the state was created.
    #[serde(default)]
    pub alerts_delivered: u64,
    /// Communications the server refused (dead letters).
    #[serde(default)]
    pub alerts_failed: u64,
}

/// The URL as recorded and shown: no user info, query or fragment.
pub fn public_url(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// The state file of a destination.
pub fn path(data_dir: &Path, url: &url::Url) -> PathBuf {
    let h = Sha256::digest(public_url(url).as_bytes());
    let hex: String = h[..6].iter().map(|b| format!("{b:02x}")).collect();
    data_dir
        .join("fhir")
        .join(format!("destination-{hex}.json"))
}

/// Reads a state file; `None` when there is none yet.
pub fn load(path: &Path) -> std::io::Result<Option<State>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every destination state under a data directory (for `carewatch fhir status`).
pub fn load_all(data_dir: &Path) -> std::io::Result<Vec<(PathBuf, State)>> {
    let dir = data_dir.join("fhir");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("destination-") && name.ends_with(".json") {
            if let Some(s) = load(&p)? {
                out.push((p, s));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Writes the state durably (blocking: call from the blocking pool).
pub fn store(path: &Path, s: &State) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_url_without_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let u = url::Url::parse("https://user:pw@fhir.example/r4/?x=1#f").unwrap();
        assert_eq!(public_url(&u), "https://fhir.example/r4/");
        let p = path(dir.path(), &u);
        assert_eq!(load(&p).unwrap(), None);
        let s = State {
            url: public_url(&u),
            position_us: 42,
            delivered: 3,
            ..State::default()
        };
        store(&p, &s).unwrap();
        assert_eq!(load(&p).unwrap(), Some(s.clone()));
        assert_eq!(load_all(dir.path()).unwrap(), vec![(p, s)]);
    }
}
