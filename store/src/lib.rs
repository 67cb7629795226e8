//! `carewatch-store`: durability. Nothing acknowledged is lost.
//!
//! An append's future completes only when its rows are in the write-ahead log and fsynced
//! (group commit: concurrent appends share one fsync). Durable rows are immediately visible in
//! the in-memory buffer of Arrow batches. On size or age the buffer is sorted by (patient,
//! code, effective time), de-duplicated on the natural key (device, code, effective time), and
//! written as ZSTD Parquet under `observations/date=YYYY-MM-DD/` (and `dead_letters/…`) through
//! the `object_store` crate (a local directory by default, S3-compatible by URL), and added to
//! the table by one Delta Lake commit (`<table>/_delta_log/`, with the last WAL segment as the
//! commit's `txn` version); then a checkpoint records which WAL segments are persisted and
//! those segments are deleted. Compaction merges a day's small files and retention drops whole
//! old days, each one commit; removed files are deleted after a grace period. Every reader —
//! carewatch's queries, the `deltalake` package, Polars, Spark — sees a committed snapshot.
//!
//! Modules: [`wal`] (segments and frames) and [`codec`] (record encoding), both from the
//! `carewatch-wal` crate; [`tables`] (Parquet layout, writing, reading), [`dead`] (the
//! dead-letters schema).
//!
//! Invariants:
//! - acknowledged ⇒ in an fsynced WAL frame, or in a Parquet file a durable Delta commit added;
//! - replay after a crash skips, per table, the segments its Delta log records (the commit's
//!   `txn`) or the checkpoint covers, and deletes Parquet files no commit references, so
//!   every row exists exactly once;
//! - every WAL frame written is one replay accepts (a group commit is cut into frames);
//! - the buffer is bounded in rows and bytes: a full buffer answers [`Error::Busy`];
//! - a writer that cannot go on is reported by [`Store::healthy`], never silent.
//!
//! What it must not do: parse payloads, know about HTTP or MQTT, or hold a lock across I/O
//! that an append waits on.

pub mod alert_history;
pub mod dead;
pub mod lease;
pub mod merge;
mod pg_conn;
mod pg_connect;
pub mod registry;
pub mod shared_audit;
pub mod shared_log;
pub mod sorted;
pub mod tables;
pub mod tls;

mod engine;

/// A PostgreSQL failure of `what` (the registry, the leases, the commit lock) as an [`Error`]
/// that names only its class: the server's message may quote a row (an id), so it goes to the
/// debug log alone.
pub(crate) fn pg_error(what: &str, e: postgres::Error) -> Error {
    let class = match e.code() {
        Some(c) => format!("SQLSTATE {}", c.code()),
        None if e.is_closed() => "connection closed".to_owned(),
        // The server's certificate or host name did not verify (pg_connect), or the server
        // broke off the handshake.
        None if e.to_string().starts_with("error performing TLS handshake") => {
            "TLS handshake failed".to_owned()
        }
        None => "connection or request failed".to_owned(),
    };
    tracing::debug!(error = %e, "{what}: postgres");
    Error::Io(format!("{what}: postgres: {class}"))
}

pub use carewatch_wal::{DeadLetter, Row, codec, wal};
pub use engine::{AppendObserver, AppendSummary, Histogram, Snapshot, Store, StoreStats};
pub use tables::{FileMeta, Table};

