//! OpenID Connect: JWTs from one configured issuer, accepted wherever a carewatch token is.
//!
//! The issuer's discovery document (`/.well-known/openid-configuration`) and its JWKS are
//! fetched on first use and cached. A token whose `kid` is not in the cache makes one refetch
//! (key rotation at the issuer), at most once per [`OidcConfig::min_refetch`], so a flood of
//! made-up key ids cannot turn carewatch into a load generator against the issuer; the cache is
//! also refreshed once it is older than [`OidcConfig::max_key_age`] (keys removed at the issuer
//! stop working then).
//!
//! A token is accepted only with an asymmetric algorithm (RS*, PS*, ES*, EdDSA) that matches
//! its key's type: `alg: none` does not parse, and HS* is refused outright, so a public key can
//! never be used as an HMAC secret. `iss`, `aud`, `exp` and `sub` are required; `nbf` is
//! checked when present. The role comes from [`OidcConfig::roles_claim`] (the most privileged
//! of `admin`, `analyst`, `care_manager`), the care teams from [`OidcConfig::team_claim`]
//! (a string or an array of strings).
//!
//! Must not: log a token or any part of it, or a claim value, above debug.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use carewatch_store::registry::{Person, Principal, Role};

use crate::AuthError;

/// `[auth.oidc]`, resolved.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer URL, exactly as it appears in tokens' `iss`.
    pub issuer: String,
    /// The audience carewatch's bearer tokens must carry in `aud`.
    pub audience: String,
    /// The claim with the person's carewatch roles (default `roles`); a dotted path such as
    /// `realm_access.roles` reaches into objects when no claim has that exact name.
    pub roles_claim: String,
    /// The claim with the person's care team(s) (default `care_team`).
    pub team_claim: String,
    /// The dashboard's client id at the issuer (default: the audience).
    pub client_id: String,
    /// The dashboard's client secret (none: a public client, PKCE only).
    pub client_secret: Option<String>,
    /// Scopes the dashboard asks for (default `openid profile`).
    pub scopes: String,
    /// The dashboard's redirect URI (`…/auth/callback`); default: from the request's host.
    pub redirect_url: Option<String>,
    /// The FHIR base URL a SMART launch's `iss` must be (the EHR's FHIR server); default:
    /// carewatch's own `/fhir`.
    pub smart_fhir_base: Option<String>,
    /// The longest a dashboard session lasts (default 8 hours).
    pub session_lifetime: Duration,
    /// Unknown key ids refetch the JWKS at most this often (default 10 s).
    pub min_refetch: Duration,
    /// Cached keys are refreshed once older than this (default 15 minutes).
    pub max_key_age: Duration,
    /// Clock skew allowed on `exp` and `nbf` (default 30 s).
    pub leeway: Duration,
}

impl OidcConfig {
    /// The defaults for an issuer and audience.
    pub fn new(issuer: &str, audience: &str) -> Self {
        OidcConfig {
            issuer: issuer.trim_end_matches('/').to_owned(),
            audience: audience.to_owned(),
            roles_claim: "roles".into(),
            team_claim: "care_team".into(),
            client_id: audience.to_owned(),
            client_secret: None,
            scopes: "openid profile".into(),
            redirect_url: None,
            smart_fhir_base: None,
            session_lifetime: Duration::from_secs(8 * 3600),
            min_refetch: Duration::from_secs(10),
            max_key_age: Duration::from_secs(15 * 60),
            leeway: Duration::from_secs(30),
        }
    }
}

/// The parts of the discovery document carewatch uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    /// Must equal the configured issuer.
    pub issuer: String,
    /// Where the keys are.
    pub jwks_uri: String,
    /// Authorization code flow: where the browser goes.
    pub authorization_endpoint: String,
    /// Authorization code flow: where the code is exchanged.
    pub token_endpoint: String,
    /// RP-initiated logout, if the issuer offers it.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

#[derive(Default)]
struct Cache {
    discovery: Option<Arc<Discovery>>,
    keys: HashMap<String, Arc<DecodingKey>>,
    /// Keys without a `kid` (usable only when the token has none either).
    anonymous: Vec<Arc<DecodingKey>>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

/// The issuer's keys and the token check. Cheap to share (`Arc`).
pub struct Oidc {
    cfg: OidcConfig,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.cfg.issuer)
            .finish_non_exhaustive()
    }
}

/// Algorithms accepted from an issuer: asymmetric only.
const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Whether a presented secret is shaped like a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(secret: &str) -> bool {
    secret.starts_with("eyJ") && secret.split('.').count() == 3
}

