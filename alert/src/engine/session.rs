//! The rules' own DataFusion session: the same store and registry tables as the analysts'
//! session, but a separate context with its own runtime and memory pool, so an analyst's
//! heavy query (or a session setting) cannot starve or change alert evaluation. Rules also see
//! `baselines` (per-patient resting values, [`crate::baselines`]).

use std::sync::Arc;

use datafusion::datasource::TableProvider;
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use carewatch_query::table::{ComputedTable, RegistryKind, RegistryTable, StoreTable, TABLES_URL};
use carewatch_store::registry::Registry;
use carewatch_store::{Store, Table};

use crate::baselines::{BaselineConfig, Baselines};

/// A session for alert rules only: `observations`, `devices` and `care_teams` over `store` and
/// `registry`, `baselines` (learned from `store`, default settings, no overrides, following its
/// appends), the FHIR UDFs, and a memory pool of `memory_bytes` shared by the rules alone.
pub fn rules_context(
    store: &Store,
    registry: Arc<Registry>,
    memory_bytes: usize,
) -> Result<SessionContext, String> {
    let baselines = Baselines::open(store, None, BaselineConfig::default())?;
    baselines.watch(store);
    rules_context_with(store, registry, memory_bytes, &baselines)
}

/// [`rules_context`] with the given baselines as the `baselines` table (`serve` shares them
/// with the analysts' session and the baseline API).
pub fn rules_context_with(
    store: &Store,
    registry: Arc<Registry>,
    memory_bytes: usize,
    baselines: &Baselines,
) -> Result<SessionContext, String> {
    let config = SessionConfig::new()
        .with_information_schema(false)
        .with_default_catalog_and_schema("carewatch", "public");
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(memory_bytes.max(1 << 20))))
        .build_arc()
        .map_err(|e| format!("rules runtime: {e}"))?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    carewatch_query::fhir_read::register_udfs(&ctx);
    let url = url::Url::parse(TABLES_URL).map_err(|e| e.to_string())?;
    ctx.register_object_store(&url, store.objects());
    let tables: [(&str, Arc<dyn TableProvider>); 3] = [
        (
            "observations",
            Arc::new(StoreTable::new(store.clone(), Table::Observations)),
        ),
        (
            "devices",
            Arc::new(ComputedTable(RegistryTable::new(
                registry.clone(),
                RegistryKind::Devices,
            ))),
        ),
        (
            "care_teams",
            Arc::new(ComputedTable(RegistryTable::new(
                registry,
                RegistryKind::CareTeams,
            ))),
        ),
    ];
    for (name, t) in tables {
        ctx.register_table(name, t)
            .map_err(|e| format!("rules table {name}: {e}"))?;
    }
    crate::baselines::register(&ctx, baselines)?;
    Ok(ctx)
}
