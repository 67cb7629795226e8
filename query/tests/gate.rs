//! The statement gate on its own: kinds, whole-plan checks, table access from the plan, the
//! base session untouched by per-query settings, limits.

use std::sync::Arc;
use std::time::Duration;

use carewatch_query::audit::AuditLog;
use carewatch_query::gate::{self, Caller, Settings};
use carewatch_query::{QueryEngine, QueryError, QueryLimits};
use carewatch_store::registry::{Principal, Registry, Role};
use carewatch_store::{Config, Store};
use futures::StreamExt;

async fn engine(dir: &std::path::Path, limits: QueryLimits) -> QueryEngine {
    let mut c = Config::new(dir);
    c.tick = Duration::from_secs(3600);
    let store = Store::open(c).await.expect("store");
    let (registry, _) = Registry::open(dir).expect("registry");
    let audit = Arc::new(AuditLog::open(dir, false).expect("audit"));
    QueryEngine::new(store, Arc::new(registry), limits, audit).expect("engine")
}

fn analyst() -> Caller {
    Caller::user(
        Principal {
            id: "a1".into(),
            role: Role::Analyst,
            subject: None,
            person: None,
        },
        "test",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_queries_pass_and_the_whole_plan_is_checked() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = engine(dir.path(), QueryLimits::default()).await;
    let target = dir.path().join("x.csv");
    let t = target.to_str().expect("utf8");
    for sql in [
        format!("EXPLAIN ANALYZE COPY (SELECT 1) TO '{t}'"),
        format!("EXPLAIN COPY (SELECT 1) TO '{t}'"),
        format!("COPY (WITH c AS (SELECT 1) SELECT * FROM c) TO '{t}'"),
        "WITH c AS (SELECT 1 AS a) INSERT INTO observations SELECT * FROM observations".into(),
        "SET datafusion.execution.batch_size = 1".into(),
        "SELECT 1; SELECT 2".into(),
    ] {
        let e = q.collect_as(&analyst(), &sql).await.expect_err(&sql);
        assert!(
            matches!(e, QueryError::NotAllowed(_) | QueryError::Invalid(_)),
            "{sql}: {e:?}"
        );
    }
    assert!(!target.exists(), "a file was written");
    let b = q
        .collect_as(&analyst(), "EXPLAIN ANALYZE SELECT count(*) FROM range(10)")
        .await
        .expect("explain analyze of a query");
    assert!(!b.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_access_comes_from_the_plan() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = engine(dir.path(), QueryLimits::default()).await;
    for sql in [
        "SELECT * FROM audit_log",
        "WITH t AS (SELECT * FROM carewatch.public.audit_log) SELECT count(*) FROM t",
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM audit_log)",
        "EXPLAIN SELECT * FROM audit_log",
    ] {
        let e = q.collect_as(&analyst(), sql).await.expect_err(sql);
        assert!(matches!(e, QueryError::Forbidden(_)), "{sql}: {e:?}");
    }
    // A string that merely mentions audit_log reads nothing from it.
    let plan_sql = "SELECT 'x\\'' AS a, statement FROM audit_log -- '";
    let b = q.collect_as(&analyst(), plan_sql).await.expect("a literal");
    assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert!(
        gate::parse("SELECT `x` FROM t").is_err(),
        "MySQL quoting is not parsed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_query_settings_never_touch_the_base_session() {
    let dir = tempfile::tempdir().expect("tmp");
    let q = engine(dir.path(), QueryLimits::default()).await;
    let s = Settings {
        time_zone: Some("+05:00".into()),
        statement_timeout: Some(Duration::from_secs(5)),
    };
    let mut st = q
        .query(&analyst(), "SELECT now()", &s, None)
        .await
        .expect("query");
    while let Some(b) = st.next().await {
        b.expect("batch");
    }
    let base = q.context().state();
    assert_eq!(base.config().options().execution.time_zone, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_apply_per_query() {
    let dir = tempfile::tempdir().expect("tmp");
    let limits = QueryLimits {
        timeout: Duration::from_secs(30),
        max_rows: 100,
        analyst_concurrency: 1,
        ..QueryLimits::default()
    };
    let q = engine(dir.path(), limits).await;
    let e = q
        .collect_as(&analyst(), "SELECT * FROM range(1000)")
        .await
        .expect_err("row cap");
    assert!(matches!(e, QueryError::TooManyRows(100)), "{e:?}");
    // A lowered statement timeout applies, and is a timeout.
    let s = Settings {
        statement_timeout: Some(Duration::from_millis(300)),
        ..Settings::default()
    };
    let t = std::time::Instant::now();
    let mut st = q
        .query(
            &analyst(),
            "SELECT max(value % 7) FROM range(1000000000000)",
            &s,
            None,
        )
        .await
        .expect("start");
    let held = q
        .query(&analyst(), "SELECT 1", &Settings::default(), None)
        .await;
    assert!(matches!(held, Err(QueryError::Busy)), "{held:?}");
    let e = st.next().await.expect("an item").expect_err("timeout");
    assert!(matches!(e, QueryError::Timeout(_)), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(st);
    q.collect_as(&analyst(), "SELECT 1")
        .await
        .expect("the permit is back");
}
