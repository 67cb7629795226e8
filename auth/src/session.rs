//! Dashboard sessions after an OpenID Connect sign-in: server-side, in memory, found by a
//! random 256-bit cookie value (only its SHA-256 is kept as the key). Each session has its own
//! CSRF token, which state-changing calls made with the cookie must echo in `X-CSRF-Token`.
//! A session ends at sign-out or at its expiry; streams opened with it end then too.
//!
//! Also the sign-ins in flight: `state` → PKCE verifier and nonce, for ten minutes.
//!
//! Must not: log a cookie value, a state, a code or a token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use carewatch_store::registry::Principal;

/// The session cookie (`__Host-`: Secure, `Path=/`, never a `Domain`).
pub const COOKIE: &str = "__Host-carewatch-session";
/// The cookie that binds a sign-in in flight to the browser that started it.
pub const LOGIN_COOKIE: &str = "__Host-carewatch-login";
/// Sign-ins in flight expire after this long, µs.
const PENDING_US: i64 = 600_000_000;
/// At most this many sign-ins in flight (the oldest are dropped beyond it).
const MAX_PENDING: usize = 10_000;

/// A signed-in person's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who (their `Person` carries the session's expiry).
    pub principal: Principal,
    /// The CSRF token for this session.
    pub csrf: String,
    /// The ID token, for the sign-out at the issuer (`id_token_hint`).
    pub id_token: String,
    /// The patient a SMART launch put in context (the page opens it, or offers break-glass).
    pub patient: Option<String>,
    /// Flips to true when the session ends (sign-out).
    ended: tokio::sync::watch::Sender<bool>,
}

impl Session {
    /// Completes when the session is signed out.
    pub fn ended(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ended.subscribe()
    }
}

/// A sign-in in flight.
#[derive(Debug, Clone)]
pub struct Pending {
    /// PKCE code verifier.
    pub verifier: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// The redirect URI used (the token request repeats it).
    pub redirect_uri: String,
    /// A SMART launch: the token endpoint of the launching FHIR server's authorization server.
    pub smart_token_endpoint: Option<String>,
    created_us: i64,
}

/// All sessions and sign-ins in flight.
#[derive(Debug, Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
    pending: Mutex<HashMap<String, Pending>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// A random URL-safe value of 32 bytes.
pub fn random() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// The S256 PKCE challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn key(cookie: &str) -> String {
    Sha256::digest(cookie.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// Starts a sign-in: its `state`.
    pub fn begin(&self, verifier: String, nonce: String, redirect_uri: String) -> Option<String> {
        self.begin_launch(verifier, nonce, redirect_uri, None)
    }

    /// Starts a sign-in whose code is redeemed at `smart_token_endpoint` (a SMART launch).
    pub fn begin_launch(
        &self,
        verifier: String,
        nonce: String,
        redirect_uri: String,
        smart_token_endpoint: Option<String>,
    ) -> Option<String> {
        let state = random().ok()?;
        let now = now_us();
        let mut p = lock(&self.pending);
        p.retain(|_, x| now - x.created_us < PENDING_US);
        if p.len() >= MAX_PENDING {
            let oldest = p
                .iter()
                .min_by_key(|(_, x)| x.created_us)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                p.remove(&k);
            }
        }
        let pending = Pending {
            verifier,
            nonce,
            redirect_uri,
            smart_token_endpoint,
            created_us: now,
        };
        p.insert(state.clone(), pending);
        Some(state)
    }

    /// Takes the sign-in in flight with this `state` (once), if it has not expired.
    pub fn take_pending(&self, state: &str) -> Option<Pending> {
        let p = lock(&self.pending).remove(state)?;
        (now_us() - p.created_us < PENDING_US).then_some(p)
    }

    /// Opens a session: the cookie value and the session.
    pub fn open(&self, principal: Principal, id_token: String) -> Option<(String, Session)> {
        self.open_in_context(principal, id_token, None)
    }

    /// Opens a session with a patient in context (a SMART launch).
    pub fn open_in_context(
        &self,
        principal: Principal,
        id_token: String,
        patient: Option<String>,
    ) -> Option<(String, Session)> {
        let (cookie, csrf) = (random().ok()?, random().ok()?);
        let (ended, _) = tokio::sync::watch::channel(false);
        let s = Session {
            principal,
            csrf,
            id_token,
            patient,
            ended,
        };
        let now = now_us();
        let mut live = lock(&self.live);
        live.retain(|_, x| {
            x.principal
                .person
                .as_ref()
                .is_some_and(|p| p.expires_us > now)
        });
        live.insert(key(&cookie), s.clone());
        Some((cookie, s))
    }

    /// The live session with this cookie value.
    pub fn find(&self, cookie: &str) -> Option<Session> {
        let now = now_us();
        let k = key(cookie);
        let mut live = lock(&self.live);
        let s = live.get(&k)?;
        if s.principal
            .person
            .as_ref()
            .is_some_and(|p| p.expires_us > now)
        {
            return Some(s.clone());
        }
        live.remove(&k);
        None
    }

    /// Ends the session with this cookie value; the ended session, if there was one.
    pub fn close(&self, cookie: &str) -> Option<Session> {
        let s = lock(&self.live).remove(&key(cookie))?;
        let _ = s.ended.send(true);
        Some(s)
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value: Secure, HttpOnly, SameSite=Lax, `Path=/`; `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age_secs: u64) -> String {
    format!("{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Lax")
}

/// Shared handle.
pub type SharedSessions = Arc<Sessions>;

#[cfg(test)]
mod tests {
    use super::*;
    use carewatch_store::registry::{Person, Role};

    fn person(expires_us: i64) -> Principal {
        Principal {
            id: "oidc:a".into(),
            role: Role::CareManager,
            subject: None,
            person: Some(Person {
                sub: "a".into(),
                name: "A".into(),
                teams: vec!["north".into()],
                expires_us,
                break_glass: Vec::new(),
            }),
        }
    }

    #[test]
    fn sessions_open_find_expire_and_close() {
        let s = Sessions::default();
        let (c, sess) = s.open(person(i64::MAX), "idt".into()).expect("open");
        assert_eq!(s.find(&c).map(|x| x.csrf), Some(sess.csrf.clone()));
        assert!(s.find("nope").is_none());
        let mut ended = sess.ended();
        assert!(s.close(&c).is_some());
        assert!(s.find(&c).is_none(), "signed out");
        assert!(*ended.borrow_and_update());
        let (old, _) = s.open(person(1), "idt".into()).expect("open");
        assert!(s.find(&old).is_none(), "expired");
    }

    #[test]
    fn pending_sign_ins_are_taken_once() {
        let s = Sessions::default();
        let state = s
            .begin("v".into(), "n".into(), "http://x/cb".into())
            .expect("state");
        assert_eq!(s.take_pending(&state).map(|p| p.nonce), Some("n".into()));
        assert!(s.take_pending(&state).is_none());
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("a", "ab"));
    }

    #[test]
    fn cookies_are_parsed_from_every_header() {
        let mut h = axum::http::HeaderMap::new();
        h.append(
            axum::http::header::COOKIE,
            "a=1; __Host-carewatch-session=xyz".parse().expect("h"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), None);
        assert!(set_cookie(COOKIE, "v", 60).contains("HttpOnly; Secure; SameSite=Lax"));
    }
}
