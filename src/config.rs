//! `carewatch serve` configuration: flags, `CAREWATCH_*` environment variables and a TOML file
//! (`--config`), in that order of precedence, over embedded defaults. Validated once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

mod alerts;
mod cluster;
mod fhir;
mod limits;
mod oidc;

/// The TOML file. Every key is optional; unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the WAL, registry and (by default) Parquet tables live.
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address.
    pub http_addr: Option<String>,
    /// Embedded MQTT listen address (ignored when `mqtt_url` is set).
    pub mqtt_addr: Option<String>,
    /// External broker URL (`mqtt://host:1883`, `mqtts://host:8883`).
    pub mqtt_url: Option<String>,
    /// Postgres wire listen address (used once the query service lands).
    pub pg_addr: Option<String>,
    /// How to read device times without an offset: `UTC`, `+02:00`, an IANA zone.
    pub assume_tz: Option<String>,
    /// Largest payload accepted, bytes.
    pub max_payload_bytes: Option<usize>,
    /// Readings dated more than this after arrival are rejected (`future_time`): "5m", "90s".
    pub max_future_skew: Option<String>,
    /// PEM certificate chain: serve HTTP and the embedded MQTT listener over TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Device mapping templates.
    #[serde(default)]
    pub templates: TemplatesConfig,
    /// Storage tuning.
    #[serde(default)]
    pub store: StoreConfig,
    /// External broker options.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Alert rules and delivery.
    #[serde(default)]
    pub alerts: alerts::AlertsConfig,
    /// Per-query limits for SQL on every wire.
    #[serde(default)]
    pub query: QueryConfig,
    /// Credentials.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Cluster membership (`[cluster] postgres_url`).
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// The HTTP edge's limits.
    #[serde(default)]
    pub http: HttpConfig,
    /// FHIR interoperability (`[fhir.destination]`).
    #[serde(default)]
    pub fhir: fhir::FhirFile,
    /// Per-patient baselines (`window_days`, `max_steps`).
    #[serde(default)]
    pub baselines: carewatch_alert::baselines::BaselineConfig,
}

/// `[http]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Open connections at most (default 4096).
    pub max_connections: Option<usize>,
    /// Seconds for a request's headers to arrive (default 30).
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds without traffic before a connection is closed (default 120).
    pub idle_timeout_secs: Option<u64>,
    /// Seconds connections get to finish after SIGTERM (default 10).
    pub shutdown_deadline_secs: Option<u64>,
}

/// `[auth]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `/metrics` needs an admin or analyst bearer token. Default: required unless HTTP
    /// listens on a loopback address only.
    pub metrics_require_token: Option<bool>,
    /// Failed logins one source address may make in a burst before it is refused (default 20).
    pub failed_login_burst: Option<u32>,
    /// One failed login is forgiven per this many seconds (default 1).
    pub failed_login_refill_secs: Option<f64>,
    /// Single sign-on with the hospital's identity provider.
    #[serde(default)]
    pub oidc: oidc::OidcFile,
}

/// `[query]`: limits for every SQL statement (HTTP, Postgres wire, dashboard).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Time limit per query, planning and streaming, seconds (default 60).
    pub timeout_secs: Option<f64>,
    /// Memory per query, MiB (default 1024); each query has its own pool.
    pub memory_mb: Option<usize>,
    /// Largest answer, rows (default 1000000); larger answers fail with a row-limit error.
    pub max_rows: Option<u64>,
    /// Analyst queries running at once (default 4).
    pub analyst_concurrency: Option<usize>,
    /// Admin queries running at once (default 2).
    pub admin_concurrency: Option<usize>,
}

/// `[templates]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplatesConfig {
    /// MedTech device mapping (CollectionContent JSON).
    pub device_mapping: Option<PathBuf>,
    /// MedTech FHIR destination mapping (CollectionFhir JSON).
    pub fhir_mapping: Option<PathBuf>,
}

/// `[store]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Object store URL for the tables (`s3://bucket/prefix`); default: the data dir. Also
    /// `--object-store-url`.
    pub object_store_url: Option<String>,
    /// The earlier name of `object_store_url`.
    pub tables_url: Option<String>,
    /// Persist the buffer once it holds this many rows.
    pub persist_rows: Option<usize>,
    /// …or once its oldest rows are this many seconds old.
    pub persist_age_secs: Option<u64>,
    /// Drop whole days older than this many days (default: keep everything).
    pub retention_days: Option<u64>,
    /// Refuse appends (HTTP 503, MQTT backpressure) beyond this many buffered rows.
    pub buffer_limit_rows: Option<usize>,
}

