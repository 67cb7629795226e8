//! `carewatch serve`: wires store, registry, ingest edges; runs until SIGINT/SIGTERM, then
//! stops accepting, drains in-flight work, persists the buffer and exits 0.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;

use carewatch_ingest::http::{HttpState, router};
use carewatch_ingest::{Pipeline, mqtt_client, mqtt_server};
use carewatch_store::registry::Registry;
use carewatch_store::{Config as StoreConfig, Store};
use carewatch_transform::ZonePolicy;
use carewatch_transform::template::Templates;

use crate::config::ServeConfig;

fn is_loopback(a: &std::net::SocketAddr) -> bool {
    a.ip().is_loopback()
}

/// Prints a start-up line on stdout (tools and tests read them); a closed stdout must not stop
/// the server, so write errors are ignored.
macro_rules! announce {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($t)*);
        let _ = out.flush();
    }};
}

pub async fn run(c: ServeConfig) -> Result<()> {
    let mut sc = StoreConfig::new(&c.data_dir);
    sc.tables_url = c.tables_url.clone();
    if let Some(n) = c.persist_rows {
        sc.persist_rows = n;
    }
    if let Some(a) = c.persist_age {
        sc.persist_age = a;
    }
    if let Some(n) = c.buffer_limit_rows {
        sc.buffer_limit_rows = n;
    }
    sc.retention = c.retention;
    let store = Store::open(sc)
        .await
        .with_context(|| format!("opening data directory {}", c.data_dir.display()))?;
    let st = store.stats();
    for d in &st.wal_damage {
        tracing::warn!(damage = %d, "WAL damage found and cut at start");
    }
    tracing::info!(
        replayed_frames = st.replayed_frames,
        buffered_rows = st.buffered_rows,
        files = st.files,
        "store open"
    );
    // A data directory made by an older version (or by hand) is closed to other users too.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&c.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", c.data_dir.display()))?;
    }
    let (registry, admin) = match &c.postgres_url {
        Some(url) => Registry::open_postgres(url).context("opening the registry in PostgreSQL")?,
        None => Registry::open(&c.data_dir).context("opening registry")?,
    };
    if let Some(token) = admin {
        // Printed once, on the first start of a fresh data directory.
        announce!("admin token: {token}");
    }
    let templates = carewatch_ingest::pipeline::TemplateSlot::default();
    if let Some(dm) = &c.device_mapping {
        let text =
            std::fs::read_to_string(dm).with_context(|| format!("reading {}", dm.display()))?;
        let fm = match &c.fhir_mapping {
            Some(p) => Some(
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            ),
            None => None,
        };
        templates.set(
            Templates::load(&text, fm.as_deref())
                .with_context(|| format!("loading {}", dm.display()))?,
        );
    }
    let tz = match &c.assume_tz {
        Some(z) => ZonePolicy::parse(z).map_err(anyhow::Error::msg)?,
        None => ZonePolicy::Reject,
    };
    let pipeline = Arc::new(Pipeline {
        store: store.clone(),
        registry: Arc::new(registry),
        templates: templates.clone(),
        tz,
        max_bytes: c.max_payload_bytes,
        max_future_skew_us: c.max_future_skew_us,
    });
    let shutdown = CancellationToken::new();
    // One credential check for every wire; credentials revoked by `carewatch token revoke` on
    // the data directory while we run are picked up by re-reading the registry twice a second.
    let mut auth =
        carewatch_auth::Authenticator::with_limits(pipeline.registry.clone(), c.login_limits);
    if let Some(o) = &c.oidc {
        auth =
            auth.with_oidc(carewatch_auth::oidc::Oidc::new(o.clone()).map_err(anyhow::Error::msg)?);
        tracing::info!(issuer = %o.issuer, "single sign-on: accepting tokens from the issuer");
    }
    tokio::spawn(refresh_registry(
        pipeline.registry.clone(),
        shutdown.clone(),
    ));
    if let Some(dm) = c.device_mapping.clone() {
        tokio::spawn(carewatch_ingest::pipeline::watch_templates(
            templates,
            dm,
            c.fhir_mapping.clone(),
            std::time::Duration::from_secs(2),
            shutdown.clone(),
        ));
    }

    let tls = match &c.tls {
        Some((cert, key)) => {
            Some(carewatch_ingest::tls::acceptor(cert, key).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let http = tokio::net::TcpListener::bind(c.http_addr)
        .await
        .with_context(|| format!("binding HTTP {}", c.http_addr))?;
    let http_addr = http.local_addr()?;
    if !is_loopback(&http_addr) && tls.is_none() {
        tracing::warn!(addr = %http_addr, "HTTP is served without TLS on a non-loopback address: configure tls_cert/tls_key");
    }
    announce!(
        "http{} listening on {http_addr}",
        if tls.is_some() { "s" } else { "" }
    );
    let audit = Arc::new(
        carewatch_query::audit::AuditLog::open(&c.data_dir, false)
            .context("opening the audit log")?,
    );
    let engine = carewatch_query::QueryEngine::new(
        store.clone(),
        pipeline.registry.clone(),
        c.query_limits,
        audit,
    )
    .map_err(|e| anyhow::anyhow!("query engine: {e}"))?;
    // Alerting: rules planned now, so a bad rule stops start-up with its file and line.
    let history = Arc::new(
        carewatch_alert::history::History::open(&c.data_dir, false)
            .context("opening the alert history")?,
    );
    carewatch_alert::history::register(engine.context(), history.clone())
        .map_err(|e| anyhow::anyhow!("alerts table: {e}"))?;
    let rules = carewatch_alert::rules::load(c.rules_dir.as_deref())?;
    // Per-patient baselines, learned per day from the days before; the same for the rules, the
    // analysts' `baselines` table and `/v1/patients/{id}/baselines`.
    let baselines =
        carewatch_alert::baselines::Baselines::open(&store, Some(&c.data_dir), c.baselines)
            .map_err(|e| anyhow::anyhow!("baselines: {e}"))?;
    baselines.watch(&store);
    carewatch_alert::baselines::register(engine.context(), &baselines)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The rules' own session and memory pool: analysts' queries cannot starve or change them.
    let rules_ctx = carewatch_alert::engine::rules_context_with(
        &store,
        pipeline.registry.clone(),
        c.alert_engine.memory_bytes,
        &baselines,
    )
    .map_err(|e| anyhow::anyhow!("alert rules session: {e}"))?;
    carewatch_alert::rules::check(&rules_ctx, &rules).await?;
    tracing::info!(
        rules = rules.len(),
        from = %c.rules_dir.as_ref().map_or("(built-in)".to_owned(), |d| d.display().to_string()),
        "alert rules loaded"
    );
    let alerts = carewatch_alert::AlertEngine::new(
        c.alert_engine.clone(),
        rules,
        rules_ctx.clone(),
        &store,
        pipeline.registry.clone(),
        history,
    );
    // Rules evaluate on their own runtime threads: analysts' queries cannot take them.
    let alert_task = alerts.clone().spawn_dedicated(1, shutdown.clone());
    let notify_counters = Arc::new(carewatch_alert::notify::Counters::default());
    let notify_task = tokio::spawn(carewatch_alert::notify::run(
        alerts.clone(),
        c.alert_routes.clone(),
        notify_counters.clone(),
        shutdown.clone(),
    ));
    // Alert transitions as MQTT messages on `carewatch/alerts/{the patient's care team now}`
    // (when enabled); a patient without a team has no topic.
    let outbound: Option<mqtt_server::Outbound> = c.alerts_mqtt.then(|| {
        let (tx, _) = tokio::sync::broadcast::channel(1024);
        let mut rx = alerts.subscribe();
        let (out, feed) = (tx.clone(), alerts.clone());
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(t) => {
                        if let Some((topic, body)) =
                            carewatch_alert::notify::mqtt_message(&feed, &t)
                        {
                            let _ = out.send((topic, bytes::Bytes::from(body)));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
        tx
    });
    let web = carewatch_web::WebState::wire(
        store.clone(),
        pipeline.registry.clone(),
        engine.clone(),
        alerts.clone(),
        notify_counters,
    )
    .await;
    // The FHIR destination: every stored reading delivered as Observations, every alert
    // transition as its alert's Communication (issue 14).
    let destination = match c.fhir_destination.clone() {
        Some(dc) => {
            let (d, task) = carewatch_deliver::Destination::start(
                dc,
                &c.data_dir,
                store.clone(),
                engine.clone(),
                Some(Arc::new(crate::fhir_feed::HistoryAlerts(
                    alerts.history().clone(),
                ))),
                shutdown.clone(),
            )
            .map_err(anyhow::Error::msg)?;
            announce!("fhir destination {}", d.status().url);
            Some((d, task))
        }
        None => None,
    };
    // Identity lookup: unknown devices looked up on the destination (`[fhir.identity]`).
    let lookup_task = match (&destination, c.fhir_identity.lookup) {
        (Some((d, _)), Some(recheck)) => Some(
            d.start_lookup(
                carewatch_deliver::lookup::LookupConfig {
                    model: c.fhir_identity.model.clone(),
                    recheck,
                    care_team_recheck: c.fhir_identity.care_team_recheck,
                    care_team_category: c.fhir_identity.care_team_category.clone(),
                },
                pipeline.clone(),
                &c.data_dir,
                shutdown.clone(),
            )
            .map_err(anyhow::Error::msg)?,
        ),
        _ => None,
    };
    let mut extra_metrics: Vec<carewatch_web::ExtraMetrics> = Vec::new();
    if let Some((d, _)) = &destination {
        let d = d.clone();
        extra_metrics.push(Arc::new(move |out: &mut String| d.write_metrics(out)));
    }
    let web = carewatch_web::WebState {
        metrics_require_token: c.metrics_require_token,
        extra_metrics,
        ..web
    };
    if let Some(dir) = c.rules_dir.clone() {
        tokio::spawn(watch_rules(
            alerts.clone(),
            rules_ctx,
            dir,
            shutdown.clone(),
        ));
    }
    // The Postgres wire: bound before it is announced (a failed bind stops `serve`), TLS when
    // the server has a certificate, every statement through the query gate.
    let pg = carewatch_query::pgwire::bind(c.pg_addr)
        .await
        .with_context(|| format!("binding Postgres wire {}", c.pg_addr))?;
    let pg_addr = pg.local_addr()?;
    if !is_loopback(&pg_addr) && tls.is_none() {
        tracing::warn!(addr = %pg_addr, "the Postgres wire is served without TLS on a non-loopback address; tokens travel in cleartext: configure tls_cert/tls_key");
    }
    announce!("postgres listening on {pg_addr}");
    let pg_task = tokio::spawn(carewatch_query::pgwire::serve(
        pg,
        engine.clone(),
        auth.clone(),
        tls.clone(),
    ));
    // FHIR topic-based subscriptions (issue 14): kept in the data directory, fed by alert
    // transitions and stored vital signs.
    let fhir_subs = carewatch_query::subscriptions::Subscriptions::open(
        &c.data_dir,
        pipeline.registry.clone(),
        shutdown.clone(),
        std::time::Duration::from_millis(500),
        c.fhir_subscriptions,
    )
    .context("opening FHIR subscriptions")?;
    crate::fhir_feed::spawn(
        fhir_subs.clone(),
        &alerts,
        &store,
        engine.clone(),
        pipeline.registry.clone(),
        shutdown.clone(),
    );
    let app = router(HttpState {
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
            subs: fhir_subs,
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
            engine: alerts.clone(),
            registry: pipeline.registry.clone(),
        },
    ))
    .merge(carewatch_alert::baselines::http::router(
        carewatch_alert::baselines::http::BaselineState {
            baselines,
            registry: pipeline.registry.clone(),
        },
    ))
    .merge(carewatch_web::router(web))
    .layer(axum::Extension(auth.clone()));
    let http_task = tokio::spawn(carewatch_ingest::server::serve(
        http,
        tls.clone(),
        app,
        c.http_limits,
        shutdown.clone(),
    ));

    let mqtt_task = match &c.mqtt_url {
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
    };

    wait_for_signal().await;
    tracing::info!("shutting down: draining");
    shutdown.cancel();
    let _ = http_task.await;
    pg_task.abort();
    let _ = mqtt_task.await;
    let _ = alert_task.await;
    notify_task.abort();
    if let Some(t) = lookup_task {
        // A replay cut short is finished after the restart (rows already stored are skipped).
        t.abort();
        let _ = t.await;
    }
    if let Some((_, task)) = destination {
        // Its position is durable after every delivered batch; a send in flight is not waited
        // for long (it is sent again after the restart).
        let abort = task.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(5), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    store.close().await.context("flushing the store")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Reloads the rules when a file in `dir` changes (polled every 2 s). A rule that fails to
/// load or plan is reported and the previous rules stay in use.
async fn watch_rules(
    alerts: carewatch_alert::AlertEngine,
    ctx: carewatch_alert::SessionContext,
    dir: std::path::PathBuf,
    shutdown: CancellationToken,
) {
    let stamp = |d: &std::path::Path| -> Vec<(std::path::PathBuf, Option<std::time::SystemTime>)> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| (e.path(), e.metadata().and_then(|m| m.modified()).ok()))
            .collect();
        v.sort();
        v
    };
    let mut seen = stamp(&dir);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
        let now = stamp(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = carewatch_alert::rules::load(Some(&dir));
        let checked = match loaded {
            Ok(r) => carewatch_alert::rules::check(&ctx, &r).await.map(|()| r),
            Err(e) => Err(e),
        };
        match checked {
            Ok(r) => {
                tracing::info!(rules = r.len(), "alert rules reloaded");
                alerts.set_rules(r);
            }
            Err(e) => {
                tracing::error!(error = %e, "alert rules reload failed; keeping the previous rules")
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Re-reads the registry file when another process changed it, until shutdown. The stat and
/// any re-read run on the blocking pool.
async fn refresh_registry(registry: Arc<Registry>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let r = registry.clone();
        let _ = tokio::task::spawn_blocking(move || r.refresh()).await;
    }
}
