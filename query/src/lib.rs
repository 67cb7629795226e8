//! `carewatch-query`: answers. SQL over everything through one DataFusion `SessionContext`.
//!
//! - [`table`]: the `observations` and `dead_letters` tables: at each scan, the store's
//!   snapshot — buffered Arrow batches (rows acknowledged a moment ago) united with the Parquet
//!   files, with filters pushed into the Parquet scan (statistics pruning) and whole days
//!   skipped when the time filter excludes them. `devices` and `care_teams` come from the registry.
//! - [`engine`]: the read-only session: DDL, DML, `COPY` and statements are refused by
//!   `SQLOptions`; no file-reading table functions are registered; per-query time and memory
//!   limits; errors that leak no internals.
//!
//! What it must not do: write anything, or depend on `ingest`.

pub mod audit;
pub mod engine;
pub mod fhir_read;
pub mod http;
pub mod pgwire;
pub mod table;

pub use engine::{QueryEngine, QueryError, QueryLimits};