/// `[mqtt]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Client id towards the external broker (keep it stable: it names the session).
    pub client_id: Option<String>,
    /// Shared subscription group, so several carewatch nodes split one broker's load.
    pub shared_group: Option<String>,
    /// Broker username.
    pub username: Option<String>,
    /// Broker password.
    pub password: Option<String>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub mqtt_addr: SocketAddr,
    pub pg_addr: SocketAddr,
    pub mqtt_url: Option<String>,
    pub assume_tz: Option<String>,
    pub max_payload_bytes: usize,
    pub max_future_skew_us: i64,
    pub device_mapping: Option<PathBuf>,
    pub fhir_mapping: Option<PathBuf>,
    pub tables_url: Option<String>,
    pub persist_rows: Option<usize>,
    pub persist_age: Option<Duration>,
    pub retention: Option<Duration>,
    pub buffer_limit_rows: Option<usize>,
    pub mqtt_client_id: String,
    pub mqtt_shared_group: Option<String>,
    pub mqtt_credentials: Option<(String, String)>,
    pub log_json: bool,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub rules_dir: Option<PathBuf>,
    pub alert_engine: carewatch_alert::Config,
    pub baselines: carewatch_alert::baselines::BaselineConfig,
    pub alert_routes: carewatch_alert::notify::Routes,
    pub alerts_mqtt: bool,
    pub query_limits: carewatch_query::QueryLimits,
    pub metrics_require_token: bool,
    pub http_limits: carewatch_ingest::server::Limits,
    pub login_limits: carewatch_auth::limiter::Limits,
    /// Single sign-on (`None`: carewatch tokens only).
    pub oidc: Option<carewatch_auth::oidc::OidcConfig>,
    /// Where stored readings are delivered as FHIR Observations (`None`: nowhere).
    pub fhir_destination: Option<carewatch_deliver::Config>,
    /// Where device identity comes from (`[fhir.identity]`).
    pub fhir_identity: fhir::Identity,
    /// What each FHIR subscription keeps for `$events` (`[fhir.subscriptions]`).
    pub fhir_subscriptions: carewatch_query::subscriptions::Retention,
    /// The PostgreSQL database a cluster member keeps its registry in (`None`: the data
    /// directory's log file, single node).
    pub postgres_url: Option<String>,
    /// `[cluster] partitioned_alerting` (default true).
    pub partitioned_alerting: bool,
}

/// Flag/env values (each `None` when not given).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub http_addr: Option<String>,
    pub mqtt_addr: Option<String>,
    pub mqtt_url: Option<String>,
    pub pg_addr: Option<String>,
    pub assume_tz: Option<String>,
    pub max_future_skew: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub rules_dir: Option<PathBuf>,
    pub webhook_url: Option<String>,
    pub oidc_issuer: Option<String>,
    pub oidc_audience: Option<String>,
    pub fhir_destination: Option<String>,
    pub postgres_url: Option<String>,
    pub object_store_url: Option<String>,
    /// The directory of the config file (for its `rules/`).
    pub config_dir: Option<PathBuf>,
}

fn addr(s: &str, what: &str) -> Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("{what} {s:?} is not an address like 127.0.0.1:8080"))
}

pub(crate) fn url_ok(u: &str) -> bool {
    u.starts_with("http://") || u.starts_with("https://")
}

pub use cluster::{ClusterConfig, postgres_url as cluster_postgres_url};

