//! The rules' per-(rule, patient) samples between runs: bounded by the rule's look-back behind
//! each patient's newest data, a patient silent for a day forgotten, and the skipping of pairs
//! with nothing to reconcile never leaving a pending episode behind.

mod support;

use std::sync::Arc;
use std::time::Duration;

use carewatch_alert::engine::{AlertEngine, Config};
use carewatch_alert::history::{History, Status};
use carewatch_alert::rules;
use carewatch_store::Row;
use carewatch_store::registry::{Principal, Role};
use support::{M, T0, reading};

fn engine_with(b: &support::Base, rule_id: &str) -> AlertEngine {
    let rule = rules::load(None)
        .expect("rules")
        .into_iter()
        .find(|r| r.id == rule_id)
        .expect("rule");
    let history = Arc::new(History::open(&b.dir, false).expect("history"));
    AlertEngine::new(
        Config {
            bins_window: Some(Duration::from_secs(24 * 3600)),
            ..Config::default()
        },
        vec![rule],
        b.q.context().clone(),
        &b.store,
        b.registry.clone(),
        history,
    )
}

/// Patient `p`'s heart rate and step count for minute `m` (steps 0: at rest).
fn minute(p: &str, m: i64, hr: f64) -> Vec<Row> {
    let t = T0 + m * M;
    vec![
        reading(p, "heart_rate", hr, t + 1_000_000),
        reading(p, "steps", 0.0, t + 2_000_000),
    ]
}

fn admin() -> Principal {
    Principal {
        id: "t".into(),
        role: Role::Admin,
        subject: None,
        person: None,
    }
}

#[tokio::test]
async fn samples_stay_within_the_look_back_and_a_patient_silent_for_a_day_is_forgotten() {
    let b = support::base().await;
    let engine = engine_with(&b, "hr_high_at_rest");
    let patients: Vec<String> = (0..100).map(|i| format!("p{i:03}")).collect();
    for m in 0..60 {
        let rows: Vec<Row> = patients.iter().flat_map(|p| minute(p, m, 70.0)).collect();
        b.store.append(rows, Vec::new()).await.expect("append");
        engine.evaluate(T0 + (m + 1) * M).await.expect("evaluate");
    }
    let (held_patients, held) = engine.samples_size();
    assert_eq!(held_patients, 100);
    // hr_high_at_rest: for 10 + clear 5 + 2 buckets of look-back, plus the bucket kept: at
    // most 18 one-minute samples behind each patient's newest (and the newest itself).
    assert!(
        (100 * 17..=100 * 19).contains(&held),
        "samples held after an hour: {held}"
    );
    // `/metrics` has the count as of the last once-a-minute prune, which that run made.
    assert_eq!(engine.samples_held(), held);
    // A day later only the patient still sending is held.
    let late = 25 * 60;
    b.store
        .append(minute("p000", late, 70.0), Vec::new())
        .await
        .expect("append");
    engine
        .evaluate(T0 + (late + 1) * M)
        .await
        .expect("evaluate");
    let (held_patients, held) = engine.samples_size();
    assert_eq!(held_patients, 1, "patients silent for a day are forgotten");
    assert!(held <= 19, "samples held: {held}");
    assert_eq!(
        engine.samples_held(),
        held,
        "the forgotten patients' samples are not counted"
    );
}

#[tokio::test]
async fn a_pending_run_that_breaks_stops_being_pending_while_other_patients_stay_quiet() {
    let b = support::base().await;
    let engine = engine_with(&b, "hr_high_at_rest");
    // `quiet` stays at rest with a normal heart rate; `run` has 5 minutes above the threshold
    // (short of the rule's 10), then a normal minute breaks the run.
    let mut pending_seen = 0;
    for m in 0..20 {
        let hr = if (3..8).contains(&m) { 130.0 } else { 70.0 };
        let mut rows = minute("quiet", m, 70.0);
        rows.extend(minute("run", m, hr));
        b.store.append(rows, Vec::new()).await.expect("append");
        engine.evaluate(T0 + (m + 1) * M).await.expect("evaluate");
        let pending = engine.pending(&admin());
        assert!(
            pending.iter().all(|a| a.patient_id == "run"),
            "minute {m}: {pending:?}"
        );
        // Bucket 3 closes at minute 4 (data past its end); bucket 8, normal, at minute 9.
        let want = usize::from((4..9).contains(&m));
        assert_eq!(pending.len(), want, "minute {m}: {pending:?}");
        pending_seen += pending.len();
    }
    assert_eq!(pending_seen, 5);
    assert!(engine.current(&admin()).is_empty(), "nothing fired");
}

