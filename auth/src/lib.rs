//! `carewatch-auth`: who is calling, decided once for every wire.
//!
//! Every edge — the HTTP routers (`ingest`, `query`, `alert`, `web`), SSE streams, the Postgres
//! wire and the embedded MQTT listener — turns a presented secret into a [`Principal`] through
//! [`Authenticator`], and checks roles and care-team scope with the functions here, so a rule is
//! written once. Failed attempts are rate-limited per source address ([`limiter`]).
//!
//! Secrets are carewatch's own tokens (the registry) or, with an issuer configured, JWTs from
//! the hospital's identity provider ([`oidc`]): both go through [`Authenticator::login`], so
//! every wire accepts the same credentials and counts the same failures.
//!
//! Modules: [`limiter`] (failed-login buckets), [`http`] (the axum extractor and error body),
//! [`access`] (role and care-team checks), [`oidc`] (issuer keys and JWT checks), [`session`]
//! and [`signin`] (the dashboard's sign-in with the issuer: server-side sessions, CSRF),
//! [`smart`] (SMART on FHIR discovery), [`launch`] (SMART App Launch), [`glass`] (break-glass
//! grants).
//!
//! Must not: log a secret, a patient id or a device id above debug; hold a lock across `.await`.

pub mod access;
mod exchange;
pub mod glass;
pub mod http;
pub mod launch;
pub mod limiter;
pub mod oidc;
pub mod session;
pub mod signin;
pub mod smart;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use carewatch_store::registry::{Principal, Registry, Role};

pub use access::{in_team, may_see_patient, sees_all_patients, team_of, teams};
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
    /// The identity provider cannot be reached to check the credential.
    Unavailable(&'static str),
}

impl AuthError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Invalid => 401,
            AuthError::Forbidden(_) => 403,
            AuthError::TooManyAttempts(_) => 429,
            AuthError::Unavailable(_) => 503,
        }
    }
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::Invalid => "unauthorized",
            AuthError::Forbidden(_) => "forbidden",
            AuthError::TooManyAttempts(_) => "too_many_attempts",
            AuthError::Unavailable(_) => "unavailable",
        }
    }
    /// Words safe to show the caller (never which part of a secret was wrong).
    pub fn message(&self) -> &'static str {
        match self {
            AuthError::Missing => "a bearer token is required",
            AuthError::Invalid => "unknown, revoked or expired credential",
            AuthError::Forbidden(why) | AuthError::Unavailable(why) => why,
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
    oidc: Option<Arc<oidc::Oidc>>,
    sessions: Arc<session::Sessions>,
    glass: Arc<glass::BreakGlass>,
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
            oidc: None,
            sessions: Arc::default(),
            glass: Arc::default(),
        }
    }

    /// Also accepts JWTs from this issuer.
    pub fn with_oidc(mut self, oidc: oidc::Oidc) -> Self {
        self.oidc = Some(Arc::new(oidc));
        self
    }

    /// The registry behind it.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Dashboard sessions (signed in through the identity provider).
    pub fn sessions(&self) -> &Arc<session::Sessions> {
        &self.sessions
    }

    /// Break-glass grants.
    pub fn break_glass(&self) -> &Arc<glass::BreakGlass> {
        &self.glass
    }

    /// `p` with the break-glass grants its person holds now.
    pub fn with_grants(&self, mut p: Principal) -> Principal {
        if let Some(person) = p.person.as_mut() {
            person.break_glass = self.glass.patients(&person.sub, now_us());
        }
        p
    }

    /// The identity provider, when one is configured.
    pub fn oidc(&self) -> Option<&Arc<oidc::Oidc>> {
        self.oidc.as_ref()
    }

    /// Checks a presented secret (bearer token, Postgres password, MQTT password) from `peer`
    /// (None when unknown, e.g. in-process callers): a JWT from the configured issuer, else a
    /// carewatch token. A source with too many recent failures is refused before the secret is
    /// looked at.
    pub async fn login(&self, secret: &str, peer: Option<IpAddr>) -> Result<Principal, AuthError> {
        if let Some(wait) = peer.and_then(|ip| self.limiter.blocked(ip)) {
            return Err(AuthError::TooManyAttempts(wait));
        }
        let secret = secret.trim();
        let res = match &self.oidc {
            Some(o) if oidc::looks_like_jwt(secret) => {
                o.verify(secret).await.map(|p| self.with_grants(p))
            }
            _ => (!secret.is_empty())
                .then(|| self.registry.authenticate(secret))
                .flatten()
                .ok_or_else(|| {
                    tracing::info!("login refused: unknown, revoked or expired credential");
                    AuthError::Invalid
                }),
        };
        if let (Err(AuthError::Invalid), Some(ip)) = (&res, peer) {
            self.limiter.failed(ip);
        }
        res
    }

    /// [`Authenticator::login`] plus a role check.
    pub async fn login_as(
        &self,
        secret: &str,
        peer: Option<IpAddr>,
        roles: &[Role],
        why: &'static str,
    ) -> Result<Principal, AuthError> {
        let p = self.login(secret, peer).await?;
        require(&p, roles, why)?;
        Ok(p)
    }

    /// MQTT device login: username = device id, password = the device's secret.
    pub async fn device_login(
        &self,
        device_id: &str,
        secret: &str,
        peer: Option<IpAddr>,
    ) -> Result<Principal, AuthError> {
        let p = self.login(secret, peer).await?;
        if p.role == Role::Device && p.subject.as_deref() == Some(device_id) {
            Ok(p)
        } else {
            if let Some(ip) = peer {
                self.limiter.failed(ip);
            }
            Err(AuthError::Invalid)
        }
    }

    /// Whether the principal's credential still works (revoked, expired or rotated ones do
    /// not; a person's token stops at its `exp`).
    pub fn still_valid(&self, p: &Principal) -> bool {
        still_valid(&self.registry, p)
    }

    /// Completes when the principal's credential stops working; long-lived sessions and streams
    /// `select!` on it and end.
    pub async fn until_invalid(&self, p: &Principal) {
        until_invalid(&self.registry, p).await;
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// RFC 3339 UTC of µs since the epoch.
pub(crate) fn iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Whether `p`'s credential still works: a carewatch credential until revoked or expired in the
/// registry, a person's token until its expiry.
pub fn still_valid(registry: &Registry, p: &Principal) -> bool {
    match &p.person {
        Some(person) => now_us() < person.expires_us,
        None => registry.still_valid(&p.id),
    }
}

/// Completes when `p`'s credential stops working (see [`still_valid`]).
pub async fn until_invalid(registry: &Registry, p: &Principal) {
    match &p.person {
        Some(person) => {
            let left = u64::try_from(person.expires_us - now_us()).unwrap_or(0);
            tokio::time::sleep(Duration::from_micros(left)).await;
        }
        None => registry.until_invalid(&p.id).await,
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
