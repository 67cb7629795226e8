//! `carewatch token create|list|revoke`: credentials with a lifecycle, offline on a data
//! directory (a running server on it picks the change up within a second) or against a
//! running server (`--server URL --token ADMIN`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use carewatch_store::registry::{CredentialInfo, Registry, Role};

/// Where the registry is: a data directory, or a running server.
#[derive(Debug, Args)]
pub struct Target {
    /// Data directory (offline).
    #[arg(long, env = "CAREWATCH_DATA_DIR", default_value = "carewatch-data")]
    pub(crate) data_dir: PathBuf,
    /// A running server's HTTP address instead, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub(crate) server: Option<String>,
    /// Admin token (with --server).
    #[arg(long, env = "CAREWATCH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a credential and print it once (the secret is never shown again).
    Create {
        /// admin, analyst or care_manager (device credentials come from POST /v1/devices).
        #[arg(long)]
        role: String,
        /// The care team, for a care_manager.
        #[arg(long)]
        subject: Option<String>,
        /// Lifetime: seconds, or 90s, 15m, 12h, 30d. Default: no expiry.
        #[arg(long)]
        expires_in: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List credentials: id, role, subject, created, expires, last used, revoked (no secrets).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a credential by id; every wire refuses it from then on.
    Revoke {
        /// The credential id (from `token list`).
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

fn iso(us: Option<i64>) -> String {
    us.and_then(chrono::DateTime::from_timestamp_micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

fn print_table(rows: &[[String; 7]]) {
    println!("id\trole\tsubject\tcreated\texpires\tlast_used\trevoked");
    for r in rows {
        println!("{}", r.join("\t"));
    }
}

fn row(t: &CredentialInfo) -> [String; 7] {
    [
        t.id.clone(),
        t.role.as_str().into(),
        t.subject.clone().unwrap_or_else(|| "-".into()),
        iso(Some(t.created_us)),
        iso(t.expires_us),
        iso(t.last_used_us),
        iso(t.revoked_us),
    ]
}

fn json_row(v: &serde_json::Value) -> [String; 7] {
    let f = |k: &str| v[k].as_str().map_or_else(|| "-".into(), str::to_owned);
    [
        f("id"),
        f("role"),
        f("subject"),
        f("created"),
        f("expires"),
        f("last_used"),
        f("revoked"),
    ]
}

/// Runs a token command.
pub fn run(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            role,
            subject,
            expires_in,
            target,
        } => {
            let role = Role::parse(&role).ok_or_else(|| {
                anyhow::anyhow!("unknown role {role:?}: admin, analyst, care_manager")
            })?;
            if role == Role::Device {
                bail!("device credentials are created with POST /v1/devices (they bind a patient)");
            }
            let secs = expires_in
                .as_deref()
                .map(crate::parse_duration)
                .transpose()?;
            if secs.is_some_and(|s| s <= 0) {
                bail!("--expires-in must be positive");
            }
            match &target.server {
                Some(url) => create_remote(url, &target, role, subject, secs),
                None => create_local(&target, role, subject, secs),
            }
        }
        TokenCommand::List { target } => {
            match &target.server {
                Some(url) => {
                    let v = remote(url, &target, reqwest::Method::GET, "/v1/tokens", None)?;
                    let rows: Vec<_> = v["tokens"]
                        .as_array()
                        .map(|a| a.iter().map(json_row).collect())
                        .unwrap_or_default();
                    print_table(&rows);
                }
                None => {
                    let reg = Registry::open_read_only(&target.data_dir)?;
                    print_table(&reg.tokens().iter().map(row).collect::<Vec<_>>());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id, target } => {
            let done = match &target.server {
                Some(url) => {
                    let path = format!("/v1/tokens/{id}");
                    remote(url, &target, reqwest::Method::DELETE, &path, None).map(|_| true)?
                }
                None => Registry::open(&target.data_dir)?.0.revoke_token(&id)?,
            };
            if !done {
                bail!("no active credential with id {id}");
            }
            println!("revoked {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn create_local(
    target: &Target,
    role: Role,
    subject: Option<String>,
    secs: Option<i64>,
) -> Result<ExitCode> {
    let (reg, admin) = Registry::open(&target.data_dir)?;
    if let Some(a) = admin {
        println!("admin token: {a}");
    }
    let expires = secs.map(|s| chrono::Utc::now().timestamp_micros() + s * 1_000_000);
    let (token, _) = reg.create_token_expiring(role, subject, expires)?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

fn create_remote(
    url: &str,
    target: &Target,
    role: Role,
    subject: Option<String>,
    secs: Option<i64>,
) -> Result<ExitCode> {
    let mut body = serde_json::json!({"role": role.as_str(), "subject": subject});
    if let Some(s) = secs {
        body["expires_in_secs"] = s.into();
    }
    let v = remote(url, target, reqwest::Method::POST, "/v1/tokens", Some(body))?;
    match v["token"].as_str() {
        Some(t) => println!("{t}"),
        None => bail!("the server answered without a token"),
    }
    Ok(ExitCode::SUCCESS)
}

fn remote(
    url: &str,
    target: &Target,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let Some(token) = &target.token else {
        bail!("--server needs --token (an admin token, or CAREWATCH_TOKEN)");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", url.trim_end_matches('/')))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("server answered {status}: {text}");
        }
        Ok(if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    })
}
