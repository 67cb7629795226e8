//! The command line: every subcommand and its arguments (clap), and the duration syntax
//! they share.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::{devices_cmd, fhir_cmd, token_cmd, trace_cmd};

/// Remote patient monitoring: device readings to FHIR R4 Observations, Parquet and SQL alerts.
#[derive(Debug, Parser)]
#[command(name = "carewatch", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run everything: embedded MQTT listener (or an external broker), HTTP, storage.
    ///
    /// With no arguments it starts on embedded defaults: MQTT on 127.0.0.1:1883, HTTP on
    /// 127.0.0.1:8080, data under ./carewatch-data. A fresh data directory prints an admin token
    /// once. Ctrl-C (or SIGTERM) drains and flushes: nothing accepted is lost.
    Serve(ServeArgs),
    /// Credentials.
    #[command(subcommand)]
    Token(token_cmd::TokenCommand),
    /// The device fleet: bulk import (CSV or NDJSON), listing.
    #[command(subcommand)]
    Devices(devices_cmd::DevicesCommand),
    /// Backfill history (NDJSON, JSON, CSV; optionally .gz) through the normal ingest path
    /// into a data directory (not while a server runs on it).
    Replay(ReplayArgs),
    /// Run SQL against a running server (--server) or directly on a data directory.
    Sql(SqlArgs),
    /// A simulated device fleet: N patients with realistic vitals and injected episodes, over
    /// MQTT or HTTP. Registers its devices with the admin token, prints what it sent.
    Simulate(SimulateArgs),
    /// Device mapping templates (MedTech / iomt-fhir compatible).
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Alert rules: check them, backtest them over history.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// FHIR interoperability: the destination's delivery status.
    #[command(subcommand)]
    Fhir(fhir_cmd::FhirCommand),
    /// Each message of a device and what became of it: received, normalised or rejected (and
    /// why), stored, delivered to the FHIR destination (with the server's answer).
    Trace(trace_cmd::TraceArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum TemplateCommand {
    /// Show what a device mapping makes of a sample payload, or exactly why it fails.
    ///
    /// Prints the measurements (MedTech's normalised form), the coded readings carewatch
    /// stores, and any normalisation notes; with `--fhir`, prints the FHIR R4 Observations as
    /// a Bundle on stdout instead. Exits non-zero when any part of the payload is rejected.
    Check {
        /// The device mapping (CollectionContent JSON).
        device_mapping: PathBuf,
        /// A sample device payload (JSON).
        payload: PathBuf,
        /// The FHIR destination mapping (CollectionFhir JSON) that codes each type.
        #[arg(long)]
        fhir_mapping: Option<PathBuf>,
        /// Print FHIR Observations (a collection Bundle) instead of the readings table.
        #[arg(long)]
        fhir: bool,
        /// How to read times without an offset: UTC, +HH:MM or an IANA zone. Default: reject.
        #[arg(long, value_name = "ZONE")]
        assume_tz: Option<String>,
        /// Patient for readings whose template has no patientIdExpression (in `serve`, the
        /// device registry supplies it).
        #[arg(long)]
        patient: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// TOML config file (see deploy/carewatch.example.toml).
    #[arg(long, env = "CAREWATCH_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Data directory (WAL, registry, Parquet tables).
    #[arg(long, env = "CAREWATCH_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, env = "CAREWATCH_HTTP_ADDR")]
    pub(crate) http_addr: Option<String>,
    /// Embedded MQTT listen address.
    #[arg(long, env = "CAREWATCH_MQTT_ADDR")]
    pub(crate) mqtt_addr: Option<String>,
    /// External broker (mqtt://host:port or mqtts://host:port) instead of the embedded listener.
    #[arg(long, env = "CAREWATCH_MQTT_URL")]
    pub(crate) mqtt_url: Option<String>,
    /// Postgres wire listen address.
    #[arg(long, env = "CAREWATCH_PG_ADDR")]
    pub(crate) pg_addr: Option<String>,
    /// How to read device times without an offset (UTC, +HH:MM, IANA zone). Default: reject.
    #[arg(long, env = "CAREWATCH_ASSUME_TZ")]
    pub(crate) assume_tz: Option<String>,
    /// Readings dated more than this after their arrival are rejected as `future_time`
    /// (seconds, or 90s, 5m, 1h). Default 5m.
    #[arg(long, env = "CAREWATCH_MAX_FUTURE_SKEW")]
    pub(crate) max_future_skew: Option<String>,
    /// PEM certificate chain: serve HTTP and MQTT over TLS.
    #[arg(long, env = "CAREWATCH_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "CAREWATCH_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Alert rule files (*.toml). Default: rules/ beside --config, else the shipped rules.
    #[arg(long, env = "CAREWATCH_RULES_DIR")]
    pub(crate) rules_dir: Option<PathBuf>,
    /// Receiver for every alert transition (JSON POST).
    #[arg(long, env = "CAREWATCH_WEBHOOK_URL")]
    pub(crate) webhook_url: Option<String>,
    /// OpenID Connect issuer whose JWTs are accepted on every API and whose sign-in the
    /// dashboard uses (config `[auth.oidc] issuer`).
    #[arg(long, env = "CAREWATCH_OIDC_ISSUER")]
    pub(crate) oidc_issuer: Option<String>,
    /// The audience (`aud`) tokens for carewatch carry (config `[auth.oidc] audience`).
    #[arg(long, env = "CAREWATCH_OIDC_AUDIENCE")]
    pub(crate) oidc_audience: Option<String>,
    /// Deliver every stored reading to this FHIR R4 server as Observations (conditional
    /// update on a stable identifier; config `[fhir.destination] url`, with auth and batching).
    #[arg(long, env = "CAREWATCH_FHIR_DESTINATION")]
    pub(crate) fhir_destination: Option<String>,
    /// Keep the registry (devices, credentials, care teams) in this PostgreSQL database,
    /// shared by every node that names it (config `[cluster] postgres_url`).
    #[arg(long, env = "CAREWATCH_POSTGRES_URL")]
    pub(crate) postgres_url: Option<String>,
    /// Keep the tables in this object store (`s3://bucket/prefix`; credentials and endpoint
    /// from the `AWS_*` environment) instead of the data directory (config `[store]
    /// object_store_url`).
    #[arg(long, env = "CAREWATCH_OBJECT_STORE_URL")]
    pub(crate) object_store_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RulesCommand {
    /// Load and plan the rules (a rules directory, or the shipped ones) and list them.
    Check {
        /// Rules directory (default: the shipped rules).
        #[arg(long, env = "CAREWATCH_RULES_DIR")]
        rules_dir: Option<PathBuf>,
        /// Data directory to plan against.
        #[arg(long, env = "CAREWATCH_DATA_DIR", default_value = "carewatch-data")]
        data_dir: PathBuf,
    },
    /// Run the rules over stored history and report every episode they would have raised,
    /// with the alarm burden per rule and per patient-day.
    Backtest(BacktestArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct BacktestArgs {
    /// Range start: RFC 3339 or a date (YYYY-MM-DD, UTC midnight).
    #[arg(long)]
    pub(crate) from: String,
    /// Range end (exclusive): RFC 3339 or a date.
    #[arg(long)]
    pub(crate) to: String,
    /// Only these rules (repeatable).
    #[arg(long = "rule")]
    pub(crate) rules: Vec<String>,
    /// Parameter override name=value (for the selected rules that have it; repeatable).
    #[arg(long = "param")]
    pub(crate) params: Vec<String>,
    /// Rules directory (default: the shipped rules).
    #[arg(long, env = "CAREWATCH_RULES_DIR")]
    pub(crate) rules_dir: Option<PathBuf>,
    /// Data directory (read-only; safe beside a running server).
    #[arg(long, env = "CAREWATCH_DATA_DIR", default_value = "carewatch-data")]
    pub(crate) data_dir: PathBuf,
    /// Output on stdout: text, json, or csv (one line per alert).
    #[arg(long, default_value = "text")]
    pub(crate) format: String,
    /// Also write the alarm-burden report, a self-contained HTML page, to this file (alerts per
    /// patient-day per rule, the patients who produce most alerts, time of day, parameter sweep).
    #[arg(long)]
    pub(crate) report: Option<PathBuf>,
    /// The rule to sweep (default: hr_high_at_rest when backtested, else the first rule with a
    /// threshold).
    #[arg(long)]
    pub(crate) sweep_rule: Option<String>,
    /// A sweep axis, name=v1,v2,… (at most two; default: the threshold and for_minutes around
    /// their values). Giving one runs the sweep even without --report.
    #[arg(long = "sweep")]
    pub(crate) sweep: Vec<String>,
    /// Per-patient baselines: days of history before each day (as `[baselines] window_days`).
    #[arg(long, default_value_t = 14)]
    pub(crate) baseline_window_days: u32,
    /// Per-patient baselines: a rest minute has at most this many steps (`[baselines] max_steps`).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) baseline_max_steps: f64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// Files to replay.
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// Data directory.
    #[arg(long, env = "CAREWATCH_DATA_DIR", default_value = "carewatch-data")]
    pub(crate) data_dir: PathBuf,
    /// How to read times without an offset (UTC, +HH:MM, an IANA zone). Without it they are refused.
    #[arg(long)]
    pub(crate) assume_tz: Option<String>,
    /// CSV columns: field=column pairs, e.g. device_id=Id,time=Time,heart_rate=Value.
    #[arg(long, value_delimiter = ',')]
    pub(crate) csv_map: Vec<String>,
    /// Register unknown devices, each as its own patient (for data sets keyed by user id).
    #[arg(long)]
    pub(crate) register_devices: bool,
    /// Items per durable append.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) batch: usize,
    /// Replay into a running server through its HTTP API instead (its alert rules then see
    /// the data live, like a phone's late sync); zone-less times follow the server's --assume-tz.
    #[arg(long, env = "CAREWATCH_SERVER")]
    pub(crate) server: Option<String>,
    /// Admin token (with --server).
    #[arg(long, env = "CAREWATCH_TOKEN")]
    pub(crate) token: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SqlArgs {
    /// The query (read-only).
    pub(crate) query: String,
    /// A running server's HTTP base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "CAREWATCH_SERVER")]
    pub(crate) server: Option<String>,
    /// Analyst or admin token (with --server).
    #[arg(long, env = "CAREWATCH_TOKEN")]
    pub(crate) token: Option<String>,
    /// Data directory to read directly (read-only; safe beside a running server).
    #[arg(long, env = "CAREWATCH_DATA_DIR", default_value = "carewatch-data")]
    pub(crate) data_dir: PathBuf,
    /// Output: table, csv or json.
    #[arg(long, default_value = "table")]
    pub(crate) format: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SimulateArgs {
    /// Patients (one device each).
    #[arg(long, default_value_t = 10)]
    pub(crate) patients: usize,
    /// Simulated duration: seconds, or with a unit (90s, 15m, 2h, 1d).
    #[arg(long, default_value = "10m")]
    pub(crate) duration: String,
    /// Simulated start (RFC 3339). Default: now in real time; with --fast or --speed above 1,
    /// `now - duration`, so the simulated readings end now (readings dated more than
    /// --max-future-skew ahead are rejected as `future_time`).
    #[arg(long)]
    pub(crate) start: Option<String>,
    /// Simulated seconds per wall-clock second (1 = real time).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) speed: f64,
    /// Send as fast as the server acknowledges, ignoring --speed.
    #[arg(long)]
    pub(crate) fast: bool,
    /// Send over HTTP instead of MQTT.
    #[arg(long)]
    pub(crate) http: bool,
    /// MQTT listener (host:port).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub(crate) mqtt_addr: String,
    /// MQTT QoS (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) qos: u8,
    /// Samples (seconds) per message.
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: usize,
    /// The server's HTTP base URL (device registration, HTTP transport).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) http_url: String,
    /// Admin token (to register the simulated devices).
    #[arg(long, env = "CAREWATCH_ADMIN_TOKEN")]
    pub(crate) admin_token: String,
    /// Inject an episode: kind:patient@start_s+len_s (kinds: tachycardia, desaturation, fever, silence).
    #[arg(long = "episode")]
    pub(crate) episodes: Vec<String>,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Prefix of device and patient ids.
    #[arg(long, default_value = "sim-")]
    pub(crate) prefix: String,
}

pub(crate) fn parse_duration(s: &str) -> Result<i64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("duration {s:?}: use seconds or 90s, 15m, 2h, 1d"))?;
    Ok(n * mult)
}