/// Parses a TOML config file.
pub fn parse_file(text: &str) -> Result<FileConfig> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Resolves flags/env over the file over defaults, and validates.
pub fn resolve(o: Overrides, file: FileConfig) -> Result<ServeConfig> {
    let data_dir = o
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("carewatch-data"));
    let http_addr = addr(
        &o.http_addr
            .or(file.http_addr)
            .unwrap_or_else(|| "127.0.0.1:8080".into()),
        "http_addr",
    )?;
    let mqtt_addr = addr(
        &o.mqtt_addr
            .or(file.mqtt_addr)
            .unwrap_or_else(|| "127.0.0.1:1883".into()),
        "mqtt_addr",
    )?;
    let pg_addr = addr(
        &o.pg_addr
            .or(file.pg_addr)
            .unwrap_or_else(|| "127.0.0.1:5433".into()),
        "pg_addr",
    )?;
    let mqtt_url = o.mqtt_url.or(file.mqtt_url);
    if let Some(u) = &mqtt_url {
        carewatch_ingest::mqtt_client::parse_url(u).map_err(anyhow::Error::msg)?;
    }
    let assume_tz = o.assume_tz.or(file.assume_tz);
    if let Some(z) = &assume_tz {
        carewatch_transform::ZonePolicy::parse(z).map_err(anyhow::Error::msg)?;
    }
    let max_future_skew_us = match o.max_future_skew.or(file.max_future_skew) {
        None => carewatch_ingest::pipeline::DEFAULT_MAX_FUTURE_SKEW_US,
        Some(s) => crate::parse_duration(&s)
            .ok()
            .filter(|secs| (0..=366 * 86_400).contains(secs))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "max_future_skew {s:?}: use seconds or 90s, 5m, 1h (at most a year)"
                )
            })?
            .saturating_mul(1_000_000),
    };
    let max_payload_bytes = file.max_payload_bytes.unwrap_or(4 << 20);
    if max_payload_bytes < 1024 {
        bail!("max_payload_bytes must be at least 1024");
    }
    if file.templates.fhir_mapping.is_some() && file.templates.device_mapping.is_none() {
        bail!("templates.fhir_mapping needs templates.device_mapping");
    }
    let log_json = match file.log.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => bail!("log.format must be text or json, not {other:?}"),
    };
    let mqtt_credentials = match (file.mqtt.username, file.mqtt.password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        _ => bail!("mqtt.username and mqtt.password go together"),
    };
    let tls = match (o.tls_cert.or(file.tls_cert), o.tls_key.or(file.tls_key)) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => bail!("tls_cert and tls_key go together"),
    };
    let rules_dir = o
        .rules_dir
        .or(file.alerts.rules_dir.clone())
        .or_else(|| o.config_dir.map(|d| d.join("rules")).filter(|d| d.is_dir()));
    let a = &file.alerts;
    let (alert_engine, alert_routes) = alerts::resolve(a, o.webhook_url)?;
    let alerts_mqtt = a.mqtt_publish.unwrap_or(false);
    let query_limits = limits::query(&file.query)?;
    let metrics_require_token = file
        .auth
        .metrics_require_token
        .unwrap_or(!http_addr.ip().is_loopback());
    let login_limits = limits::login(&file.auth)?;
    let oidc = oidc::resolve(o.oidc_issuer, o.oidc_audience, file.auth.oidc)?;
    let fhir_destination = fhir::resolve(o.fhir_destination, file.fhir.destination)?;
    let fhir_identity = fhir::resolve_identity(file.fhir.identity, fhir_destination.as_ref())?;
    let fhir_subscriptions = fhir::resolve_subscriptions(&file.fhir.subscriptions)?;
    let http_limits = limits::http(&file.http);
    let postgres_url = cluster_postgres_url(o.postgres_url, &file.cluster)?;
    Ok(ServeConfig {
        postgres_url,
        partitioned_alerting: file.cluster.partitioned_alerting.unwrap_or(true),
        http_limits,
        query_limits,
        metrics_require_token,
        login_limits,
        oidc,
        fhir_destination,
        fhir_identity,
        fhir_subscriptions,
        alerts_mqtt,
        rules_dir,
        alert_engine,
        baselines: {
            file.baselines.validate().map_err(anyhow::Error::msg)?;
            file.baselines
        },
        alert_routes,
        tls,
        data_dir,
        pg_addr,
        http_addr,
        mqtt_addr,
        mqtt_url,
        assume_tz,
        max_payload_bytes,
        max_future_skew_us,
        device_mapping: file.templates.device_mapping,
        fhir_mapping: file.templates.fhir_mapping,
        tables_url: o
            .object_store_url
            .or(file.store.object_store_url)
            .or(file.store.tables_url),
        persist_rows: file.store.persist_rows,
        persist_age: file.store.persist_age_secs.map(Duration::from_secs),
        retention: file
            .store
            .retention_days
            .map(|d| Duration::from_secs(d * 86_400)),
        buffer_limit_rows: file.store.buffer_limit_rows,
        mqtt_client_id: file.mqtt.client_id.unwrap_or_else(|| "carewatch".into()),
        mqtt_shared_group: file.mqtt.shared_group,
        mqtt_credentials,
        log_json,
    })
}

#[cfg(test)]
mod tests;
