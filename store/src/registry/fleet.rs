//! Devices: enrolment one by one (today's re-registering semantics) and in bulk (idempotent,
//! one result per item), revocation, last sightings and the fleet view with filters and paging.

use std::collections::HashSet;
use std::ops::Bound;

use super::persist::{Op, Tx};
use super::{
    Assignment, Credential, Data, Device, Principal, Registry, Role, hash, lock, new_token, now_us,
};
use crate::{Error, Result};

/// One item of an enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    /// Device id.
    pub device_id: String,
    /// Patient id.
    pub patient_id: String,
    /// Start of the assignment, UTC micros. Default: the epoch for a new device (its backlog
    /// belongs to this patient), now for a re-assignment.
    pub valid_from_us: Option<i64>,
    /// End of the assignment (exclusive), UTC micros; `None` = open.
    pub valid_to_us: Option<i64>,
    /// Move the device to this patient (or re-issue a revoked one), rotating its secret,
    /// instead of refusing because it is assigned elsewhere.
    pub reassign: bool,
}

/// What an enrolment item did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// A new device; its secret, shown this once.
    New(String),
    /// An existing device moved or re-issued; its new secret (the old one stops working).
    Reassigned(String),
    /// Already enrolled as asked: nothing changed, and no secret (it was shown the first time).
    Unchanged,
}

/// Why an enrolment item was refused (nothing of it was written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolError {
    /// A malformed id or period.
    #[error("{0}")]
    Invalid(String),
    /// The same device id earlier in the batch.
    #[error("the device appears earlier in the same batch")]
    Duplicate,
    /// Assigned to another patient, and the item does not ask to move it.
    #[error("the device is assigned to another patient; send \"reassign\": true to move it")]
    AssignedElsewhere,
    /// Revoked, and the item does not ask to re-issue it.
    #[error("the device is revoked; send \"reassign\": true to re-issue it")]
    Revoked,
    /// The asked period does not fit the device's history.
    #[error("{0}")]
    Conflict(String),
}

impl EnrolError {
    /// A stable code for the API.
    pub fn code(&self) -> &'static str {
        match self {
            EnrolError::Invalid(_) => "invalid_item",
            EnrolError::Duplicate => "duplicate_device",
            EnrolError::AssignedElsewhere => "assigned_elsewhere",
            EnrolError::Revoked => "revoked_device",
            EnrolError::Conflict(_) => "period_conflict",
        }
    }
}

/// Whether `id` can be a device or patient id: 1 to 256 bytes, no control characters, no
/// space at either end.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && id.trim() == id && !id.chars().any(char::is_control)
}

/// A device as the fleet view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    /// Device id.
    pub device_id: String,
    /// The patient it is assigned to now.
    pub patient_id: Option<String>,
    /// That patient's care team.
    pub care_team: Option<String>,
    /// Every assignment, oldest first.
    pub assignments: Vec<Assignment>,
    /// Revocation time.
    pub revoked_us: Option<i64>,
    /// When its readings were last stored.
    pub last_seen_us: Option<i64>,
}

/// Which devices to list, and where to start.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    /// Only devices whose id sorts after this (the previous page's cursor).
    pub after: Option<String>,
    /// At most this many (0 = none).
    pub limit: usize,
    /// Assigned to this patient now.
    pub patient: Option<String>,
    /// Whose patient is in this care team now.
    pub care_team: Option<String>,
    /// Last seen before this time (never-seen devices are not "seen before").
    pub seen_before_us: Option<i64>,
    /// Never seen (true) or seen at least once (false).
    pub never_seen: Option<bool>,
    /// Revoked (true) or not (false).
    pub revoked: Option<bool>,
}

fn current(dev: &Device, now: i64) -> Option<&Assignment> {
    dev.assignments
        .iter()
        .rev()
        .find(|a| a.valid_from_us <= now && a.valid_to_us.is_none_or(|e| now < e))
}

/// A new secret for `device_id`: the token and its credential.
fn new_secret(device_id: &str) -> Result<(String, String, Credential)> {
    let token = new_token()?;
    let h = hash(&token);
    let principal = Principal {
        id: h[..12].to_owned(),
        role: Role::Device,
        subject: Some(device_id.to_owned()),
        person: None,
    };
    Ok((token, h, Credential::new(principal)))
}

