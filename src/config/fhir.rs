//! `[fhir.destination]`: deliver every stored reading to an external FHIR R4 server.
//! `--fhir-destination URL` (`CAREWATCH_FHIR_DESTINATION`) wins over `url` in the file; the
//! other settings come from the file only. Secrets may be given as `*_file` paths instead.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// `[fhir]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirFile {
    /// The destination server.
    #[serde(default)]
    pub destination: DestinationFile,
    /// Where device and patient identity comes from.
    #[serde(default)]
    pub identity: IdentityFile,
    /// What topic-based subscriptions keep.
    #[serde(default)]
    pub subscriptions: SubscriptionsFile,
}

/// `[fhir.subscriptions]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionsFile {
    /// Events each subscription keeps for `$events` (default 1000).
    pub keep_events: Option<usize>,
    /// Days an event is kept for `$events` (default 7).
    pub keep_days: Option<f64>,
}

/// `[fhir.subscriptions]`, checked: at least one event, at most 10 years.
pub fn resolve_subscriptions(
    f: &SubscriptionsFile,
) -> Result<carewatch_query::subscriptions::Retention> {
    let mut r = carewatch_query::subscriptions::Retention::default();
    if let Some(n) = f.keep_events {
        if !(1..=1_000_000).contains(&n) {
            bail!("fhir.subscriptions.keep_events must be between 1 and 1000000");
        }
        r.max_events = n;
    }
    if let Some(d) = f.keep_days {
        if !(0.001..=3650.0).contains(&d) {
            bail!("fhir.subscriptions.keep_days must be between 0.001 and 3650");
        }
        r.max_age = Duration::from_secs_f64(d * 86_400.0);
    }
    Ok(r)
}

/// `[fhir.identity]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// `registry` (default): devices are enrolled in carewatch (`POST /v1/devices`, or FHIR
    /// `Device` resources written to `/fhir/Device`). `lookup`: a reading of a device carewatch
    /// does not know is a dead letter (`unknown_device`) until the device is found on the FHIR
    /// destination (`GET Device?identifier=…`, with `Device.patient`); then it is enrolled and
    /// its dead letters are stored (MedTech's Lookup mode). Needs `[fhir.destination]`.
    pub mode: Option<String>,
    /// The `Device.identifier` system whose value is the device id. Unset: a Device must carry
    /// exactly one identifier (several are refused, never guessed between).
    pub device_identifier_system: Option<String>,
    /// Lookup mode: how often devices not found are looked up again, seconds (default 10).
    pub recheck_secs: Option<f64>,
    /// Lookup mode: how often each patient's care team is looked up again on the destination
    /// (`GET CareTeam?subject=…&status=active`), seconds (default 300).
    pub care_team_recheck_secs: Option<f64>,
    /// Lookup mode: only CareTeams of this category (`[system|]code`) name carewatch's teams.
    pub care_team_category: Option<String>,
}

/// The identity model, validated.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// How Device resources name their device.
    pub model: carewatch_ingest::identity::IdentityModel,
    /// Lookup mode: the re-check interval (`None`: registry mode).
    pub lookup: Option<Duration>,
    /// Lookup mode: the care teams' re-check interval.
    pub care_team_recheck: Duration,
    /// Lookup mode: the CareTeam category that names teams.
    pub care_team_category: Option<String>,
}