impl Oidc {
    /// A verifier for this configuration; nothing is fetched until first use.
    pub fn new(cfg: OidcConfig) -> Result<Self, String> {
        url::Url::parse(&cfg.issuer).map_err(|e| format!("auth.oidc.issuer: {e}"))?;
        if cfg.audience.trim().is_empty() {
            return Err("auth.oidc.audience must not be empty".into());
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("OIDC HTTP client: {e}"))?;
        Ok(Oidc {
            cfg,
            http,
            cache: RwLock::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OidcConfig {
        &self.cfg
    }

    /// The HTTP client used to reach the issuer (the sign-in flow uses it too).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn read<T>(&self, f: impl FnOnce(&Cache) -> T) -> T {
        f(&self.cache.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The discovery document (fetched on first use).
    pub async fn discovery(&self) -> Result<Arc<Discovery>, AuthError> {
        if let Some(d) = self.read(|c| c.discovery.clone()) {
            return Ok(d);
        }
        self.refresh(true).await;
        self.read(|c| c.discovery.clone())
            .ok_or(AuthError::Unavailable(
                "the identity provider cannot be reached",
            ))
    }

    /// Refetches discovery and keys unless another task just did (or, unless `force`, a fetch
    /// was attempted less than `min_refetch` ago).
    async fn refresh(&self, force: bool) {
        let asked = Instant::now();
        let _one = self.fetching.lock().await;
        let (attempted, have) = self.read(|c| (c.attempted, c.discovery.is_some()));
        if attempted.is_some_and(|a| a >= asked) {
            return; // someone fetched while we waited
        }
        let recent = attempted.is_some_and(|a| a.elapsed() < self.cfg.min_refetch);
        if recent && (have || !force) {
            return;
        }
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .attempted = Some(Instant::now());
        match self.fetch().await {
            Ok((d, keys, anonymous)) => {
                tracing::info!(
                    keys = keys.len() + anonymous.len(),
                    "OIDC: issuer keys fetched"
                );
                let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
                c.discovery = Some(Arc::new(d));
                c.keys = keys;
                c.anonymous = anonymous;
                c.fetched = Some(Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "OIDC: fetching the issuer's keys failed"),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let r = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("{url} answered {}", r.status()));
        }
        r.json::<T>().await.map_err(|e| format!("{url}: {e}"))
    }

    #[allow(clippy::type_complexity)]
    async fn fetch(
        &self,
    ) -> Result<
        (
            Discovery,
            HashMap<String, Arc<DecodingKey>>,
            Vec<Arc<DecodingKey>>,
        ),
        String,
    > {
        let url = format!("{}/.well-known/openid-configuration", self.cfg.issuer);
        let d: Discovery = self.get_json(&url).await?;
        if d.issuer.trim_end_matches('/') != self.cfg.issuer {
            return Err(format!(
                "the discovery document names issuer {:?}, not the configured one",
                d.issuer
            ));
        }
        let set: JwkSet = self.get_json(&d.jwks_uri).await?;
        let (mut keys, mut anonymous) = (HashMap::new(), Vec::new());
        for jwk in &set.keys {
            let usable = jwk
                .common
                .public_key_use
                .as_ref()
                .is_none_or(|u| *u == jsonwebtoken::jwk::PublicKeyUse::Signature);
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue; // a key type we cannot use (e.g. an encryption key)
            };
            if !usable || key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
                continue;
            }
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.insert(kid.clone(), Arc::new(key));
                }
                None => anonymous.push(Arc::new(key)),
            }
        }
        Ok((d, keys, anonymous))
    }

    fn key_for(&self, kid: Option<&str>) -> (Option<Arc<DecodingKey>>, bool) {
        self.read(|c| {
            let stale = c.fetched.is_none_or(|f| f.elapsed() > self.cfg.max_key_age);
            let key = match kid {
                Some(k) => c.keys.get(k).cloned(),
                None if c.anonymous.len() == 1 => c.anonymous.first().cloned(),
                None => None,
            };
            (key, stale)
        })
    }

