//! SMART App Launch (SMART on FHIR 2): the dashboard as a SMART app.
//!
//! - EHR launch: the EHR opens `GET /smart/launch?iss=<its FHIR base>&launch=<opaque id>`.
//! - Standalone launch: `GET /smart/launch` (optionally `?iss=`); the authorization server
//!   asks which patient (scope `launch/patient`).
//!
//! `iss` must be the configured FHIR server (`[auth.oidc] smart_fhir_base`, default
//! carewatch's own `/fhir`): anything else is refused before any request is made, so a launch
//! URL cannot make carewatch fetch from, or send the browser to, a server of the sender's
//! choosing. carewatch reads `{iss}/.well-known/smart-configuration` (its own discovery for its
//! own base), whose `issuer` must be the identity provider carewatch trusts — the ID token is
//! verified with that issuer's keys and gives the person's roles and care teams, exactly as the
//! dashboard's sign-in does. The browser goes to the authorization endpoint with state, nonce,
//! S256 PKCE, `aud` = the FHIR base and (EHR launch) `launch`. `GET /smart/callback` redeems
//! the code at that server's token endpoint and reads the patient in context from the token
//! response. The person may open that patient only if [`crate::access::may_see_patient`] says
//! so (the same rule as every other wire, break-glass grants included): then the browser lands
//! on `/?patient=<id>`; otherwise a page says so and offers break-glass (`POST /v1/break-glass`
//! with the session's CSRF token; the patient id stays in the session, out of the page).
//!
//! Must not: log a code, state, token, launch id or patient id above debug.

use axum::extract::{Extension, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::exchange;
use crate::oidc::Oidc;
use crate::session::{LOGIN_COOKIE, challenge, random, set_cookie};
use crate::signin::{CallbackQuery, answered, base_url, no_store, page, refused, signed_in};
use crate::{AuthError, Authenticator};

/// Scopes of an EHR launch (besides the sign-in's own, e.g. `openid profile`).
pub const EHR_SCOPES: &str = "launch fhirUser patient/*.read";
/// Scopes of a standalone launch.
pub const STANDALONE_SCOPES: &str = "launch/patient fhirUser patient/*.read";

#[derive(Debug, Deserialize)]
pub(crate) struct LaunchQuery {
    iss: Option<String>,
    launch: Option<String>,
}

/// The parts of a SMART configuration carewatch uses.
#[derive(Debug, Deserialize)]
struct SmartEndpoints {
    issuer: Option<String>,
    authorization_endpoint: String,
    token_endpoint: String,
}

fn same_base(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The authorization and token endpoints for the FHIR server `iss` (already checked to be the
/// configured one).
async fn endpoints(oidc: &Oidc, iss: &str, own: &str) -> Result<(String, String), Response> {
    let d = oidc
        .discovery()
        .await
        .map_err(|e| page(StatusCode::SERVICE_UNAVAILABLE, e.message()))?;
    if same_base(iss, own) {
        return Ok((d.authorization_endpoint.clone(), d.token_endpoint.clone()));
    }
    let unreadable = || {
        page(
            StatusCode::BAD_GATEWAY,
            "The EHR's SMART configuration cannot be read.",
        )
    };
    let url = format!(
        "{}/.well-known/smart-configuration",
        iss.trim_end_matches('/')
    );
    let r = oidc.http().get(&url).send().await.map_err(|e| {
        tracing::warn!(error = %e, "SMART launch: the FHIR server's configuration cannot be reached");
        unreadable()
    })?;
    if !r.status().is_success() {
        tracing::warn!(
            status = r.status().as_u16(),
            "SMART launch: no SMART configuration"
        );
        return Err(unreadable());
    }
    let e: SmartEndpoints = r.json().await.map_err(|_| unreadable())?;
    if !e.issuer.as_deref().is_some_and(|i| same_base(i, &d.issuer)) {
        tracing::warn!(
            "SMART launch refused: the FHIR server's authorization server is not the configured issuer"
        );
        return Err(page(
            StatusCode::BAD_GATEWAY,
            "The EHR's authorization server is not the identity provider carewatch trusts.",
        ));
    }
    Ok((e.authorization_endpoint, e.token_endpoint))
}

/// A launch id as an EHR sends it: 1 to 1024 printable characters.
fn valid_launch(l: &str) -> bool {
    !l.is_empty() && l.len() <= 1024 && !l.chars().any(char::is_control)
}

/// `GET /smart/launch`
pub(crate) async fn launch(
    auth: Option<Extension<Authenticator>>,
    headers: HeaderMap,
    Query(q): Query<LaunchQuery>,
) -> Response {
    let not_configured = || page(StatusCode::NOT_FOUND, "Single sign-on is not configured.");
    let Some(Extension(auth)) = auth else {
        return not_configured();
    };
    let (Some(oidc), Some(base)) = (auth.oidc(), base_url(&auth, &headers)) else {
        return not_configured();
    };
    let own = format!("{base}/fhir");
    let fhir_base = oidc.config().smart_fhir_base.clone().unwrap_or(own.clone());
    let ehr = q.launch.as_deref();
    if ehr.is_some_and(|l| !valid_launch(l)) {
        return page(
            StatusCode::BAD_REQUEST,
            "The launch parameter is not valid.",
        );
    }
    let iss = match (q.iss.as_deref(), ehr) {
        (Some(i), _) => i,
        (None, Some(_)) => {
            return page(
                StatusCode::BAD_REQUEST,
                "An EHR launch must name its FHIR server (iss).",
            );
        }
        (None, None) => fhir_base.as_str(),
    };
    if !same_base(iss, &fhir_base) {
        tracing::info!("SMART launch refused: iss is not the configured FHIR server");
        return page(
            StatusCode::BAD_REQUEST,
            "This launch comes from a FHIR server carewatch is not set up to work with.",
        );
    }
    let (authorize, token) = match endpoints(oidc, &fhir_base, &own).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    redirect(&auth, oidc, &base, &fhir_base, ehr, &authorize, token)
}

/// To the authorization endpoint, with a new sign-in in flight bound to this browser.
fn redirect(
    auth: &Authenticator,
    oidc: &Oidc,
    base: &str,
    fhir_base: &str,
    ehr: Option<&str>,
    authorize: &str,
    token_endpoint: String,
) -> Response {
    let (Ok(verifier), Ok(nonce)) = (random(), random()) else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    };
    let redirect_uri = format!("{base}/smart/callback");
    let code_challenge = challenge(&verifier);
    let Some(state) = auth.sessions().begin_launch(
        verifier,
        nonce.clone(),
        redirect_uri.clone(),
        Some(token_endpoint),
    ) else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    };
    let Ok(mut url) = url::Url::parse(authorize) else {
        return page(
            StatusCode::BAD_GATEWAY,
            "the authorization endpoint is not a URL",
        );
    };
    let c = oidc.config();
    let scope = format!(
        "{} {}",
        c.scopes,
        if ehr.is_some() {
            EHR_SCOPES
        } else {
            STANDALONE_SCOPES
        }
    );
    {
        let mut qp = url.query_pairs_mut();
        qp.append_pair("response_type", "code")
            .append_pair("client_id", &c.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("aud", fhir_base)
            .append_pair("code_challenge", &code_challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(l) = ehr {
            qp.append_pair("launch", l);
        }
    }
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, url.to_string())]).into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &state, 600)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    no_store(r)
}

