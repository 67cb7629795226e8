//! `carewatch`: the binary. CLI parsing and wiring only; the work lives in the crates.

mod cli;
mod config;
mod data_cmd;
mod devices_cmd;
mod fhir_cmd;
mod fhir_feed;
mod serve;
mod simulate_cmd;
mod token_cmd;
mod trace_cmd;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;

use carewatch_transform::template::Templates;
use carewatch_transform::time::{ZonePolicy, format_rfc3339};
use carewatch_transform::{Context, normalise};

/// jemalloc, not glibc's malloc: at 100,000 patients glibc's allocator took about a fifth of the
/// server's CPU (`_int_malloc`, `malloc_consolidate`, `unlink_chunk`: a `perf` profile in
/// BENCHMARKS.md) and its arenas kept what persists and queries freed; under jemalloc (same
/// binary, `LD_PRELOAD`) the server kept up with more readings at a lower resident set.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub(crate) use cli::{BacktestArgs, ReplayArgs, SqlArgs, parse_duration};
use cli::{Cli, Command, RulesCommand, TemplateCommand};

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
    let spec = std::env::var("CAREWATCH_LOG").unwrap_or_else(|_| "info".into());
    let mut filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    // The Delta Lake kernel reports every snapshot and scan at info (with table paths); at
    // warn unless CAREWATCH_LOG names it.
    for noisy in ["buoyant_kernel", "delta_kernel", "deltalake_core"] {
        if !spec.contains(noisy)
            && let Ok(d) = format!("{noisy}=warn").parse()
        {
            filter = filter.add_directive(d);
        }
    }
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
        Command::Serve(a) => serve(a),
        Command::Sql(a) => data_cmd::sql(a),
        Command::Rules(RulesCommand::Check {
            rules_dir,
            data_dir,
        }) => data_cmd::rules_check(rules_dir, data_dir),
        Command::Rules(RulesCommand::Backtest(a)) => data_cmd::backtest(a),
        Command::Replay(a) => data_cmd::replay(a),
        Command::Simulate(a) => simulate_cmd::run(a),
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

/// `carewatch serve`: the configuration (file, then flags), logging, the runtime.
fn serve(a: cli::ServeArgs) -> Result<ExitCode> {
    let file = match &a.config {
        Some(p) => config::parse_file(&read(p)?).with_context(|| format!("in {}", p.display()))?,
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
        postgres_url: a.postgres_url,
        object_store_url: a.object_store_url,
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
    let res = rt.block_on(serve::run(c));
    if res.is_err() {
        // Report the error even if some blocking task does not end (it is cut off after 10 s).
        rt.shutdown_timeout(std::time::Duration::from_secs(10));
    }
    res?;
    Ok(ExitCode::SUCCESS)
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
