//! The registry: devices bound to patients over time, credentials, care teams.
//!
//! Small and rarely written, so it is one JSON document (`registry.json` in the data
//! directory) rewritten atomically (temp file, fsync, rename) on every change.
//!
//! Credentials are random 256-bit bearer tokens (`cw_` + 64 hex digits); only their SHA-256 is
//! stored. A fast hash is enough because the tokens are random, not chosen by people. A
//! device's token is its secret: on MQTT the device connects with its id as username and the
//! token as password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including the registry and the audit log.
    Admin,
    /// Read-only SQL over everything.
    Analyst,
    /// Alerts and vitals of the patients of their care team.
    CareManager,
    /// Writes its own readings.
    Device,
}

impl Role {
    /// Parses `admin`, `analyst`, `care_manager`, `device`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "analyst" => Some(Role::Analyst),
            "care_manager" | "care-manager" => Some(Role::CareManager),
            "device" => Some(Role::Device),
            _ => None,
        }
    }
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::CareManager => "care_manager",
            Role::Device => "device",
        }
    }
}

/// Who a credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// Short, non-secret id of the credential (for audit logs).
    pub id: String,
    /// Role.
    pub role: Role,
    /// The device id (devices) or care team (care managers).
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Credential {
    principal: Principal,
    created_us: i64,
    revoked_us: Option<i64>,
    /// When the credential stops working, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_us: Option<i64>,
    /// Last successful use, as of the last registry write (the live value is in memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_used_us: Option<i64>,
}

impl Credential {
    fn new(principal: Principal) -> Self {
        Credential {
            principal,
            created_us: now_us(),
            revoked_us: None,
            expires_us: None,
            last_used_us: None,
        }
    }

    /// Usable now: not revoked, not expired.
    fn live(&self, now: i64) -> bool {
        self.revoked_us.is_none() && self.expires_us.is_none_or(|e| now < e)
    }
}

/// What an admin may see of a credential: never the secret or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CredentialInfo {
    /// The credential id (also the `principal.id` of its holder).
    pub id: String,
    /// Role.
    pub role: Role,
    /// Device id or care team.
    pub subject: Option<String>,
    /// Creation, UTC micros.
    pub created_us: i64,
    /// Expiry, UTC micros.
    pub expires_us: Option<i64>,
    /// Last successful authentication, UTC micros.
    pub last_used_us: Option<i64>,
    /// Revocation, UTC micros.
    pub revoked_us: Option<i64>,
}

/// A device's assignment to a patient for a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Patient.
    pub patient_id: String,
    /// Start, UTC micros (inclusive).
    pub valid_from_us: i64,
    /// End, UTC micros (exclusive); `None` = open.
    pub valid_to_us: Option<i64>,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Device id.
    pub device_id: String,
    /// Assignments, oldest first.
    pub assignments: Vec<Assignment>,
    /// Revocation time.
    pub revoked_us: Option<i64>,
    /// Hash of the current secret (the device's token).
    secret_hash: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Data {
    devices: BTreeMap<String, Device>,
    credentials: BTreeMap<String, Credential>,
    /// patient -> care team
    care_teams: BTreeMap<String, String>,
    /// credential id -> token hash (derived, rebuilt on load)
    #[serde(skip)]
    by_id: std::collections::HashMap<String, String>,
}

impl Data {
    fn parse(bytes: &[u8]) -> std::result::Result<Data, serde_json::Error> {
        let mut d: Data = serde_json::from_slice(bytes)?;
        d.by_id = d
            .credentials
            .iter()
            .map(|(h, c)| (c.principal.id.clone(), h.clone()))
            .collect();
        Ok(d)
    }

    fn insert_credential(&mut self, hash: String, c: Credential) {
        self.by_id.insert(c.principal.id.clone(), hash.clone());
        self.credentials.insert(hash, c);
    }

    /// Whether the credential with this hash may be used now (for a device: the device is not
    /// revoked and this is its current secret).
    fn usable(&self, hash: &str, now: i64) -> Option<&Credential> {
        let c = self.credentials.get(hash)?;
        if !c.live(now) {
            return None;
        }
        if c.principal.role == Role::Device {
            let dev = self.devices.get(c.principal.subject.as_deref()?)?;
            if dev.revoked_us.is_some() || dev.secret_hash != hash {
                return None;
            }
        }
        Some(c)
    }
}

