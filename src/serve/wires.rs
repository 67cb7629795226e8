//! Start-up, last phase: the wires — the HTTP application (every router behind the one
//! credential check) and the MQTT edge (carewatch's own listener, or a subscriber to the site's
//! broker that also publishes alert transitions there).

use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;

use carewatch_ingest::http::{HttpState, router};
use carewatch_ingest::{Pipeline, mqtt_client, mqtt_server};

use super::alerting::Alerting;
use super::is_loopback;
use crate::config::ServeConfig;

/// The HTTP application.
pub(super) fn app(
    c: &ServeConfig,
    pipeline: &Arc<Pipeline>,
    engine: carewatch_query::QueryEngine,
    alerting: &Alerting,
    subscriptions: carewatch_query::subscriptions::Subscriptions,
    web: carewatch_web::WebState,
    auth: &carewatch_auth::Authenticator,
) -> axum::Router {
    router(HttpState {
        pipeline: pipeline.clone(),
    })
    .merge(carewatch_deliver::http::router(
        carewatch_deliver::http::TraceState {
            engine: engine.clone(),
            registry: pipeline.registry.clone(),
            data_dir: c.data_dir.clone(),
        },
    ))
    .merge(carewatch_ingest::identity::router(
        carewatch_ingest::identity::IdentityState {
            http: HttpState {
                pipeline: pipeline.clone(),
            },
            model: c.fhir_identity.model.clone(),
        },
    ))
    .merge(carewatch_query::fhir_subscription::router(
        carewatch_query::fhir_subscription::SubState {
            subs: subscriptions,
            registry: pipeline.registry.clone(),
        },
    ))
    .merge(carewatch_query::http::router(
        carewatch_query::http::SqlState {
            engine,
            registry: pipeline.registry.clone(),
        },
    ))
    .merge(carewatch_alert::http::router(
        carewatch_alert::http::AlertState {
            engine: alerting.alerts.clone(),
            registry: pipeline.registry.clone(),
        },
    ))
    .merge(carewatch_alert::baselines::http::router(
        carewatch_alert::baselines::http::BaselineState {
            baselines: alerting.baselines.clone(),
            registry: pipeline.registry.clone(),
        },
    ))
    .merge(carewatch_web::router(web))
    .layer(axum::Extension(auth.clone()))
}

/// The MQTT edge, running until `shutdown`.
pub(super) async fn mqtt(
    c: &ServeConfig,
    pipeline: &Arc<Pipeline>,
    outbound: Option<mqtt_server::Outbound>,
    tls: Option<carewatch_ingest::tls::TlsAcceptor>,
    auth: &carewatch_auth::Authenticator,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>> {
    Ok(match &c.mqtt_url {
        Some(url) => {
            announce!("mqtt subscribing to {url}");
            let cfg = mqtt_client::ClientConfig {
                url: url.clone(),
                client_id: c.mqtt_client_id.clone(),
                credentials: c.mqtt_credentials.clone(),
                shared_group: c.mqtt_shared_group.clone(),
            };
            if let Some(out) = &outbound {
                let (cfg, rx, sd) = (cfg.clone(), out.subscribe(), shutdown.clone());
                tokio::spawn(async move {
                    if let Err(e) = mqtt_client::publish_alerts(cfg, rx, sd).await {
                        tracing::error!(error = %e, "alert publisher stopped");
                    }
                });
            }
            let p = pipeline.clone();
            let sd = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = mqtt_client::run(cfg, p, sd).await {
                    tracing::error!(error = %e, "external broker subscriber stopped");
                }
            })
        }
        None => {
            let l = tokio::net::TcpListener::bind(c.mqtt_addr)
                .await
                .with_context(|| format!("binding MQTT {}", c.mqtt_addr))?;
            let a = l.local_addr()?;
            if !is_loopback(&a) && tls.is_none() {
                tracing::warn!(addr = %a, "MQTT is served without TLS on a non-loopback address: configure tls_cert/tls_key");
            }
            announce!(
                "mqtt{} listening on {a}",
                if tls.is_some() { "s" } else { "" }
            );
            let p = pipeline.clone();
            let sd = shutdown.clone();
            let tls = tls.clone();
            let out = outbound.clone();
            let mqtt_auth = auth.clone();
            tokio::spawn(async move { mqtt_server::serve(l, tls, p, mqtt_auth, sd, out).await })
        }
    })
}
