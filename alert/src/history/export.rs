//! Keeps the `alerts` Delta table (beside `observations`) up to date with the alert
//! history: every [`EXPORT_EVERY`], the transitions the table does not hold yet go into it in
//! one Delta commit (`Store::export_alert_history`: exactly once, whichever node exports; in a
//! cluster only the holder of the maintenance partition does). The history stays the truth —
//! appends there are per transition, fsynced or fenced in PostgreSQL; the table trails it by
//! at most one interval, for the lakehouse readers that read the tables (ARCHITECTURE.md, "The
//! alert history as a Delta table").

use std::sync::Arc;
use std::time::Duration;

use carewatch_store::Store;

use super::History;

/// How often the table catches up with the history.
pub const EXPORT_EVERY: Duration = Duration::from_secs(10);

/// Most transitions one export commits (a long backlog goes in several commits).
const MAX_ROWS: usize = 50_000;

/// One catch-up: commits the transitions the table lacks (up to [`MAX_ROWS`]). Returns how
/// many were committed by this call (0: none new, another node was first, or not this node's
/// to do).
pub async fn export_once(history: &History, store: &Store) -> carewatch_store::Result<usize> {
    let at = store.alert_history_exported().await?;
    let rows = history.since(at);
    if rows.is_empty() {
        return Ok(0);
    }
    let rows = &rows[..rows.len().min(MAX_ROWS)];
    if rows[0].seq != at {
        // The history does not continue where the table stops (a history rebuilt from a
        // different file): exporting would leave a gap or repeat transitions.
        tracing::warn!(
            table = at,
            history = rows[0].seq,
            "the alerts Delta table and the alert history disagree on positions; not exported"
        );
        return Ok(0);
    }
    let batch = super::table::batch_of(&super::table::alerts_schema(), rows)
        .map_err(|e| carewatch_store::Error::Encode(e.to_string()))?;
    Ok(if store.export_alert_history(at, batch).await? {
        rows.len()
    } else {
        0
    })
}

/// Exports every `every` for as long as the store is open (a failed export is retried at the
/// next interval; it is logged without data values).
pub async fn export_loop(history: Arc<History>, store: Store, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match export_once(&history, &store).await {
            Ok(n) => {
                if failing {
                    tracing::info!(
                        "exporting the alert history to the alerts Delta table works again"
                    );
                    failing = false;
                }
                if n > 0 {
                    tracing::debug!(transitions = n, "alert history exported");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "exporting the alert history to the alerts Delta table failed; retrying");
                    failing = true;
                }
            }
        }
    }
}
