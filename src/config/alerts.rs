//! `[alerts]`: the alert engine's settings, the webhook receivers and the care teams'
//! escalation chains (`[alerts.escalation.<team>]`). `--webhook-url` wins over the file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Deserialize;

use super::url_ok;

/// `[alerts]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Rule files (`*.toml`). Default: `rules/` beside the config file when it exists, else
    /// the shipped rules.
    pub rules_dir: Option<PathBuf>,
    /// Receives every alert transition (JSON POST).
    pub webhook_url: Option<String>,
    /// Receives escalations (the second contact).
    pub escalation_webhook_url: Option<String>,
    /// Per care team receivers: `team = "https://…"`.
    #[serde(default)]
    pub team_webhooks: BTreeMap<String, String>,
    /// How often rules run at the latest, seconds (default 1).
    pub interval_secs: Option<f64>,
    /// Appends trigger a run this many milliseconds after the first (default 200).
    pub batch_millis: Option<u64>,
    /// Minute bins are kept in memory for this many minutes before now (default: the longest
    /// look-back of the loaded rules + 15 for late readings, i.e. 77 with the shipped rules).
    pub bins_minutes: Option<u64>,
    /// Escalation chains and on-call rotas by care team (`[alerts.escalation.<team>]`); a team
    /// with one escalates along it instead of `escalate_after_secs` / `max_escalations`.
    #[serde(default)]
    pub escalation: BTreeMap<String, carewatch_alert::chain::ChainConfig>,
    /// Re-notify an unacknowledged firing alert after this many seconds (default 900).
    pub escalate_after_secs: Option<u64>,
    /// At most this many escalations (default 3).
    pub max_escalations: Option<u32>,
    /// Per level (`[alerts.levels.urgent]`, `warning`, `info`): how often an open alert nobody
    /// acknowledged or snoozed is told again.
    #[serde(default)]
    pub levels: BTreeMap<String, LevelConfig>,
    /// One rule's queries in one evaluation run may take this long, seconds (default 10);
    /// past it they are cancelled, counted, and the rule's ranges retried at the next run.
    pub rule_timeout_secs: Option<f64>,
    /// Attempts after which a webhook delivery of a *resolved* alert's transition is given up
    /// (default 8); an open alert's transitions are retried for as long as it takes.
    pub webhook_attempts: Option<u32>,
    /// First webhook retry delay, seconds (default 0.5; doubles up to `webhook_backoff_cap_secs`).
    pub webhook_backoff_secs: Option<f64>,
    /// Longest webhook retry delay, seconds (default 60).
    pub webhook_backoff_cap_secs: Option<f64>,
    /// HMAC-SHA256 secret signing bodies to `webhook_url` (`X-Carewatch-Signature`).
    pub webhook_secret: Option<String>,
    /// HMAC-SHA256 secret signing bodies to `escalation_webhook_url`.
    pub escalation_webhook_secret: Option<String>,
    /// HMAC-SHA256 secrets of the care-team receivers: `team = "…"`.
    #[serde(default)]
    pub team_webhook_secrets: BTreeMap<String, String>,
    /// A webhook receiver failing continuously for longer than this many seconds is reported
    /// to the escalation receiver and on `/metrics` (default 300).
    pub receiver_failure_escalate_secs: Option<u64>,
    /// Publish alert transitions to `carewatch/alerts/{care_team}`: on the external broker
    /// (`mqtt_url`), or to subscribed care managers on the embedded listener. Default false.
    pub mqtt_publish: Option<bool>,
}

/// `[alerts.levels.<level>]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelConfig {
    /// Minutes between repeats (0: never; defaults urgent 15, warning 60, info 0).
    pub repeat_minutes: Option<u32>,
}

/// `[alerts.levels]`, checked, over the defaults.
fn levels(a: &AlertsConfig) -> Result<carewatch_alert::policy::Levels> {
    let mut l = carewatch_alert::policy::Levels::default();
    for (name, c) in &a.levels {
        let slot = match name.as_str() {
            "urgent" => &mut l.urgent,
            "warning" => &mut l.warning,
            "info" => &mut l.info,
            _ => bail!("alerts.levels.{name}: the levels are urgent, warning and info"),
        };
        if let Some(m) = c.repeat_minutes {
            if m > 7 * 24 * 60 {
                bail!("alerts.levels.{name}.repeat_minutes must be at most a week (10080)");
            }
            *slot = (m > 0).then(|| Duration::from_secs(u64::from(m) * 60));
        }
    }
    Ok(l)
}

