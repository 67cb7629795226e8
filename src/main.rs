//! `carewatch`: the binary. CLI parsing and wiring only; the work lives in the crates.

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
    /// Device mapping templates (MedTech / iomt-fhir compatible).
    #[command(subcommand)]
    Template(TemplateCommand),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Template(TemplateCommand::Check { device_mapping, payload, fhir_mapping, fhir, assume_tz, patient }) => {
            template_check(&device_mapping, &payload, fhir_mapping.as_deref(), fhir, assume_tz.as_deref(), patient)
        }
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
    let templates = Templates::load(&dm, fm.as_deref()).with_context(|| format!("loading {}", device_mapping.display()))?;
    let tz = match assume_tz {
        Some(z) => ZonePolicy::parse(z).map_err(anyhow::Error::msg)?,
        None => ZonePolicy::Reject,
    };
    let bytes = std::fs::read(payload).with_context(|| format!("reading {}", payload.display()))?;
    let ctx = Context { tz, templates: Some(&templates), ..Context::default() };
    let mut out = normalise(&bytes, &ctx);
    for r in &mut out.readings {
        if r.patient_id.is_none() {
            r.patient_id.clone_from(&patient);
        }
    }
    if fhir {
        let bundle = carewatch_fhir::bundle_json(&out.readings, "collection")
            .map_err(|e| anyhow::anyhow!("{e}{}", if patient.is_none() { " (pass --patient)" } else { "" }))?;
        println!("{}", serde_json::to_string_pretty(&bundle)?);
    } else {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            let (ms, _) = templates.measurements(&v, tz);
            println!("measurements ({}):", ms.len());
            for m in &ms {
                let props: Vec<String> = m.properties.iter().map(|(k, v)| format!("{k}={v}")).collect();
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
    Ok(if out.rejections.is_empty() && !out.readings.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
