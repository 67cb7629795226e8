//! `carewatch-query`: answers. SQL over everything through one DataFusion `SessionContext`.
//!
//! - [`table`]: the `observations` and `dead_letters` tables: at each scan, the store's
//!   snapshot — buffered Arrow batches (rows acknowledged a moment ago) united with the Parquet
//!   files, with filters pushed into the Parquet scan (statistics pruning) and whole days
//!   skipped when the time filter excludes them. `devices` and `care_teams` come from the registry.
//! - [`engine`]: the immutable base session (tables, pg_catalog), limits, errors.
//! - [`gate`]: the one statement gate every wire uses: fixed PostgreSQL dialect, queries and
//!   `EXPLAIN` of queries only, the whole plan checked read-only, table access from the plan.
//! - [`run`]: each query on its own state (own memory pool, connection settings), a per-role
//!   concurrency permit, one deadline over planning and streaming, cancellation, a row cap,
//!   and the audit line when the answer ends.
//! - [`pgwire`]: the Postgres wire (own handlers over the gate, TLS, cancel requests, sessions
//!   closed when their credential stops being valid).
//!
//! What it must not do: write anything, or depend on `ingest`.

pub mod arg_max;
pub mod audit;
pub mod engine;
mod errors;
pub mod fhir_communication;
pub mod fhir_read;
pub mod fhir_registry;
pub mod fhir_search;
pub mod fhir_subscription;
pub mod gate;
pub mod http;
pub mod join_order;
pub mod pgwire;
pub mod quantile;
pub mod run;
pub mod subscriptions;
pub mod table;

pub use engine::{QueryEngine, QueryError, QueryLimits};
pub use gate::{Caller, Settings};
pub use run::QueryStream;