/// The engine's settings and the receivers, checked.
pub(super) fn resolve(
    a: &AlertsConfig,
    webhook_flag: Option<String>,
) -> Result<(carewatch_alert::Config, carewatch_alert::notify::Routes)> {
    let mut alert_engine = carewatch_alert::Config::default();
    if let Some(s) = a.interval_secs {
        if !(0.05..=3600.0).contains(&s) {
            bail!("alerts.interval_secs must be between 0.05 and 3600");
        }
        alert_engine.interval = Duration::from_secs_f64(s);
    }
    if let Some(ms) = a.batch_millis {
        if !(1..=60_000).contains(&ms) {
            bail!("alerts.batch_millis must be between 1 and 60000");
        }
        alert_engine.batch = Duration::from_millis(ms);
    }
    if let Some(m) = a.bins_minutes {
        if !(10..=24 * 60).contains(&m) {
            bail!("alerts.bins_minutes must be between 10 and 1440");
        }
        alert_engine.bins_window = Some(Duration::from_secs(m * 60));
    }
    if let Some(s) = a.escalate_after_secs {
        alert_engine.escalate_after = Duration::from_secs(s.max(1));
    }
    if let Some(n) = a.max_escalations {
        alert_engine.max_escalations = n;
    }
    if let Some(s) = a.rule_timeout_secs {
        if !(0.1..=3600.0).contains(&s) {
            bail!("alerts.rule_timeout_secs must be between 0.1 and 3600");
        }
        alert_engine.rule_timeout = Duration::from_secs_f64(s);
    }
    alert_engine.levels = levels(a)?;
    let chains = escalation_chains(a)?;
    alert_engine.chains = chains.clone();
    let webhook_url = webhook_flag.or(a.webhook_url.clone());
    for u in webhook_url
        .iter()
        .chain(a.escalation_webhook_url.iter())
        .chain(a.team_webhooks.values())
    {
        let ok = url_ok(u);
        if !ok {
            bail!("webhook URL {u:?} must be http:// or https://");
        }
    }
    let alert_routes = carewatch_alert::notify::Routes {
        webhook_url,
        team_webhooks: a.team_webhooks.clone(),
        escalation_url: a.escalation_webhook_url.clone(),
        attempts: a.webhook_attempts.unwrap_or(8),
        backoff: secs(a.webhook_backoff_secs, 0.5, "webhook_backoff_secs")?,
        backoff_cap: secs(a.webhook_backoff_cap_secs, 60.0, "webhook_backoff_cap_secs")?,
        webhook_secret: a.webhook_secret.clone(),
        team_webhook_secrets: a.team_webhook_secrets.clone(),
        escalation_secret: a.escalation_webhook_secret.clone(),
        failure_escalate_after: Duration::from_secs(
            a.receiver_failure_escalate_secs.unwrap_or(300).max(1),
        ),
        chains,
    };
    if let Some(t) = a
        .team_webhook_secrets
        .keys()
        .find(|t| !a.team_webhooks.contains_key(*t))
    {
        bail!("alerts.team_webhook_secrets.{t} has no alerts.team_webhooks entry");
    }
    Ok((alert_engine, alert_routes))
}

/// `[alerts.escalation.<team>]`, checked: each a valid team with a valid chain whose
/// receivers are http(s) URLs.
fn escalation_chains(a: &AlertsConfig) -> Result<Arc<carewatch_alert::chain::Chains>> {
    let mut chains = carewatch_alert::chain::Chains::new();
    for (team, c) in &a.escalation {
        if !carewatch_store::registry::valid_team(team) {
            bail!("alerts.escalation.{team}: not a care team name");
        }
        let chain = c
            .check()
            .map_err(|e| anyhow::anyhow!("alerts.escalation.{team}: {e}"))?;
        if let Some((_, u)) = chain.urls().into_iter().find(|(_, u)| !url_ok(u)) {
            bail!("alerts.escalation.{team}: receiver URL {u:?} must be http:// or https://");
        }
        chains.insert(team.clone(), chain);
    }
    Ok(Arc::new(chains))
}

/// An `[alerts]` duration in seconds (0.01 s to one hour).
fn secs(v: Option<f64>, default: f64, what: &str) -> Result<Duration> {
    let s = v.unwrap_or(default);
    if !(0.01..=3600.0).contains(&s) {
        bail!("alerts.{what} must be between 0.01 and 3600");
    }
    Ok(Duration::from_secs_f64(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(text: &str) -> Result<carewatch_alert::Config> {
        let a: AlertsConfig = toml::from_str(text)?;
        Ok(resolve(&a, None)?.0)
    }

    #[test]
    fn levels_repeat_intervals_override_the_defaults_and_bad_ones_are_refused() {
        let c =
            engine("[levels.urgent]\nrepeat_minutes = 5\n[levels.warning]\nrepeat_minutes = 0\n")
                .expect("config");
        assert_eq!(c.levels.urgent, Some(Duration::from_secs(300)));
        assert_eq!(c.levels.warning, None, "0 = never");
        assert_eq!(c.levels.info, None, "default: never");
        let d = engine("").expect("defaults");
        assert_eq!(d.levels, carewatch_alert::policy::Levels::default());
        let e = engine("[levels.loud]\nrepeat_minutes = 5\n").expect_err("bad level");
        assert!(e.to_string().contains("alerts.levels.loud"), "{e}");
        let e = engine("[levels.info]\nrepeat_minutes = 20000\n").expect_err("too long");
        assert!(e.to_string().contains("repeat_minutes"), "{e}");
        assert!(
            engine("[levels.info]\nrepeat_every = 5\n").is_err(),
            "unknown key"
        );
    }
}
