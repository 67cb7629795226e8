//! `carewatch`: the binary. CLI parsing and wiring only; the work lives in the crates.

mod config;
mod data_cmd;
mod devices_cmd;
mod fhir_cmd;
mod fhir_feed;
mod serve;
mod token_cmd;
mod trace_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use carewatch_transform::template::Templates;
use carewatch_transform::time::{ZonePolicy, format_rfc3339};
use carewatch_transform::{Context, normalise};

/// Remote patient monitoring: device readings to FHIR R4 Observations, Parquet and SQL alerts.
#[derive(Debug, Parser)]
#[command(name = "carewatch", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
enum TemplateCommand {
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
struct ServeArgs {
    /// TOML config file (see deploy/carewatch.example.toml).
    #[arg(long, env = "CAREWATCH_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (WAL, registry, Parquet tables).
    #[arg(long, env = "CAREWATCH_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, env = "CAREWATCH_HTTP_ADDR")]
    http_addr: Option<String>,
    /// Embedded MQTT listen address.
    #[arg(long, env = "CAREWATCH_MQTT_ADDR")]
    mqtt_addr: Option<String>,
    /// External broker (mqtt://host:port or mqtts://host:port) instead of the embedded listener.
    #[arg(long, env = "CAREWATCH_MQTT_URL")]
    mqtt_url: Option<String>,
    /// Postgres wire listen address.
    #[arg(long, env = "CAREWATCH_PG_ADDR")]
    pg_addr: Option<String>,
    /// How to read device times without an offset (UTC, +HH:MM, IANA zone). Default: reject.
    #[arg(long, env = "CAREWATCH_ASSUME_TZ")]
    assume_tz: Option<String>,
    /// Readings dated more than this after their arrival are rejected as `future_time`
    /// (seconds, or 90s, 5m, 1h). Default 5m.
    #[arg(long, env = "CAREWATCH_MAX_FUTURE_SKEW")]
    max_future_skew: Option<String>,
    /// PEM certificate chain: serve HTTP and MQTT over TLS.
    #[arg(long, env = "CAREWATCH_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "CAREWATCH_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Alert rule files (*.toml). Default: rules/ beside --config, else the shipped rules.
    #[arg(long, env = "CAREWATCH_RULES_DIR")]
    rules_dir: Option<PathBuf>,
    /// Receiver for every alert transition (JSON POST).
    #[arg(long, env = "CAREWATCH_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// OpenID Connect issuer whose JWTs are accepted on every API and whose sign-in the
    /// dashboard uses (config `[auth.oidc] issuer`).
    #[arg(long, env = "CAREWATCH_OIDC_ISSUER")]
    oidc_issuer: Option<String>,
    /// The audience (`aud`) tokens for carewatch carry (config `[auth.oidc] audience`).
    #[arg(long, env = "CAREWATCH_OIDC_AUDIENCE")]
    oidc_audience: Option<String>,
    /// Deliver every stored reading to this FHIR R4 server as Observations (conditional
    /// update on a stable identifier; config `[fhir.destination] url`, with auth and batching).
    #[arg(long, env = "CAREWATCH_FHIR_DESTINATION")]
    fhir_destination: Option<String>,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
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
struct BacktestArgs {
    /// Range start: RFC 3339 or a date (YYYY-MM-DD, UTC midnight).
    #[arg(long)]
    from: String,
    /// Range end (exclusive): RFC 3339 or a date.
    #[arg(long)]
    to: String,
    /// Only these rules (repeatable).
    #[arg(long = "rule")]
    rules: Vec<String>,
    /// Parameter override name=value (for the selected rules that have it; repeatable).
    #[arg(long = "param")]
    params: Vec<String>,
    /// Rules directory (default: the shipped rules).
    #[arg(long, env = "CAREWATCH_RULES_DIR")]
    rules_dir: Option<PathBuf>,
    /// Data directory (read-only; safe beside a running server).
    #[arg(long, env = "CAREWATCH_DATA_DIR", default_value = "carewatch-data")]
    data_dir: PathBuf,
    /// Output on stdout: text, json, or csv (one line per alert).
    #[arg(long, default_value = "text")]
    format: String,
    /// Also write the alarm-burden report, a self-contained HTML page, to this file (alerts per
    /// patient-day per rule, the patients who produce most alerts, time of day, parameter sweep).
    #[arg(long)]
    report: Option<PathBuf>,
    /// The rule to sweep (default: hr_high_at_rest when backtested, else the first rule with a
    /// threshold).
    #[arg(long)]
    sweep_rule: Option<String>,
    /// A sweep axis, name=v1,v2,… (at most two; default: the threshold and for_minutes around
    /// their values). Giving one runs the sweep even without --report.
    #[arg(long = "sweep")]
    sweep: Vec<String>,
    /// Per-patient baselines: days of history before each day (as `[baselines] window_days`).
    #[arg(long, default_value_t = 14)]
    baseline_window_days: u32,
    /// Per-patient baselines: a rest minute has at most this many steps (`[baselines] max_steps`).
    #[arg(long, default_value_t = 0.0)]
    baseline_max_steps: f64,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// Files to replay.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Data directory.
    #[arg(long, env = "CAREWATCH_DATA_DIR", default_value = "carewatch-data")]
    data_dir: PathBuf,
    /// How to read times without an offset (UTC, +HH:MM, an IANA zone). Without it they are refused.
    #[arg(long)]
    assume_tz: Option<String>,
    /// CSV columns: field=column pairs, e.g. device_id=Id,time=Time,heart_rate=Value.
    #[arg(long, value_delimiter = ',')]
    csv_map: Vec<String>,
    /// Register unknown devices, each as its own patient (for data sets keyed by user id).
    #[arg(long)]
    register_devices: bool,
    /// Items per durable append.
    #[arg(long, default_value_t = 20_000)]
    batch: usize,
    /// Replay into a running server through its HTTP API instead (its alert rules then see
    /// the data live, like a phone's late sync); zone-less times follow the server's --assume-tz.
    #[arg(long, env = "CAREWATCH_SERVER")]
    server: Option<String>,
    /// Admin token (with --server).
    #[arg(long, env = "CAREWATCH_TOKEN")]
    token: Option<String>,
}

#[derive(Debug, clap::Args)]
struct SqlArgs {
    /// The query (read-only).
    query: String,
    /// A running server's HTTP base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "CAREWATCH_SERVER")]
    server: Option<String>,
    /// Analyst or admin token (with --server).
    #[arg(long, env = "CAREWATCH_TOKEN")]
    token: Option<String>,
    /// Data directory to read directly (read-only; safe beside a running server).
    #[arg(long, env = "CAREWATCH_DATA_DIR", default_value = "carewatch-data")]
    data_dir: PathBuf,
    /// Output: table, csv or json.
    #[arg(long, default_value = "table")]
    format: String,
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// Patients (one device each).
    #[arg(long, default_value_t = 10)]
    patients: usize,
    /// Simulated duration: seconds, or with a unit (90s, 15m, 2h, 1d).
    #[arg(long, default_value = "10m")]
    duration: String,
    /// Simulated start (RFC 3339). Default: now in real time; with --fast or --speed above 1,
    /// `now - duration`, so the simulated readings end now (readings dated more than
    /// --max-future-skew ahead are rejected as `future_time`).
    #[arg(long)]
    start: Option<String>,
    /// Simulated seconds per wall-clock second (1 = real time).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Send as fast as the server acknowledges, ignoring --speed.
    #[arg(long)]
    fast: bool,
    /// Send over HTTP instead of MQTT.
    #[arg(long)]
    http: bool,
    /// MQTT listener (host:port).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_addr: String,
    /// MQTT QoS (0 or 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Samples (seconds) per message.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// The server's HTTP base URL (device registration, HTTP transport).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http_url: String,
    /// Admin token (to register the simulated devices).
    #[arg(long, env = "CAREWATCH_ADMIN_TOKEN")]
    admin_token: String,
    /// Inject an episode: kind:patient@start_s+len_s (kinds: tachycardia, desaturation, fever, silence).
    #[arg(long = "episode")]
    episodes: Vec<String>,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Prefix of device and patient ids.
    #[arg(long, default_value = "sim-")]
    prefix: String,
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

fn main() -> ExitCode {
    // Closed by default: everything carewatch creates (WAL, Parquet, registry, audit and alert
    // history) is readable by its own user only. Set before any thread starts.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("CAREWATCH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(a) => {
            let file = match &a.config {
                Some(p) => {
                    config::parse_file(&read(p)?).with_context(|| format!("in {}", p.display()))?
                }
                None => config::FileConfig::default(),
            };
            let o = config::Overrides {
                data_dir: a.data_dir,
                http_addr: a.http_addr,
                mqtt_addr: a.mqtt_addr,
                mqtt_url: a.mqtt_url,
                pg_addr: a.pg_addr,
                assume_tz: a.assume_tz,
                max_future_skew: a.max_future_skew,
                tls_cert: a.tls_cert,
                tls_key: a.tls_key,
                rules_dir: a.rules_dir,
                webhook_url: a.webhook_url,
                oidc_issuer: a.oidc_issuer,
                oidc_audience: a.oidc_audience,
                fhir_destination: a.fhir_destination,
                config_dir: a
                    .config
                    .as_ref()
                    .and_then(|p| p.parent().map(std::path::Path::to_path_buf)),
            };
            let c = config::resolve(o, file)?;
            init_logging(c.log_json);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve::run(c))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sql(a) => data_cmd::sql(a),
        Command::Rules(RulesCommand::Check {
            rules_dir,
            data_dir,
        }) => data_cmd::rules_check(rules_dir, data_dir),
        Command::Rules(RulesCommand::Backtest(a)) => data_cmd::backtest(a),
        Command::Replay(a) => data_cmd::replay(a),
        Command::Simulate(a) => {
            use carewatch_ingest::simulate::{Episode, SimConfig, Target, patient_id, run};
            let duration_s = parse_duration(&a.duration)?;
            let start_ms = match &a.start {
                Some(t) => chrono::DateTime::parse_from_rfc3339(t)
                    .with_context(|| format!("--start {t:?} is not RFC 3339"))?
                    .timestamp_millis(),
                None if a.fast || a.speed > 1.0 => {
                    chrono::Utc::now().timestamp_millis() - duration_s * 1000
                }
                None => chrono::Utc::now().timestamp_millis(),
            };
            let episodes = a
                .episodes
                .iter()
                .map(|e| Episode::parse(e))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let cfg = SimConfig {
                patients: a.patients,
                duration_s,
                start_ms,
                speed: (!a.fast).then_some(a.speed),
                batch: a.batch,
                episodes: episodes.clone(),
                seed: a.seed,
                prefix: a.prefix.clone(),
                target: if a.http {
                    Target::Http
                } else {
                    Target::Mqtt {
                        addr: a.mqtt_addr.clone(),
                        qos: a.qos,
                    }
                },
                http_url: a.http_url.trim_end_matches('/').to_owned(),
                admin_token: a.admin_token,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let t = std::time::Instant::now();
            let r = rt.block_on(run(cfg)).map_err(anyhow::Error::msg)?;
            println!(
                "sent {} readings in {} messages; {} acknowledged; {:.1} s",
                r.readings,
                r.messages,
                r.acknowledged,
                t.elapsed().as_secs_f64()
            );
            for (k, v) in &r.per_vital {
                println!("vital {k} {v}");
            }
            for e in &episodes {
                let from = chrono::DateTime::from_timestamp_millis(start_ms + e.start_s * 1000)
                    .unwrap_or_default();
                let to = chrono::DateTime::from_timestamp_millis(
                    start_ms + (e.start_s + e.len_s) * 1000,
                )
                .unwrap_or_default();
                println!(
                    "episode {} patient={} from={} to={}",
                    e.kind.as_str(),
                    patient_id(&a.prefix, e.patient),
                    from.to_rfc3339(),
                    to.to_rfc3339()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(t) => token_cmd::run(t),
        Command::Devices(d) => devices_cmd::run(d),
        Command::Fhir(f) => fhir_cmd::run(f),
        Command::Trace(t) => trace_cmd::run(t),
        Command::Template(TemplateCommand::Check {
            device_mapping,
            payload,
            fhir_mapping,
            fhir,
            assume_tz,
            patient,
        }) => template_check(
            &device_mapping,
            &payload,
            fhir_mapping.as_deref(),
            fhir,
            assume_tz.as_deref(),
            patient,
        ),
    }
}

fn read(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn template_check(
    device_mapping: &std::path::Path,
    payload: &std::path::Path,
    fhir_mapping: Option<&std::path::Path>,
    fhir: bool,
    assume_tz: Option<&str>,
    patient: Option<String>,
) -> Result<ExitCode> {
    let dm = read(device_mapping)?;
    let fm = fhir_mapping.map(read).transpose()?;
    let templates = Templates::load(&dm, fm.as_deref())
        .with_context(|| format!("loading {}", device_mapping.display()))?;
    let tz = match assume_tz {
        Some(z) => ZonePolicy::parse(z).map_err(anyhow::Error::msg)?,
        None => ZonePolicy::Reject,
    };
    let bytes = std::fs::read(payload).with_context(|| format!("reading {}", payload.display()))?;
    let ctx = Context {
        tz,
        templates: Some(&templates),
        ..Context::default()
    };
    let mut out = normalise(&bytes, &ctx);
    for r in &mut out.readings {
        if r.patient_id.is_none() {
            r.patient_id.clone_from(&patient);
        }
    }
    if fhir {
        let bundle = carewatch_fhir::bundle_json(&out.readings, "collection").map_err(|e| {
            anyhow::anyhow!(
                "{e}{}",
                if patient.is_none() {
                    " (pass --patient)"
                } else {
                    ""
                }
            )
        })?;
        println!("{}", serde_json::to_string_pretty(&bundle)?);
    } else {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            let (ms, _) = templates.measurements(&v, tz);
            println!("measurements ({}):", ms.len());
            for m in &ms {
                let props: Vec<String> = m
                    .properties
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "  {}  device={}  patient={}  time={}  {}",
                    m.type_name,
                    m.device_id,
                    m.patient_id.as_deref().unwrap_or("-"),
                    format_rfc3339(m.time.utc_us, m.time.offset_min),
                    props.join(" ")
                );
            }
        }
        println!("readings ({}):", out.readings.len());
        for r in &out.readings {
            println!(
                "  {:<8} {:<28} {:>10} {:<8} device={} patient={} effective={} id={}",
                r.code(),
                r.vital.display.chars().take(28).collect::<String>(),
                r.value,
                r.unit(),
                r.device_id,
                r.patient_id.as_deref().unwrap_or("-"),
                format_rfc3339(r.effective_us, r.offset_min),
                r.observation_id()
            );
        }
    }
    for n in &out.notes {
        eprintln!("note: {}", n.message);
    }
    for r in &out.rejections {
        eprintln!("rejected: {r}");
    }
    Ok(if out.rejections.is_empty() && !out.readings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
