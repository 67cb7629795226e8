//! Webhook delivery (issue #12) end to end with the real binary: a receiver that is down for
//! longer than `webhook_attempts` × back-off still gets every transition of an open alert, once
//! each; a dead receiver does not delay a healthy one; each body is signed with the receiver's
//! secret (HMAC-SHA256, checked here with `openssl`); a receiver failing for too long is
//! reported to the escalation receiver and on `/metrics`.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Server, Webhook, curl, wait_until};

/// NDJSON samples for `minutes` minutes from `start_ms`: heart rate every 10 s, steps 0 at each
/// minute start.
fn minutes(start_ms: i64, minutes: i64, hr: f64) -> String {
    let mut out = String::new();
    for m in 0..minutes {
        for k in 0..6 {
            let t = start_ms + m * 60_000 + k * 10_000;
            if k == 0 {
                out.push_str(&format!(
                    "{{\"time\":{t},\"heart_rate\":{hr},\"steps\":0}}\n"
                ));
            } else {
                out.push_str(&format!("{{\"time\":{t},\"heart_rate\":{hr}}}\n"));
            }
        }
    }
    out
}

/// Starts the server with `[alerts]` settings `alerts` (plus `extra` TOML after them) and raises
/// one resting-tachycardia alert that stays open (firing, then escalated every second).
fn open_alert(tmp: &std::path::Path, alerts: &str, extra: &str) -> Server {
    let cfg = tmp.join("carewatch.toml");
    std::fs::write(
        &cfg,
        format!(
            "[alerts]\ninterval_secs = 0.5\nescalate_after_secs = 1\nmax_escalations = 3\n{alerts}\n{extra}"
        ),
    )
    .expect("config");
    let srv = Server::start(tmp, &["--config", cfg.to_str().expect("utf8")]);
    let secret = srv.register("wd1", "whpat");
    let (s, b) = curl(
        "PUT",
        &format!("{}/v1/patients/whpat/care-team", srv.http),
        srv.admin(),
        r#"{"team":"north"}"#,
    );
    assert!(s == 200 || s == 204, "{s} {b}");
    let now_min = chrono::Utc::now().timestamp_millis() / 60_000 * 60_000;
    let t0 = now_min - 18 * 60_000;
    let body = minutes(t0, 2, 70.0) + &minutes(t0 + 2 * 60_000, 15, 125.0);
    let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
    assert_eq!(s, 202, "{b}");
    srv
}

