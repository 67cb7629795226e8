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
    /// The person behind an identity-provider token or dashboard session (`None` for
    /// carewatch's own credentials, which are never stored with one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<Person>,
}

/// A person signed in through the hospital's identity provider (OpenID Connect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// The issuer's stable subject identifier (`sub`).
    pub sub: String,
    /// Display name (`name`, else `preferred_username`, else the subject).
    pub name: String,
    /// The care teams the person belongs to now (their token's team claim).
    pub teams: Vec<String>,
    /// When the token or session stops working, µs since the epoch.
    pub expires_us: i64,
}

impl Principal {
    /// Who acted, for audit lines and alert transitions: the person (`Name <sub>`) when there
    /// is one, else the credential id.
    pub fn actor(&self) -> String {
        match &self.person {
            Some(p) => format!("{} <{}>", p.name, p.sub),
            None => self.id.clone(),
        }
    }
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
            person: None,
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

mod credentials;
#[cfg(test)]
mod tests;
