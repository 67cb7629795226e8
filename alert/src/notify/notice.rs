//! Notices that are not alert transitions, delivered by the webhook notifier's own POST
//! (timestamped, HMAC-signed like transitions): today, a break-glass access told to the lead of
//! the patient's care team (`[alerts.escalation.<team>] lead`). Retried with backoff (0.5 s
//! doubling to 30 s, 8 attempts) in a task of their own; the grant never waits for them. Not
//! durable: the audit trail (`audit_log`, channel `break-glass`) is the record.

use std::sync::OnceLock;
use std::time::Duration;

use crate::chain::LeadConfig;

/// Attempts before a notice is given up.
const ATTEMPTS: u32 = 8;

fn client() -> Option<&'static reqwest::Client> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .ok()
        })
        .as_ref()
}

/// Sends `body` (JSON) to `lead` in the background (call from within a Tokio runtime).
pub fn notify_lead(lead: &LeadConfig, body: &serde_json::Value) {
    let Some(client) = client() else {
        tracing::error!("notice client could not be built; the team lead is not told");
        return;
    };
    let (url, secret, bytes) = (lead.url.clone(), lead.secret.clone(), body.to_string());
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            match super::deliver::post_notice(client, &url, secret.as_deref(), bytes.as_bytes())
                .await
            {
                Ok(()) => {
                    tracing::info!(attempt, "break-glass notice delivered to the team lead");
                    return;
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "break-glass notice to the team lead failed")
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
        tracing::error!("break-glass notice to the team lead given up");
    });
}
