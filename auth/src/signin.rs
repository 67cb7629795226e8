//! The dashboard's OpenID Connect sign-in (authorization code flow with PKCE) and sign-out
//! (RP-initiated logout). Routes, all under `/auth/`:
//!
//! - `GET /auth/config`: `{"sso": bool}` — which sign-in the page offers (token paste only
//!   when no issuer is configured).
//! - `GET /auth/login`: to the issuer's authorization endpoint (state, nonce, S256 challenge);
//!   the state is also bound to this browser by a short-lived cookie.
//! - `GET /auth/callback`: checks state and cookie, exchanges the code (client secret when
//!   configured, always the PKCE verifier), verifies the ID token (signature, issuer, audience
//!   = client id, expiry, nonce), maps roles and teams, opens a server-side session.
//! - `GET /auth/session`: who is signed in, and the session's CSRF token.
//! - `POST /auth/logout` (CSRF token required): ends the session; answers where to send the
//!   browser for the issuer's sign-out.
//! - `GET /.well-known/smart-configuration` (also under `/fhir/`): [`crate::smart`].
//! - `GET /smart/launch`, `GET /smart/callback`: SMART App Launch ([`crate::launch`]).
//!
//! The redirect URI is `[auth.oidc] redirect_url`, else built from the request's `Host`
//! (http on loopback, https elsewhere); the issuer accepts only registered redirect URIs.

use axum::Router;
use axum::extract::{Extension, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use crate::session::{self, COOKIE, LOGIN_COOKIE, challenge, cookie, random, set_cookie};
use crate::{AuthError, Authenticator};

/// The sign-in routes (they find the [`Authenticator`] in the request extensions).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/auth/config", get(config))
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/auth/session", get(current))
        .route("/auth/logout", post(logout))
        .route("/smart/launch", get(crate::launch::launch))
        .route("/smart/callback", get(crate::launch::callback))
        .route(
            "/.well-known/smart-configuration",
            get(crate::smart::configuration),
        )
        .route(
            "/fhir/.well-known/smart-configuration",
            get(crate::smart::configuration),
        )
}

pub(crate) fn page(status: StatusCode, text: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>carewatch</title><p id=error>{text}</p><p><a href=\"/\">Back to carewatch</a></p>"
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

pub(crate) fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn config(auth: Option<Extension<Authenticator>>) -> Response {
    let sso = auth.is_some_and(|a| a.oidc().is_some());
    axum::Json(json!({"sso": sso})).into_response()
}

/// The dashboard's base URL (no trailing slash).
pub(crate) fn base_url(auth: &Authenticator, headers: &HeaderMap) -> Option<String> {
    if let Some(r) = auth.oidc().and_then(|o| o.config().redirect_url.clone()) {
        return r.strip_suffix("/auth/callback").map(str::to_owned);
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    if host.is_empty() || host.contains(['/', '@', ' ', '\\']) {
        return None;
    }
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let loopback = matches!(name, "localhost" | "127.0.0.1" | "[::1]");
    Some(format!(
        "{}://{host}",
        if loopback { "http" } else { "https" }
    ))
}

async fn login(auth: Option<Extension<Authenticator>>, headers: HeaderMap) -> Response {
    let Some(Extension(auth)) = auth else {
        return page(StatusCode::NOT_FOUND, "Single sign-on is not configured.");
    };
    let (Some(oidc), Some(base)) = (auth.oidc(), base_url(&auth, &headers)) else {
        return page(StatusCode::NOT_FOUND, "Single sign-on is not configured.");
    };
    let d = match oidc.discovery().await {
        Ok(d) => d,
        Err(e) => return page(StatusCode::SERVICE_UNAVAILABLE, e.message()),
    };
    let (Ok(verifier), Ok(nonce)) = (random(), random()) else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    };
    let redirect_uri = format!("{base}/auth/callback");
    let code_challenge = challenge(&verifier);
    let Some(state) = auth
        .sessions()
        .begin(verifier, nonce.clone(), redirect_uri.clone())
    else {
        return page(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    };
    let c = oidc.config();
    let Ok(mut url) = url::Url::parse(&d.authorization_endpoint) else {
        return page(
            StatusCode::BAD_GATEWAY,
            "the issuer's authorization endpoint is not a URL",
        );
    };
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &c.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", &c.scopes)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &code_challenge)
        .append_pair("code_challenge_method", "S256");
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, url.to_string())]).into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &state, 600)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    no_store(r)
}