/// (fingerprint, seq, event) of every accepted body, in arrival order (duplicates kept).
fn deliveries(hook: &Webhook) -> Vec<(String, u64, String)> {
    hook.all()
        .iter()
        .map(|v| {
            (
                v["fingerprint"].as_str().unwrap_or_default().to_owned(),
                v["seq"].as_u64().unwrap_or(u64::MAX),
                v["event"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn events(hook: &Webhook) -> Vec<String> {
    deliveries(hook).into_iter().map(|d| d.2).collect()
}

/// The open alert's four notifications: firing and three escalations.
fn all_four(hook: &Webhook) -> bool {
    let e = events(hook);
    e.iter().filter(|e| *e == "firing").count() >= 1
        && e.iter().filter(|e| *e == "escalated").count() >= 3
}

fn assert_once_each(hook: &Webhook) {
    let d = deliveries(hook);
    let mut keys: Vec<(String, u64)> = d.iter().map(|x| (x.0.clone(), x.1)).collect();
    keys.sort();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "a (fingerprint, seq) delivered twice: {d:?}");
    let mut ev: Vec<String> = d.into_iter().map(|x| x.2).collect();
    ev.sort();
    assert_eq!(ev, ["escalated", "escalated", "escalated", "firing"]);
}

#[test]
fn a_receiver_down_longer_than_all_attempts_still_gets_every_transition_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hook = Webhook::start(usize::MAX);
    let srv = open_alert(
        tmp.path(),
        &format!("webhook_url = \"{}\"\nwebhook_attempts = 2\n", hook.url),
        "",
    );
    // Down for longer than 2 attempts × 0.5 s back-off, and until the alert has escalated.
    wait_until("retries past the attempts", Duration::from_secs(60), || {
        hook.requests.load(Ordering::SeqCst) >= 4
    });
    wait_until("three escalations", Duration::from_secs(60), || {
        let (_, b) = curl(
            "GET",
            &format!("{}/v1/alerts?status=all", srv.http),
            srv.admin(),
            "",
        );
        b.contains("\"escalation_level\":3")
    });
    assert!(hook.all().is_empty());
    hook.failures.store(0, Ordering::SeqCst);
    wait_until(
        "every transition after the receiver recovers",
        Duration::from_secs(120),
        || all_four(&hook),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_once_each(&hook);
    let d = deliveries(&hook);
    let seqs: Vec<u64> = d.iter().map(|x| x.1).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(seqs, sorted, "history order per receiver: {d:?}");
}

#[test]
fn a_dead_receiver_does_not_delay_a_healthy_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let healthy = Webhook::start(0);
    let dead = Webhook::start(usize::MAX);
    let _srv = open_alert(
        tmp.path(),
        &format!("webhook_url = \"{}\"\n", healthy.url),
        &format!("[alerts.team_webhooks]\nnorth = \"{}\"\n", dead.url),
    );
    // The healthy receiver hears of every transition while the dead one is still refusing
    // (8 attempts backing off from 0.5 s take over a minute per transition if they block).
    wait_until(
        "all four at the healthy receiver",
        Duration::from_secs(60),
        || all_four(&healthy),
    );
    assert!(dead.requests.load(Ordering::SeqCst) > 0);
    assert!(dead.all().is_empty(), "the dead receiver accepted nothing");
    std::thread::sleep(Duration::from_secs(1));
    assert_once_each(&healthy);
}

/// HMAC-SHA256 of `body` with `key`, hex, computed by `openssl` (independent of carewatch).
fn openssl_hmac(key: &str, body: &[u8]) -> String {
    use std::io::Write;
    let mut c = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key, "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("write");
    let out = c.wait_with_output().expect("openssl");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
}

#[test]
fn bodies_are_signed_with_the_receivers_secret() {
    let tmp = tempfile::tempdir().expect("tmp");
    let global = Webhook::start(0);
    let team = Webhook::start(0);
    let _srv = open_alert(
        tmp.path(),
        &format!(
            "webhook_url = \"{}\"\nwebhook_secret = \"global-s3cret\"\n",
            global.url
        ),
        &format!(
            "[alerts.team_webhooks]\nnorth = \"{}\"\n[alerts.team_webhook_secrets]\nnorth = \"north-s3cret\"\n",
            team.url
        ),
    );
    wait_until("deliveries", Duration::from_secs(60), || {
        all_four(&global) && all_four(&team)
    });
    for (hook, key, other) in [
        (&global, "global-s3cret", "north-s3cret"),
        (&team, "north-s3cret", "global-s3cret"),
    ] {
        let raw = hook.raw.lock().expect("lock").clone();
        assert!(!raw.is_empty());
        for (head, body) in raw {
            let sig = header(&head, "x-carewatch-signature").expect("signature header");
            let ts = header(&head, "x-carewatch-timestamp").expect("timestamp header");
            assert!(ts.parse::<i64>().is_ok(), "{ts}");
            assert_eq!(sig, format!("sha256={}", openssl_hmac(key, &body)));
            assert_ne!(sig, format!("sha256={}", openssl_hmac(other, &body)));
            assert_ne!(sig, format!("sha256={}", openssl_hmac("wrong", &body)));
        }
    }
}

fn metrics(srv: &Server) -> String {
    curl("GET", &format!("{}/metrics", srv.http), srv.admin(), "").1
}

#[test]
fn a_receiver_failing_too_long_is_escalated_and_reported() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dead = Webhook::start(usize::MAX);
    let escalation = Webhook::start(0);
    let srv = open_alert(
        tmp.path(),
        &format!(
            "webhook_url = \"{}\"\nescalation_webhook_url = \"{}\"\nreceiver_failure_escalate_secs = 2\nwebhook_backoff_cap_secs = 1\n",
            dead.url, escalation.url
        ),
        "",
    );
    wait_until(
        "the failing-receiver notice",
        Duration::from_secs(60),
        || {
            escalation
                .all()
                .iter()
                .any(|v| v["event"] == "receiver_failing")
        },
    );
    let notice = escalation
        .all()
        .into_iter()
        .find(|v| v["event"] == "receiver_failing")
        .expect("notice");
    assert_eq!(notice["receiver"], "global");
    let m = metrics(&srv);
    assert!(
        m.contains("carewatch_webhook_receiver_failing{receiver=\"global\"} 1"),
        "{m}"
    );
    assert!(!m.contains(&dead.url), "no URL in metrics");
    let age = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("carewatch_webhook_delivery_age_seconds{receiver=\"global\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok())
        .expect("delivery age");
    assert!(age > 0.0, "{m}");
    // One notice per failure stretch, not one per attempt.
    std::thread::sleep(Duration::from_secs(3));
    let n = escalation
        .all()
        .iter()
        .filter(|v| v["event"] == "receiver_failing")
        .count();
    assert_eq!(n, 1);
}
