//! The back-channel half of a sign-in (the dashboard's, and a SMART launch's): the
//! authorization code for tokens at a token endpoint, the ID token verified, a session opened.

use std::time::Duration;

use serde::Deserialize;

use carewatch_store::registry::Principal;

use crate::session::Pending;
use crate::{AuthError, Authenticator};

/// What carewatch reads of a token response.
#[derive(Deserialize)]
pub(crate) struct TokenAnswer {
    /// The ID token (the person).
    pub id_token: Option<String>,
    /// SMART launch context: the patient in context.
    #[serde(default)]
    pub patient: Option<String>,
}

/// Exchanges `code` at `token_endpoint` (client secret when configured, always the PKCE
/// verifier).
pub(crate) async fn redeem(
    auth: &Authenticator,
    token_endpoint: &str,
    code: &str,
    pending: &Pending,
) -> Result<TokenAnswer, AuthError> {
    let oidc = auth.oidc().ok_or(AuthError::Missing)?;
    let c = oidc.config();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", pending.redirect_uri.as_str()),
        ("code_verifier", pending.verifier.as_str()),
        ("client_id", c.client_id.as_str()),
    ];
    let mut req = oidc.http().post(token_endpoint).form(&form);
    if let Some(secret) = &c.client_secret {
        req = req.basic_auth(&c.client_id, Some(secret));
    }
    let unavailable = AuthError::Unavailable("the identity provider did not complete the sign-in");
    let resp = req.send().await.map_err(|e| {
        tracing::warn!(error = %e, "OIDC sign-in: the token endpoint cannot be reached");
        unavailable.clone()
    })?;
    if !resp.status().is_success() {
        tracing::info!(
            status = resp.status().as_u16(),
            "OIDC sign-in: the token endpoint refused the code"
        );
        return Err(AuthError::Invalid);
    }
    resp.json().await.map_err(|_| unavailable)
}

/// Verifies the ID token (audience = the dashboard's client id, the nonce of this sign-in) and
/// maps it to a person whose session lasts the configured lifetime.
pub(crate) async fn person(
    auth: &Authenticator,
    id_token: &str,
    pending: &Pending,
) -> Result<Principal, AuthError> {
    let oidc = auth.oidc().ok_or(AuthError::Missing)?;
    let c = oidc.config();
    let claims = oidc.verify_claims(id_token, &c.client_id).await?;
    let nonce_ok = claims["nonce"]
        .as_str()
        .is_some_and(|n| crate::session::same_secret(n, &pending.nonce));
    if !nonce_ok {
        tracing::info!("OIDC sign-in refused: the ID token's nonce is not this sign-in's");
        return Err(AuthError::Invalid);
    }
    let mut principal = oidc.principal(&claims)?;
    let expires = chrono::Utc::now().timestamp_micros()
        + i64::try_from(c.session_lifetime.as_micros()).unwrap_or(i64::MAX / 2);
    if let Some(p) = principal.person.as_mut() {
        p.expires_us = expires;
    }
    Ok(principal)
}

/// The session lifetime (cookie `Max-Age`).
pub(crate) fn lifetime(auth: &Authenticator) -> Duration {
    auth.oidc()
        .map_or(Duration::ZERO, |o| o.config().session_lifetime)
}

/// Opens a session for `principal` (with the patient a SMART launch put in context): its
/// cookie value.
pub(crate) fn open(
    auth: &Authenticator,
    principal: Principal,
    id_token: String,
    patient: Option<String>,
) -> Result<String, AuthError> {
    let id = principal.id.clone();
    let (cookie, _) = auth
        .sessions()
        .open_in_context(principal, id_token, patient)
        .ok_or(AuthError::Unavailable("no randomness"))?;
    tracing::info!(principal = %id, "dashboard sign-in");
    Ok(cookie)
}

/// The dashboard's sign-in: exchanges `code` at the issuer, verifies the ID token, opens a
/// session: its cookie value and lifetime in seconds.
pub(crate) async fn complete(
    auth: &Authenticator,
    code: &str,
    pending: &Pending,
) -> Result<(String, u64), AuthError> {
    let oidc = auth.oidc().ok_or(AuthError::Missing)?;
    let d = oidc.discovery().await?;
    let answer = redeem(auth, &d.token_endpoint, code, pending).await?;
    let id_token = answer.id_token.ok_or(AuthError::Unavailable(
        "the identity provider did not complete the sign-in",
    ))?;
    let principal = person(auth, &id_token, pending).await?;
    let cookie = open(auth, principal, id_token, None)?;
    Ok((cookie, lifetime(auth).as_secs()))
}
