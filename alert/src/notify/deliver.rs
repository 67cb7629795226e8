//! One task per receiver (URL): it walks the history from its own durable position, POSTs each
//! transition routed to it (signed with its secret), and retries with capped exponential
//! back-off — for as long as it takes while the alert is open; a transition of a resolved alert
//! is given up after `attempts`. A receiver failing for longer than `failure_escalate_after`
//! is reported once (per failure stretch) to the escalation receiver.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;

use super::gauges::{Counters, Gauge, ReceiverKind};
use super::positions::{Position, offset_file, position_name};
use super::{Routes, payload, routed};
use crate::chain::Chains;
use crate::engine::AlertEngine;
use crate::history::{Event, History, Status, Transition};

/// One receiver: a URL and what is routed to it (a URL configured twice is one receiver).
#[derive(Debug, Clone)]
pub(super) struct Receiver {
    pub(super) url: String,
    pub(super) kind: ReceiverKind,
    global: bool,
    teams: Vec<String>,
    pub(super) escalation: bool,
    /// Escalation-chain steps it serves: (team, step number).
    steps: Vec<(String, u32)>,
    secret: Option<String>,
}

fn entry<'a>(
    by_url: &'a mut BTreeMap<String, Receiver>,
    url: &str,
    kind: ReceiverKind,
    secret: Option<&String>,
) -> &'a mut Receiver {
    let r = by_url.entry(url.to_owned()).or_insert_with(|| Receiver {
        url: url.to_owned(),
        kind,
        global: false,
        teams: Vec::new(),
        escalation: false,
        steps: Vec::new(),
        secret: None,
    });
    if r.secret.is_none() {
        r.secret = secret.cloned();
    }
    r
}

/// The receivers of `routes`, one per distinct URL.
pub(super) fn receivers(routes: &Routes) -> Vec<Receiver> {
    let mut by_url: BTreeMap<String, Receiver> = BTreeMap::new();
    if let Some(u) = &routes.webhook_url {
        entry(
            &mut by_url,
            u,
            ReceiverKind::Global,
            routes.webhook_secret.as_ref(),
        )
        .global = true;
    }
    for (team, u) in &routes.team_webhooks {
        let secret = routes.team_webhook_secrets.get(team);
        let r = entry(&mut by_url, u, ReceiverKind::Team, secret);
        r.teams.push(team.clone());
    }
    if let Some(u) = &routes.escalation_url {
        let secret = routes.escalation_secret.as_ref();
        entry(&mut by_url, u, ReceiverKind::Escalation, secret).escalation = true;
    }
    for (team, chain) in routes.chains.iter() {
        for (n, u) in chain.urls() {
            let r = entry(&mut by_url, &u, ReceiverKind::Escalation, None);
            if !r.steps.contains(&(team.clone(), n)) {
                r.steps.push((team.clone(), n));
            }
        }
    }
    by_url.into_values().collect()
}

/// What a receiver task needs.
pub(super) struct Ctx {
    pub(super) engine: AlertEngine,
    pub(super) routes: Routes,
    pub(super) counters: Arc<Counters>,
    pub(super) client: reqwest::Client,
    pub(super) escalation: Option<Receiver>,
    pub(super) gauge: Arc<Gauge>,
    pub(super) shutdown: tokio_util::sync::CancellationToken,
}

/// The current failure stretch of one receiver.
#[derive(Default)]
struct Failing {
    since: Option<(Instant, i64)>,
    reported: bool,
}

/// Delivers to one receiver until shutdown (a single node's history).
pub(super) async fn receiver_loop(ctx: Ctx, r: Receiver, start: u64) {
    let file = offset_file(ctx.engine.history().path(), &r);
    walk(&ctx, &r, start, &Position::File(file)).await;
}

