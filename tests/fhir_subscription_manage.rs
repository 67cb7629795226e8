//! Managing FHIR topic-based subscriptions (issue 14) through a real `carewatch serve`, curl
//! and real HTTP subscribers:
//!
//! - `GET /fhir/Subscription` lists what the caller may see (a care manager their own team's);
//! - `DELETE /fhir/Subscription/{id}` is care-team scoped and stops the notifications (a second
//!   subscription on the same patient shows they would have come);
//! - the events kept for `$events` are bounded (`[fhir.subscriptions] keep_events`): a pruned
//!   number answers an OperationOutcome naming the first kept one, which is still served.

mod common;
#[path = "fhir_server/subscriptions.rs"]
mod support;

use std::time::Duration;

use common::{Server, Webhook, curl, wait_until};
use serde_json::Value;
use support::*;

fn post(srv: &Server, token: &str, body: &str) -> (u16, Value) {
    let (s, b) = curl(
        "POST",
        &format!("{}/fhir/Subscription", srv.http),
        token,
        body,
    );
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

fn delete(srv: &Server, token: &str, id: &str) -> u16 {
    curl(
        "DELETE",
        &format!("{}/fhir/Subscription/{id}", srv.http),
        token,
        "",
    )
    .0
}

fn ids(bundle: &Value) -> Vec<String> {
    let mut v: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    v.sort();
    v
}

/// The highest event number a subscriber has been sent.
fn last_event(hook: &Webhook) -> u64 {
    events_seen(hook).iter().map(|(n, _)| *n).max().unwrap_or(0)
}

#[test]
fn subscriptions_are_listed_and_deleted_within_the_team_and_kept_events_are_bounded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let srv = start_with(tmp.path(), "\n[fhir.subscriptions]\nkeep_events = 2\n");
    let admin = srv.admin().to_owned();
    let w1 = srv.register("mw1", "mp1");
    srv.register("mw2", "mp2");
    let w3 = srv.register("mw3", "mp3");
    for (p, team) in [("mp1", "north"), ("mp2", "south"), ("mp3", "north")] {
        set_team(&srv, p, team);
    }
    let north = srv.token("care_manager", Some("north"));
    let south = srv.token("care_manager", Some("south"));
    let analyst = srv.token("analyst", None);
    let (hook_n, hook_s, hook_w) = (Webhook::start(0), Webhook::start(0), Webhook::start(0));
    let (s, n) = post(
        &srv,
        &north,
        &subscription(&hook_n.url, "Communication?care-team=north"),
    );
    assert_eq!(s, 201, "{n}");
    let n_id = n["id"].as_str().expect("id").to_owned();
    let (s, so) = post(
        &srv,
        &south,
        &subscription(&hook_s.url, "Communication?patient=mp2"),
    );
    assert_eq!(s, 201, "{so}");
    let s_id = so["id"].as_str().expect("id").to_owned();
    // The witness: the analyst's subscription on the same team as north's.
    let (s, w) = post(
        &srv,
        &analyst,
        &subscription(&hook_w.url, "Communication?care-team=north"),
    );
    assert_eq!(s, 201, "{w}");
    let w_id = w["id"].as_str().expect("id").to_owned();

    // Search: each care manager sees their own team's; the analyst all; status filters.
    wait_until("all active", Duration::from_secs(20), || {
        ids(&get(&srv.http, &analyst, "Subscription?status=active").1).len() == 3
    });
    let (s, mine) = get(&srv.http, &north, "Subscription");
    assert_eq!(s, 200, "{mine}");
    assert_eq!(ids(&mine), [n_id.clone()]);
    validate("search", &mine);
    assert_eq!(
        ids(&get(&srv.http, &south, "Subscription").1),
        [s_id.clone()]
    );
    let mut all = vec![n_id.clone(), s_id.clone(), w_id.clone()];
    all.sort();
    assert_eq!(ids(&get(&srv.http, &admin, "Subscription").1), all);
    assert!(ids(&get(&srv.http, &admin, "Subscription?status=off").1).is_empty());
    let (s, oo) = get(&srv.http, &admin, "Subscription?topic=x");
    assert_eq!(
        (s, oo["resourceType"].as_str()),
        (400, Some("OperationOutcome"))
    );

    // Four events on north's subscription (pending and firing, acknowledged, resolved); two kept.
    fever(&srv.http, &w1, 0);
    let alert = alert_of(&srv, "mp1");
    act(&srv, &format!("{alert}/ack"), "");
    act(
        &srv,
        &format!("{alert}/resolve"),
        r#"{"reason":"condition_resolved"}"#,
    );
    wait_until("four events notified", Duration::from_secs(30), || {
        last_event(&hook_n) >= 4
    });
    let (s, gone) = get(
        &srv.http,
        &north,
        &format!("Subscription/{n_id}/$events?eventsSinceNumber=1"),
    );
    assert_eq!(s, 410, "{gone}");
    assert_eq!(gone["resourceType"], "OperationOutcome");
    // The answer names the first number still kept: the latest two or three (pruning waits
    // for a quarter more than the bound, at least one).
    let said = gone["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    let first: u64 = said
        .rsplit("eventsSinceNumber=")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    let last = last_event(&hook_n);
    assert!((2..=3).contains(&(last - first + 1)), "{first}..{last}");
    let (s, kept) = get(
        &srv.http,
        &north,
        &format!("Subscription/{n_id}/$events?eventsSinceNumber={first}"),
    );
    assert_eq!(s, 200, "{kept}");
    assert_eq!(shape(&kept).2, (first..=last).collect::<Vec<_>>());
    validate("events-after-pruning", &kept);
    let files = srv.dir.join("fhir-subscriptions");
    let lines = std::fs::read_to_string(files.join(format!("{n_id}.events.jsonl")))
        .expect("events file")
        .lines()
        .count();
    assert_eq!(lines as u64, last - first + 1, "the file is pruned too");

    // Delete: another team cannot (it does not exist for them), an analyst not someone else's.
    assert_eq!(delete(&srv, &south, &n_id), 404);
    assert_eq!(delete(&srv, &analyst, &n_id), 403);
    assert_eq!(delete(&srv, &north, &n_id), 204);
    assert_eq!(
        get(&srv.http, &north, &format!("Subscription/{n_id}")).0,
        404
    );
    assert!(ids(&get(&srv.http, &north, "Subscription").1).is_empty());
    assert!(!files.join(format!("{n_id}.json")).exists());
    assert_eq!(delete(&srv, &north, &n_id), 404);
    // A new alert in the north team reaches the witness, not the deleted subscription.
    let before = last_event(&hook_n);
    let witness = last_event(&hook_w);
    fever(&srv.http, &w3, 0);
    wait_until(
        "the witness hears the new alert",
        Duration::from_secs(30),
        || last_event(&hook_w) > witness,
    );
    assert_eq!(last_event(&hook_n), before, "nothing after the delete");
    // The admin may delete anyone's.
    assert_eq!(delete(&srv, &admin, &s_id), 204);
    assert_eq!(srv.stop(), 0);
}
