//! The one HTTP credential extractor: `Authorization: Bearer <token>` (scheme case-insensitive),
//! checked by the [`Authenticator`] that `serve` installs as a request extension, with the
//! caller's address from axum's `ConnectInfo` for the failed-login limit. Without a bearer
//! token, a dashboard session cookie ([`crate::session`]) identifies the caller; then every
//! state-changing method (anything but GET, HEAD, OPTIONS) must carry the session's CSRF token
//! in `X-CSRF-Token`.

use std::net::{IpAddr, SocketAddr};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use carewatch_store::registry::{Principal, Role};

use crate::{AuthError, Authenticator};

/// The bearer token in `Authorization`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller's address, recorded per connection by axum for any listener with socket
/// addresses (plain TCP and the TLS listener): serve with
/// `into_make_service_with_connect_info::<PeerAddr>()`.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A listener whose connections have socket addresses (marker, so [`PeerAddr`] can be the
/// connect info of any of them: TCP here, the TLS listener in `ingest`).
pub trait SocketListener: Listener<Addr = SocketAddr> {}

impl SocketListener for tokio::net::TcpListener {}

impl<L: SocketListener> Connected<IncomingStream<'_, L>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, L>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// The peer address axum recorded for this connection, if served with connect info.
pub fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0.0.ip())
}

/// Checks the request's bearer token, else its session cookie (with the CSRF rule for
/// state-changing methods); for a session, also the signal of its end.
pub async fn authenticate(parts: &Parts) -> Result<(Principal, Authenticator, Ended), AuthError> {
    let auth = parts
        .extensions
        .get::<Authenticator>()
        .cloned()
        .ok_or(AuthError::Forbidden("authentication is not configured"))?;
    if let Some(token) = bearer(&parts.headers) {
        let p = auth.login(token, peer(parts)).await?;
        return Ok((p, auth, None));
    }
    let cookie = crate::session::cookie(&parts.headers, crate::session::COOKIE)
        .filter(|c| !c.is_empty())
        .ok_or(AuthError::Missing)?;
    let s = auth.sessions().find(cookie).ok_or(AuthError::Invalid)?;
    let safe = matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let sent = parts
        .headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok());
    if !safe && !sent.is_some_and(|t| crate::session::same_secret(t, &s.csrf)) {
        tracing::info!("request refused: session cookie without its CSRF token");
        return Err(AuthError::Forbidden("a CSRF token is required"));
    }
    let ended = Some(s.ended());
    let p = auth.with_grants(s.principal);
    Ok((p, auth, ended))
}

/// The end of a dashboard session (sign-out), when the caller came with one.
pub type Ended = Option<tokio::sync::watch::Receiver<bool>>;

/// The authenticated caller of an HTTP request (any role; check with [`Caller::require`]).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who it is.
    pub principal: Principal,
    /// The authenticator that vouched for them (for stream revocation).
    pub auth: Authenticator,
    /// Signed out: set when the caller came with a dashboard session.
    pub session_end: Ended,
}

impl Caller {
    /// Fails unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role], why: &'static str) -> Result<&Principal, AuthError> {
        crate::require(&self.principal, roles, why)?;
        Ok(&self.principal)
    }

    /// Admins, analysts and care managers (devices cannot read patients' data).
    pub fn reader(&self) -> Result<&Principal, AuthError> {
        self.require(
            &[Role::Admin, Role::Analyst, Role::CareManager],
            "devices cannot read alerts or patient data",
        )
    }

    /// Completes when this caller's credential stops working (streams end with it): revoked or
    /// expired, or their dashboard session signed out.
    pub async fn until_invalid(&self) {
        let signed_out = async {
            match self.session_end.clone() {
                Some(mut rx) => {
                    let _ = rx.wait_for(|ended| *ended).await;
                }
                None => futures::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = self.auth.until_invalid(&self.principal) => {}
            () = signed_out => {}
        }
    }

    /// Ends `stream` when this caller's credential stops working (revoked, expired, rotated):
    /// every SSE stream is wrapped in this.
    pub fn bound<St: futures::Stream + Send + 'static>(
        &self,
        stream: St,
    ) -> impl futures::Stream<Item = St::Item> + Send + 'static {
        use futures::StreamExt;
        let me = self.clone();
        stream.take_until(Box::pin(async move { me.until_invalid().await }))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let (principal, auth, session_end) = authenticate(parts).await?;
        Ok(Caller {
            principal,
            auth,
            session_end,
        })
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let body = serde_json::json!({"error": self.code(), "message": self.message()});
        let mut r = (status, axum::Json(body)).into_response();
        match self {
            AuthError::Missing | AuthError::Invalid => {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            AuthError::TooManyAttempts(wait) => {
                let secs = wait.as_secs().max(1).to_string();
                if let Ok(v) = HeaderValue::from_str(&secs) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            AuthError::Forbidden(_) | AuthError::Unavailable(_) => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_trimmed() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("BEARER  cw_x "),
        );
        assert_eq!(bearer(&h), Some("cw_x"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer"));
        assert_eq!(bearer(&h), None);
    }
}
