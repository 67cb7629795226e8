//! `carewatch trace --device D [--since T] [--until T]`: each message of a device and what
//! became of it (received → normalised or rejected → stored → delivered, with the FHIR
//! server's answer) — offline on a data directory (read-only, safe beside a running server) or
//! from a running server's `GET /v1/trace` (`--server URL --token T`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::Value;

use crate::token_cmd::Target;

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The device.
    #[arg(long)]
    device: String,
    /// Messages received at or after this RFC 3339 time (default: 24 hours before --until).
    #[arg(long)]
    since: Option<String>,
    /// Messages received before this RFC 3339 time (default: now).
    #[arg(long)]
    until: Option<String>,
    /// text or json.
    #[arg(long, default_value = "text")]
    format: String,
    #[command(flatten)]
    target: Target,
}

fn remote(a: &TraceArgs, url: &str) -> Result<Value> {
    let Some(token) = &a.target.token else {
        bail!("--server needs --token (an admin or care-manager token, or CAREWATCH_TOKEN)");
    };
    let mut u = reqwest::Url::parse(&format!("{}/v1/trace", url.trim_end_matches('/')))?;
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("device", &a.device);
        for (k, v) in [("since", &a.since), ("until", &a.until)] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .get(u)
            .bearer_auth(token)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("server answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    })
}

fn local(a: &TraceArgs, dir: &Path) -> Result<Value> {
    let (since_us, until_us) =
        carewatch_deliver::http::window(a.since.as_deref(), a.until.as_deref())
            .map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let q = crate::fhir_cmd::engine(dir).await?;
        let t = carewatch_deliver::trace::TraceQuery {
            device: a.device.clone(),
            since_us,
            until_us,
        };
        carewatch_deliver::trace::trace(&q, dir, &t)
            .await
            .map_err(anyhow::Error::msg)
    })
}

fn text(v: &Value) {
    let s = |x: &Value| x.as_str().unwrap_or_default().to_owned();
    println!(
        "device {} from {} to {}",
        s(&v["device"]),
        s(&v["since"]),
        s(&v["until"])
    );
    let msgs = v["messages"].as_array().cloned().unwrap_or_default();
    if msgs.is_empty() {
        println!("  no messages");
    }
    for m in msgs {
        println!(
            "message received {} over {}: {}",
            s(&m["received"]),
            s(&m["source"]),
            s(&m["outcome"])
        );
        for st in m["steps"].as_array().cloned().unwrap_or_default() {
            let line = match st["step"].as_str().unwrap_or_default() {
                "received" => continue,
                "normalised" => format!("normalised: {} reading(s)", st["readings"]),
                "rejected" => format!("rejected: {} — {}", s(&st["reason"]), s(&st["message"])),
                "stored" => {
                    let n = st["observations"].as_array().map_or(0, Vec::len);
                    match st["after"].as_str() {
                        Some(why) => {
                            format!("stored {} at {n} Observation(s), after {why}", s(&st["at"]))
                        }
                        None => format!("stored: {n} Observation(s)"),
                    }
                }
                "delivered" => format!(
                    "delivered {} to {}: {}",
                    s(&st["observation"]),
                    s(&st["destination"]),
                    st["response"]["status"].as_str().map_or_else(
                        || s(&st["note"]),
                        |r| {
                            format!(
                                "{r} {}",
                                st["response"]["location"].as_str().unwrap_or_default()
                            )
                        }
                    )
                ),
                "refused" => format!(
                    "refused {} by {}: HTTP {}",
                    s(&st["observation"]),
                    s(&st["destination"]),
                    st["response"]["status"]
                ),
                "pending" => format!(
                    "not yet delivered {} to {}",
                    s(&st["observation"]),
                    s(&st["destination"])
                ),
                other => other.to_owned(),
            };
            println!("  {}", line.trim_end());
        }
    }
    if v["truncated"] == true {
        println!("(more messages: narrow the window)");
    }
}

pub(crate) fn run(a: TraceArgs) -> Result<ExitCode> {
    if a.format != "text" && a.format != "json" {
        bail!("--format must be text or json");
    }
    let v = match &a.target.server {
        Some(url) => remote(&a, url)?,
        None => local(&a, &a.target.data_dir)?,
    };
    if a.format == "json" {
        println!("{v}");
    } else {
        text(&v);
    }
    Ok(ExitCode::SUCCESS)
}
