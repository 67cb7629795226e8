//! `/.well-known/smart-configuration` (SMART App Launch 2, and the same under `/fhir/`): where
//! a SMART app finds the authorization server whose tokens carewatch's FHIR API accepts — the
//! configured OpenID Connect issuer. Public, like the issuer's own discovery document; 404
//! when no issuer is configured. The capabilities are what carewatch's own launch
//! ([`crate::launch`]) does: EHR and standalone launch with a patient in context.

use axum::extract::Extension;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Authenticator;
use crate::oidc::Discovery;

/// The SMART configuration for an issuer's discovery document.
pub fn document(d: &Discovery) -> Value {
    let mut v = json!({
        "issuer": d.issuer,
        "jwks_uri": d.jwks_uri,
        "authorization_endpoint": d.authorization_endpoint,
        "token_endpoint": d.token_endpoint,
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "response_types_supported": ["code"],
        "scopes_supported": ["openid", "profile", "fhirUser", "launch", "launch/patient", "patient/*.read"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-ehr", "launch-standalone", "context-ehr-patient",
            "context-standalone-patient", "permission-patient", "sso-openid-connect",
            "client-public", "client-confidential-symmetric",
        ],
    });
    if let Some(end) = &d.end_session_endpoint {
        v["end_session_endpoint"] = json!(end);
    }
    v
}

/// `GET /.well-known/smart-configuration`.
pub async fn configuration(auth: Option<Extension<Authenticator>>) -> Response {
    let Some(oidc) = auth.as_ref().and_then(|a| a.oidc()) else {
        let body =
            json!({"error": "not_found", "message": "no authorization server is configured"});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    match oidc.discovery().await {
        Ok(d) => (
            [(header::CACHE_CONTROL, "max-age=300")],
            axum::Json(document(&d)),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_the_issuers_endpoints_and_s256_only() {
        let d = Discovery {
            issuer: "https://idp".into(),
            jwks_uri: "https://idp/jwks".into(),
            authorization_endpoint: "https://idp/auth".into(),
            token_endpoint: "https://idp/token".into(),
            end_session_endpoint: None,
        };
        let v = document(&d);
        assert_eq!(v["authorization_endpoint"], "https://idp/auth");
        assert_eq!(v["code_challenge_methods_supported"], json!(["S256"]));
        assert!(v.get("end_session_endpoint").is_none());
        let caps = v["capabilities"].as_array().expect("capabilities");
        for c in ["launch-ehr", "launch-standalone", "context-ehr-patient"] {
            assert!(caps.iter().any(|x| x == c), "{c}");
        }
    }
}
