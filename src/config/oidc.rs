//! `[auth.oidc]`: single sign-on with the hospital's identity provider (OpenID Connect).
//! `--oidc-issuer` / `--oidc-audience` (`CAREWATCH_OIDC_ISSUER`, `CAREWATCH_OIDC_AUDIENCE`)
//! win over the file; an issuer without an audience is an error.

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

use carewatch_auth::oidc::OidcConfig;

/// `[auth.oidc]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcFile {
    /// Issuer URL (its `/.well-known/openid-configuration` is fetched).
    pub issuer: Option<String>,
    /// The `aud` that bearer tokens for carewatch carry.
    pub audience: Option<String>,
    /// Claim with the roles `admin`, `analyst`, `care_manager` (default `roles`).
    pub roles_claim: Option<String>,
    /// Claim with the care team(s), a string or an array (default `care_team`).
    pub team_claim: Option<String>,
    /// The dashboard's client id at the issuer (default: the audience).
    pub client_id: Option<String>,
    /// The dashboard's client secret (omit for a public client: PKCE only).
    pub client_secret: Option<String>,
    /// Scopes the dashboard asks for (default `openid profile`).
    pub scopes: Option<String>,
    /// The dashboard's redirect URI as registered at the issuer (`https://host/auth/callback`);
    /// default: built from the request's host.
    pub redirect_url: Option<String>,
    /// The FHIR server (base URL) whose SMART launches carewatch accepts: a launch's `iss`
    /// must be this (default: carewatch's own `/fhir`).
    pub smart_fhir_base: Option<String>,
    /// Longest dashboard session, minutes (default 480).
    pub session_minutes: Option<u64>,
    /// Unknown key ids refetch the issuer's keys at most this often, seconds (default 10).
    pub jwks_min_refetch_secs: Option<f64>,
    /// Clock skew allowed on `exp` and `nbf`, seconds (default 30).
    pub leeway_secs: Option<u64>,
}

/// The resolved single sign-on settings (`None`: no issuer, carewatch tokens only).
pub fn resolve(
    issuer: Option<String>,
    audience: Option<String>,
    f: OidcFile,
) -> Result<Option<OidcConfig>> {
    let Some(issuer) = issuer.or(f.issuer).filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    let Some(audience) = audience.or(f.audience).filter(|s| !s.trim().is_empty()) else {
        bail!("an OIDC issuer needs an audience (--oidc-audience or auth.oidc.audience)");
    };
    let u = url::Url::parse(&issuer)
        .map_err(|e| anyhow::anyhow!("auth.oidc.issuer {issuer:?}: {e}"))?;
    let loopback = u
        .host_str()
        .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]");
    if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
        bail!("auth.oidc.issuer must be an https URL (http only on a loopback address)");
    }
    let mut c = OidcConfig::new(&issuer, &audience);
    if let Some(r) = f.roles_claim {
        c.roles_claim = r;
    }
    if let Some(t) = f.team_claim {
        c.team_claim = t;
    }
    if let Some(id) = f.client_id {
        c.client_id = id;
    }
    c.client_secret = f.client_secret.filter(|s| !s.is_empty());
    if let Some(s) = f.scopes {
        if !s.split_whitespace().any(|x| x == "openid") {
            bail!("auth.oidc.scopes must include openid");
        }
        c.scopes = s;
    }
    if let Some(r) = f.redirect_url {
        if !r.ends_with("/auth/callback") || url::Url::parse(&r).is_err() {
            bail!("auth.oidc.redirect_url must be a URL ending in /auth/callback");
        }
        c.redirect_url = Some(r);
    }
    if let Some(b) = f.smart_fhir_base {
        let u = url::Url::parse(&b)
            .map_err(|e| anyhow::anyhow!("auth.oidc.smart_fhir_base {b:?}: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") || u.query().is_some() {
            bail!("auth.oidc.smart_fhir_base must be an http(s) URL without a query");
        }
        c.smart_fhir_base = Some(b.trim_end_matches('/').to_owned());
    }
    if let Some(m) = f.session_minutes {
        if !(1..=7 * 24 * 60).contains(&m) {
            bail!("auth.oidc.session_minutes must be between 1 and 10080");
        }
        c.session_lifetime = Duration::from_secs(m * 60);
    }
    if let Some(s) = f.jwks_min_refetch_secs {
        if !(0.0..=3600.0).contains(&s) {
            bail!("auth.oidc.jwks_min_refetch_secs must be between 0 and 3600");
        }
        c.min_refetch = Duration::from_secs_f64(s);
    }
    if let Some(s) = f.leeway_secs {
        if s > 300 {
            bail!("auth.oidc.leeway_secs must be at most 300");
        }
        c.leeway = Duration::from_secs(s);
    }
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_bad_settings_are_errors() {
        assert!(
            resolve(None, None, OidcFile::default())
                .expect("ok")
                .is_none()
        );
        let f = OidcFile {
            issuer: Some("https://idp.example/realms/h".into()),
            audience: Some("file-aud".into()),
            team_claim: Some("groups".into()),
            ..OidcFile::default()
        };
        let c = resolve(None, Some("flag-aud".into()), f)
            .expect("ok")
            .expect("configured");
        assert_eq!(c.audience, "flag-aud");
        assert_eq!(
            (c.roles_claim.as_str(), c.team_claim.as_str()),
            ("roles", "groups")
        );
        assert_eq!(c.client_id, "flag-aud");
        let no_aud = resolve(Some("https://idp".into()), None, OidcFile::default());
        assert!(no_aud.unwrap_err().to_string().contains("audience"));
        let plain = resolve(
            Some("http://idp.example".into()),
            Some("a".into()),
            OidcFile::default(),
        );
        assert!(plain.unwrap_err().to_string().contains("https"));
        assert!(
            resolve(
                Some("http://127.0.0.1:9".into()),
                Some("a".into()),
                OidcFile::default()
            )
            .is_ok()
        );
    }
}
