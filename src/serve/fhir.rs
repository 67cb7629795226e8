//! Start-up, FHIR phase (issue 14): the FHIR destination (every stored reading delivered as
//! Observations, every alert transition as its alert's Communication), identity lookup on it,
//! and topic-based subscriptions fed by alert transitions and stored vital signs.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;

use carewatch_ingest::Pipeline;
use carewatch_store::Store;

use crate::config::ServeConfig;

/// The running FHIR side.
pub(super) struct Fhir {
    pub destination: Option<(carewatch_deliver::Destination, tokio::task::JoinHandle<()>)>,
    pub lookup_task: Option<tokio::task::JoinHandle<()>>,
    pub subscriptions: carewatch_query::subscriptions::Subscriptions,
}

pub(super) fn start(
    c: &ServeConfig,
    store: &Store,
    pipeline: &Arc<Pipeline>,
    engine: &carewatch_query::QueryEngine,
    alerts: &carewatch_alert::AlertEngine,
    shutdown: &CancellationToken,
) -> Result<Fhir> {
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
    let subscriptions = carewatch_query::subscriptions::Subscriptions::open(
        &c.data_dir,
        pipeline.registry.clone(),
        shutdown.clone(),
        std::time::Duration::from_millis(500),
        c.fhir_subscriptions,
    )
    .context("opening FHIR subscriptions")?;
    crate::fhir_feed::spawn(
        subscriptions.clone(),
        alerts,
        store,
        engine.clone(),
        pipeline.registry.clone(),
        shutdown.clone(),
    );
    Ok(Fhir {
        destination,
        lookup_task,
        subscriptions,
    })
}

impl Fhir {
    /// Stops identity lookup and the destination's delivery.
    pub(super) async fn stop(self) {
        if let Some(t) = self.lookup_task {
            // A replay cut short is finished after the restart (rows already stored are skipped).
            t.abort();
            let _ = t.await;
        }
        if let Some((_, task)) = self.destination {
            // Its position is durable after every delivered batch; a send in flight is not
            // waited for long (it is sent again after the restart).
            let abort = task.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}