/// Assigns `dev` (a copy) to `patient` from `from` and gives it a new secret: the ops of that
/// change and the token. The previous assignment ends where the new one starts.
fn reissue(d: &Data, mut dev: Device, e: &Enrolment, from: i64) -> Result<(Vec<Op>, String)> {
    if e.valid_to_us.is_some_and(|t| t <= from) {
        return Err(Error::Config("valid_to must be after valid_from".into()));
    }
    if let Some(last) = dev.assignments.last_mut()
        && last.valid_to_us.is_none_or(|t| t > from)
    {
        if last.valid_from_us >= from {
            return Err(Error::Config(format!(
                "device {} already has an assignment starting at or after {from}",
                dev.device_id
            )));
        }
        last.valid_to_us = Some(from);
    }
    dev.assignments.push(Assignment {
        patient_id: e.patient_id.clone(),
        valid_from_us: from,
        valid_to_us: e.valid_to_us,
    });
    let (token, h, cred) = new_secret(&dev.device_id)?;
    let old = std::mem::replace(&mut dev.secret_hash, h.clone());
    dev.revoked_us = None;
    let mut ops = vec![Op::Device(dev)];
    if let Some(c) = d.credentials.get(&old) {
        let mut c = c.clone();
        c.revoked_us.get_or_insert_with(now_us);
        ops.push(Op::Credential {
            hash: old,
            credential: c,
        });
    }
    ops.push(Op::Credential {
        hash: h,
        credential: cred,
    });
    Ok((ops, token))
}

fn empty_device(id: &str) -> Device {
    Device {
        device_id: id.to_owned(),
        assignments: Vec::new(),
        revoked_us: None,
        secret_hash: String::new(),
        last_seen_us: None,
    }
}

/// Decides one bulk item against the current state: its ops and outcome, or why not.
fn decide(
    d: &Data,
    e: &Enrolment,
    now: i64,
) -> std::result::Result<(Vec<Op>, Enrolled), EnrolError> {
    if !valid_id(&e.device_id) || !valid_id(&e.patient_id) {
        return Err(EnrolError::Invalid(
            "device_id and patient_id must be 1 to 256 characters, without control characters or surrounding spaces".into(),
        ));
    }
    if let (Some(f), Some(t)) = (e.valid_from_us, e.valid_to_us)
        && t <= f
    {
        return Err(EnrolError::Invalid(
            "valid_to must be after valid_from".into(),
        ));
    }
    let conflict = |e: Error| EnrolError::Conflict(e.to_string());
    let Some(dev) = d.devices.get(&e.device_id) else {
        let from = e.valid_from_us.unwrap_or(0);
        let dev = empty_device(&e.device_id);
        return reissue(d, dev, e, from)
            .map(|(ops, t)| (ops, Enrolled::New(t)))
            .map_err(conflict);
    };
    let last = dev.assignments.last();
    let as_asked = dev.revoked_us.is_none()
        && last.is_some_and(|a| {
            a.patient_id == e.patient_id
                && e.valid_from_us.is_none_or(|f| f == a.valid_from_us)
                && a.valid_to_us == e.valid_to_us
        });
    if as_asked {
        return Ok((Vec::new(), Enrolled::Unchanged));
    }
    if !e.reassign {
        return Err(match last {
            _ if dev.revoked_us.is_some() => EnrolError::Revoked,
            Some(a) if a.patient_id != e.patient_id => EnrolError::AssignedElsewhere,
            _ => EnrolError::Conflict(
                "the device is enrolled for this patient with another period; send \"reassign\": true to change it".into(),
            ),
        });
    }
    let from = e
        .valid_from_us
        .unwrap_or(if last.is_some() { now } else { 0 });
    reissue(d, dev.clone(), e, from)
        .map(|(ops, t)| (ops, Enrolled::Reassigned(t)))
        .map_err(conflict)
}

impl Registry {
    /// Registers a device for a patient from `valid_from_us` and returns its new secret. The
    /// default is the epoch for a device's first assignment (its backlog belongs to this
    /// patient) and now for a re-assignment. Registering a known device again re-assigns it
    /// (the previous assignment ends where the new one starts) and rotates its secret.
    pub fn register_device(
        &self,
        device_id: &str,
        patient_id: &str,
        valid_from_us: Option<i64>,
    ) -> Result<String> {
        self.assign_device(device_id, patient_id, valid_from_us, None)
    }