    /// Checks a bearer token for carewatch's audience and maps it to a principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let claims = self.verify_claims(token, &self.cfg.audience).await?;
        self.principal(&claims)
    }

    /// Checks signature, issuer, `aud` (= `audience`), `exp`, `nbf` and `sub`; the claims.
    pub async fn verify_claims(&self, token: &str, audience: &str) -> Result<Value, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| refused("header", &e))?;
        if !ALLOWED.contains(&header.alg) {
            tracing::info!(alg = ?header.alg, "OIDC token refused: algorithm not allowed");
            return Err(AuthError::Invalid);
        }
        let kid = header.kid.as_deref();
        let (mut key, stale) = self.key_for(kid);
        if key.is_none() || stale {
            self.refresh(stale && key.is_some()).await;
            key = self.key_for(kid).0;
        }
        let key = key.ok_or_else(|| {
            tracing::info!("OIDC token refused: no issuer key with its key id");
            AuthError::Invalid
        })?;
        if key.family() != header.alg.family() {
            tracing::info!("OIDC token refused: algorithm does not match the key");
            return Err(AuthError::Invalid);
        }
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.cfg.issuer, &format!("{}/", self.cfg.issuer)]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = self.cfg.leeway.as_secs();
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .map(|d| d.claims)
            .map_err(|e| refused("claims", &e))
    }

    /// The principal a verified token's claims describe.
    pub fn principal(&self, claims: &Value) -> Result<Principal, AuthError> {
        let person = self.person(claims)?;
        let role = best_role(strings(claim(claims, &self.cfg.roles_claim))).ok_or_else(|| {
            tracing::info!("OIDC token refused: no carewatch role in its roles claim");
            AuthError::Forbidden("the identity provider gave this person no carewatch role")
        })?;
        // A pseudonymous id, like a credential's (logs carry it; the audit trail and the alert
        // history carry the person's subject and name).
        let digest = <sha2::Sha256 as sha2::Digest>::digest(person.sub.as_bytes());
        let short: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Principal {
            id: format!("oidc:{short}"),
            role,
            subject: None,
            person: Some(person),
        })
    }

    fn person(&self, claims: &Value) -> Result<Person, AuthError> {
        let sub = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::Invalid)?
            .to_owned();
        let name = ["name", "preferred_username"]
            .iter()
            .find_map(|k| claims[*k].as_str().filter(|s| !s.trim().is_empty()))
            .unwrap_or(&sub)
            .to_owned();
        let mut teams: Vec<String> = strings(claim(claims, &self.cfg.team_claim))
            .into_iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        teams.sort();
        teams.dedup();
        let exp = claims["exp"].as_i64().unwrap_or(0);
        Ok(Person {
            sub,
            name,
            teams,
            expires_us: exp.saturating_mul(1_000_000),
            break_glass: Vec::new(),
        })
    }
}

fn refused(what: &str, e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    // The error kind only: never the token, nor text decoded from it.
    let reason = match e.kind() {
        ErrorKind::Json(_) | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => "malformed".to_owned(),
        k => format!("{k:?}"),
    };
    tracing::info!(part = what, reason = %reason, "OIDC token refused");
    AuthError::Invalid
}

/// A claim by exact name, else by dotted path (`realm_access.roles`).
fn claim<'a>(claims: &'a Value, name: &str) -> &'a Value {
    if let Some(v) = claims.get(name) {
        return v;
    }
    name.split('.').fold(claims, |v, k| &v[k])
}

/// A string, or the strings of an array; nothing else.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The most privileged carewatch role among `roles` (devices never come from an issuer).
fn best_role(roles: Vec<String>) -> Option<Role> {
    let have: Vec<Role> = roles.iter().filter_map(|r| Role::parse(r.trim())).collect();
    [Role::Admin, Role::Analyst, Role::CareManager]
        .into_iter()
        .find(|r| have.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn oidc() -> Oidc {
        Oidc::new(OidcConfig::new("https://idp.example", "carewatch")).expect("config")
    }

    #[test]
    fn roles_and_teams_map_from_claims() {
        let o = oidc();
        let p = o
            .principal(&json!({"sub": "u1", "name": "Ann Lee", "exp": 10,
                "roles": ["care_manager", "other"], "care_team": ["north", "south", "north"]}))
            .expect("ok");
        assert_eq!(p.role, Role::CareManager);
        let person = p.person.expect("person");
        assert_eq!(person.teams, vec!["north", "south"]);
        assert_eq!(
            (person.name.as_str(), person.expires_us),
            ("Ann Lee", 10_000_000)
        );
        let p = o
            .principal(
                &json!({"sub": "u2", "exp": 1, "roles": ["analyst", "admin"], "care_team": "east"}),
            )
            .expect("ok");
        assert_eq!(p.role, Role::Admin, "the most privileged role");
        assert_eq!(p.person.expect("person").teams, vec!["east"]);
        assert!(matches!(
            o.principal(&json!({"sub": "u3", "exp": 1, "roles": ["device"]})),
            Err(AuthError::Forbidden(_))
        ));
        assert!(o.principal(&json!({"exp": 1, "roles": ["admin"]})).is_err());
    }

    #[test]
    fn dotted_claim_paths_reach_into_objects() {
        let mut cfg = OidcConfig::new("https://idp.example", "carewatch");
        cfg.roles_claim = "realm_access.roles".into();
        let o = Oidc::new(cfg).expect("config");
        let p = o
            .principal(&json!({"sub": "u", "exp": 1, "realm_access": {"roles": ["analyst"]}}))
            .expect("ok");
        assert_eq!(p.role, Role::Analyst);
    }

    #[tokio::test]
    async fn none_and_hmac_are_refused_before_any_key_is_fetched() {
        use base64::Engine;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let claims = b64(
            &json!({"sub": "x", "iss": "https://idp.example", "aud": "carewatch", "exp": 4_000_000_000_i64}),
        );
        let o = oidc();
        for alg in ["none", "HS256", "HS512"] {
            let t = format!("{}.{claims}.c2ln", b64(&json!({"alg": alg, "typ": "JWT"})));
            assert!(looks_like_jwt(&t));
            assert_eq!(o.verify(&t).await.unwrap_err(), AuthError::Invalid, "{alg}");
        }
        assert!(!looks_like_jwt("cw_abc"));
    }
}
