//! `carewatch simulate`: a simulated device fleet over MQTT or HTTP, and what it sent.

use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::cli::SimulateArgs;
use crate::parse_duration;

/// Runs the fleet and prints what it sent and the episodes it injected.
pub(crate) fn run(a: SimulateArgs) -> Result<ExitCode> {
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
        let to = chrono::DateTime::from_timestamp_millis(start_ms + (e.start_s + e.len_s) * 1000)
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
