//! The back-channel half of the dashboard sign-in: the authorization code for tokens at the
//! issuer's token endpoint, the ID token verified, a session opened.

use std::time::Duration;

use serde::Deserialize;

use crate::session::Pending;
use crate::{AuthError, Authenticator};

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
}

/// Exchanges `code`, verifies the ID token (audience = the dashboard's client id, the nonce
/// of this sign-in) and opens a session: its cookie value and lifetime in seconds.
pub(crate) async fn complete(
    auth: &Authenticator,
    code: &str,
    pending: &Pending,
) -> Result<(String, u64), AuthError> {
    let oidc = auth.oidc().ok_or(AuthError::Missing)?;
    let c = oidc.config();
    let d = oidc.discovery().await?;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", pending.redirect_uri.as_str()),
        ("code_verifier", pending.verifier.as_str()),
        ("client_id", c.client_id.as_str()),
    ];
    let mut req = oidc.http().post(&d.token_endpoint).form(&form);
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
    let answer: TokenAnswer = resp.json().await.map_err(|_| unavailable.clone())?;
    let id_token = answer.id_token.ok_or(unavailable)?;
    let claims = oidc.verify_claims(&id_token, &c.client_id).await?;
    let nonce_ok = claims["nonce"]
        .as_str()
        .is_some_and(|n| crate::session::same_secret(n, &pending.nonce));
    if !nonce_ok {
        tracing::info!("OIDC sign-in refused: the ID token's nonce is not this sign-in's");
        return Err(AuthError::Invalid);
    }
    let mut principal = oidc.principal(&claims)?;
    let lifetime: Duration = c.session_lifetime;
    let expires = chrono::Utc::now().timestamp_micros()
        + i64::try_from(lifetime.as_micros()).unwrap_or(i64::MAX / 2);
    if let Some(p) = principal.person.as_mut() {
        p.expires_us = expires;
    }
    let id = principal.id.clone();
    let (cookie, _) = auth
        .sessions()
        .open(principal, id_token)
        .ok_or(AuthError::Unavailable("no randomness"))?;
    tracing::info!(principal = %id, "dashboard sign-in");
    Ok((cookie, lifetime.as_secs()))
}
