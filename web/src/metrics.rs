//! `/metrics` (Prometheus text format 0.0.4) and `/readyz`.
//!
//! Labels are fixed vocabularies only (source, reason code, table, status, rule id) — never a
//! patient or device id. The exposition is written here rather than through a metrics crate:
//! every value already lives in a counter of the part that owns it (store stats, alert engine,
//! webhook notifier), so this is a read-out, validated in tests by the Prometheus project's own
//! Python parser.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use carewatch_alert::history::Status;
use carewatch_store::Histogram;
use carewatch_store::registry::{Principal, Role};

use crate::WebState;

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    /// A family of one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let esc = val
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{esc}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }
    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let mut cum = 0u64;
        for (i, b) in Histogram::BOUNDS.iter().enumerate() {
            cum += h.counts[i];
            self.sample(
                &format!("{name}_bucket"),
                &[("le", &b.to_string())],
                cum as f64,
            );
        }
        let total = h.count();
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], total as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), &[], total as f64);
    }
}

/// `GET /metrics`.
pub async fn metrics(
    State(s): State<WebState>,
    auth: Result<carewatch_auth::Caller, carewatch_auth::AuthError>,
) -> Response {
    if s.metrics_require_token {
        let allowed = auth.and_then(|c| {
            c.require(
                &[Role::Admin, Role::Analyst],
                "metrics need an admin or analyst credential",
            )
            .map(|_| ())
        });
        if let Err(e) = allowed {
            return e.into_response();
        }
    }
    let st = s.store.stats();
    let mut o = Out(String::with_capacity(8192));
    o.family(
        "carewatch_readings_stored_total",
        "counter",
        "Readings normalised and durably stored, by source.",
    );
    for src in ["http", "mqtt", "replay"] {
        let n = st.rows_by_source.get(src).copied().unwrap_or(0);
        o.sample(
            "carewatch_readings_stored_total",
            &[("source", src)],
            n as f64,
        );
    }
    o.family(
        "carewatch_readings_rejected_total",
        "counter",
        "Rejected items (each a dead-letter row), by source and reason code.",
    );
    for ((src, reason), n) in &st.dead_by_reason {
        o.sample(
            "carewatch_readings_rejected_total",
            &[("source", src), ("reason", reason)],
            *n as f64,
        );
    }
    o.family(
        "carewatch_readings_received_total",
        "counter",
        "Items received (stored + rejected), by source.",
    );
    for src in ["http", "mqtt", "replay"] {
        let stored = st.rows_by_source.get(src).copied().unwrap_or(0);
        let rejected: u64 = st
            .dead_by_reason
            .iter()
            .filter(|((s2, _), _)| *s2 == src)
            .map(|(_, n)| *n)
            .sum();
        o.sample(
            "carewatch_readings_received_total",
            &[("source", src)],
            (stored + rejected) as f64,
        );
    }
    o.histogram(
        "carewatch_wal_commit_seconds",
        "WAL group commit (write + fsync) duration.",
        &st.commit_seconds,
    );
    o.histogram(
        "carewatch_persist_seconds",
        "Buffer-to-Parquet persist duration.",
        &st.persist_seconds,
    );
    o.histogram(
        "carewatch_follow_seconds",
        "Cluster mode: following other nodes' commits to the shared tables (log refresh, reading their new files, telling the alert engine).",
        &st.follow_seconds,
    );
    o.single(
        "carewatch_buffer_rows",
        "gauge",
        "Rows in the in-memory buffer (acknowledged, not yet in Parquet).",
        st.buffered_rows as f64,
    );
    o.single(
        "carewatch_wal_commits_total",
        "counter",
        "WAL group commits.",
        st.commits as f64,
    );
    // Files per day: the total and the most in any one day (compaction keeps it small).
    let snap = s.store.snapshot();
    let mut per_day: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for f in &snap.files {
        *per_day
            .entry((f.table.name(), f.date.as_str()))
            .or_default() += 1;
    }
    o.family(
        "carewatch_parquet_files",
        "gauge",
        "Parquet files, by table.",
    );
    o.family(
        "carewatch_parquet_files_max_per_day",
        "gauge",
        "Most Parquet files in any one day partition, by table.",
    );
    for name in [
        carewatch_store::Table::Observations.name(),
        carewatch_store::Table::DeadLetters.name(),
    ] {
        let mine: Vec<u64> = per_day
            .iter()
            .filter(|((t, _), _)| *t == name)
            .map(|(_, n)| *n)
            .collect();
        o.sample(
            "carewatch_parquet_files",
            &[("table", name)],
            mine.iter().sum::<u64>() as f64,
        );
        o.sample(
            "carewatch_parquet_files_max_per_day",
            &[("table", name)],
            mine.iter().copied().max().unwrap_or(0) as f64,
        );
    }
    let (runs, _) = s.alerts.runs();
    o.single(
        "carewatch_rule_runs_total",
        "counter",
        "Rule evaluation runs.",
        runs as f64,
    );
    let failed = s.alerts.rule_failures();
    o.family(
        "carewatch_rule_failures_total",
        "counter",
        "Rule evaluations that failed (error) or ran past alerts.rule_timeout_secs (timeout); their ranges are retried.",
    );
    for (reason, n) in [("error", failed.error), ("timeout", failed.timeout)] {
        o.sample(
            "carewatch_rule_failures_total",
            &[("reason", reason)],
            n as f64,
        );
    }
    o.histogram(
        "carewatch_rule_run_seconds",
        "Duration of one evaluation of all rules.",
        &s.alerts.run_seconds(),
    );
    let (bin_patients, bin_bytes) = s.alerts.bins_bytes();
    o.single(
        "carewatch_minute_bins_patients",
        "gauge",
        "Patients with minute bins in memory (the rules' vital_minutes).",
        bin_patients as f64,
    );
    o.single(
        "carewatch_minute_bins_bytes",
        "gauge",
        "Bytes allocated for the minute bins' slots (32 per slot; excludes the interned ids).",
        bin_bytes as f64,
    );
    let (latest_patients, latest_bytes) = s.latest.bytes();
    o.single(
        "carewatch_latest_patients",
        "gauge",
        "Patients in the dashboard's latest-value cache (heard of in the last day).",
        latest_patients as f64,
    );
    o.single(
        "carewatch_latest_bytes",
        "gauge",
        "Bytes the latest-value cache's entries and sparkline rings take (600 per vital).",
        latest_bytes as f64,
    );
    o.single(
        "carewatch_rule_samples",
        "gauge",
        "Per-bucket samples the rules keep between runs (all rules and patients, as of the once-a-minute prune).",
        s.alerts.samples_held() as f64,
    );
    let admin = Principal {
        id: "metrics".into(),
        role: Role::Admin,
        subject: None,
        person: None,
    };
    let all = s.alerts.current(&admin);
    let pending = s.alerts.pending(&admin).len();
    o.family("carewatch_alerts", "gauge", "Alerts by state.");
    for st in [
        Status::Pending,
        Status::Firing,
        Status::Acknowledged,
        Status::Resolved,
    ] {
        let n = if st == Status::Pending {
            pending
        } else {
            all.iter().filter(|a| a.status == st).count()
        };
        o.sample("carewatch_alerts", &[("state", st.as_str())], n as f64);
    }
    use std::sync::atomic::Ordering::Relaxed;
    o.family(
        "carewatch_webhook_deliveries_total",
        "counter",
        "Webhook deliveries that succeeded.",
    );
    o.sample(
        "carewatch_webhook_deliveries_total",
        &[],
        s.webhooks.delivered.load(Relaxed) as f64,
    );
    o.family(
        "carewatch_webhook_failures_total",
        "counter",
        "Webhook delivery attempts that failed (each retried with back-off).",
    );
    o.sample(
        "carewatch_webhook_failures_total",
        &[],
        s.webhooks.failed_attempts.load(Relaxed) as f64,
    );
    o.family(
        "carewatch_webhook_dropped_total",
        "counter",
        "Webhook deliveries given up after every attempt failed.",
    );
    o.sample(
        "carewatch_webhook_dropped_total",
        &[],
        s.webhooks.dropped.load(Relaxed) as f64,
    );
    webhook_receivers(&mut o, &s.webhooks);
    for f in &s.extra_metrics {
        f(&mut o.0);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o.0,
    )
        .into_response()
}