#[tokio::test]
async fn a_patient_silent_for_more_than_a_day_is_kept_while_alerted_and_resolved_when_data_returns()
{
    let b = support::base().await;
    let engine = engine_with(&b, "device_silent");
    for m in 0..10 {
        let mut rows = minute("gone", m, 70.0);
        rows.extend(minute("here", m, 70.0));
        b.store.append(rows, Vec::new()).await.expect("append");
        engine.evaluate(T0 + (m + 1) * M).await.expect("evaluate");
    }
    // Hourly runs for 26 hours; `here` keeps sending, `gone` is silent.
    for h in 1..=26 {
        b.store
            .append(minute("here", h * 60, 70.0), Vec::new())
            .await
            .expect("append");
        engine
            .evaluate(T0 + h * 60 * M + M)
            .await
            .expect("evaluate");
    }
    let open: Vec<_> = engine
        .current(&admin())
        .into_iter()
        .filter(|a| a.status != Status::Resolved)
        .collect();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].patient_id, "gone");
    assert_eq!(
        engine.samples_size().0,
        2,
        "the silent patient with an open alert is kept"
    );
    // Its device comes back: the silence is over.
    let back = 27 * 60;
    b.store
        .append(minute("gone", back, 70.0), Vec::new())
        .await
        .expect("append");
    engine.evaluate(T0 + back * M + M).await.expect("evaluate");
    let gone: Vec<_> = engine
        .current(&admin())
        .into_iter()
        .filter(|a| a.patient_id == "gone")
        .collect();
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0].status, Status::Resolved, "{gone:?}");
    assert_eq!((gone[0].episode_start_us - T0) / M, 10);
}

#[tokio::test]
async fn readings_every_ten_seconds_fire_when_the_tenth_minute_closes_with_its_whole_minute() {
    let b = support::base().await;
    let engine = engine_with(&b, "hr_high_at_rest");
    let mut fired_at = None;
    for tick in 0..(16 * 6) {
        let t = T0 + tick * 10_000_000;
        let m = tick / 6;
        // Above the threshold from minute 2 to minute 11; minute 11's last reading is higher,
        // so its mean (and the alert's peak) is only right with the whole minute read.
        let hr = match (m, tick % 6) {
            (11, 5) => 200.0,
            (2..=11, _) => 130.0,
            _ => 70.0,
        };
        let mut rows = vec![reading("p", "heart_rate", hr, t)];
        if tick % 6 == 0 {
            rows.push(reading("p", "steps", 0.0, t));
        }
        b.store.append(rows, Vec::new()).await.expect("append");
        engine.evaluate(t + 500_000).await.expect("evaluate");
        let firing = engine
            .history()
            .since(0)
            .into_iter()
            .filter(|x| x.event == carewatch_alert::history::Event::Firing)
            .count();
        if firing > 0 && fired_at.is_none() {
            fired_at = Some(tick);
        }
    }
    // Minutes 2..=11 (10 minutes) qualify once minute 11 is closed: at the 12:00 reading.
    assert_eq!(fired_at, Some(12 * 6), "fired at tick {fired_at:?}");
    let a = engine.current(&admin());
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!((a[0].episode_start_us - T0) / M, 2);
    let peak = a[0].value.expect("peak");
    assert!(
        (peak - (5.0 * 130.0 + 200.0) / 6.0).abs() < 1e-9,
        "peak {peak}"
    );
}

#[tokio::test]
async fn a_minute_boundary_over_more_patients_than_a_run_reads_fires_every_episode_exactly_once() {
    let b = support::base().await;
    let engine = engine_with(&b, "hr_high_at_rest");
    // 1,500 patients' minutes close together; a run reads at most 1,100 patients' closed
    // buckets (more than an `IN` list names: the bins are read through a scope) and carries
    // the rest to the next run. Even patients are above the threshold at rest from minute 2
    // to minute 13, odd ones never.
    engine.set_carry_limit(1100);
    let patients: Vec<String> = (0..1500).map(|i| format!("q{i:04}")).collect();
    let high = |i: usize, m: i64| i % 2 == 0 && (2..14).contains(&m);
    let mut carried_seen = 0;
    for m in 0..18 {
        let rows: Vec<Row> = patients
            .iter()
            .enumerate()
            .flat_map(|(i, p)| minute(p, m, if high(i, m) { 130.0 } else { 70.0 }))
            .collect();
        b.store.append(rows, Vec::new()).await.expect("append");
        engine
            .evaluate(T0 + m * M + 30_000_000)
            .await
            .expect("evaluate");
        carried_seen = carried_seen.max(engine.carried());
        // The next run, before any new data, reads what was carried.
        engine
            .evaluate(T0 + m * M + 40_000_000)
            .await
            .expect("evaluate");
        assert_eq!(engine.carried(), 0, "minute {m}: carried left over");
    }
    assert_eq!(
        carried_seen, 400,
        "a boundary of 1,500 patients carries 400"
    );
    let firing: Vec<_> = engine
        .history()
        .since(0)
        .into_iter()
        .filter(|x| x.event == carewatch_alert::history::Event::Firing)
        .collect();
    let mut fired: Vec<&str> = firing.iter().map(|x| x.patient_id.as_str()).collect();
    fired.sort_unstable();
    let want: Vec<&str> = patients
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, p)| p.as_str())
        .collect();
    assert_eq!(
        fired, want,
        "every even patient fired exactly once, no odd one"
    );
    assert!(
        firing.iter().all(|x| (x.episode_start_us - T0) / M == 2),
        "every episode starts at minute 2"
    );
}
