//! Shared by the engine-level alert tests: a store, registry and engine running the shipped
//! `fever` rule on a temporary data directory, and temperature readings.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use carewatch_alert::engine::{AlertEngine, Config};
use carewatch_alert::history::History;
use carewatch_alert::rules;
use carewatch_query::{QueryEngine, QueryLimits};
use carewatch_store::registry::Registry;
use carewatch_store::{Row, Store};
use carewatch_transform::{Format, Reading, Source, catalogue};

pub const M: i64 = 60_000_000;
/// 2026-01-05T00:00:00Z
pub const T0: i64 = 1_767_571_200_000_000;

/// A reading of vital `key` of patient `p` (device `d-{p}`) at `t`, received at `t`.
pub fn reading(p: &str, key: &str, value: f64, t: i64) -> Row {
    Row {
        reading: Reading {
            device_id: format!("d-{p}"),
            patient_id: Some(p.to_owned()),
            vital: catalogue::by_key(key).expect("vital"),
            value,
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

/// A body temperature reading of patient `p` (device `d-{p}`) at `t`.
pub fn temperature(p: &str, value: f64, t: i64) -> Row {
    reading(p, "body_temperature", value, t)
}

/// The engine and what it runs on.
pub struct World {
    pub _tmp: tempfile::TempDir,
    pub store: Store,
    pub registry: Arc<Registry>,
    pub history: Arc<History>,
    pub engine: AlertEngine,
}

/// A fresh data directory with its store (no background persist), registry and query engine.
pub struct Base {
    pub tmp: tempfile::TempDir,
    pub dir: std::path::PathBuf,
    pub store: Store,
    pub registry: Arc<Registry>,
    pub q: QueryEngine,
}

/// See [`Base`].
pub async fn base() -> Base {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().to_path_buf();
    let mut c = carewatch_store::Config::new(&dir);
    c.tick = Duration::from_secs(3600);
    let store = Store::open(c).await.expect("store");
    let registry = Arc::new(Registry::open(&dir).expect("registry").0);
    let audit = carewatch_query::audit::AuditLog::open(&dir, false).expect("audit");
    let q = QueryEngine::new(
        store.clone(),
        registry.clone(),
        QueryLimits::default(),
        Arc::new(audit),
    )
    .expect("query engine");
    Base {
        tmp,
        dir,
        store,
        registry,
        q,
    }
}

/// The shipped `fever` rule on a fresh data directory (no background persist).
pub async fn fever_world(config: Config) -> World {
    let Base {
        tmp,
        dir,
        store,
        registry,
        q,
    } = base().await;
    let rule = rules::load(None)
        .expect("rules")
        .into_iter()
        .find(|r| r.id == "fever")
        .expect("fever rule");
    let history = Arc::new(History::open(&dir, false).expect("history"));
    let engine = AlertEngine::new(
        config,
        vec![rule],
        q.context().clone(),
        &store,
        registry.clone(),
        history.clone(),
    );
    World {
        _tmp: tmp,
        store,
        registry,
        history,
        engine,
    }
}
