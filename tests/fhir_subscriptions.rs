//! Alerts as FHIR and topic-based subscriptions (issue 14) through a real `carewatch serve`,
//! curl and a real HTTP subscriber (tests/common's webhook receiver):
//!
//! - alerts read back as `Communication`s (search by patient, status, date; care-team scoped);
//! - `POST /fhir/Subscription` (Backport IG R4 form) gets a handshake, then one notification
//!   per alert transition, numbered by `events-since-subscription-start`;
//! - the subscriber is down during three alerts, sees the numbers jump at the next
//!   notification, and recovers exactly the missed events with `$events`;
//! - a restart forgets nothing and numbers go on; a care manager of another team neither sees
//!   the subscription nor may subscribe to this team's patients.
//!
//! Everything emitted is saved into `$CAREWATCH_FHIR_OUT` for the external validator.

mod common;
#[path = "fhir_server/subscriptions.rs"]
mod support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Webhook, curl, python, wait_until};
use serde_json::{Value, json};
use support::*;

#[test]
fn a_subscriber_down_during_three_alerts_detects_the_gap_and_recovers_with_events() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = start(tmp.path());
    let mut secrets = Vec::new();
    for i in 1..=7 {
        let p = format!("p{i}");
        secrets.push(srv.register(&format!("w{i}"), &p));
        let team = if i == 5 { "south" } else { "north" };
        set_team(&srv, &p, team);
    }
    let north = srv.token("care_manager", Some("north"));
    let south = srv.token("care_manager", Some("south"));
    let hook = Webhook::start(0);

    // Refused: another team's patient, another topic, a channel we do not have.
    let post = |tok: &str, body: &str| {
        let (s, b) = curl(
            "POST",
            &format!("{}/fhir/Subscription", srv.http),
            tok,
            body,
        );
        (s, serde_json::from_str::<Value>(&b).unwrap_or(Value::Null))
    };
    assert_eq!(
        post(&south, &subscription(&hook.url, "Communication?patient=p1")).0,
        403
    );
    assert_eq!(
        post(
            &south,
            &subscription(&hook.url, "Communication?care-team=north")
        )
        .0,
        403
    );
    let (s, oo) = post(&north, &subscription(&hook.url, "Observation?patient=p1"));
    assert_eq!(
        (s, oo["resourceType"].as_str()),
        (400, Some("OperationOutcome"))
    );

    // Subscribe: a handshake first, then the subscription is active.
    let (s, sub) = post(
        &north,
        &subscription(&hook.url, "Communication?care-team=north"),
    );
    assert_eq!(s, 201, "{sub}");
    let id = sub["id"].as_str().expect("id").to_owned();
    wait_until("the handshake", Duration::from_secs(20), || {
        notifications(&hook)
            .iter()
            .any(|b| shape(b).0 == "handshake")
    });
    let hs = notifications(&hook)
        .into_iter()
        .find(|b| shape(b).0 == "handshake")
        .expect("hs");
    assert_eq!(
        param(&hs["entry"][0]["resource"], "status")[0]["valueCode"],
        "requested"
    );
    validate("handshake", &hs);
    wait_until("active", Duration::from_secs(10), || {
        get(&srv.http, &north, &format!("Subscription/{id}")).1["status"] == "active"
    });
    validate(
        "subscription",
        &get(&srv.http, &north, &format!("Subscription/{id}")).1,
    );

    // One alert while the subscriber is up.
    fever(&srv.http, &secrets[0], 0);
    wait_until(
        "the first alert's notification",
        Duration::from_secs(30),
        || {
            events_seen(&hook)
                .iter()
                .any(|(_, c)| c["status"] == "in-progress")
        },
    );
    let last_seen = events_seen(&hook)
        .iter()
        .map(|(n, _)| *n)
        .max()
        .expect("seen");
    validate(
        "event-notification",
        &notifications(&hook)
            .into_iter()
            .find(|b| shape(b).0 == "event-notification")
            .expect("one"),
    );

    // Down during three alerts (p2, p3, p4); p5 is south's and never reaches this subscription.
    hook.failures.store(usize::MAX, Ordering::SeqCst);
    for i in [1, 2, 3, 4] {
        fever(&srv.http, &secrets[i], 0);
    }
    let count = |http: &str| {
        let (_, b) = get(http, &north, &format!("Subscription/{id}/$status"));
        let st = &b["entry"][0]["resource"];
        param(st, "events-since-subscription-start")
            .first()
            .and_then(|p| p["valueString"].as_str())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Kept while the subscriber is down: every transition of the three alerts.
    let since_down = |http: &str| {
        let q = format!(
            "Subscription/{id}/$events?eventsSinceNumber={}",
            last_seen + 1
        );
        get(http, &north, &q).1
    };
    let firing = |b: &Value| -> Vec<String> {
        let mut p: Vec<String> = b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["resource"]["resourceType"] == "Communication")
            .filter(|e| e["resource"]["status"] == "in-progress")
            .filter_map(|e| {
                e["resource"]["subject"]["reference"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        p.sort();
        p.dedup();
        p
    };
    let want = ["Patient/p2", "Patient/p3", "Patient/p4"];
    wait_until("three alerts kept", Duration::from_secs(30), || {
        firing(&since_down(&srv.http)) == want
    });
    let kept = count(&srv.http);
    // Each delivery is tried three times (0.5 s, then 1 s apart) and then given up.
    let tried = hook.requests.load(Ordering::SeqCst);
    let owed = 3 * usize::try_from(kept - last_seen).expect("small");
    wait_until(
        "the deliveries to be given up",
        Duration::from_secs(60),
        || hook.requests.load(Ordering::SeqCst) >= tried + owed,
    );
    let (_, st) = get(&srv.http, &north, &format!("Subscription/{id}/$status"));
    validate("status", &st);

    // Back up; the next alert's number is past the gap: the client asks $events for the
    // numbers it never received.
    hook.failures.store(0, Ordering::SeqCst);
    fever(&srv.http, &secrets[5], 0);
    wait_until(
        "the notification after the gap",
        Duration::from_secs(30),
        || {
            events_seen(&hook).iter().any(|(n, c)| {
                *n > kept
                    && c["subject"]["reference"] == "Patient/p6"
                    && c["status"] == "in-progress"
            })
        },
    );
    let seen: Vec<(u64, Value)> = events_seen(&hook);
    let max = seen.iter().map(|(n, _)| *n).max().expect("seen");
    let missing: Vec<u64> = (last_seen + 1..=max)
        .filter(|n| !seen.iter().any(|(m, _)| m == n))
        .collect();
    assert!(!missing.is_empty(), "the numbers show a gap");
    let (lo, hi) = (missing[0], missing[missing.len() - 1]);
    let (s, missed) = get(
        &srv.http,
        &north,
        &format!("Subscription/{id}/$events?eventsSinceNumber={lo}&eventsUntilNumber={hi}"),
    );
    assert_eq!(s, 200, "{missed}");
    let (kind, _, numbers) = shape(&missed);
    assert_eq!(kind, "query-event");
    assert_eq!(
        numbers,
        (lo..=hi).collect::<Vec<_>>(),
        "exactly the asked range"
    );
    // What was missed and recovered, with what did arrive, is every transition: all three
    // alerts, and nothing of south's patient p5.
    let mut recovered = firing(&missed);
    for (n, c) in &seen {
        if *n > last_seen && c["status"] == "in-progress" {
            recovered.extend(c["subject"]["reference"].as_str().map(str::to_owned));
        }
    }
    recovered.sort();
    recovered.dedup();
    assert_eq!(
        recovered,
        ["Patient/p2", "Patient/p3", "Patient/p4", "Patient/p6"]
    );
    validate("events", &missed);

    // Another team sees neither the subscription nor its events.
    assert_eq!(get(&srv.http, &south, &format!("Subscription/{id}")).0, 404);
    assert_eq!(
        get(&srv.http, &south, &format!("Subscription/{id}/$events")).0,
        404
    );

    // A heartbeat comes while nothing happens (period 2 s).
    wait_until("a heartbeat", Duration::from_secs(20), || {
        notifications(&hook)
            .iter()
            .any(|b| shape(b).0 == "heartbeat")
    });

    // A restart forgets nothing; numbers go on.
    let before = count(&srv.http);
    assert_eq!(srv.stop(), 0);
    let srv = start(tmp.path());
    assert_eq!(count(&srv.http), before);
    assert_eq!(
        get(&srv.http, &north, &format!("Subscription/{id}")).1["status"],
        "active"
    );
    fever(&srv.http, &secrets[6], 0);
    wait_until(
        "a notification after the restart",
        Duration::from_secs(30),
        || events_seen(&hook).iter().any(|(n, _)| *n > before),
    );
    let mut all: Vec<u64> = events_seen(&hook).iter().map(|(n, _)| *n).collect();
    let len = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), len, "no event number sent twice");
    assert_eq!(srv.stop(), 0);
}