    /// [`Registry::register_device`] for a period: the assignment ends at `valid_to_us`
    /// (exclusive) if given. One call moves a device to another patient for a period.
    pub fn assign_device(
        &self,
        device_id: &str,
        patient_id: &str,
        valid_from_us: Option<i64>,
        valid_to_us: Option<i64>,
    ) -> Result<String> {
        if device_id.is_empty() || patient_id.is_empty() {
            return Err(Error::Config(
                "device_id and patient_id must not be empty".into(),
            ));
        }
        if let (Some(f), Some(t)) = (valid_from_us, valid_to_us)
            && t <= f
        {
            return Err(Error::Config("valid_to must be after valid_from".into()));
        }
        let e = Enrolment {
            device_id: device_id.to_owned(),
            patient_id: patient_id.to_owned(),
            valid_from_us,
            valid_to_us,
            reassign: true,
        };
        self.write(|d| {
            let dev = d.devices.get(device_id).cloned();
            let known = dev.as_ref().is_some_and(|d| !d.assignments.is_empty());
            let from = valid_from_us.unwrap_or_else(|| if known { now_us() } else { 0 });
            let dev = dev.unwrap_or_else(|| empty_device(device_id));
            let (ops, token) = reissue(d, dev, &e, from)?;
            Ok((token, vec![Tx::of(ops)]))
        })
    }

    /// Enrols a batch: each item is decided on its own (against the registry and the items
    /// before it), all that change something are written with one sync, each as one
    /// transaction (a crash leaves every item fully enrolled or not at all). The outer error
    /// means nothing was written.
    pub fn enrol(
        &self,
        items: &[Enrolment],
    ) -> Result<Vec<std::result::Result<Enrolled, EnrolError>>> {
        self.write(|d| {
            let now = now_us();
            let mut taken = HashSet::with_capacity(items.len());
            let mut txs = Vec::new();
            let mut out = Vec::with_capacity(items.len());
            for e in items {
                if !taken.insert(e.device_id.as_str()) {
                    out.push(Err(EnrolError::Duplicate));
                    continue;
                }
                out.push(decide(d, e, now).map(|(ops, r)| {
                    if !ops.is_empty() {
                        txs.push(Tx::of(ops));
                    }
                    r
                }));
            }
            Ok((out, txs))
        })
    }

    /// Revokes a device: its secret stops working and its readings are dead-lettered.
    pub fn revoke_device(&self, device_id: &str) -> Result<bool> {
        self.write(|d| match d.devices.get(device_id) {
            Some(dev) if dev.revoked_us.is_none() => {
                let mut dev = dev.clone();
                let t = now_us();
                dev.revoked_us = Some(t);
                if let Some(a) = dev.assignments.last_mut()
                    && a.valid_to_us.is_none()
                {
                    a.valid_to_us = Some(t.max(a.valid_from_us));
                }
                Ok((true, vec![Tx::of(vec![Op::Device(dev)])]))
            }
            _ => Ok((false, Vec::new())),
        })
    }

    /// Notes that readings of these devices were stored at `at_us` (in memory; written with
    /// the next change or refresh, at most once a minute per device).
    pub fn note_seen<'a>(&self, devices: impl IntoIterator<Item = &'a str>, at_us: i64) {
        let mut seen = lock(&self.seen);
        for d in devices {
            seen.note(d, at_us);
        }
    }

    /// When the device's readings were last stored.
    pub fn last_seen(&self, device_id: &str) -> Option<i64> {
        let written = self.read(|d| d.devices.get(device_id).and_then(|d| d.last_seen_us));
        written.max(lock(&self.seen).get(device_id))
    }

    /// One page of the fleet, in device id order, and the cursor of the next page if any.
    pub fn list_devices(&self, f: &DeviceFilter) -> (Vec<DeviceView>, Option<String>) {
        let now = now_us();
        let d = self
            .data
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = f
            .after
            .as_ref()
            .map_or(Bound::Unbounded, |a| Bound::Excluded(a.clone()));
        let mut out = Vec::new();
        for dev in d.devices.range((start, Bound::Unbounded)).map(|(_, v)| v) {
            let last_seen = dev.last_seen_us.max(lock(&self.seen).get(&dev.device_id));
            let patient = current(dev, now).map(|a| a.patient_id.clone());
            let team = patient.as_ref().and_then(|p| d.care_teams.get(p).cloned());
            let keep = f
                .patient
                .as_ref()
                .is_none_or(|p| patient.as_ref() == Some(p))
                && f.care_team
                    .as_ref()
                    .is_none_or(|t| team.as_ref() == Some(t))
                && f.seen_before_us
                    .is_none_or(|b| last_seen.is_some_and(|s| s < b))
                && f.never_seen.is_none_or(|n| n == last_seen.is_none())
                && f.revoked.is_none_or(|r| r == dev.revoked_us.is_some());
            if !keep {
                continue;
            }
            if out.len() == f.limit {
                let next = out.last().map(|v: &DeviceView| v.device_id.clone());
                return (out, next);
            }
            out.push(DeviceView {
                device_id: dev.device_id.clone(),
                patient_id: patient,
                care_team: team,
                assignments: dev.assignments.clone(),
                revoked_us: dev.revoked_us,
                last_seen_us: last_seen,
            });
        }
        (out, None)
    }
}
