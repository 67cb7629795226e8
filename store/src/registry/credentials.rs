//! Credentials with a lifecycle: creation (optionally expiring), listing without secrets,
//! revocation, authentication (recording last use) and the watch that ends sessions when a
//! credential stops being valid.

use super::persist::{Op, Tx};
use super::{
    Credential, CredentialInfo, Principal, Registry, Role, UNASSIGNED, hash, info, lock, new_token,
    now_us, valid_team,
};
use crate::{Error, Result};

impl Registry {
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
            person: None,
        };
        let mut c = Credential::new(principal);
        c.expires_us = expires_us;
        let info = info(&c, None);
        let op = Op::Credential {
            hash: h,
            credential: c,
        };
        self.write(|_| Ok(((), vec![Tx::of(vec![op])])))?;
        Ok((token, info))
    }

    /// Creates a credential of `role` only if the registry (as the write lock sees it, other
    /// writers' changes included) has no credential at all; returns its token if it did.
    pub(super) fn create_token_if_none(&self, role: Role) -> Result<Option<String>> {
        let token = new_token()?;
        let h = hash(&token);
        let principal = Principal {
            id: h[..12].to_owned(),
            role,
            subject: None,
            person: None,
        };
        let op = Op::Credential {
            hash: h,
            credential: Credential::new(principal),
        };
        self.write(|d| {
            Ok(if d.credentials.is_empty() {
                (Some(token), vec![Tx::of(vec![op])])
            } else {
                (None, Vec::new())
            })
        })
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
        self.catch_up(now_us());
        let used = lock(&self.last_used).latest();
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
            let Some(h) = d.by_id.get(id) else {
                return Ok((false, Vec::new()));
            };
            match d.credentials.get(h) {
                Some(c) if c.revoked_us.is_none() => {
                    let mut c = c.clone();
                    c.revoked_us = Some(now_us());
                    let op = Op::Credential {
                        hash: h.clone(),
                        credential: c,
                    };
                    Ok((true, vec![Tx::of(vec![op])]))
                }
                _ => Ok((false, Vec::new())),
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
            self.catch_up(now_us());
        }
        let now = now_us();
        let p = self.read(|d| d.usable(&h, now).map(|c| c.principal.clone()))?;
        lock(&self.last_used).note(&p.id, now);
        Some(p)
    }
}