#[test]
fn alerts_read_as_communications() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = start(tmp.path());
    let w1 = srv.register("w1", "p1");
    let (s, _) = curl(
        "PUT",
        &format!("{}/v1/patients/p1/care-team", srv.http),
        srv.admin(),
        r#"{"team":"north"}"#,
    );
    assert_eq!(s, 204);
    fever(&srv.http, &w1, 7);
    let analyst = srv.token("analyst", None);
    wait_until("the alert", Duration::from_secs(30), || {
        get(&srv.http, &analyst, "Communication?patient=p1").1["entry"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    let (s, b) = get(
        &srv.http,
        &analyst,
        "Communication?patient=Patient/p1&status=in-progress&sent=ge2024-05-01",
    );
    assert_eq!(s, 200, "{b}");
    let c = &b["entry"][0]["resource"];
    assert_eq!(c["resourceType"], "Communication");
    assert_eq!(c["category"][0]["coding"][0]["code"], "alert");
    assert_eq!(c["subject"]["reference"], "Patient/p1");
    assert_eq!(c["recipient"][0]["reference"], "CareTeam/north");
    assert_eq!(c["about"][0]["identifier"]["value"], "fever");
    assert_eq!(c["priority"], "urgent", "fever is a warning");
    assert_eq!(c["sent"], "2024-05-01T08:07:00Z");
    let obs = c["reasonReference"][0]["reference"]
        .as_str()
        .expect("the triggering reading");
    let (s, o) = get(&srv.http, &analyst, obs);
    assert_eq!((s, &o["valueQuantity"]["value"]), (200, &json!(39.2)));
    validate("communication-search", &b);
    let id = c["id"].as_str().expect("id");
    let (s, one) = get(&srv.http, &analyst, &format!("Communication/{id}"));
    assert_eq!((s, &one["id"]), (200, &json!(id)));
    validate("communication", &one);
    // The validator does check Communications: without its required status it fails.
    if std::path::Path::new(&python()).exists() {
        let mut broken = one.clone();
        broken.as_object_mut().expect("object").remove("status");
        let file = tmp.path().join("broken-communication.json");
        std::fs::write(&file, broken.to_string()).expect("write");
        let out = Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/fhir_validate.py"
            ))
            .arg(&file)
            .output()
            .expect("validator");
        assert!(
            !out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Other statuses and dates find nothing; a bad parameter is a 400.
    for q in ["status=completed", "sent=lt2024-05-01", "patient=p9"] {
        let (_, b) = get(&srv.http, &analyst, &format!("Communication?{q}"));
        assert_eq!(b["entry"].as_array().map(Vec::len), Some(0), "{q}");
    }
    assert_eq!(
        get(&srv.http, &analyst, "Communication?priority=stat").0,
        400
    );
    // Care-team scoping.
    let north = srv.token("care_manager", Some("north"));
    let south = srv.token("care_manager", Some("south"));
    assert_eq!(
        get(&srv.http, &north, &format!("Communication/{id}")).0,
        200
    );
    assert_eq!(
        get(&srv.http, &south, &format!("Communication/{id}")).0,
        404
    );
    let (_, none) = get(&srv.http, &south, "Communication?patient=p1");
    assert_eq!(none["entry"].as_array().map(Vec::len), Some(0));
    assert_eq!(get(&srv.http, &w1, "Communication?patient=p1").0, 403);
    // Acknowledged is still in progress; resolved is completed (through the alert API).
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/alerts/{id}/resolve", srv.http),
        srv.admin(),
        r#"{"reason":"condition_resolved"}"#,
    );
    assert!(s == 200 || s == 204, "resolve: {s} {b}");
    wait_until("completed", Duration::from_secs(10), || {
        get(&srv.http, &analyst, &format!("Communication/{id}")).1["status"] == "completed"
    });
    assert_eq!(srv.stop(), 0);
}

#[test]
fn new_vital_sign_observations_reach_a_subscription_filtered_by_patient_and_code() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = start(tmp.path());
    let w1 = srv.register("w1", "p1");
    let w2 = srv.register("w2", "p2");
    let hook = Webhook::start(0);
    let analyst = srv.token("analyst", None);
    let body = subscription(
        &hook.url,
        "Observation?patient=p1&code=http://loinc.org|8867-4",
    )
    .replace(
        ALERT_TOPIC,
        "urn:carewatch:SubscriptionTopic:vital-sign-observation",
    )
    .replace("full-resource", "id-only");
    let (s, sub) = curl(
        "POST",
        &format!("{}/fhir/Subscription", srv.http),
        &analyst,
        &body,
    );
    assert_eq!(s, 201, "{sub}");
    wait_until("the handshake", Duration::from_secs(20), || {
        notifications(&hook)
            .iter()
            .any(|b| shape(b).0 == "handshake")
    });
    for (secret, body) in [
        (&w2, r#"{"time":"2024-05-01T08:00:00Z","heart_rate":90}"#),
        (&w1, r#"{"time":"2024-05-01T08:00:00Z","spo2":97}"#),
        (&w1, r#"{"time":"2024-05-01T08:01:00Z","heart_rate":71}"#),
    ] {
        let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), secret, body);
        assert_eq!(s, 202, "{b}");
    }
    let events = || -> Vec<Value> {
        notifications(&hook)
            .into_iter()
            .filter(|b| shape(b).0 == "event-notification")
            .collect()
    };
    wait_until("p1's heart rate", Duration::from_secs(30), || {
        !events().is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    let got = events();
    assert_eq!(got.len(), 1, "only p1's heart rate: {got:?}");
    let (_, n, numbers) = shape(&got[0]);
    assert_eq!((n, numbers), (1, vec![1]));
    let st = &got[0]["entry"][0]["resource"];
    let focus = param(st, "notification-event")[0]["part"][2]["valueReference"]["reference"]
        .as_str()
        .expect("focus")
        .to_owned();
    assert_eq!(got[0]["entry"].as_array().map(Vec::len), Some(1), "id-only");
    validate("observation-notification", &got[0]);
    let path = focus.split("/fhir/").nth(1).expect("fhir path");
    let (s, o) = get(&srv.http, &analyst, path);
    assert_eq!((s, &o["valueQuantity"]["value"]), (200, &json!(71)));
    assert_eq!(srv.stop(), 0);
}
