//! Start-up, first phase: the store, the registry, the ingest pipeline and the credential check.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;

use carewatch_ingest::Pipeline;
use carewatch_store::registry::Registry;
use carewatch_store::{Config as StoreConfig, Store};
use carewatch_transform::ZonePolicy;
use carewatch_transform::template::Templates;

use crate::config::ServeConfig;

/// Opens the store on the data directory (replaying the WAL) and closes the directory to
/// other users.
pub(super) async fn store(c: &ServeConfig) -> Result<Store> {
    let mut sc = StoreConfig::new(&c.data_dir);
    sc.tables_url = c.tables_url.clone();
    // Cluster members serialise their Delta commits through PostgreSQL.
    sc.postgres_url = c.postgres_url.clone();
    // Partitioned alerting: a reading may arrive at any node, and its patient's owner learns
    // of it from the shared tables, so nodes persist often and follow each other's commits.
    if super::leases::partitioned(c) {
        sc.observe_other_nodes = true;
        sc.persist_age = super::leases::CLUSTER_PERSIST_AGE;
        sc.tick = super::leases::CLUSTER_TICK;
    }
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
    Ok(store)
}

/// The registry (printing the admin token on a fresh one), device mapping templates (watched
/// for changes), the pipeline, and the one credential check every wire uses (kept current by
/// re-reading the registry twice a second).
pub(super) fn pipeline(
    c: &ServeConfig,
    store: &Store,
    shutdown: &CancellationToken,
) -> Result<(Arc<Pipeline>, carewatch_auth::Authenticator)> {
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
    Ok((pipeline, auth))
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

/// The audit trail: `audit.jsonl` in the data directory, or on a cluster member
/// (`--postgres-url`) the cluster's table in PostgreSQL, which every node appends to.
pub(super) async fn audit(c: &ServeConfig) -> Result<carewatch_query::audit::AuditLog> {
    use carewatch_query::audit::AuditLog;
    match c.postgres_url.clone() {
        Some(url) => tokio::task::spawn_blocking(move || AuditLog::open_shared(&url))
            .await?
            .context("opening the cluster's audit trail in PostgreSQL"),
        None => AuditLog::open(&c.data_dir, false).context("opening the audit log"),
    }
}
