//! `carewatch fhir status`: how far behind each FHIR destination of a data directory is and
//! why — read from the destination's persisted state and a read-only count of the stored
//! readings after its position (safe beside a running server).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum FhirCommand {
    /// Each destination: position, readings and alert transitions not yet delivered, counts,
    /// last error class.
    Status {
        /// Data directory (read-only).
        #[arg(long, env = "CAREWATCH_DATA_DIR", default_value = "carewatch-data")]
        data_dir: PathBuf,
        /// text or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
}

fn when(us: Option<i64>) -> String {
    us.and_then(chrono::DateTime::from_timestamp_micros)
        .map_or("never".to_owned(), |t| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
}

pub(crate) async fn engine(data_dir: &std::path::Path) -> Result<carewatch_query::QueryEngine> {
    let mut c = carewatch_store::Config::new(data_dir);
    c.read_only = true;
    let store = carewatch_store::Store::open(c).await?;
    let registry = carewatch_store::registry::Registry::open_read_only(data_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    carewatch_query::QueryEngine::new(
        store,
        std::sync::Arc::new(registry),
        carewatch_query::QueryLimits::default(),
        std::sync::Arc::new(carewatch_query::audit::AuditLog::open(data_dir, true)?),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}

pub(crate) fn run(c: FhirCommand) -> Result<ExitCode> {
    let FhirCommand::Status { data_dir, format } = c;
    if format != "text" && format != "json" {
        anyhow::bail!("--format must be text or json");
    }
    let states = carewatch_deliver::state::load_all(&data_dir)?;
    if states.is_empty() {
        if format == "json" {
            println!("[]");
        } else {
            println!("no FHIR destination has run on {}", data_dir.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let q = rt.block_on(engine(&data_dir))?;
    let now = chrono::Utc::now().timestamp_micros();
    // Alert transitions (read-only: the history file as it is now).
    let history =
        carewatch_alert::history::History::open(&data_dir, true).map_or(0, |h| h.len() as u64);
    let mut out = Vec::new();
    for (_, s) in states {
        let (behind, oldest) = rt
            .block_on(carewatch_deliver::pending(&q, s.position_us))
            .map_err(anyhow::Error::msg)?;
        let lag_secs = oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1e6);
        let alerts_behind = history.saturating_sub(s.alerts_seq);
        if format == "json" {
            out.push(json!({
                "url": s.url, "position": when(Some(s.position_us)), "behind": behind,
                "oldest_pending": oldest.map(|t| when(Some(t))), "lag_seconds": lag_secs,
                "delivered": s.delivered, "failed": s.failed, "last_error": s.last_error,
                "last_error_at": s.last_error_us.map(|t| when(Some(t))),
                "last_success_at": s.last_success_us.map(|t| when(Some(t))),
                "alerts_behind": alerts_behind, "alerts_delivered": s.alerts_delivered,
                "alerts_failed": s.alerts_failed,
            }));
            continue;
        }
        println!("destination {}", s.url);
        println!(
            "  position:  {} (everything received up to it is delivered)",
            when(Some(s.position_us))
        );
        match oldest {
            Some(t) => println!(
                "  behind:    {behind} readings, the oldest received {} ({lag_secs:.0} s ago)",
                when(Some(t))
            ),
            None => println!("  behind:    nothing (up to date)"),
        }
        println!(
            "  delivered: {} Observations; refused: {} (dead letters, reason destination_rejected)",
            s.delivered, s.failed
        );
        println!(
            "  alerts:    {} Communications delivered, {} refused; {alerts_behind} transitions behind",
            s.alerts_delivered, s.alerts_failed
        );
        println!("  last success: {}", when(s.last_success_us));
        match &s.last_error {
            Some(e) => println!(
                "  last error: {e} at {} (retrying with back-off)",
                when(s.last_error_us)
            ),
            None => println!("  last error: none since the last success"),
        }
    }
    if format == "json" {
        println!("{}", serde_json::Value::Array(out));
    }
    Ok(ExitCode::SUCCESS)
}
