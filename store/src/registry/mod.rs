//! The registry: devices bound to patients over time, credentials, care teams.
//!
//! The state lives in memory (`Data`), read under a brief lock by every authentication and
//! attribution. Changes are written by a [`persist::Backend`] before they are applied and
//! answered: today `registry.log` in the data directory (`log.rs`), one appended, fsynced line
//! per transaction, compacted when it has doubled, so a change costs the same with 10 devices
//! or 100 000. Writers are serialised by a mutex around the backend; the in-memory lock is
//! never held across a disk write. An older `registry.json` is migrated on the first open.
//!
//! Credentials are random 256-bit bearer tokens (`cw_` + 64 hex digits); only their SHA-256 is
//! stored. A fast hash is enough because the tokens are random, not chosen by people. A
//! device's token is its secret: on MQTT the device connects with its id as username and the
//! token as password.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};
use persist::{Backend, Op, Tx};

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
    /// Patients opened to them by break-glass access now (outside their teams, for a while).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub break_glass: Vec<String>,
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
    /// When its readings were last stored, as of the last registry write (the live value is in
    /// memory, see [`Registry::last_seen`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_us: Option<i64>,
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

    fn insert_credential(&mut self, hash: String, mut c: Credential) {
        if let Some(old) = self.credentials.get(&hash) {
            c.last_used_us = c.last_used_us.max(old.last_used_us);
        }
        self.by_id.insert(c.principal.id.clone(), hash.clone());
        self.credentials.insert(hash, c);
    }

    fn from_txs(txs: Vec<Tx>) -> Data {
        let mut d = Data::default();
        for tx in txs {
            d.apply(tx);
        }
        d
    }

    /// Applies one transaction (upserts; last use and last seen only move forward).
    fn apply(&mut self, tx: Tx) {
        for op in tx.ops {
            match op {
                Op::Device(mut dev) => {
                    if let Some(old) = self.devices.get(&dev.device_id) {
                        dev.last_seen_us = dev.last_seen_us.max(old.last_seen_us);
                    }
                    self.devices.insert(dev.device_id.clone(), dev);
                }
                Op::Credential { hash, credential } => self.insert_credential(hash, credential),
                Op::CareTeam { patient_id, team } => {
                    self.care_teams.insert(patient_id, team);
                }
                Op::LastUsed { id, at_us } => {
                    let h = self.by_id.get(&id);
                    if let Some(c) = h.and_then(|h| self.credentials.get_mut(h)) {
                        c.last_used_us = c.last_used_us.max(Some(at_us));
                    }
                }
                Op::Seen { device_id, at_us } => {
                    if let Some(d) = self.devices.get_mut(&device_id) {
                        d.last_seen_us = d.last_seen_us.max(Some(at_us));
                    }
                }
            }
        }
    }

    /// The whole state as transactions (one entity each). Live last uses newer than the last
    /// write stay in memory, queued for the next one.
    fn snapshot(&self) -> Vec<Tx> {
        let mut out = Vec::with_capacity(self.devices.len() + self.credentials.len());
        for d in self.devices.values() {
            out.push(Tx::of(vec![Op::Device(d.clone())]));
        }
        for (h, c) in &self.credentials {
            out.push(Tx::of(vec![Op::Credential {
                hash: h.clone(),
                credential: c.clone(),
            }]));
        }
        for (p, t) in &self.care_teams {
            out.push(Tx::of(vec![Op::CareTeam {
                patient_id: p.clone(),
                team: t.clone(),
            }]));
        }
        out
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
    /// The state, read under a brief lock; written only by the holder of `backend`, and only
    /// after the change is durable.
    data: RwLock<Data>,
    /// The durable side. Lock order: `backend`, then `data`, then `last_used` / `seen` (which
    /// are only ever held briefly, never while the fleet is scanned).
    backend: Mutex<Box<dyn Backend>>,
    /// Opened read-only: never writes (not even last uses).
    read_only: bool,
    /// credential id -> last successful use (UTC micros), kept in memory and written with the
    /// next change (or the next [`Registry::refresh`] a minute later).
    last_used: Mutex<marks::Marks>,
    /// device id -> when its readings were last stored (UTC micros), likewise.
    seen: Mutex<marks::Marks>,
    /// When usage was last written, UTC micros.
    usage_written_us: std::sync::atomic::AtomicI64,
    /// When the last completed look for others' changes (a poll, or a write's begin) started,
    /// UTC micros: everything others made durable before then is in `data`.
    fresh_as_of_us: std::sync::atomic::AtomicI64,
    /// Bumped on every change (own writes and others'), for sessions that must end when their
    /// credential does.
    generation: tokio::sync::watch::Sender<u64>,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    fn read<T>(&self, f: impl FnOnce(&Data) -> T) -> T {
        f(&self.data.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// MQTT login: username = device id, password = secret.
    pub fn device_login(&self, device_id: &str, secret: &str) -> bool {
        self.authenticate(secret)
            .is_some_and(|p| p.role == Role::Device && p.subject.as_deref() == Some(device_id))
    }

    /// Who a device's reading at `t_us` belongs to. A device it does not know makes it take in
    /// other writers' changes first (unless a look started less than 20 ms ago): in a cluster,
    /// another node may have enrolled it a moment ago.
    pub fn attribute(&self, device_id: &str, t_us: i64) -> Attribution {
        match self.attribute_now(device_id, t_us) {
            Attribution::UnknownDevice => {
                self.catch_up(now_us() - durable::MISS_LOOK_US);
                self.attribute_now(device_id, t_us)
            }
            a => a,
        }
    }

    fn attribute_now(&self, device_id: &str, t_us: i64) -> Attribution {
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
        let op = Op::CareTeam {
            patient_id: patient_id.to_owned(),
            team: team.to_owned(),
        };
        self.write(|_| Ok(((), vec![Tx::of(vec![op])])))
    }

    /// The patient's care team.
    pub fn care_team(&self, patient_id: &str) -> Option<String> {
        self.read(|d| d.care_teams.get(patient_id).cloned())
    }

    /// All devices (for the `devices` table), with their live last sighting.
    pub fn devices(&self) -> Vec<Device> {
        let mut out: Vec<Device> = self.read(|d| d.devices.values().cloned().collect());
        // A thousand at a time: a stored reading notes its device under this lock.
        for chunk in out.chunks_mut(1024) {
            let seen = lock(&self.seen);
            for d in chunk {
                d.last_seen_us = d.last_seen_us.max(seen.get(&d.device_id));
            }
        }
        out
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
mod backend_tests;
mod credentials;
mod durable;
mod fleet;
#[cfg(test)]
mod fleet_tests;
mod log;
mod marks;
mod persist;
mod pg;
#[cfg(test)]
mod tests;

pub use fleet::{DeviceFilter, DeviceView, EnrolError, Enrolled, Enrolment, valid_id};