use std::path::PathBuf;
use std::time::Duration;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The buffer is full because persistence is behind: retry later (HTTP 503, MQTT: stop
    /// polling).
    #[error("store is busy: the in-memory buffer is full, retry later")]
    Busy,
    /// Writing or syncing the WAL failed (disk full, I/O error): nothing was acknowledged.
    #[error("write-ahead log: {0}")]
    Wal(std::io::Error),
    /// File system or object store failure outside the append path.
    #[error("storage: {0}")]
    Io(String),
    /// Parquet or Arrow encoding failure.
    #[error("encoding: {0}")]
    Encode(String),
    /// One append is larger than a WAL frame may be: nothing was stored (send less at once).
    #[error("too large: {0}")]
    TooLarge(String),
    /// The store has shut down.
    #[error("store is shut down")]
    Closed,
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Store configuration. The defaults keep ack latency in the low milliseconds (group commit
/// without added delay: whatever queues during one fsync shares the next).
#[derive(Debug, Clone)]
pub struct Config {
    /// Local directory for the WAL and checkpoint (and the tables, when no URL is given).
    pub data_dir: PathBuf,
    /// Where tables live: `None` = `data_dir`; or an object store URL (`s3://bucket/prefix`,
    /// `file:///path`).
    pub tables_url: Option<String>,
    /// Options for the object store of `tables_url` (`aws_endpoint`, `aws_access_key_id`, …),
    /// on top of the `AWS_*` environment variables (which they override).
    pub object_store_options: Vec<(String, String)>,
    /// Cluster mode: the PostgreSQL database (`postgres://…`) through which the nodes sharing
    /// `tables_url` serialise their Delta commits (an advisory lock per table), so no commit
    /// replaces another's on a store without put-if-absent. `None`, or no `tables_url`: this
    /// node is the tables' only writer.
    pub postgres_url: Option<String>,
    /// Cluster mode, tables shared through `tables_url`: append observers are also told of the
    /// rows other nodes persisted, when this node follows their commits (see
    /// [`Store::observe_appends`]). Off by default: a node's observers hear of its own appends.
    pub observe_other_nodes: bool,
    /// Cluster mode (`tables_url` and `postgres_url`): how long after its last liveness
    /// renewal a node is taken for dead and its WAL objects are adopted by another node
    /// ([`Store::adopt_wals`]). A node renews every quarter of it and stops acknowledging
    /// appends when three quarters pass without a renewal.
    pub wal_node_ttl: Duration,
    /// Extra time a group commit waits for more appends before its fsync.
    pub commit_delay: Duration,
    /// Most rows in one group commit.
    pub max_commit_rows: usize,
    /// Persist when the buffer holds this many rows…
    pub persist_rows: usize,
    /// …or when its oldest rows are this old.
    pub persist_age: Duration,
    /// Appends are refused with [`Error::Busy`] beyond this many buffered rows…
    pub buffer_limit_rows: usize,
    /// …or beyond this much memory held by buffered batches (kept well under the 2 GiB a
    /// persist could concatenate into one Arrow column).
    pub buffer_limit_bytes: usize,
    /// Persist also when the buffer holds this many bytes.
    pub persist_bytes: usize,
    /// Rotate WAL segments beyond this size.
    pub segment_bytes: u64,
    /// Merge the files of a day's size tier once it has this many (size-tiered compaction:
    /// each tier this many times the size of the one below).
    pub compact_min_files: usize,
    /// Compaction reads the files it merges into memory: one merge reads at most this many
    /// bytes of Parquet, and files of half of it or more are never merged again.
    pub compact_max_bytes: u64,
    /// Drop days older than this (by effective date); `None` keeps everything.
    pub retention: Option<Duration>,
    /// Parquet row group size.
    pub row_group_rows: usize,
    /// How long replaced files stay readable for queries that listed them.
    pub delete_grace: Duration,
    /// How often the background task checks persistence, compaction and retention.
    pub tick: Duration,
    /// Open for reading only (`carewatch sql --data-dir` beside a running server): nothing is
    /// written, cut or deleted, and appends fail with [`Error::Closed`].
    pub read_only: bool,
}

impl Config {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            tables_url: None,
            object_store_options: Vec::new(),
            postgres_url: None,
            observe_other_nodes: false,
            wal_node_ttl: Duration::from_secs(10),
            commit_delay: Duration::ZERO,
            max_commit_rows: 100_000,
            persist_rows: 500_000,
            persist_age: Duration::from_secs(300),
            buffer_limit_rows: 8_000_000,
            buffer_limit_bytes: 1 << 30,
            persist_bytes: 128 << 20,
            segment_bytes: 64 << 20,
            compact_min_files: 8,
            compact_max_bytes: 256 << 20,
            retention: None,
            row_group_rows: 1 << 20,
            delete_grace: Duration::from_secs(120),
            tick: Duration::from_secs(1),
            read_only: false,
        }
    }
}