/// `GET /readyz`: 200 once the rules have run at least once (store open, rules planned,
/// evaluation working) and every other condition holds (cluster mode: in touch with
/// PostgreSQL); 503 with the first reason otherwise.
pub async fn ready(State(s): State<WebState>) -> Response {
    let (runs, _) = s.alerts.runs();
    let why = if runs > 0 {
        s.ready_checks.iter().find_map(|c| c())
    } else {
        Some("rules have not run yet")
    };
    match why {
        None => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"ready": true})),
        )
            .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

/// Per-receiver webhook gauges, labelled by kind only (never a URL or a team).
fn webhook_receivers(o: &mut Out, w: &carewatch_alert::notify::Counters) {
    use carewatch_alert::notify::ReceiverKind;
    let now = chrono::Utc::now().timestamp_micros();
    let kinds: Vec<ReceiverKind> = ReceiverKind::ALL
        .into_iter()
        .filter(|k| w.has(*k))
        .collect();
    if kinds.is_empty() {
        return;
    }
    o.family(
        "carewatch_webhook_delivery_age_seconds",
        "gauge",
        "Age of the oldest transition not yet delivered to a webhook receiver (0: caught up).",
    );
    for k in &kinds {
        let age = w.delivery_age_seconds(*k, now);
        o.sample(
            "carewatch_webhook_delivery_age_seconds",
            &[("receiver", k.as_str())],
            age,
        );
    }
    o.family(
        "carewatch_webhook_receiver_failing",
        "gauge",
        "1 while a webhook receiver has failed continuously past alerts.receiver_failure_escalate_secs.",
    );
    for k in &kinds {
        let v = if w.receiver_failing(*k) { 1.0 } else { 0.0 };
        o.sample(
            "carewatch_webhook_receiver_failing",
            &[("receiver", k.as_str())],
            v,
        );
    }
}
