//! The care manager's actions over HTTP with the real binary (issue #16): a fever alert is
//! assigned, noted, snoozed, broken through by a worse reading and resolved with a reason;
//! each step reaches the webhook once, carries the person who did it, and is a row of the
//! `alerts` table. Bad requests get specific errors; another team cannot act.

mod common;

use std::time::Duration;

use common::{Server, Webhook, curl, note_id, wait_until, write_config};

fn at(secs_ago: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(secs_ago)).to_rfc3339()
}

fn events(hook: &Webhook) -> Vec<String> {
    hook.all()
        .iter()
        .map(|v| v["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_care_manager_assigns_notes_snoozes_and_resolves_an_alert() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hook = Webhook::start(0);
    let alerts = format!(
        "[alerts]\nwebhook_url = \"{}\"\ninterval_secs = 0.5\n",
        hook.url
    );
    let cfg = write_config(tmp.path(), &alerts);
    let srv = Server::start(tmp.path(), &["--config", &cfg]);
    note_id("patient", "p-actions");
    let secret = srv.register("d-actions", "p-actions");
    let (s, b) = curl(
        "PUT",
        &format!("{}/v1/patients/p-actions/care-team", srv.http),
        srv.admin(),
        r#"{"team":"north"}"#,
    );
    assert!(s == 200 || s == 204, "{s} {b}");
    let north = srv.token("care_manager", Some("north"));
    let south = srv.token("care_manager", Some("south"));
    let analyst = srv.token("analyst", None);
    let temp = |v: f64, secs_ago: i64| {
        let body = format!(r#"{{"time":"{}","body_temperature":{v}}}"#, at(secs_ago));
        let (s, b) = curl("POST", &format!("{}/v1/readings", srv.http), &secret, &body);
        assert_eq!(s, 202, "{b}");
    };
    temp(39.2, 120);
    wait_until("the fever alert", Duration::from_secs(30), || {
        events(&hook).contains(&"firing".to_owned())
    });
    let id = hook.all()[0]["alert_id"].as_str().expect("id").to_owned();
    let act = |token: &str, verb: &str, body: &str| {
        curl(
            "POST",
            &format!("{}/v1/alerts/{id}/{verb}", srv.http),
            token,
            body,
        )
    };

    // Refusals first: each specific, none changes anything.
    assert_eq!(act(&south, "assign", "{}").0, 404, "another team's alert");
    assert_eq!(act(&analyst, "note", r#"{"text":"x"}"#).0, 403);
    let (s, b) = act(&north, "snooze", r#"{"minutes":"soon"}"#);
    assert_eq!((s, b.contains("invalid_json")), (400, true), "{b}");
    let (s, b) = act(&north, "snooze", "{}");
    assert_eq!((s, b.contains("minutes")), (400, true), "{b}");
    let (s, b) = act(&north, "resolve", r#"{"reason":"bored"}"#);
    assert_eq!((s, b.contains("false_alarm")), (400, true), "{b}");
    assert_eq!(act(&north, "shrug", "{}").0, 404);

    let (s, b) = act(&north, "assign", r#"{"to":"nurse-kim"}"#);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains(r#""assignee":"nurse-kim""#), "{b}");
    let (s, b) = act(&north, "note", r#"{"text":"left a voicemail"}"#);
    assert_eq!(s, 200, "{b}");
    let (s, b) = act(&north, "snooze", r#"{"minutes":30}"#);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains(r#""status":"snoozed""#), "{b}");
    // A worse reading breaks through the snooze.
    temp(40.3, 30);
    wait_until("the break-through", Duration::from_secs(30), || {
        events(&hook).contains(&"unsnoozed".to_owned())
    });
    let (s, b) = act(&north, "resolve", r#"{"reason":"escalated_to_physician"}"#);
    assert_eq!(s, 200, "{b}");
    assert!(b.contains(r#""status":"resolved""#), "{b}");
    wait_until(
        "the resolution at the webhook",
        Duration::from_secs(30),
        || events(&hook).contains(&"resolved".to_owned()),
    );
    std::thread::sleep(Duration::from_secs(2));
    let got = events(&hook);
    for e in [
        "firing",
        "assigned",
        "noted",
        "snoozed",
        "unsnoozed",
        "resolved",
    ] {
        assert_eq!(
            got.iter().filter(|g| *g == e).count(),
            1,
            "{e} once: {got:?}"
        );
    }
    let all = hook.all();
    let by = |e: &str| all.iter().find(|v| v["event"] == e).expect("event").clone();
    assert_eq!(by("noted")["note"], "left a voicemail");
    assert_eq!(by("unsnoozed")["reason"], "worse_reading");
    assert_eq!(by("resolved")["reason"], "escalated_to_physician");
    assert!(
        by("resolved")["actor"]
            .as_str()
            .is_some_and(|a| !a.is_empty())
    );

    // Every step is a row of the `alerts` table.
    let (s, b) = curl(
        "POST",
        &format!("{}/v1/sql", srv.http),
        &analyst,
        "SELECT event, assignee, reason, actor IS NOT NULL AS by_someone FROM alerts WHERE event IN ('assigned','noted','snoozed','resolved') ORDER BY seq",
    );
    assert_eq!(s, 200, "{b}");
    let rows: serde_json::Value = serde_json::from_str(&b).expect("json");
    let rows = rows.as_array().cloned().unwrap_or_default();
    let evs: Vec<&str> = rows.iter().filter_map(|r| r["event"].as_str()).collect();
    assert_eq!(evs, vec!["assigned", "noted", "snoozed", "resolved"], "{b}");
    assert!(rows.iter().all(|r| r["by_someone"] == true), "{b}");
    assert!(rows.iter().all(|r| r["assignee"] == "nurse-kim"), "{b}");
    assert_eq!(srv.stop(), 0);
}