/// A patient id as it may come in a token response: 1 to 128 printable characters.
fn valid_patient(p: &str) -> bool {
    !p.is_empty() && p.len() <= 128 && !p.chars().any(char::is_control)
}

/// `GET /smart/callback`
pub(crate) async fn callback(
    auth: Option<Extension<Authenticator>>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(Extension(auth)) = auth else {
        return page(StatusCode::NOT_FOUND, "Single sign-on is not configured.");
    };
    let (code, pending) = match answered(&auth, &headers, &q) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Some(token_endpoint) = pending.smart_token_endpoint.clone() else {
        return page(
            StatusCode::BAD_REQUEST,
            "This sign-in has expired; please sign in again.",
        );
    };
    let answer = match exchange::redeem(&auth, &token_endpoint, &code, &pending).await {
        Ok(a) => a,
        Err(e) => return refused(&e),
    };
    let Some(id_token) = answer.id_token else {
        return refused(&AuthError::Unavailable(
            "the identity provider did not complete the sign-in",
        ));
    };
    let Some(patient) = answer.patient.filter(|p| valid_patient(p)) else {
        tracing::info!("SMART launch: the token response has no usable patient context");
        return page(
            StatusCode::BAD_GATEWAY,
            "The EHR did not say which patient to open.",
        );
    };
    let principal = match exchange::person(&auth, &id_token, &pending).await {
        Ok(p) => p,
        Err(e) => return refused(&e),
    };
    let allowed = crate::access::may_see_patient(
        auth.registry(),
        &auth.with_grants(principal.clone()),
        &patient,
    );
    let who = principal.id.clone();
    let cookie = match exchange::open(&auth, principal, id_token, Some(patient.clone())) {
        Ok(c) => c,
        Err(e) => return refused(&e),
    };
    let max_age = exchange::lifetime(&auth).as_secs();
    if allowed {
        tracing::info!(principal = %who, "SMART launch: patient opened");
        let to = format!("/?patient={}", urlencoding(&patient));
        let r = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
        return signed_in(r, &cookie, max_age);
    }
    tracing::info!(principal = %who, "SMART launch: the patient is outside the person's care teams");
    signed_in(not_yours(), &cookie, max_age)
}

fn urlencoding(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The refusal after a launch into a patient outside the person's teams, offering break-glass.
fn not_yours() -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("launch_refused.html"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_ids_patients_and_bases_are_checked() {
        assert!(valid_launch("a1b2") && !valid_launch("") && !valid_launch("a\nb"));
        assert!(!valid_launch(&"x".repeat(1025)));
        assert!(valid_patient("p-north") && !valid_patient("") && !valid_patient("a\u{0}"));
        assert!(same_base("https://ehr/fhir/", "https://ehr/fhir"));
        assert!(!same_base("https://ehr/fhir", "https://evil/fhir"));
        assert_eq!(urlencoding("a b&c"), "a+b%26c");
    }
}