/// What the registry says about a device at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    /// The patient the device was assigned to then.
    Patient(String),
    /// Not registered.
    UnknownDevice,
    /// Revoked.
    Revoked,
    /// Registered, but assigned to nobody at that time.
    Unassigned,
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    data: RwLock<Data>,
    /// Modification time of the file as last read or written, to pick up changes made by
    /// `carewatch token create` on the same data directory while the server runs.
    seen: std::sync::Mutex<Option<std::time::SystemTime>>,
    /// credential id -> last successful use (UTC micros), kept in memory and folded into the
    /// document on the next write.
    last_used: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// Bumped on every change (own writes and reloads), for sessions that must end when their
    /// credential does.
    generation: tokio::sync::watch::Sender<u64>,
}

fn mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn hash(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_token() -> Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| Error::Io(format!("random: {e}")))?;
    Ok(format!(
        "cw_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// Not a care team: the word used for patients without one.
pub const UNASSIGNED: &str = "unassigned";

/// A name that can be a care team.
pub fn valid_team(team: &str) -> bool {
    !team.trim().is_empty() && team != UNASSIGNED
}

fn info(c: &Credential, used: Option<i64>) -> CredentialInfo {
    CredentialInfo {
        id: c.principal.id.clone(),
        role: c.principal.role,
        subject: c.principal.subject.clone(),
        created_us: c.created_us,
        expires_us: c.expires_us,
        last_used_us: used.or(c.last_used_us),
        revoked_us: c.revoked_us,
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Registry {
    /// Opens `registry.json` in `dir`; on a fresh directory creates it with an admin credential,
    /// returned once (the caller prints it once).
    pub fn open(dir: &Path) -> Result<(Registry, Option<String>)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(e.to_string()))?;
        let path = dir.join("registry.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let data: Data = Data::parse(&bytes)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                let seen = std::sync::Mutex::new(mtime(&path));
                Ok((
                    Registry {
                        path,
                        data: RwLock::new(data),
                        seen,
                        last_used: Default::default(),
                        generation: tokio::sync::watch::Sender::new(0),
                    },
                    None,
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let r = Registry {
                    path,
                    data: RwLock::new(Data::default()),
                    seen: std::sync::Mutex::new(None),
                    last_used: Default::default(),
                    generation: tokio::sync::watch::Sender::new(0),
                };
                let admin = r.create_token(Role::Admin, None)?;
                Ok((r, Some(admin)))
            }
            Err(e) => Err(Error::Io(e.to_string())),
        }
    }

    /// Opens an existing registry without ever creating or writing it (read-only tools).
    pub fn open_read_only(dir: &Path) -> Result<Registry> {
        let path = dir.join("registry.json");
        let data: Data = match std::fs::read(&path) {
            Ok(bytes) => Data::parse(&bytes)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Data::default(),
            Err(e) => return Err(Error::Io(e.to_string())),
        };
        let seen = std::sync::Mutex::new(mtime(&path));
        Ok(Registry {
            path,
            data: RwLock::new(data),
            seen,
            last_used: Default::default(),
            generation: tokio::sync::watch::Sender::new(0),
        })
    }

    fn save(&self, data: &Data) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(data).map_err(|e| Error::Encode(e.to_string()))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        crate::engine::write_atomic(dir, "registry.json", &bytes)?;
        *self.seen() = mtime(&self.path);
        Ok(())
    }

    /// Re-reads the file if another process (`carewatch token revoke` on the same data
    /// directory) changed it. `serve` calls this twice a second.
    pub fn refresh(&self) {
        self.reload_if_changed();
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Option<std::time::SystemTime>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Re-reads the file if another process changed it.
    ///
    /// Lock order, everywhere: `data` before `seen`, and `seen` is never held while waiting for
    /// `data` (holding them the other way round here deadlocked against `write`, issue #18).
    /// The file is read and parsed with no lock held.
    fn reload_if_changed(&self) {
        let now = mtime(&self.path);
        if now.is_none() || now == *self.seen() {
            return;
        }
        let Ok(data) = std::fs::read(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|b| Data::parse(&b).map_err(|e| e.to_string()))
        else {
            return;
        };
        let mut g = self
            .data
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut seen = self.seen();
        // Applied already, or the file changed again since we read it (our own write, say):
        // the next look picks up the newest.
        if *seen == now || mtime(&self.path) != now {
            return;
        }
        *g = data;
        *seen = now;
        drop(seen);
        drop(g);
        self.generation.send_modify(|g| *g += 1);
    }

    fn write<T>(&self, f: impl FnOnce(&mut Data) -> Result<T>) -> Result<T> {
        self.reload_if_changed();
        let mut g = self
            .data
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = g.clone();
        for (id, t) in self
            .last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            if let Some(c) = next
                .by_id
                .get(id)
                .cloned()
                .and_then(|h| next.credentials.get_mut(&h))
            {
                c.last_used_us = Some(c.last_used_us.map_or(*t, |u| u.max(*t)));
            }
        }
        let out = f(&mut next)?;
        self.save(&next)?;
        *g = next;
        drop(g);
        self.generation.send_modify(|g| *g += 1);
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&Data) -> T) -> T {
        f(&self
            .data
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Creates a credential and returns the token (shown once).
    pub fn create_token(&self, role: Role, subject: Option<String>) -> Result<String> {
        self.create_token_expiring(role, subject, None)
            .map(|(token, _)| token)
    }

    /// Creates a credential that stops working at `expires_us` (if given); returns the token
    /// (shown once) and what may be shown of it later.
    pub fn create_token_expiring(
        &self,
        role: Role,
        subject: Option<String>,
        expires_us: Option<i64>,
    ) -> Result<(String, CredentialInfo)> {
        if role == Role::CareManager && subject.as_deref().is_none_or(|t| !valid_team(t)) {
            return Err(Error::Config(format!(
                "a care manager needs a care team (not empty, not `{UNASSIGNED}`)"
            )));
        }
        let token = new_token()?;
        let h = hash(&token);
        let principal = Principal {
            id: h[..12].to_owned(),
            role,
            subject,
        };
        let mut c = Credential::new(principal);
        c.expires_us = expires_us;
        let info = info(&c, None);
        self.write(|d| {
            d.insert_credential(h, c);
            Ok(())
        })?;
        Ok((token, info))
    }

    /// Completes when the credential with this id stops being valid: revoked, expired,
    /// removed, or (a device) re-assigned or revoked. Sessions and streams `select!` on it.
    pub async fn until_invalid(&self, id: &str) {
        let mut changes = self.generation.subscribe();
        loop {
            let expires = self.read(|d| {
                d.by_id
                    .get(id)
                    .and_then(|h| d.credentials.get(h))
                    .and_then(|c| c.expires_us)
            });
            if !self.still_valid(id) {
                return;
            }
            let wait = expires.map_or(std::time::Duration::from_secs(3600), |e| {
                std::time::Duration::from_micros(u64::try_from(e - now_us()).unwrap_or(0))
            });
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Every credential, oldest first (never a secret).
    pub fn tokens(&self) -> Vec<CredentialInfo> {
        let used = self
            .last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        self.reload_if_changed();
        let mut out: Vec<CredentialInfo> = self.read(|d| {
            d.credentials
                .values()
                .map(|c| info(c, used.get(&c.principal.id).copied()))
                .collect()
        });
        out.sort_by(|a, b| (a.created_us, &a.id).cmp(&(b.created_us, &b.id)));
        out
    }

    /// Revokes the credential with this id; `false` if there is none or it was revoked already.
    pub fn revoke_token(&self, id: &str) -> Result<bool> {
        self.write(|d| {
            let Some(h) = d.by_id.get(id).cloned() else {
                return Ok(false);
            };
            match d.credentials.get_mut(&h) {
                Some(c) if c.revoked_us.is_none() => {
                    c.revoked_us = Some(now_us());
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
    }

    /// Whether the credential with this id may still be used (not revoked, not expired, and for
    /// a device, still its current secret). Long-lived sessions poll this to close themselves.
    pub fn still_valid(&self, id: &str) -> bool {
        let now = now_us();
        self.read(|d| d.by_id.get(id).is_some_and(|h| d.usable(h, now).is_some()))
    }

    /// The principal behind a bearer token, if valid and not revoked (and, for a device, the
    /// device is not revoked).
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let h = hash(token);
        if self.read(|d| !d.credentials.contains_key(&h)) {
            self.reload_if_changed();
        }
        let now = now_us();
        let p = self.read(|d| d.usable(&h, now).map(|c| c.principal.clone()))?;
        self.last_used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(p.id.clone(), now);
        Some(p)
    }

    /// MQTT login: username = device id, password = secret.
    pub fn device_login(&self, device_id: &str, secret: &str) -> bool {
        self.authenticate(secret)
            .is_some_and(|p| p.role == Role::Device && p.subject.as_deref() == Some(device_id))
    }

    /// Registers a device for a patient from `valid_from_us` and returns its new secret. The
    /// default is the epoch for a device's first assignment (its backlog belongs to this
    /// patient) and now for a re-assignment. Registering a known device again re-assigns it (the previous assignment ends
    /// where the new one starts) and rotates its secret.
    pub fn register_device(
        &self,
        device_id: &str,
        patient_id: &str,
        valid_from_us: Option<i64>,
    ) -> Result<String> {
        if device_id.is_empty() || patient_id.is_empty() {
            return Err(Error::Config(
                "device_id and patient_id must not be empty".into(),
            ));
        }
        // Without `valid_from`, a device's first assignment covers everything it recorded
        // before enrolment (a phone syncing its backlog right after being set up); a
        // re-assignment starts now, so the previous patient keeps what came before.
        let known = self.read(|d| {
            d.devices
                .get(device_id)
                .is_some_and(|dev| !dev.assignments.is_empty())
        });
        let from = valid_from_us.unwrap_or_else(|| if known { now_us() } else { 0 });
        let token = new_token()?;
        let h = hash(&token);
        let principal = Principal {
            id: h[..12].to_owned(),
            role: Role::Device,
            subject: Some(device_id.to_owned()),
        };
        self.write(|d| {
            let dev = d
                .devices
                .entry(device_id.to_owned())
                .or_insert_with(|| Device {
                    device_id: device_id.to_owned(),
                    assignments: Vec::new(),
                    revoked_us: None,
                    secret_hash: String::new(),
                });
            if let Some(last) = dev.assignments.last_mut()
                && last.valid_to_us.is_none_or(|t| t > from)
            {
                if last.valid_from_us >= from {
                    return Err(Error::Config(format!(
                        "device {device_id} already has an assignment starting at or after {from}"
                    )));
                }
                last.valid_to_us = Some(from);
            }
            dev.assignments.push(Assignment {
                patient_id: patient_id.to_owned(),
                valid_from_us: from,
                valid_to_us: None,
            });
            // Revoke the old secret.
            let old = std::mem::replace(&mut dev.secret_hash, h.clone());
            dev.revoked_us = None;
            if let Some(c) = d.credentials.get_mut(&old) {
                c.revoked_us = Some(now_us());
            }
            d.insert_credential(h, Credential::new(principal));
            Ok(())
        })?;
        Ok(token)
    }

    /// Revokes a device: its secret stops working and its readings are dead-lettered.
    pub fn revoke_device(&self, device_id: &str) -> Result<bool> {
        self.write(|d| match d.devices.get_mut(device_id) {
            Some(dev) if dev.revoked_us.is_none() => {
                let t = now_us();
                dev.revoked_us = Some(t);
                if let Some(a) = dev.assignments.last_mut()
                    && a.valid_to_us.is_none()
                {
                    a.valid_to_us = Some(t.max(a.valid_from_us));
                }
                Ok(true)
            }
            _ => Ok(false),
        })
    }

    /// Who a device's reading at `t_us` belongs to.
    pub fn attribute(&self, device_id: &str, t_us: i64) -> Attribution {
        self.read(|d| match d.devices.get(device_id) {
            None => Attribution::UnknownDevice,
            Some(dev) if dev.revoked_us.is_some() => Attribution::Revoked,
            Some(dev) => dev
                .assignments
                .iter()
                .find(|a| a.valid_from_us <= t_us && a.valid_to_us.is_none_or(|e| t_us < e))
                .map(|a| Attribution::Patient(a.patient_id.clone()))
                .unwrap_or(Attribution::Unassigned),
        })
    }

    /// Assigns a patient to a care team.
    pub fn set_care_team(&self, patient_id: &str, team: &str) -> Result<()> {
        if !valid_team(team) {
            return Err(Error::Config(format!(
                "a care team must not be empty or `{UNASSIGNED}`"
            )));
        }
        self.write(|d| {
            d.care_teams.insert(patient_id.to_owned(), team.to_owned());
            Ok(())
        })
    }

    /// The patient's care team.
    pub fn care_team(&self, patient_id: &str) -> Option<String> {
        self.read(|d| d.care_teams.get(patient_id).cloned())
    }

    /// All devices (for the `devices` table).
    pub fn devices(&self) -> Vec<Device> {
        self.read(|d| d.devices.values().cloned().collect())
    }

    /// All (patient, team) pairs (for the `care_teams` table).
    pub fn care_teams(&self) -> Vec<(String, String)> {
        self.read(|d| {
            d.care_teams
                .iter()
                .map(|(p, t)| (p.clone(), t.clone()))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_registry_prints_admin_once_and_persists() {
        let dir = tempfile::tempdir().expect("tmp");
        let (r, admin) = Registry::open(dir.path()).expect("open");
        let admin = admin.expect("admin token on first open");
        assert_eq!(r.authenticate(&admin).map(|p| p.role), Some(Role::Admin));
        drop(r);
        let (r, again) = Registry::open(dir.path()).expect("reopen");
        assert_eq!(again, None);
        assert_eq!(r.authenticate(&admin).map(|p| p.role), Some(Role::Admin));
        assert_eq!(r.authenticate("cw_nope"), None);
        // Only hashes are stored.
        let text = std::fs::read_to_string(dir.path().join("registry.json")).expect("read");
        assert!(!text.contains(&admin));
    }

    #[test]
    fn reassignment_attributes_by_effective_time_and_rotates_secret() {
        let dir = tempfile::tempdir().expect("tmp");
        let (r, _) = Registry::open(dir.path()).expect("open");
        let s1 = r
            .register_device("w1", "alice", Some(1_000))
            .expect("register");
        assert!(r.device_login("w1", &s1));
        assert!(!r.device_login("w2", &s1));
        let s2 = r
            .register_device("w1", "bob", Some(5_000))
            .expect("reassign");
        assert!(!r.device_login("w1", &s1), "old secret revoked");
        assert!(r.device_login("w1", &s2));
        assert_eq!(r.attribute("w1", 999), Attribution::Unassigned);
        assert_eq!(
            r.attribute("w1", 1_000),
            Attribution::Patient("alice".into())
        );
        assert_eq!(
            r.attribute("w1", 4_999),
            Attribution::Patient("alice".into())
        );
        assert_eq!(r.attribute("w1", 5_000), Attribution::Patient("bob".into()));
        assert_eq!(r.attribute("nobody", 5_000), Attribution::UnknownDevice);
        assert!(r.revoke_device("w1").expect("revoke"));
        assert_eq!(r.attribute("w1", 5_000), Attribution::Revoked);
        assert!(!r.device_login("w1", &s2));
        assert!(r.register_device("w2", "carol", Some(10)).is_ok());
        assert!(
            r.register_device("w2", "dave", Some(5)).is_err(),
            "cannot start before the current one"
        );
    }

    #[test]
    fn credentials_expire_revoke_and_list_without_secrets() {
        let dir = tempfile::tempdir().expect("tmp");
        let (r, admin) = Registry::open(dir.path()).expect("open");
        let admin = admin.expect("admin");
        let (analyst, info) = r
            .create_token_expiring(Role::Analyst, None, None)
            .expect("analyst");
        let past = now_us() - 1;
        let (expired, _) = r
            .create_token_expiring(Role::Analyst, None, Some(past))
            .expect("expired");
        assert!(r.authenticate(&expired).is_none(), "expired is refused");
        let p = r.authenticate(&analyst).expect("analyst works");
        assert_eq!(p.id, info.id);
        assert!(r.still_valid(&info.id));
        let listed = r.tokens();
        assert_eq!(listed.len(), 3);
        let me = listed.iter().find(|t| t.id == info.id).expect("listed");
        assert!(me.last_used_us.is_some(), "last use recorded");
        let json = serde_json::to_string(&listed).expect("json");
        assert!(!json.contains(&analyst[3..]) && !json.contains(&hash(&analyst)));
        assert!(r.revoke_token(&info.id).expect("revoke"));
        assert!(!r.revoke_token(&info.id).expect("again"), "already revoked");
        assert!(!r.revoke_token("nope").expect("unknown"));
        assert!(r.authenticate(&analyst).is_none());
        assert!(!r.still_valid(&info.id));
        // Survives a reopen, with the last use folded in by the write.
        drop(r);
        let (r, _) = Registry::open(dir.path()).expect("reopen");
        assert!(r.authenticate(&analyst).is_none());
        assert!(r.authenticate(&admin).is_some());
        let me = r
            .tokens()
            .into_iter()
            .find(|t| t.id == info.id)
            .expect("listed");
        assert!(me.revoked_us.is_some() && me.last_used_us.is_some());
    }

    #[test]
    fn unassigned_is_not_a_team() {
        let dir = tempfile::tempdir().expect("tmp");
        let (r, _) = Registry::open(dir.path()).expect("open");
        assert!(r.set_care_team("alice", UNASSIGNED).is_err());
        assert!(r.set_care_team("alice", " ").is_err());
        assert!(
            r.create_token_expiring(Role::CareManager, Some(UNASSIGNED.into()), None)
                .is_err()
        );
        assert!(r.create_token(Role::CareManager, None).is_err());
        assert!(
            r.create_token(Role::CareManager, Some("team-a".into()))
                .is_ok()
        );
    }

    #[test]
    fn a_device_credential_stops_when_the_device_is_reassigned_or_revoked() {
        let dir = tempfile::tempdir().expect("tmp");
        let (r, _) = Registry::open(dir.path()).expect("open");
        let s1 = r.register_device("w1", "alice", Some(1)).expect("register");
        let id1 = r.authenticate(&s1).expect("device").id;
        assert!(r.still_valid(&id1));
        let s2 = r.register_device("w1", "bob", Some(5)).expect("reassign");
        assert!(!r.still_valid(&id1), "old secret's sessions must close");
        let id2 = r.authenticate(&s2).expect("device").id;
        assert!(r.revoke_device("w1").expect("revoke"));
        assert!(!r.still_valid(&id2));
    }

    /// Parallel enrolments beside unknown-token logins and another process writing the same
    /// file: the old lock order (`seen` then `data` in reload, `data` then `seen` in save)
    /// deadlocked here (issue #18). A watchdog turns a hang into a failure.
    #[test]
    fn parallel_writes_and_unknown_tokens_never_deadlock() {
        let dir = tempfile::tempdir().expect("tmp");
        let (r, _) = Registry::open(dir.path()).expect("open");
        let r = std::sync::Arc::new(r);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for w in 0..4 {
            let r = r.clone();
            threads.push(std::thread::spawn(move || {
                for i in 0..40 {
                    r.register_device(&format!("w{w}-{i}"), &format!("p{w}-{i}"), Some(1))
                        .expect("register");
                }
            }));
        }
        for _ in 0..2 {
            let r = r.clone();
            threads.push(std::thread::spawn(move || {
                for i in 0..400 {
                    assert!(r.authenticate(&format!("cw_unknown{i}")).is_none());
                    r.refresh();
                }
            }));
        }
        let other_dir = dir.path().to_owned();
        threads.push(std::thread::spawn(move || {
            let (other, _) = Registry::open(&other_dir).expect("second opener");
            for i in 0..40 {
                let _ = other.set_care_team(&format!("x{i}"), "team-x");
            }
        }));
        std::thread::spawn(move || {
            for t in threads {
                t.join().expect("thread");
            }
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("registry threads deadlocked");
        assert!(r.devices().len() >= 1);
    }

    #[test]
    fn a_first_assignment_covers_the_backlog_and_a_reassignment_starts_now() {
        let dir = tempfile::tempdir().expect("tmp");
        let (r, _) = Registry::open(dir.path()).expect("open");
        r.register_device("phone", "alice", None).expect("enrol");
        // A reading recorded days before enrolment, synced right after it.
        let backlog = now_us() - 3 * 86_400_000_000;
        assert_eq!(
            r.attribute("phone", backlog),
            Attribution::Patient("alice".into())
        );
        let before = now_us();
        r.register_device("phone", "bob", None).expect("re-issue");
        assert_eq!(
            r.attribute("phone", backlog),
            Attribution::Patient("alice".into())
        );
        assert_eq!(
            r.attribute("phone", before - 1),
            Attribution::Patient("alice".into())
        );
        assert_eq!(
            r.attribute("phone", now_us() + 1_000_000),
            Attribution::Patient("bob".into())
        );
    }
}
