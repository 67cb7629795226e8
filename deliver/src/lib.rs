//! `carewatch-deliver`: delivers every stored reading to an external FHIR R4 server.
//!
//! The Observations are the ones carewatch serves itself (`carewatch_fhir`, one code path),
//! each with a stable business identifier derived from the natural key, written with a
//! conditional update (`PUT Observation?identifier=…`) in `batch` (or `transaction`) Bundles,
//! so a redelivery updates and never duplicates. Delivery follows `observations` by received
//! time from a persisted position ([`state`]): at least once across crashes, in received order
//! (so per patient in order), retried with capped back-off; an Observation the server refuses
//! becomes a dead letter (`destination_rejected`, the server's OperationOutcome in `raw`) and
//! never blocks the rest.
//!
//! Alerts go the same way as their `Communication`s ([`alerts`]), positioned by the alert
//! history.
//!
//! Modules: [`bundle`] (pure: entries, Bundles, reading the answers), [`client`] (HTTP and
//! credentials), [`state`] (the durable position and status), `run` (the loop), [`lookup`]
//! (identity lookup: unknown devices found on the destination, their dead letters stored),
//! [`receipts`] (the server's answer per Observation), [`trace`] and [`http`] (per-message trace,
//! `GET /v1/trace`).
//!
//! What it must not do: log PHI or server answers above debug, put ids in metric labels, or
//! block an async worker on a file (state writes run on the blocking pool).

pub mod alerts;
pub mod bundle;
pub mod client;
pub mod http;
pub mod lookup;
pub mod receipts;
pub mod state;
pub mod trace;

mod run;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use carewatch_query::QueryEngine;
use carewatch_store::Store;

pub use bundle::{DEFAULT_IDENTIFIER_SYSTEM, Kind};
pub use state::State;

/// How carewatch authenticates to the destination.
#[derive(Clone, Default)]
pub enum Auth {
    /// No credential.
    #[default]
    None,
    /// A fixed bearer token.
    Bearer(String),
    /// OAuth2 client credentials (RFC 6749 §4.4, `client_secret_basic`) against a token
    /// endpoint; the token is cached until shortly before `expires_in`.
    ClientCredentials {
        /// The token endpoint.
        token_url: url::Url,
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: String,
        /// Requested scope, e.g. `system/Observation.write`.
        scope: Option<String>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Bearer(_) => "Bearer(…)",
            Auth::ClientCredentials { .. } => "ClientCredentials(…)",
        })
    }
}

/// A destination's configuration (`[fhir.destination]`).
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's base URL (Bundles are POSTed to it).
    pub url: url::Url,
    /// Credential.
    pub auth: Auth,
    /// Observations per Bundle (1–1000).
    pub batch_size: usize,
    /// How often to look for new readings when caught up.
    pub interval: Duration,
    /// `batch` (default) or `transaction` Bundles.
    pub kind: Kind,
    /// The identifier system of delivered Observations.
    pub identifier_system: String,
    /// Readings are delivered once they are this old (covers the moment between a message's
    /// arrival and its append; appends in flight are waited for exactly).
    pub settle: Duration,
    /// Longest wait between retries.
    pub max_backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Config {
    /// Defaults for a URL; errors name what is wrong with it.
    pub fn new(url: &str) -> Result<Config, String> {
        let url = url::Url::parse(url).map_err(|e| format!("fhir.destination.url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(
                "fhir.destination.url: must be an http:// or https:// URL with a host".into(),
            );
        }
        Ok(Config {
            url,
            auth: Auth::None,
            batch_size: 100,
            interval: Duration::from_secs(1),
            kind: Kind::Batch,
            identifier_system: DEFAULT_IDENTIFIER_SYSTEM.to_owned(),
            settle: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        })
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=1000).contains(&self.batch_size) {
            return Err("fhir.destination.batch_size: must be 1 to 1000".into());
        }
        if self.interval < Duration::from_millis(10) {
            return Err("fhir.destination.interval: must be at least 10ms".into());
        }
        if url::Url::parse(&self.identifier_system).is_err() {
            return Err("fhir.destination.identifier_system: must be a URI".into());
        }
        Ok(())
    }
}

