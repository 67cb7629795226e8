//! Cluster mode (`--postgres-url`): this node's leases on the alert partitions
//! (`carewatch_store::lease`), renewed by a thread of their own, and the metric that shows
//! them (`carewatch_alert_partitions_owned`). Alerting does not consult them yet (see
//! ARCHITECTURE.md, "Partitioned alerting"): every node still evaluates what it receives.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use carewatch_store::lease::{self, Leases, Ownership as _};

use crate::config::ServeConfig;

/// Starts the leases when the node is a cluster member.
pub(super) async fn start(c: &ServeConfig) -> Result<Option<Arc<Leases>>> {
    let Some(url) = c.postgres_url.clone() else {
        return Ok(None);
    };
    let config = lease::Config::random().map_err(anyhow::Error::msg)?;
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

/// Gives the leases back on a clean shutdown (the other nodes take them at once).
pub(super) async fn stop(leases: Option<Arc<Leases>>) {
    if let Some(l) = leases {
        let _ = tokio::task::spawn_blocking(move || l.stop(true)).await;
    }
}
