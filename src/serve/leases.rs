//! Cluster mode (`--postgres-url`): this node's leases on the alert partitions
//! (`carewatch_store::lease`), renewed by a thread of their own, and the metric that shows
//! them (`carewatch_alert_partitions_owned`). With shared tables (`--object-store-url`) the
//! alert engine follows them: each node alerts for the patients of the partitions it owns
//! (ARCHITECTURE.md, "Partitioned alerting"). Without shared tables each node sees only its
//! own readings, so each keeps alerting for everything it receives.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use carewatch_store::lease::{self, Leases, Ownership as _};

use crate::config::ServeConfig;

/// How soon a cluster node persists what it buffered (unless `persist_age_secs` says
/// otherwise): a patient's owner hears of a reading another node took one persist later.
pub(super) const CLUSTER_PERSIST_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a cluster node's store checks whether a persist is due and follows the other
/// nodes' commits (the single-node tick is 1 s): a reading another node took reaches its
/// owner within persist age + 2 ticks, ~1.5 s instead of ~3 s, for 12 more LISTs and GETs of
/// the Delta logs a second (deploy/README.md, "Capacity model").
pub(super) const CLUSTER_TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// Whether alerting is partitioned: a cluster member (`--postgres-url`) on shared tables.
pub(super) fn partitioned(c: &ServeConfig) -> bool {
    c.postgres_url.is_some() && c.tables_url.is_some() && c.partitioned_alerting
}

/// The configuration alerting runs with: owning the leased partitions when partitioned.
pub(super) fn partition_alerting(mut c: ServeConfig, leases: Option<&Arc<Leases>>) -> ServeConfig {
    match leases {
        Some(l) if partitioned(&c) => {
            c.alert_engine.ownership = l.clone();
            tracing::info!("cluster mode: alerting for the partitions this node leases");
        }
        Some(_) => tracing::warn!(
            "cluster mode without shared tables (--object-store-url) or with partitioned_alerting = false: every node alerts for what it receives"
        ),
        None => {}
    }
    c
}

/// On shared tables, only the holder of the maintenance partition compacts and applies
/// retention (one node rewrites the tables at a time; it moves with the lease).
pub(super) fn maintenance(
    c: &ServeConfig,
    store: &carewatch_store::Store,
    leases: Option<&Arc<Leases>>,
) {
    if let (Some(l), Some(_)) = (leases, &c.tables_url) {
        store.maintain_while(l.clone());
    }
}

/// Starts the leases when the node is a cluster member.
pub(super) async fn start(c: &ServeConfig) -> Result<Option<Arc<Leases>>> {
    let Some(url) = c.postgres_url.clone() else {
        return Ok(None);
    };
    let config = lease::Config::random().map_err(anyhow::Error::msg)?;
    tracing::info!(node = %config.node, "cluster node: holding alert partition leases under this name");
    let leases = tokio::task::spawn_blocking(move || Leases::start(&url, config))
        .await?
        .context("alert partition leases in PostgreSQL")?;
    Ok(Some(Arc::new(leases)))
}

/// The `/metrics` lines of the leases.
pub(super) fn metrics(leases: &Arc<Leases>) -> carewatch_web::ExtraMetrics {
    let l = leases.clone();
    Arc::new(move |out: &mut String| {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP carewatch_alert_partitions_owned Alert partitions this node holds a lease on.\n# TYPE carewatch_alert_partitions_owned gauge\ncarewatch_alert_partitions_owned {}",
            l.owned().len()
        );
    })
}

/// `/readyz`'s condition in cluster mode: in touch with PostgreSQL (a node cut off cannot
/// commit, own partitions or append alerts; a load balancer should send its traffic elsewhere).
pub(super) fn ready(leases: &Arc<Leases>) -> carewatch_web::ReadyCheck {
    let l = leases.clone();
    Arc::new(move || (!l.in_touch()).then_some("the cluster's PostgreSQL is unreachable"))
}

/// Gives the leases back on a clean shutdown (the other nodes take them at once).
pub(super) async fn stop(leases: Option<Arc<Leases>>) {
    if let Some(l) = leases {
        let _ = tokio::task::spawn_blocking(move || l.stop(true)).await;
    }
}
