//! Alerting that an analyst cannot starve or silence, with the real binary: analysts hammering
//! heavy SQL over HTTP (cross joins and big aggregations, back to back, as many as they may run
//! at once) and trying to change session settings over the Postgres wire while an episode is
//! injected — the alert still fires and reaches the webhook, because the rules evaluate on their
//! own session and memory pool, each rule within its own timeout. The rule-failure counter is
//! exposed with its fixed label vocabulary.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Server, Webhook, curl, simulate, wait_until};

const HEAVY: &[&str] = &[
    "SELECT count(*) FROM observations a CROSS JOIN observations b CROSS JOIN observations c WHERE a.value + b.value > c.value",
    "SELECT a.patient_id, b.code, count(*), avg(a.value * b.value) FROM observations a JOIN observations b ON a.patient_id = b.patient_id GROUP BY 1, 2 ORDER BY 4 DESC",
    "SELECT a.device_id, count(DISTINCT b.effective_time) FROM observations a CROSS JOIN observations b GROUP BY 1",
];

/// Settings an analyst might try, to change what rules see or how they run.
const SETS: &[&str] = &[
    "SET datafusion.runtime.memory_limit = '1K'",
    "SET datafusion.execution.batch_size = 1",
    "SET datafusion.sql_parser.dialect = 'MySQL'",
    "SET datafusion.catalog.default_schema = 'nowhere'",
    "SET datafusion.execution.time_zone = '+05:00'",
];

fn hammer(url: &str, token: &str, stop: &AtomicBool, ran: &AtomicUsize) {
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let body = serde_json::json!({ "sql": HEAVY[i % HEAVY.len()] }).to_string();
        let (status, _) = curl("POST", url, token, &body);
        if status == 200 {
            ran.fetch_add(1, Ordering::SeqCst);
        }
        i += 1;
    }
}

fn psql_settings(pg: &str, token: &str, stop: &AtomicBool) {
    let (host, port) = pg.rsplit_once(':').expect("addr");
    let conn = format!("host={host} port={port} user=analyst dbname=carewatch connect_timeout=10");
    while !stop.load(Ordering::SeqCst) {
        for set in SETS {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            // Accepted or refused, it must not reach the rules.
            let _ = Command::new("psql")
                .args([conn.as_str(), "-X", "-A", "-t", "-c", set, "-c", HEAVY[2]])
                .env("PGPASSWORD", token)
                .output()
                .expect("psql installed (scripts/setup-test-deps.sh)");
        }
    }
}

fn fired(hook: &Webhook, rule: &str, patient: &str) -> bool {
    hook.all()
        .iter()
        .any(|v| v["event"] == "firing" && v["rule"] == rule && v["patient_id"] == patient)
}

#[test]
fn analysts_hammering_sql_cannot_starve_or_silence_the_alerts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hook = Webhook::start(0);
    let cfg = tmp.path().join("carewatch.toml");
    std::fs::write(
        &cfg,
        format!(
            "[alerts]\nwebhook_url = \"{}\"\ninterval_secs = 0.5\nrule_timeout_secs = 30\n\n[query]\ntimeout_secs = 20\n",
            hook.url
        ),
    )
    .expect("config");
    let srv = Server::start(tmp.path(), &["--config", cfg.to_str().expect("utf8")]);
    let analyst = srv.token("analyst", None);
    let pg = srv.pg_ready();
    let stop = Arc::new(AtomicBool::new(false));
    let ran = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for _ in 0..3 {
        let (url, token) = (format!("{}/v1/sql", srv.http), analyst.clone());
        let (stop, ran) = (stop.clone(), ran.clone());
        threads.push(std::thread::spawn(move || {
            hammer(&url, &token, &stop, &ran)
        }));
    }
    {
        let (token, stop) = (analyst.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            psql_settings(&pg, &token, &stop)
        }));
    }

    simulate(
        &srv,
        3,
        30,
        &[
            "--episode",
            "tachycardia:0@300+900",
            "--episode",
            "fever:2@600+900",
        ],
    );
    wait_until(
        "both alerts at the webhook while analysts hammer SQL",
        Duration::from_secs(180),
        || {
            fired(&hook, "hr_high_at_rest", "sim-pat-00000")
                && fired(&hook, "fever", "sim-pat-00002")
        },
    );
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("analyst thread");
    }
    assert!(
        ran.load(Ordering::SeqCst) > 0,
        "the analysts' heavy queries ran"
    );

    // The failure counter, by reason only (no rule or patient labels).
    let (s, body) = curl("GET", &format!("{}/metrics", srv.http), srv.admin(), "");
    assert_eq!(s, 200, "{body}");
    let lines: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("carewatch_rule_failures_total"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("reason=\"timeout\"")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("sim-pat")),
        "no patient ids in labels: {lines:?}"
    );
}
