//! Alerting that a failure cannot silence: a rule whose query fails (or runs past the rule
//! timeout) for a while does not stop the other rules, and the readings that arrived during the
//! failure still produce its alert once the failure ends (the dirty ranges are put back).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use arrow_schema::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use carewatch_alert::engine::{AlertEngine, Config};
use carewatch_alert::history::{History, Status};
use carewatch_alert::rules::{self, Rule};
use carewatch_query::table::StoreTable;
use carewatch_store::registry::{Principal, Role};
use carewatch_store::{Row, Store, Table};
use carewatch_transform::{Format, Reading, Source, catalogue};

mod support;

const M: i64 = 60_000_000;
/// 2026-01-05T00:00:00Z
const T0: i64 = 1_767_571_200_000_000;

const PASS: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;

/// `observations`, but failing or hanging at planning while the switch says so.
#[derive(Debug)]
struct Switched {
    inner: Arc<dyn TableProvider>,
    mode: Arc<AtomicU8>,
}

#[async_trait::async_trait]
impl TableProvider for Switched {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match self.mode.load(Ordering::SeqCst) {
            FAIL => Err(DataFusionError::Execution("injected failure".into())),
            HANG => std::future::pending().await,
            _ => self.inner.scan(state, projection, filters, limit).await,
        }
    }
}

fn fever(p: &str, t: i64) -> Row {
    Row {
        reading: Reading {
            device_id: format!("d-{p}"),
            patient_id: Some(p.to_owned()),
            vital: catalogue::by_key("body_temperature").expect("vital"),
            value: 39.4,
            effective_us: t,
            effective_end_us: None,
            offset_min: Some(0),
            extra: None,
        },
        received_us: t,
        source: Source::Http,
        format: Format::Carewatch,
    }
}

struct World {
    _tmp: tempfile::TempDir,
    store: Store,
    engine: AlertEngine,
    mode: Arc<AtomicU8>,
}

/// The shipped fever rule twice: as shipped, and `fever_switched` reading the switched table.
async fn world(config: Config) -> World {
    let support::Base {
        tmp,
        dir,
        store,
        registry,
        q,
    } = support::base().await;
    let mode = Arc::new(AtomicU8::new(PASS));
    let switched = Switched {
        inner: Arc::new(StoreTable::new(store.clone(), Table::Observations)),
        mode: mode.clone(),
    };
    q.context()
        .register_table("switched", Arc::new(switched))
        .expect("register");
    let plain: Rule = rules::load(None)
        .expect("rules")
        .into_iter()
        .find(|r| r.id == "fever")
        .expect("fever rule");
    // The same rule over raw rows (as shipped before the minute bins), reading the switched
    // table instead of `observations`.
    let raw_dir = std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("tests/fixtures/raw_rules");
    let mut flaky: Rule = rules::load(Some(&raw_dir))
        .expect("raw rules")
        .into_iter()
        .find(|r| r.id == "fever")
        .expect("raw fever rule");
    flaky.id = "fever_switched".into();
    flaky.sql = flaky.sql.replace("FROM observations", "FROM switched");
    assert!(flaky.sql.contains("FROM switched"), "{}", flaky.sql);
    let history = Arc::new(History::open(&dir, false).expect("history"));
    // The failing rule first, so a failure that stopped the run would starve the other.
    let engine = AlertEngine::new(
        config,
        vec![flaky, plain],
        q.context().clone(),
        &store,
        registry,
        history,
    );
    World {
        _tmp: tmp,
        store,
        engine,
        mode,
    }
}

fn open_alerts(engine: &AlertEngine) -> Vec<(String, String)> {
    let admin = Principal {
        id: "t".into(),
        role: Role::Admin,
        subject: None,
        person: None,
    };
    let mut v: Vec<(String, String)> = engine
        .current(&admin)
        .into_iter()
        .filter(|a| a.status == Status::Firing)
        .map(|a| (a.rule, a.patient_id))
        .collect();
    v.sort();
    v
}

/// Drives the engine through a failure of the switched rule in `mode`, then back to normal.
async fn survives(mode: u8, config: Config) -> AlertEngine {
    let w = world(config).await;
    w.engine.evaluate(T0).await.expect("catch-up run");
    w.mode.store(mode, Ordering::SeqCst);
    w.store
        .append(vec![fever("p", T0 + M)], Vec::new())
        .await
        .expect("append");
    // Whatever the run reports, it must finish and the healthy rule must fire.
    let run = tokio::time::timeout(Duration::from_secs(30), w.engine.evaluate(T0 + 2 * M)).await;
    assert!(run.is_ok(), "a hanging rule query held up the whole run");
    assert_eq!(
        open_alerts(&w.engine),
        vec![("fever".to_owned(), "p".to_owned())],
        "the healthy rule fires despite the failing one"
    );
    // Still failing: another run, no new data; then the failure ends.
    let _ = tokio::time::timeout(Duration::from_secs(30), w.engine.evaluate(T0 + 3 * M)).await;
    w.mode.store(PASS, Ordering::SeqCst);
    w.engine.evaluate(T0 + 4 * M).await.expect("healthy run");
    assert_eq!(
        open_alerts(&w.engine),
        vec![
            ("fever".to_owned(), "p".to_owned()),
            ("fever_switched".to_owned(), "p".to_owned()),
        ],
        "the readings that arrived during the failure still raise the alert"
    );
    w.engine
}

#[tokio::test]
async fn readings_that_arrive_while_a_rule_fails_still_alert_once_it_recovers() {
    survives(FAIL, Config::default()).await;
}

#[tokio::test]
async fn a_rule_past_its_timeout_is_cancelled_counted_and_retried() {
    let config = Config {
        rule_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let engine = survives(HANG, config).await;
    let f = engine.rule_failures();
    assert_eq!((f.error, f.timeout), (0, 2), "{f:?}");
}

#[tokio::test]
async fn failures_are_counted_by_kind() {
    let engine = survives(FAIL, Config::default()).await;
    let f = engine.rule_failures();
    assert_eq!((f.error, f.timeout), (2, 0), "{f:?}");
}