/// Where a cycle moved a position to.
#[derive(Debug, Clone, Copy)]
enum Position {
    /// Readings: everything received up to this time (UTC µs).
    Received(i64),
    /// Alerts: every history transition before this one.
    Alerts(u64),
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

struct Inner {
    config: Config,
    client: client::Client,
    store: Store,
    engine: QueryEngine,
    /// The alert history, when alerts are delivered too.
    alerts: Option<alerts::Alerts>,
    path: PathBuf,
    /// Where the server's answers are kept ([`receipts`]).
    receipts: PathBuf,
    public_url: String,
    /// `host[:port]`: the metrics label (no path, no credentials).
    label: String,
    state: Mutex<State>,
    errors: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// When the state was last written (idle advances are written at most every 30 s).
    saved_at: Mutex<std::time::Instant>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn position(&self) -> i64 {
        self.lock().position_us
    }
    fn set_pending(&self, oldest: Option<i64>) {
        self.lock().oldest_pending_us = oldest;
    }
    async fn advance(&self, to: Position, delivered: u64, failed: u64) {
        let write = {
            let mut s = self.lock();
            match to {
                Position::Received(upto) => {
                    s.position_us = s.position_us.max(upto);
                    s.delivered += delivered;
                    s.failed += failed;
                }
                Position::Alerts(next) => {
                    s.alerts_seq = s.alerts_seq.max(next);
                    s.alerts_delivered += delivered;
                    s.alerts_failed += failed;
                }
            }
            if delivered + failed > 0 {
                s.last_success_us = Some(now_us());
            }
            s.last_error = None;
            delivered + failed > 0
        };
        let stale = self
            .saved_at
            .lock()
            .map(|t| t.elapsed() > Duration::from_secs(30))
            .unwrap_or(true);
        if write || stale {
            self.save().await;
        }
    }
    async fn record_error(&self, class: &'static str) {
        {
            let mut s = self.lock();
            s.last_error = Some(class.to_owned());
            s.last_error_us = Some(now_us());
        }
        *self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(class)
            .or_default() += 1;
        self.save().await;
    }
    /// Writes the state on the blocking pool; a failure is logged and retried with the next.
    async fn save(&self) {
        let s = self.lock().clone();
        let p = self.path.clone();
        match tokio::task::spawn_blocking(move || state::store(&p, &s)).await {
            Ok(Ok(())) => {
                if let Ok(mut t) = self.saved_at.lock() {
                    *t = std::time::Instant::now();
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "FHIR destination: writing the position failed")
            }
            Err(e) => tracing::error!(error = %e, "FHIR destination: position writer failed"),
        }
    }
}

/// Readings received after `position_us`: how many, and the oldest received time (for
/// `carewatch fhir status`).
pub async fn pending(q: &QueryEngine, position_us: i64) -> Result<(u64, Option<i64>), String> {
    use arrow_array::Array as _;
    let sql = format!(
        "SELECT count(*) AS n, CAST(min(received_time) AS BIGINT) AS t FROM observations \
         WHERE received_time > to_timestamp_micros({position_us})"
    );
    let b = q.collect(&sql).await.map_err(|e| e.to_string())?;
    let Some(b) = b.first().filter(|b| b.num_rows() > 0) else {
        return Ok((0, None));
    };
    let n = b
        .column(0)
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .map_or(0, |a| a.value(0));
    let t = b
        .column(1)
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .and_then(|a| (!a.is_null(0)).then(|| a.value(0)));
    Ok((n.max(0) as u64, t))
}

/// A running destination (cheap to clone): its status and metrics.
#[derive(Clone)]
pub struct Destination {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("url", &self.inner.public_url)
            .finish()
    }
}

impl Destination {
    /// Loads the position under `data_dir` and starts delivering until `shutdown`: the stored
    /// readings, and with `alerts` every alert transition (as the alert's Communication).
    pub fn start(
        config: Config,
        data_dir: &std::path::Path,
        store: Store,
        engine: QueryEngine,
        alerts: Option<alerts::Alerts>,
        shutdown: CancellationToken,
    ) -> Result<(Destination, tokio::task::JoinHandle<()>), String> {
        config.validate()?;
        let client = client::Client::new(&config)?;
        let path = state::path(data_dir, &config.url);
        let public_url = state::public_url(&config.url);
        let mut st = state::load(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .unwrap_or_default();
        st.url = public_url.clone();
        let label = match (config.url.host_str(), config.url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => "destination".to_owned(),
        };
        let inner = Arc::new(Inner {
            config,
            client,
            store,
            engine,
            alerts,
            receipts: receipts::path(&path),
            path,
            public_url,
            label,
            state: Mutex::new(st),
            errors: Mutex::default(),
            saved_at: Mutex::new(std::time::Instant::now() - Duration::from_secs(3600)),
        });
        let task = tokio::spawn(run::run(inner.clone(), shutdown));
        Ok((Destination { inner }, task))
    }

    /// The current status.
    pub fn status(&self) -> State {
        self.inner.lock().clone()
    }

    /// Appends this destination's metrics in Prometheus text format (label: host and port).
    pub fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let s = self.status();
        let l = self.inner.label.replace(['"', '\\', '\n'], "_");
        let now = now_us();
        let lag = s
            .oldest_pending_us
            .map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
        let mut fam = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{destination=\"{l}\"}} {v}");
        };
        fam(
            "carewatch_fhir_destination_delivered_total",
            "counter",
            "Observations the FHIR destination accepted.",
            s.delivered as f64,
        );
        fam(
            "carewatch_fhir_destination_failed_total",
            "counter",
            "Observations the FHIR destination refused (each a dead letter).",
            s.failed as f64,
        );
        fam(
            "carewatch_fhir_destination_communications_delivered_total",
            "counter",
            "Alert Communications the FHIR destination accepted.",
            s.alerts_delivered as f64,
        );
        fam(
            "carewatch_fhir_destination_communications_failed_total",
            "counter",
            "Alert Communications the FHIR destination refused (each a dead letter).",
            s.alerts_failed as f64,
        );
        let behind = self.inner.alerts.as_ref().map_or(0, |a| a.len());
        fam(
            "carewatch_fhir_destination_alert_transitions_behind",
            "gauge",
            "Alert transitions not yet delivered.",
            behind.saturating_sub(s.alerts_seq) as f64,
        );
        fam(
            "carewatch_fhir_destination_lag_seconds",
            "gauge",
            "Age of the oldest stored reading not yet delivered (0 when caught up).",
            lag,
        );
        fam(
            "carewatch_fhir_destination_position_seconds",
            "gauge",
            "Everything received up to this Unix time is delivered.",
            s.position_us as f64 / 1e6,
        );
        let errors = self
            .inner
            .errors
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let name = "carewatch_fhir_destination_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Failed delivery attempts (retried), by class.\n# TYPE {name} counter"
        );
        for class in [
            "network",
            "timeout",
            "auth",
            "token",
            "server",
            "throttled",
            "bundle",
            "store",
        ] {
            let n = errors.get(class).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}{{destination=\"{l}\",class=\"{class}\"}} {n}");
        }
    }
}