/// Validates `[fhir.identity]` against the destination: lookup mode needs one.
pub fn resolve_identity(
    f: IdentityFile,
    destination: Option<&carewatch_deliver::Config>,
) -> Result<Identity> {
    if let Some(s) = &f.device_identifier_system
        && url::Url::parse(s).is_err()
    {
        bail!("fhir.identity.device_identifier_system must be a URI");
    }
    let model = carewatch_ingest::identity::IdentityModel {
        device_identifier_system: f.device_identifier_system,
    };
    let lookup = match f.mode.as_deref().unwrap_or("registry") {
        "registry" => {
            if f.recheck_secs.is_some() {
                bail!("fhir.identity.recheck_secs applies to mode = \"lookup\" only");
            }
            if f.care_team_recheck_secs.is_some() || f.care_team_category.is_some() {
                bail!("fhir.identity.care_team_* applies to mode = \"lookup\" only");
            }
            None
        }
        "lookup" => {
            if destination.is_none() {
                bail!(
                    "fhir.identity.mode = \"lookup\" looks devices up on the FHIR destination: set [fhir.destination] url (or --fhir-destination)"
                );
            }
            Some(secs(f.recheck_secs, "identity.recheck_secs")?.unwrap_or(Duration::from_secs(10)))
        }
        _ => bail!("fhir.identity.mode must be \"registry\" or \"lookup\""),
    };
    if f.care_team_category
        .as_deref()
        .is_some_and(|c| c.trim().is_empty() || c.ends_with('|'))
    {
        bail!("fhir.identity.care_team_category must be a token: [system|]code");
    }
    let care_team_recheck = secs(f.care_team_recheck_secs, "identity.care_team_recheck_secs")?
        .unwrap_or(Duration::from_secs(300));
    Ok(Identity {
        model,
        lookup,
        care_team_recheck,
        care_team_category: f.care_team_category,
    })
}

/// `[fhir.destination]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationFile {
    /// The server's base URL; Bundles are POSTed to it.
    pub url: Option<String>,
    /// A fixed bearer token (or `bearer_token_file`).
    pub bearer_token: Option<String>,
    /// A file holding the bearer token.
    pub bearer_token_file: Option<PathBuf>,
    /// OAuth2 client credentials: the token endpoint.
    pub token_url: Option<String>,
    /// OAuth2 client id.
    pub client_id: Option<String>,
    /// OAuth2 client secret (or `client_secret_file`).
    pub client_secret: Option<String>,
    /// A file holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// OAuth2 scope, e.g. `system/Observation.write`.
    pub scope: Option<String>,
    /// Observations per Bundle (default 100, at most 1000).
    pub batch_size: Option<usize>,
    /// Seconds between looks for new readings when caught up (default 1).
    pub interval_secs: Option<f64>,
    /// `batch` (default) or `transaction`.
    pub bundle: Option<String>,
    /// The identifier system of delivered Observations (default `urn:carewatch:observation`).
    pub identifier_system: Option<String>,
    /// Longest wait between retries, seconds (default 60).
    pub max_backoff_secs: Option<f64>,
    /// Per-request timeout, seconds (default 30).
    pub timeout_secs: Option<f64>,
}

fn secret(inline: Option<String>, file: Option<PathBuf>, what: &str) -> Result<Option<String>> {
    match (inline, file) {
        (Some(_), Some(_)) => bail!("fhir.destination: give {what} or {what}_file, not both"),
        (Some(s), None) => Ok(Some(s)),
        (None, Some(p)) => Ok(Some(
            std::fs::read_to_string(&p)
                .with_context(|| format!("reading fhir.destination.{what}_file"))?
                .trim()
                .to_owned(),
        )),
        (None, None) => Ok(None),
    }
}

fn secs(v: Option<f64>, what: &str) -> Result<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(s) if (0.01..=86_400.0).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
        Some(_) => bail!("fhir.{what} must be between 0.01 and 86400"),
    }
}

