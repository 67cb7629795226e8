//! Cluster mode (`--postgres-url` with `--object-store-url`): the node holding the delivery
//! partition's lease also takes over the WAL objects of nodes that died with acknowledged rows
//! they had not persisted (`Store::adopt_wals`; ARCHITECTURE.md, "The WAL on the object
//! store"). One node at a time does it, and it moves with the lease; two at once would still
//! commit the rows only once (the dead node's `txn` is checked under the commit lock).

use std::sync::Arc;
use std::time::Duration;

use carewatch_store::Store;
use carewatch_store::lease::{DELIVERY_PARTITION, Leases, Ownership as _};
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;

/// How often the deliverer looks for dead nodes' WAL objects.
const EVERY: Duration = Duration::from_secs(2);

/// Starts the adoption loop on a cluster member with shared tables.
pub(super) fn start(
    c: &ServeConfig,
    store: &Store,
    leases: Option<&Arc<Leases>>,
    shutdown: &CancellationToken,
) {
    let (Some(leases), Some(_)) = (leases, &c.tables_url) else {
        return;
    };
    let (store, leases, shutdown) = (store.clone(), leases.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
            if !leases.owns_partition(DELIVERY_PARTITION) {
                continue;
            }
            match store.adopt_wals().await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, "adopted a dead node's acknowledged rows"),
                Err(e) => {
                    tracing::warn!(error = %e, "adopting dead nodes' WAL objects failed; will retry")
                }
            }
        }
    });
}
