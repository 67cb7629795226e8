//! `carewatch-auth`: who is calling, decided once for every wire.
//!
//! Every edge — the HTTP routers (`ingest`, `query`, `alert`, `web`), SSE streams, the Postgres
//! wire and the embedded MQTT listener — turns a presented secret into a [`Principal`] through
//! [`Authenticator`], and checks roles and care-team scope with the functions here, so a rule is
//! written once. Failed attempts are rate-limited per source address ([`limiter`]).
//!
//! Modules: [`limiter`] (failed-login buckets), [`http`] (the axum extractor and error body),
//! [`access`] (role and care-team checks).
//!
//! Must not: log a secret, a patient id or a device id above debug; hold a lock across `.await`.

pub mod access;
pub mod http;
pub mod limiter;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use carewatch_store::registry::{Principal, Registry, Role};

pub use access::{may_see_patient, sees_all_patients, team_of};
pub use http::Caller;

/// Why a credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No credential was presented.
    Missing,
    /// Unknown, revoked or expired credential.
    Invalid,
    /// Valid credential, wrong role for this call.
    Forbidden(&'static str),
    /// Too many failed attempts from this source; retry after the given time.
    TooManyAttempts(Duration),
}

impl AuthError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid => 401,
            AuthError::Forbidden(_) => 403,
            AuthError::TooManyAttempts(_) => 429,
        }
    }
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::Invalid => "unauthorized",
            AuthError::Forbidden(_) => "forbidden",
            AuthError::TooManyAttempts(_) => "too_many_attempts",
        }
    }
    /// Words safe to show the caller (never which part of a secret was wrong).
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::Missing => "a bearer token is required",
            AuthError::Invalid => "unknown, revoked or expired credential",
            AuthError::Forbidden(why) => why,
            AuthError::TooManyAttempts(_) => {
                "too many failed logins from this address; retry later"
            }
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for AuthError {}

/// Turns presented secrets into principals, for every wire. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Authenticator {
    registry: Arc<Registry>,
    limiter: Arc<limiter::Limiter>,
}

impl Authenticator {
    /// An authenticator over the registry with the default failed-login limits.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self::with_limits(registry, limiter::Limits::default())
    }

    /// An authenticator with explicit failed-login limits.
    pub fn with_limits(registry: Arc<Registry>, limits: limiter::Limits) -> Self {
        Authenticator {
            registry,
            limiter: Arc::new(limiter::Limiter::new(limits)),
        }
    }

    /// The registry behind it.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Checks a presented secret (bearer token, Postgres password, MQTT password) from `peer`
    /// (None when unknown, e.g. in-process callers). A source with too many recent failures is
    /// refused before the secret is looked at.
    pub fn login(&self, secret: &str, peer: Option<IpAddr>) -> Result<Principal, AuthError> {
        if let Some(wait) = peer.and_then(|ip| self.limiter.blocked(ip)) {
            return Err(AuthError::TooManyAttempts(wait));
        }
        let secret = secret.trim();
        match (!secret.is_empty())
            .then(|| self.registry.authenticate(secret))
            .flatten()
        {
            Some(p) => Ok(p),
            None => {
                if let Some(ip) = peer {
                    self.limiter.failed(ip);
                }
                tracing::info!("login refused: unknown, revoked or expired credential");
                Err(AuthError::Invalid)
            }
        }
    }

    /// [`Authenticator::login`] plus a role check.
    pub fn login_as(
        &self,
        secret: &str,
        peer: Option<IpAddr>,
        roles: &[Role],
        why: &'static str,
    ) -> Result<Principal, AuthError> {
        let p = self.login(secret, peer)?;
        require(&p, roles, why)?;
        Ok(p)
    }

    /// MQTT device login: username = device id, password = the device's secret.
    pub fn device_login(
        &self,
        device_id: &str,
        secret: &str,
        peer: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        let p = self.login(secret, peer)?;
        if p.role == Role::Device && p.subject.as_deref() == Some(device_id) {
            Ok(p)
        } else {
            if let Some(ip) = peer {
                self.limiter.failed(ip);
            }
            Err(AuthError::Invalid)
        }
    }

    /// Whether the principal's credential still works (revoked, expired or rotated ones do not).
    pub fn still_valid(&self, p: &Principal) -> bool {
        self.registry.still_valid(&p.id)
    }

    /// Completes when the principal's credential stops working; long-lived sessions and streams
    /// `select!` on it and end.
    pub async fn until_invalid(&self, p: &Principal) {
        self.registry.until_invalid(&p.id).await;
    }
}

/// Fails unless the principal has one of `roles`.
pub fn require(p: &Principal, roles: &[Role], why: &'static str) -> Result<(), AuthError> {
    if roles.contains(&p.role) {
        Ok(())
    } else {
        Err(AuthError::Forbidden(why))
    }
}