/// The resolved destination (`None`: no URL, nothing is delivered).
pub fn resolve(
    flag_url: Option<String>,
    f: DestinationFile,
) -> Result<Option<carewatch_deliver::Config>> {
    let Some(url) = flag_url.or(f.url).filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    let mut c = carewatch_deliver::Config::new(url.trim()).map_err(anyhow::Error::msg)?;
    let secs = |v, what: &str| secs(v, &format!("destination.{what}"));
    let bearer = secret(f.bearer_token, f.bearer_token_file, "bearer_token")?;
    let client_secret = secret(f.client_secret, f.client_secret_file, "client_secret")?;
    c.auth = match (bearer, f.token_url) {
        (Some(_), Some(_)) => bail!("fhir.destination: give bearer_token or token_url, not both"),
        (Some(t), None) => carewatch_deliver::Auth::Bearer(t),
        (None, Some(t)) => {
            let token_url = url::Url::parse(&t)
                .map_err(|e| anyhow::anyhow!("fhir.destination.token_url: {e}"))?;
            let (Some(client_id), Some(client_secret)) = (f.client_id, client_secret) else {
                bail!("fhir.destination.token_url needs client_id and client_secret");
            };
            carewatch_deliver::Auth::ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope: f.scope,
            }
        }
        (None, None) => carewatch_deliver::Auth::None,
    };
    if let Some(n) = f.batch_size {
        c.batch_size = n;
    }
    if let Some(d) = secs(f.interval_secs, "interval_secs")? {
        c.interval = d;
    }
    if let Some(d) = secs(f.max_backoff_secs, "max_backoff_secs")? {
        c.max_backoff = d;
    }
    if let Some(d) = secs(f.timeout_secs, "timeout_secs")? {
        c.timeout = d;
    }
    if let Some(k) = f.bundle {
        c.kind = carewatch_deliver::Kind::parse(&k).ok_or_else(|| {
            anyhow::anyhow!("fhir.destination.bundle must be batch or transaction")
        })?;
    }
    if let Some(s) = f.identifier_system {
        c.identifier_system = s;
    }
    c.validate().map_err(anyhow::Error::msg)?;
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_and_bad_values_are_named() {
        let f: FhirFile = toml::from_str(
            "[destination]\nurl = \"http://a/fhir\"\nbatch_size = 10\nbearer_token = \"t\"\n",
        )
        .unwrap();
        let c = resolve(Some("http://b/fhir".into()), f.destination)
            .unwrap()
            .unwrap();
        assert_eq!(c.url.as_str(), "http://b/fhir");
        assert_eq!(c.batch_size, 10);
        assert!(matches!(c.auth, carewatch_deliver::Auth::Bearer(_)));
        assert!(resolve(None, DestinationFile::default()).unwrap().is_none());
        let bad = |toml: &str| {
            let f: FhirFile = toml::from_str(toml).unwrap();
            resolve(None, f.destination).unwrap_err().to_string()
        };
        assert!(bad("[destination]\nurl = \"ftp://x\"").contains("http"));
        assert!(bad("[destination]\nurl = \"http://x\"\nbatch_size = 0").contains("batch_size"));
        assert!(bad("[destination]\nurl = \"http://x\"\nbundle = \"both\"").contains("bundle"));
        assert!(
            bad("[destination]\nurl = \"http://x\"\ntoken_url = \"http://t\"")
                .contains("client_id")
        );
    }

    #[test]
    fn lookup_needs_a_destination_and_modes_are_named() {
        let id = |toml: &str| toml::from_str::<FhirFile>(toml).unwrap().identity;
        let dest = carewatch_deliver::Config::new("http://fhir.example/r4").unwrap();
        let e = resolve_identity(id("[identity]\nmode = \"lookup\""), None).unwrap_err();
        assert!(e.to_string().contains("[fhir.destination]"), "{e}");
        let ok = resolve_identity(id("[identity]\nmode = \"lookup\""), Some(&dest)).unwrap();
        assert_eq!(ok.lookup, Some(Duration::from_secs(10)));
        assert!(resolve_identity(id(""), None).unwrap().lookup.is_none());
        let e = resolve_identity(id("[identity]\nmode = \"guess\""), Some(&dest)).unwrap_err();
        assert!(e.to_string().contains("registry"), "{e}");
        let e = resolve_identity(
            id("[identity]\ndevice_identifier_system = \"no uri\""),
            None,
        );
        assert!(e.unwrap_err().to_string().contains("URI"));
    }
}
