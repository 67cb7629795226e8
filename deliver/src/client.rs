//! The HTTP side: POSTs Bundles to the destination's base URL with its credential (a fixed
//! bearer token, or an OAuth2 client-credentials token fetched from the token endpoint and
//! cached until shortly before it expires). Errors are classes, never response bodies: the
//! server's words about a resource go only into that resource's dead letter.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Auth, Config};

/// Why a send failed, as a class (what `carewatch fhir status` and the metrics show).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No connection, reset, or an unreadable answer.
    #[error("network")]
    Network,
    /// No answer in time.
    #[error("timeout")]
    Timeout,
    /// 401/403: the credential was refused.
    #[error("auth")]
    Auth,
    /// The token endpoint refused or failed.
    #[error("token")]
    Token,
    /// 5xx.
    #[error("server")]
    Server,
    /// 408/429.
    #[error("throttled")]
    Throttled,
    /// Another 4xx on the whole Bundle (the server refuses it as such): carries status and the
    /// server's OperationOutcome, if any.
    #[error("bundle")]
    Refused(u16, Option<Value>),
}

impl SendError {
    /// The class name.
    pub fn class(&self) -> &'static str {
        match self {
            SendError::Network => "network",
            SendError::Timeout => "timeout",
            SendError::Auth => "auth",
            SendError::Token => "token",
            SendError::Server => "server",
            SendError::Throttled => "throttled",
            SendError::Refused(..) => "bundle",
        }
    }
}

fn classify(e: &reqwest::Error) -> SendError {
    if e.is_timeout() {
        SendError::Timeout
    } else {
        SendError::Network
    }
}

/// The destination's HTTP client.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
    auth: Auth,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl Client {
    /// A client for the configuration.
    pub fn new(c: &Config) -> Result<Client, String> {
        let http = reqwest::Client::builder()
            .timeout(c.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("FHIR destination HTTP client: {e}"))?;
        Ok(Client {
            http,
            base: c.url.clone(),
            auth: c.auth.clone(),
            token: tokio::sync::Mutex::new(None),
        })
    }

    async fn bearer(&self) -> Result<Option<String>, SendError> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::Bearer(t) => Ok(Some(t.clone())),
            Auth::ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let mut cached = self.token.lock().await;
                if let Some((t, until)) = cached.as_ref()
                    && Instant::now() < *until
                {
                    return Ok(Some(t.clone()));
                }
                let form = {
                    let mut f = url::form_urlencoded::Serializer::new(String::new());
                    f.append_pair("grant_type", "client_credentials");
                    if let Some(s) = scope {
                        f.append_pair("scope", s);
                    }
                    f.finish()
                };
                let resp = self
                    .http
                    .post(token_url.clone())
                    .basic_auth(client_id, Some(client_secret))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("accept", "application/json")
                    .body(form)
                    .send()
                    .await
                    .map_err(|e| classify(&e))?;
                if !resp.status().is_success() {
                    return Err(SendError::Token);
                }
                let v: Value = resp.json().await.map_err(|_| SendError::Token)?;
                let t = v
                    .get("access_token")
                    .and_then(Value::as_str)
                    .ok_or(SendError::Token)?
                    .to_owned();
                let secs = v.get("expires_in").and_then(Value::as_u64).unwrap_or(300);
                // Renewed a little before it runs out (at least half its life is used).
                let life = Duration::from_secs(secs.saturating_sub(30).max(secs / 2));
                *cached = Some((t.clone(), Instant::now() + life));
                Ok(Some(t))
            }
        }
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// GETs `path` (relative to the base URL, e.g. `Device`) with `query` pairs: the JSON of a
    /// 2xx answer. Same credential handling as [`Client::post_bundle`]; a 4xx is `Refused`.
    pub async fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, SendError> {
        let mut u = self.base.clone();
        let p = format!("{}/{path}", self.base.path().trim_end_matches('/'));
        u.set_path(&p);
        u.set_query(None);
        u.query_pairs_mut().extend_pairs(query);
        for attempt in 0..2 {
            let mut req = self
                .http
                .get(u.clone())
                .header("accept", "application/fhir+json");
            if let Some(t) = self.bearer().await? {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(|e| classify(&e))?;
            match resp.status().as_u16() {
                200..=299 => return resp.json().await.map_err(|_| SendError::Network),
                401 if attempt == 0 && matches!(self.auth, Auth::ClientCredentials { .. }) => {
                    self.forget_token().await;
                }
                401 | 403 => return Err(SendError::Auth),
                408 | 429 => return Err(SendError::Throttled),
                s @ 400..=499 => return Err(SendError::Refused(s, None)),
                _ => return Err(SendError::Server),
            }
        }
        Err(SendError::Auth)
    }

    /// POSTs one Bundle to the base URL; the response Bundle on 2xx. A 401 with a fetched token
    /// fetches a new one and tries once more.
    pub async fn post_bundle(&self, bundle: &Value) -> Result<Value, SendError> {
        let body = serde_json::to_vec(bundle).map_err(|_| SendError::Network)?;
        for attempt in 0..2 {
            let mut req = self
                .http
                .post(self.base.clone())
                .header("content-type", "application/fhir+json")
                .header("accept", "application/fhir+json")
                .body(body.clone());
            if let Some(t) = self.bearer().await? {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.map_err(|e| classify(&e))?;
            let status = resp.status().as_u16();
            match status {
                200..=299 => return resp.json().await.map_err(|_| SendError::Network),
                401 if attempt == 0 && matches!(self.auth, Auth::ClientCredentials { .. }) => {
                    self.forget_token().await;
                }
                401 | 403 => return Err(SendError::Auth),
                408 | 429 => return Err(SendError::Throttled),
                400..=499 => {
                    let outcome = resp.json::<Value>().await.ok().filter(|v| {
                        v.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome")
                    });
                    return Err(SendError::Refused(status, outcome));
                }
                _ => return Err(SendError::Server),
            }
        }
        Err(SendError::Auth)
    }
}
