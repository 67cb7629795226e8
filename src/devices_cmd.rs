//! `carewatch devices import|list`: the fleet, offline on a data directory (a running server
//! on it picks the change up within a second) or against a running server (`--server URL
//! --token ADMIN`), like `carewatch token`.
//!
//! `import` enrols a CSV or NDJSON file in batches and writes one result per record (NDJSON:
//! line, device id, status, the secret of a newly enrolled device, or the error) to stdout or
//! `--out`; re-running it changes nothing and says `unchanged`. It exits 1 if any record was
//! refused (the others are enrolled all the same), 2 on an error (nothing of the failing batch
//! was enrolled; a malformed file is refused before anything is).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::Value;

use carewatch_ingest::{device_file, fleet};
use carewatch_store::registry::{DeviceFilter, Registry};

use crate::token_cmd::Target;

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Enrol devices from a CSV (header: device_id,patient_id[,valid_from,valid_to,reassign])
    /// or NDJSON file; prints one result per record, with each new device's secret (once).
    Import {
        /// The file (.csv, .ndjson or .jsonl).
        file: PathBuf,
        /// Records per request (at most 10000).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Write the results (they hold secrets) to this file (created 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// List devices (NDJSON), with the same filters as GET /v1/devices.
    List {
        /// Only devices assigned to this patient now.
        #[arg(long)]
        patient: Option<String>,
        /// Only devices whose patient is in this care team.
        #[arg(long)]
        care_team: Option<String>,
        /// Only devices never seen.
        #[arg(long)]
        never_seen: bool,
        /// Only revoked devices.
        #[arg(long)]
        revoked: bool,
        #[command(flatten)]
        target: Target,
    },
}

/// Runs a devices command.
pub fn run(cmd: DevicesCommand) -> Result<ExitCode> {
    match cmd {
        DevicesCommand::Import {
            file,
            batch,
            out,
            target,
        } => import(&file, batch, out, &target),
        DevicesCommand::List {
            patient,
            care_team,
            never_seen,
            revoked,
            target,
        } => {
            let f = DeviceFilter {
                limit: fleet::MAX_PAGE,
                patient,
                care_team,
                never_seen: never_seen.then_some(true),
                revoked: revoked.then_some(true),
                ..Default::default()
            };
            list(f, &target)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn import(file: &PathBuf, batch: usize, out: Option<PathBuf>, target: &Target) -> Result<ExitCode> {
    if !(1..=fleet::MAX_ITEMS).contains(&batch) {
        bail!("--batch must be 1 to {}", fleet::MAX_ITEMS);
    }
    let name = file.to_string_lossy();
    let csv = device_file::is_csv(&name).map_err(anyhow::Error::msg)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {name}"))?;
    let records = device_file::read(&bytes, csv).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let mut sink: Box<dyn Write> = match &out {
        Some(p) => Box::new(create_private(p)?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut send: Box<dyn FnMut(Vec<Value>) -> Result<Value>> = match &target.server {
        Some(url) => Box::new(remote_sender(url, target)?),
        None => {
            let (reg, admin) = Registry::open(&target.data_dir)?;
            if let Some(a) = admin {
                eprintln!("admin token: {a}");
            }
            Box::new(move |chunk: Vec<Value>| {
                let items = chunk.into_iter().map(fleet::item).collect();
                Ok(fleet::enrol(&reg, items)?.1)
            })
        }
    };
    let mut totals = [0u64; 4];
    const KINDS: [&str; 4] = ["enrolled", "reassigned", "unchanged", "rejected"];
    for (n, chunk) in records.chunks(batch).enumerate() {
        let answer = send(chunk.to_vec())?;
        for (k, t) in KINDS.iter().zip(totals.iter_mut()) {
            *t += answer[*k].as_u64().unwrap_or(0);
        }
        for mut r in answer["results"].as_array().cloned().unwrap_or_default() {
            let index = r["index"].as_u64().unwrap_or(0) as usize + n * batch;
            if let Some(o) = r.as_object_mut() {
                o.remove("index");
                o.insert("record".into(), (index + 1).into());
            }
            writeln!(sink, "{r}")?;
        }
    }
    sink.flush()?;
    let summary: Vec<String> = KINDS
        .iter()
        .zip(totals)
        .map(|(k, t)| format!("{k} {t}"))
        .collect();
    eprintln!("{}", summary.join(", "));
    Ok(if totals[3] > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn create_private(p: &PathBuf) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .with_context(|| format!("creating {}", p.display()))
}

/// Posts each chunk as a JSON array; a 4xx other than 422 (all refused) or any 5xx stops.
fn remote_sender(url: &str, target: &Target) -> Result<impl FnMut(Vec<Value>) -> Result<Value>> {
    let Some(token) = target.token.clone() else {
        bail!("--server needs --token (an admin token, or CAREWATCH_TOKEN)");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let endpoint = format!("{}/v1/devices", url.trim_end_matches('/'));
    Ok(move |chunk: Vec<Value>| {
        rt.block_on(async {
            let resp = client
                .post(&endpoint)
                .bearer_auth(&token)
                .json(&chunk)
                .send()
                .await?;
            let status = resp.status();
            let text = resp.text().await?;
            if !status.is_success() && status != reqwest::StatusCode::UNPROCESSABLE_ENTITY {
                bail!("server answered {status}: {text}");
            }
            Ok(serde_json::from_str(&text)?)
        })
    })
}

fn list(mut f: DeviceFilter, target: &Target) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match &target.server {
        None => {
            let reg = Registry::open_read_only(&target.data_dir)?;
            loop {
                let (page, next) = reg.list_devices(&f);
                for d in &page {
                    writeln!(out, "{}", fleet::device_json(d))?;
                }
                let Some(n) = next else { return Ok(()) };
                f.after = Some(n);
            }
        }
        Some(url) => {
            let mut query = vec![("limit".to_owned(), f.limit.to_string())];
            let opt = [("patient", &f.patient), ("care_team", &f.care_team)];
            for (k, v) in opt {
                if let Some(v) = v {
                    query.push((k.into(), v.clone()));
                }
            }
            for (k, v) in [("never_seen", f.never_seen), ("revoked", f.revoked)] {
                if let Some(v) = v {
                    query.push((k.into(), v.to_string()));
                }
            }
            let mut after: Option<String> = None;
            loop {
                let mut q = query.clone();
                if let Some(a) = &after {
                    q.push(("after".into(), a.clone()));
                }
                let v = get_json(url, target, "/v1/devices", &q)?;
                for d in v["devices"].as_array().into_iter().flatten() {
                    writeln!(out, "{d}")?;
                }
                match v["next"].as_str() {
                    Some(n) => after = Some(n.to_owned()),
                    None => return Ok(()),
                }
            }
        }
    }
}

fn get_json(url: &str, target: &Target, path: &str, q: &[(String, String)]) -> Result<Value> {
    let Some(token) = &target.token else {
        bail!("--server needs --token (an admin token, or CAREWATCH_TOKEN)");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", url.trim_end_matches('/')))
            .query(q)
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