/// Delivers to one receiver until shutdown, while this node is the cluster's deliverer
/// (`Engine::delivers_webhooks`): it waits for the role, starts from the shared position, and
/// waits again when it loses the role (a position it could not save says so).
pub(super) async fn shared_receiver_loop(ctx: Ctx, r: Receiver) {
    let name = position_name(&r);
    loop {
        while !ctx.engine.delivers_webhooks() {
            tokio::select! {
                () = ctx.shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        let (h, n) = (ctx.engine.history().clone(), name.clone());
        let start = match tokio::task::spawn_blocking(move || h.shared_position(&n)).await {
            Ok(Ok(Some((Some(p), _)))) => p,
            // A receiver added to a running cluster hears only of new transitions.
            Ok(Ok(Some((None, true)))) => ctx.engine.history().len() as u64,
            Ok(Ok(_)) => 0,
            _ => {
                tracing::warn!("webhook position not readable in PostgreSQL; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!("delivering the cluster's webhooks");
        if !walk(&ctx, &r, start, &Position::Shared(name.clone())).await {
            return;
        }
    }
}

/// Walks the history from `start`, delivering and saving the position: `false` on shutdown,
/// `true` when this node lost the deliverer's role.
async fn walk(ctx: &Ctx, r: &Receiver, start: u64, position: &Position) -> bool {
    let history = ctx.engine.history().clone();
    let mut pos = start;
    let mut saved = pos;
    let mut failing = Failing::default();
    loop {
        if !ctx.engine.delivers_webhooks() {
            return true;
        }
        let batch = history.since(pos);
        if batch.is_empty() {
            ctx.gauge.oldest_undelivered_us.store(0, Ordering::Relaxed);
            if saved != pos {
                if !position.save(ctx, pos).await {
                    return true;
                }
                saved = pos;
            }
            tokio::select! {
                () = ctx.shutdown.cancelled() => return false,
                () = ctx.engine.written().notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        for t in batch {
            pos = t.seq + 1;
            let Some(t) = route(&ctx.engine, &ctx.routes.chains, r, &t) else {
                continue;
            };
            ctx.gauge
                .oldest_undelivered_us
                .store(t.at_us.max(1), Ordering::Relaxed);
            if !deliver_one(ctx, r, &history, &t, &mut failing).await {
                return false;
            }
            if !position.save(ctx, pos).await {
                return true;
            }
            saved = pos;
        }
    }
}

/// The transition as this receiver gets it, or None when it is not routed to it.
fn route(
    engine: &AlertEngine,
    chains: &Chains,
    r: &Receiver,
    t: &Arc<Transition>,
) -> Option<Arc<Transition>> {
    // Pending records and held alerts' transitions are recorded, not pushed.
    if t.event == Event::Pending || t.held.is_some() {
        return None;
    }
    let team = engine.team_of(&t.patient_id);
    routed_to(r, t, team.as_deref(), chains).then(|| routed(t, team))
}

/// Is `t` (of a patient whose team is `team` now) for receiver `r`? A chain step's receiver
/// gets an alert's transitions from its step on (so it hears of the acknowledgement too); an
/// on-call step's, only while that receiver's person is on call.
fn routed_to(r: &Receiver, t: &Transition, team: Option<&str>, chains: &Chains) -> bool {
    let step = |(st, n): &(String, u32)| {
        team == Some(st.as_str())
            && t.escalation_level >= *n
            && chains
                .get(st)
                .and_then(|c| c.contact(*n, t.at_us))
                .is_some_and(|c| c.url == r.url)
    };
    r.global
        || (r.escalation && t.event == Event::Escalated)
        || team.is_some_and(|c| r.teams.iter().any(|x| x == c))
        || r.steps.iter().any(step)
}

/// True while the alert of `t` is not resolved (as of the newest transition in the history).
fn alert_open(history: &History, t: &Transition) -> bool {
    history
        .since(t.seq)
        .iter()
        .rev()
        .find(|x| x.alert_id == t.alert_id)
        .is_none_or(|x| x.status != Status::Resolved)
}

/// Delivers `t` (or gives it up, for a resolved alert); false on shutdown.
async fn deliver_one(
    ctx: &Ctx,
    r: &Receiver,
    history: &History,
    t: &Transition,
    failing: &mut Failing,
) -> bool {
    let body = serde_json::to_vec(&payload(t)).unwrap_or_default();
    let attempts = ctx.routes.attempts.max(1);
    let mut delay = ctx.routes.backoff;
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        match post(&ctx.client, r, &body).await {
            Ok(()) => {
                ctx.counters.delivered.fetch_add(1, Ordering::Relaxed);
                failing.since = None;
                failing.reported = false;
                ctx.gauge.failing.store(false, Ordering::Relaxed);
                return true;
            }
            Err(e) if attempt <= attempts || attempt.is_multiple_of(10) => {
                tracing::warn!(receiver = r.kind.as_str(), attempt, error = %e, "webhook delivery failed");
            }
            Err(e) => {
                tracing::debug!(receiver = r.kind.as_str(), attempt, error = %e, "webhook delivery failed");
            }
        }
        ctx.counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
        note_failure(ctx, r, failing);
        if attempt >= attempts && !alert_open(history, t) {
            ctx.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                receiver = r.kind.as_str(),
                seq = t.seq,
                "webhook delivery of a resolved alert given up"
            );
            return true;
        }
        tokio::select! {
            () = ctx.shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(ctx.routes.backoff_cap.max(ctx.routes.backoff));
    }
}

/// Counts a failure into the stretch; past the limit, reports it once.
fn note_failure(ctx: &Ctx, r: &Receiver, failing: &mut Failing) {
    let (since, since_us) = *failing
        .since
        .get_or_insert_with(|| (Instant::now(), crate::engine::now_us()));
    if failing.reported || since.elapsed() <= ctx.routes.failure_escalate_after {
        return;
    }
    failing.reported = true;
    ctx.gauge.failing.store(true, Ordering::Relaxed);
    tracing::error!(
        receiver = r.kind.as_str(),
        "webhook receiver failing for longer than the escalation limit"
    );
    let Some(e) = ctx.escalation.clone().filter(|e| e.url != r.url) else {
        return;
    };
    let kind = r.kind.as_str();
    let body = json!({
        "version": "1",
        "event": "receiver_failing",
        "receiver": kind,
        "failing_since": crate::iso(since_us),
        "type": "message",
        "text": format!("carewatch: the {kind} alert webhook receiver has been failing since {}; alerts for it are queued", crate::iso(since_us)),
    });
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let (client, routes) = (ctx.client.clone(), ctx.routes.clone());
    tokio::spawn(async move {
        let mut delay = routes.backoff;
        for attempt in 1..=routes.attempts.max(1) {
            match post(&client, &e, &body).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(attempt, error = %err, "failing-receiver notice not delivered")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(routes.backoff_cap.max(routes.backoff));
        }
    });
}

/// `sha256=<hex>`: HMAC-SHA256 of the exact body bytes.
pub(super) fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length: this never fails.
    let Ok(mut m) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    m.update(body);
    format!("sha256={}", hex(&m.finalize().into_bytes()))
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One POST; the error never names the URL.
async fn post(client: &reqwest::Client, r: &Receiver, body: &[u8]) -> Result<(), String> {
    let ts = chrono::Utc::now().timestamp().to_string();
    let mut req = client
        .post(&r.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Carewatch-Timestamp", ts)
        .body(body.to_vec());
    if let Some(s) = &r.secret {
        req = req.header("X-Carewatch-Signature", signature(s, body));
    }
    match req.send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("status {}", resp.status().as_u16())),
        Err(e) => Err(e.without_url().to_string()),
    }
}

/// One POST of a notice that is not a transition (a break-glass notice to a team's lead),
/// timestamped and signed exactly like transitions.
pub(super) async fn post_notice(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&str>,
    body: &[u8],
) -> Result<(), String> {
    let r = Receiver {
        url: url.to_owned(),
        kind: ReceiverKind::Team,
        global: false,
        teams: Vec::new(),
        escalation: false,
        steps: Vec::new(),
        secret: secret.map(str::to_owned),
    };
    post(client, &r, body).await
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc4231_case_2() {
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn chain_steps_get_an_alert_from_their_step_on_and_on_call_only_while_on_call() {
        let chain: crate::chain::ChainConfig = toml::from_str(
            r#"steps = [{ after_minutes = 5, url = "http://backup/" }, { after_minutes = 5, oncall = true }]
            oncall = [{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], from = "08:00", to = "20:00", person = "d", url = "http://day/" },
                      { days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], from = "20:00", to = "08:00", person = "n", url = "http://night/" }]"#,
        )
        .expect("toml");
        let routes = Routes {
            chains: Arc::new([("north".to_owned(), chain.check().expect("chain"))].into()),
            ..Routes::default()
        };
        let chains = routes.chains.clone();
        let r = receivers(&routes);
        let by = |u: &str| r.iter().find(|x| x.url == u).expect("receiver").clone();
        let (backup, day, night) = (by("http://backup/"), by("http://day/"), by("http://night/"));
        // 2026-11-30T10:00Z is day time (UTC rota).
        let mut t = transition_at(1_796_032_800_000_000);
        let gets = |r: &Receiver, t: &Transition, team| routed_to(r, t, team, &chains);
        assert!(
            !gets(&backup, &t, Some("north")),
            "level 0: the team's own receiver only"
        );
        t.escalation_level = 1;
        assert!(gets(&backup, &t, Some("north")));
        assert!(!gets(&day, &t, Some("north")), "step 2 not reached");
        t.escalation_level = 2;
        assert!(gets(&backup, &t, Some("north")) && gets(&day, &t, Some("north")));
        assert!(!gets(&night, &t, Some("north")), "not on call at 10:00");
        assert!(!gets(&day, &t, Some("south")), "another team's alert");
        t.at_us += 12 * 3_600_000_000;
        assert!(gets(&night, &t, Some("north")) && !gets(&day, &t, Some("north")));
    }

    fn transition_at(at_us: i64) -> Transition {
        let mut t = crate::history::sample_transition("a", at_us);
        t.care_team = Some("north".into());
        t.event = Event::Escalated;
        t
    }

    #[test]
    fn one_receiver_per_url() {
        let routes = Routes {
            webhook_url: Some("http://a/".into()),
            team_webhooks: [
                ("n".into(), "http://a/".into()),
                ("s".into(), "http://b/".into()),
            ]
            .into(),
            escalation_url: Some("http://c/".into()),
            ..Routes::default()
        };
        let r = receivers(&routes);
        assert_eq!(r.len(), 3);
        assert!(r[0].global && r[0].teams == ["n"]);
        assert_eq!(r[1].kind, ReceiverKind::Team);
        assert!(r[2].escalation);
    }
}
