//! `carewatch serve`: wires store, registry, ingest edges; runs until SIGINT/SIGTERM, then
//! stops accepting, drains in-flight work, persists the buffer and exits 0.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;

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

mod alerting;
mod allocator;
mod fhir;
mod leases;
mod open;
mod wal_adoption;
mod wires;

pub async fn run(c: ServeConfig) -> Result<()> {
    allocator::tune();
    let store = open::store(&c).await?;
    let shutdown = CancellationToken::new();
    // Any early return (a start-up error) ends what was started too: the alert engine's own
    // runtime waits for this token, and the process could not exit before it ends.
    let _stop_on_return = shutdown.clone().drop_guard();
    let (pipeline, auth) = open::pipeline(&c, &store, &shutdown)?;
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
    let audit = Arc::new(open::audit(&c).await?);
    let engine = carewatch_query::QueryEngine::new(
        store.clone(),
        pipeline.registry.clone(),
        c.query_limits,
        audit,
    )
    .map_err(|e| anyhow::anyhow!("query engine: {e}"))?;
    // Cluster mode: this node's leases on the alert partitions, which its alerting follows
    // when the tables are shared.
    let leases = leases::start(&c).await?;
    let c = leases::partition_alerting(c, leases.as_ref());
    wal_adoption::start(&c, &store, leases.as_ref(), &shutdown);
    leases::maintenance(&c, &store, leases.as_ref());
    let alerting = alerting::start(&c, &store, &pipeline, &engine, &shutdown).await?;
    let web = carewatch_web::WebState::wire(
        store.clone(),
        pipeline.registry.clone(),
        engine.clone(),
        alerting.alerts.clone(),
        alerting.notify_counters.clone(),
    )
    .await;
    let fhir = fhir::start(&c, &store, &pipeline, &engine, &alerting.alerts, &shutdown)?;
    let mut extra_metrics: Vec<carewatch_web::ExtraMetrics> = vec![allocator::metrics()];
    if let Some((d, _)) = &fhir.destination {
        let d = d.clone();
        extra_metrics.push(Arc::new(move |out: &mut String| d.write_metrics(out)));
    }
    let mut ready_checks: Vec<carewatch_web::ReadyCheck> = Vec::new();
    if let Some(l) = &leases {
        extra_metrics.push(leases::metrics(l));
        ready_checks.push(leases::ready(l));
    }
    let web = carewatch_web::WebState {
        metrics_require_token: c.metrics_require_token,
        extra_metrics,
        ready_checks,
        ..web
    };
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
    let subscriptions = fhir.subscriptions.clone();
    let app = wires::app(&c, &pipeline, engine, &alerting, subscriptions, web, &auth);
    let http_task = tokio::spawn(carewatch_ingest::server::serve(
        http,
        tls.clone(),
        app,
        c.http_limits,
        shutdown.clone(),
    ));
    let outbound = alerting.outbound.clone();
    let mqtt_task = wires::mqtt(&c, &pipeline, outbound, tls, &auth, &shutdown).await?;

    wait_for_signal().await;
    tracing::info!("shutting down: draining");
    shutdown.cancel();
    let _ = http_task.await;
    pg_task.abort();
    let _ = mqtt_task.await;
    let _ = alerting.task.await;
    leases::stop(leases).await;
    alerting.notify_task.abort();
    fhir.stop().await;
    store.close().await.context("flushing the store")?;
    tracing::info!("stopped cleanly");
    Ok(())
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