#[derive(Debug, Deserialize)]
pub(crate) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The code and the sign-in in flight a callback answers (checked: no error from the issuer, a
/// state that is live and bound to this browser by the login cookie), or the page to show.
pub(crate) fn answered(
    auth: &Authenticator,
    headers: &HeaderMap,
    q: &CallbackQuery,
) -> Result<(String, session::Pending), Box<Response>> {
    if q.error.is_some() {
        tracing::info!("OIDC sign-in: the issuer answered with an error");
        return Err(Box::new(page(
            StatusCode::UNAUTHORIZED,
            "The sign-in was not completed.",
        )));
    }
    let (Some(code), Some(state)) = (q.code.as_deref(), q.state.as_deref()) else {
        return Err(Box::new(page(
            StatusCode::BAD_REQUEST,
            "The sign-in answer is incomplete.",
        )));
    };
    let bound = cookie(headers, LOGIN_COOKIE).is_some_and(|c| session::same_secret(c, state));
    let pending = auth.sessions().take_pending(state);
    let Some(pending) = pending.filter(|_| bound) else {
        tracing::info!("OIDC sign-in refused: unknown, expired or unbound state");
        return Err(Box::new(page(
            StatusCode::BAD_REQUEST,
            "This sign-in has expired; please sign in again.",
        )));
    };
    Ok((code.to_owned(), pending))
}

/// `r` with the new session's cookie set and the login cookie cleared, never cached.
pub(crate) fn signed_in(mut r: Response, cookie_value: &str, max_age: u64) -> Response {
    for c in [
        set_cookie(COOKIE, cookie_value, max_age),
        set_cookie(LOGIN_COOKIE, "", 0),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    no_store(r)
}

/// The page for a sign-in that failed with `e`.
pub(crate) fn refused(e: &AuthError) -> Response {
    match e {
        AuthError::Forbidden(why) => page(StatusCode::FORBIDDEN, why),
        e => page(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            e.message(),
        ),
    }
}

async fn callback(
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
    if pending.smart_token_endpoint.is_some() {
        return page(
            StatusCode::BAD_REQUEST,
            "This sign-in has expired; please sign in again.",
        );
    }
    match crate::exchange::complete(&auth, &code, &pending).await {
        Ok((cookie_value, max_age)) => {
            let r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
            signed_in(r, &cookie_value, max_age)
        }
        Err(e) => refused(&e),
    }
}

async fn current(auth: Option<Extension<Authenticator>>, headers: HeaderMap) -> Response {
    let s =
        auth.and_then(|Extension(a)| cookie(&headers, COOKIE).and_then(|c| a.sessions().find(c)));
    let Some(s) = s else {
        return no_store(AuthError::Missing.into_response());
    };
    let p = &s.principal;
    let person = p.person.as_ref();
    no_store(
        axum::Json(json!({
            "sub": person.map(|x| &x.sub),
            "name": person.map(|x| &x.name),
            "role": p.role.as_str(),
            "teams": person.map(|x| &x.teams),
            "expires": person.map(|x| crate::iso(x.expires_us)),
            "csrf": s.csrf,
            "patient": s.patient,
        }))
        .into_response(),
    )
}

async fn logout(auth: Option<Extension<Authenticator>>, headers: HeaderMap) -> Response {
    let Some(Extension(auth)) = auth else {
        return AuthError::Missing.into_response();
    };
    let Some(value) = cookie(&headers, COOKIE) else {
        return AuthError::Missing.into_response();
    };
    let Some(s) = auth.sessions().find(value) else {
        return AuthError::Invalid.into_response();
    };
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if !sent.is_some_and(|t| session::same_secret(t, &s.csrf)) {
        return AuthError::Forbidden("a CSRF token is required").into_response();
    }
    auth.sessions().close(value);
    tracing::info!(principal = %s.principal.id, "dashboard sign-out");
    let mut to = "/".to_owned();
    if let (Some(o), Some(base)) = (auth.oidc(), base_url(&auth, &headers))
        && let Ok(d) = o.discovery().await
        && let Some(end) = d.end_session_endpoint.as_deref()
        && let Ok(mut u) = url::Url::parse(end)
    {
        u.query_pairs_mut()
            .append_pair("id_token_hint", &s.id_token)
            .append_pair("client_id", &o.config().client_id)
            .append_pair("post_logout_redirect_uri", &format!("{base}/"));
        to = u.to_string();
    }
    let mut r = axum::Json(json!({"redirect": to})).into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(COOKIE, "", 0)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    no_store(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use carewatch_store::registry::Registry;

    fn auth(redirect: Option<&str>) -> (Authenticator, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "cw-signin-{}-{}",
            std::process::id(),
            redirect.is_some()
        ));
        let (r, _) = Registry::open(&dir).expect("registry");
        let mut cfg = crate::oidc::OidcConfig::new("https://idp.example", "carewatch");
        cfg.redirect_url = redirect.map(str::to_owned);
        let o = crate::oidc::Oidc::new(cfg).expect("oidc");
        (Authenticator::new(std::sync::Arc::new(r)).with_oidc(o), dir)
    }

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).expect("header"));
        m
    }

    #[test]
    fn the_redirect_base_is_configured_or_from_a_plain_host() {
        let (a, dir) = auth(None);
        assert_eq!(
            base_url(&a, &host("127.0.0.1:8080")).as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            base_url(&a, &host("carewatch.example-hospital.org")).as_deref(),
            Some("https://carewatch.example-hospital.org"),
            "https unless loopback"
        );
        assert_eq!(base_url(&a, &host("evil.example/x@y")), None);
        assert_eq!(base_url(&a, &HeaderMap::new()), None);
        let _ = std::fs::remove_dir_all(dir);
        let (a, dir) = auth(Some("https://cw.example/auth/callback"));
        assert_eq!(
            base_url(&a, &host("other.example")).as_deref(),
            Some("https://cw.example")
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
