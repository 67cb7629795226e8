//! SQL over fresh and stored data; read-only by construction; limits.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use carewatch_query::{QueryEngine, QueryError, QueryLimits};
use carewatch_store::registry::Registry;
use carewatch_store::{Config, Row, Store};
use carewatch_transform::catalogue;
use carewatch_transform::{Format, Reading, Source};

const T0: i64 = 1_714_550_400_000_000; // 2024-05-01T08:00:00Z

fn row(dev: &str, pat: &str, key: &str, value: f64, t: i64) -> Row {
    Row {
        reading: Reading {
            device_id: dev.into(),
            patient_id: Some(pat.into()),
            vital: catalogue::by_key(key).expect("vital"),
            value,
            effective_us: t,
            effective_end_us: None,
            offset_min: Some(120),
            extra: None,
        },
        received_us: t + 500_000,
        source: Source::Http,
        format: Format::Carewatch,
    }
}

async fn setup(dir: &std::path::Path) -> (Store, QueryEngine) {
    let mut c = Config::new(dir);
    c.tick = Duration::from_secs(3600);
    let store = Store::open(c).await.expect("store");
    let (registry, _) = Registry::open(dir).expect("registry");
    registry
        .register_device("d1", "alice", Some(0))
        .expect("dev");
    registry.set_care_team("alice", "north").expect("team");
    // Yesterday's data in Parquet, today's in the buffer.
    let day = 86_400_000_000;
    let old: Vec<Row> = (0..60)
        .map(|i| {
            row(
                "d1",
                "alice",
                "heart_rate",
                60.0 + i as f64,
                T0 - day + i * 60_000_000,
            )
        })
        .collect();
    store.append(old, vec![]).await.expect("append");
    store.persist().await.expect("persist");
    let new: Vec<Row> = (0..30)
        .map(|i| {
            row(
                "d1",
                "alice",
                "heart_rate",
                100.0 + i as f64,
                T0 + i * 60_000_000,
            )
        })
        .collect();
    store.append(new, vec![]).await.expect("append");
    store
        .append(vec![row("d2", "bob", "spo2", 91.0, T0)], vec![])
        .await
        .expect("append");
    let engine = QueryEngine::new(
        store.clone(),
        Arc::new(registry),
        QueryLimits::default(),
        audit(dir),
    )
    .expect("engine");
    (store, engine)
}

fn audit(dir: &std::path::Path) -> Arc<carewatch_query::audit::AuditLog> {
    Arc::new(carewatch_query::audit::AuditLog::open(dir, false).expect("audit"))
}

fn text(b: &[RecordBatch]) -> String {
    arrow_cast::pretty::pretty_format_batches(b)
        .expect("pretty")
        .to_string()
}

#[tokio::test]
async fn buffer_and_parquet_answer_together() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_s, q) = setup(dir.path()).await;
    let b = q
        .collect("SELECT patient_id, code, count(*) AS n, min(value) AS lo, max(value) AS hi FROM observations GROUP BY 1, 2 ORDER BY 1, 2")
        .await
        .expect("query");
    assert_eq!(
        text(&b),
        "+------------+--------+----+------+-------+\n\
         | patient_id | code   | n  | lo   | hi    |\n\
         +------------+--------+----+------+-------+\n\
         | alice      | 8867-4 | 90 | 60.0 | 129.0 |\n\
         | bob        | 2708-6 | 1  | 91.0 | 91.0  |\n\
         +------------+--------+----+------+-------+"
    );
    // A time filter that excludes yesterday's day partition still answers from the buffer.
    let b = q
        .collect("SELECT count(*) AS n FROM observations WHERE effective_time >= TIMESTAMP '2024-05-01T00:00:00Z'")
        .await
        .expect("query");
    assert!(text(&b).contains("| 31 |"), "{}", text(&b));
    let b = q
        .collect("SELECT count(*) AS n FROM observations WHERE effective_time < TIMESTAMP '2024-05-01T00:00:00Z' AND patient_id = 'alice'")
        .await
        .expect("query");
    assert!(text(&b).contains("| 60 |"), "{}", text(&b));
    // Window functions, registry tables, joins.
    let b = q
        .collect(
            "SELECT o.patient_id, t.care_team, max(o.value - lag) AS biggest_jump FROM (
                 SELECT patient_id, value, lag(value) OVER (PARTITION BY patient_id ORDER BY effective_time) AS lag
                 FROM observations WHERE code = '8867-4') o JOIN care_teams t USING (patient_id) GROUP BY 1, 2",
        )
        .await
        .expect("query");
    assert!(
        text(&b).contains("| alice      | north     |"),
        "{}",
        text(&b)
    );
    let b = q
        .collect("SELECT device_id, patient_id FROM devices")
        .await
        .expect("devices");
    assert!(text(&b).contains("| d1        | alice      |"));
}

#[tokio::test]
async fn every_writing_statement_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_s, q) = setup(dir.path()).await;
    for sql in [
        "CREATE TABLE x (a INT)",
        "CREATE TABLE x AS SELECT * FROM observations",
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'",
        "CREATE VIEW v AS SELECT 1",
        "DROP TABLE observations",
        "INSERT INTO observations SELECT * FROM observations",
        "DELETE FROM observations",
        "UPDATE observations SET value = 0",
        "COPY observations TO '/tmp/x.parquet'",
        "COPY (SELECT 1) TO '/tmp/y.csv'",
        "SET datafusion.execution.batch_size = 1",
        "CREATE SCHEMA s",
    ] {
        match q.collect(sql).await {
            Err(QueryError::NotAllowed(_)) | Err(QueryError::Invalid(_)) => {}
            other => panic!("{sql}: {other:?}"),
        }
    }
    // File-reading table functions do not exist here.
    let e = q
        .collect("SELECT * FROM read_parquet('/etc/passwd')")
        .await
        .unwrap_err();
    assert!(matches!(e, QueryError::Invalid(_)), "{e:?}");
    // Errors carry no paths or internals.
    let e = q
        .collect("SELECT nope FROM observations")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    assert!(
        !e.to_string()
            .contains(dir.path().to_str().unwrap_or("/tmp")),
        "{e}"
    );
}

#[tokio::test]
async fn a_runaway_query_is_cancelled_at_its_limit() {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, _) = setup(dir.path()).await;
    let (registry, _) = Registry::open(dir.path()).expect("registry");
    let limits = QueryLimits {
        timeout: Duration::from_millis(300),
        ..QueryLimits::default()
    };
    let q = QueryEngine::new(store, Arc::new(registry), limits, audit(dir.path())).expect("engine");
    let t = std::time::Instant::now();
    let e = q
        .collect("SELECT count(*) FROM generate_series(1, 10000000000) a CROSS JOIN generate_series(1, 1000) b")
        .await
        .unwrap_err();
    assert!(matches!(e, QueryError::Timeout(_)), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
}
