//! Start-up, alerting phase: the alert history and rules (planned now, so a bad rule stops
//! start-up with its file and line), baselines, the engine on its own runtime, notifications,
//! the MQTT alert feed, and the rules directory watcher (polled every 2 s).

use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;

use carewatch_ingest::{Pipeline, mqtt_server};
use carewatch_store::Store;

use crate::config::ServeConfig;

/// The running alerting.
pub(super) struct Alerting {
    pub alerts: carewatch_alert::AlertEngine,
    pub baselines: carewatch_alert::baselines::Baselines,
    pub notify_counters: Arc<carewatch_alert::notify::Counters>,
    /// Alert transitions for MQTT (`[alerts] mqtt_publish`).
    pub outbound: Option<mqtt_server::Outbound>,
    pub task: tokio::task::JoinHandle<()>,
    pub notify_task: tokio::task::JoinHandle<()>,
}

/// The alert history: the data directory's file, or in a partitioned cluster the history
/// shared in PostgreSQL (every node knows every alert; a partition's new owner continues them).
async fn history(c: &ServeConfig) -> Result<Arc<carewatch_alert::history::History>> {
    use carewatch_alert::history::History;
    let Some(url) = c
        .postgres_url
        .clone()
        .filter(|_| super::leases::partitioned(c))
    else {
        return Ok(Arc::new(
            History::open(&c.data_dir, false).context("opening the alert history")?,
        ));
    };
    let node = c.alert_engine.ownership.node().map(str::to_owned);
    let dir = c.data_dir.clone();
    tokio::task::spawn_blocking(move || History::open_shared(&url, &dir, node))
        .await?
        .context("opening the alert history in PostgreSQL")
}

/// Starts alerting over `store`, its `alerts` and `baselines` tables registered with `engine`.
pub(super) async fn start(
    c: &ServeConfig,
    store: &Store,
    pipeline: &Arc<Pipeline>,
    engine: &carewatch_query::QueryEngine,
    shutdown: &CancellationToken,
) -> Result<Alerting> {
    let history = history(c).await?;
    // The history as the `alerts` Delta table, for lakehouse readers: on one node, or
    // in a cluster whose nodes share the history (partitioned alerting). Nodes on shared
    // tables that each keep a history of their own have no one history to export.
    let shared_tables = c.postgres_url.is_some() && c.tables_url.is_some();
    if !shared_tables || super::leases::partitioned(c) {
        tokio::spawn(carewatch_alert::history::export_loop(
            history.clone(),
            store.clone(),
            carewatch_alert::history::EXPORT_EVERY,
        ));
    } else {
        tracing::warn!(
            "shared tables without partitioned alerting: the alert history is not exported to the alerts Delta table"
        );
    }
    carewatch_alert::history::register(engine.context(), history.clone())
        .map_err(|e| anyhow::anyhow!("alerts table: {e}"))?;
    let rules = carewatch_alert::rules::load(c.rules_dir.as_deref())?;
    // Per-patient baselines, learned per day from the days before; the same for the rules, the
    // analysts' `baselines` table and `/v1/patients/{id}/baselines`.
    let baselines =
        carewatch_alert::baselines::Baselines::open(store, Some(&c.data_dir), c.baselines)
            .map_err(|e| anyhow::anyhow!("baselines: {e}"))?;
    baselines.watch(store);
    carewatch_alert::baselines::register(engine.context(), &baselines)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The rules' own session and memory pool: analysts' queries cannot starve or change them.
    let rules_ctx = carewatch_alert::engine::rules_context_with(
        store,
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
        store,
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
                    // In a cluster every node hears every transition; the patient's owner
                    // publishes it.
                    Ok(t) if feed.owns(&t.patient_id) => {
                        if let Some((topic, body)) =
                            carewatch_alert::notify::mqtt_message(&feed, &t)
                        {
                            let _ = out.send((topic, bytes::Bytes::from(body)));
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
        tx
    });
    if let Some(dir) = c.rules_dir.clone() {
        tokio::spawn(watch_rules(
            alerts.clone(),
            rules_ctx,
            dir,
            shutdown.clone(),
        ));
    }
    Ok(Alerting {
        alerts,
        baselines,
        notify_counters,
        outbound,
        task: alert_task,
        notify_task,
    })
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
