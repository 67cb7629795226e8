//! Table providers over the store and the registry.

use std::sync::Arc;

use arrow_array::builder::{StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;

use carewatch_store::registry::Registry;
use carewatch_store::{Store, Table};

/// The URL scheme under which the store's object store is registered with DataFusion.
pub const TABLES_URL: &str = "carewatch://tables/";

/// `observations` or `dead_letters`: buffer ∪ Parquet files, from one consistent snapshot.
#[derive(Debug)]
pub struct StoreTable {
    store: Store,
    table: Table,
    schema: SchemaRef,
}

impl StoreTable {
    /// A provider for one of the store's tables.
    pub fn new(store: Store, table: Table) -> Self {
        let schema = table.schema();
        StoreTable {
            store,
            table,
            schema,
        }
    }
}

/// The [lo, hi] UTC day range (days since epoch) the filters allow for `column`, if bounded.
fn day_bounds(filters: &[Expr], column: &str) -> (Option<i64>, Option<i64>) {
    let (mut lo, mut hi) = (None::<i64>, None::<i64>);
    let day = |us: i64| us.div_euclid(86_400_000_000);
    let micros = |v: &ScalarValue| -> Option<i64> {
        match v {
            ScalarValue::TimestampMicrosecond(Some(x), _) => Some(*x),
            ScalarValue::TimestampMillisecond(Some(x), _) => Some(x * 1000),
            ScalarValue::TimestampSecond(Some(x), _) => Some(x * 1_000_000),
            ScalarValue::TimestampNanosecond(Some(x), _) => Some(x.div_euclid(1000)),
            _ => None,
        }
    };
    fn walk<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
        if let Expr::BinaryExpr(b) = e
            && b.op == Operator::And
        {
            walk(&b.left, out);
            walk(&b.right, out);
        } else {
            out.push(e);
        }
    }
    let mut conj = Vec::new();
    for f in filters {
        walk(f, &mut conj);
    }
    for e in conj {
        let Expr::BinaryExpr(b) = e else { continue };
        let (col, lit, op) = match (&*b.left, &*b.right) {
            (Expr::Column(c), Expr::Literal(v, _)) => (c, v, b.op),
            (Expr::Literal(v, _), Expr::Column(c)) => match b.op.swap() {
                Some(op) => (c, v, op),
                None => continue,
            },
            _ => continue,
        };
        if col.name != column {
            continue;
        }
        let Some(t) = micros(lit) else { continue };
        match op {
            Operator::Gt | Operator::GtEq => lo = Some(lo.map_or(day(t), |l| l.max(day(t)))),
            Operator::Lt | Operator::LtEq => hi = Some(hi.map_or(day(t), |h| h.min(day(t)))),
            Operator::Eq => {
                lo = Some(lo.map_or(day(t), |l| l.max(day(t))));
                hi = Some(hi.map_or(day(t), |h| h.min(day(t))));
            }
            _ => {}
        }
    }
    (lo, hi)
}

fn date_to_day(date: &str) -> Option<i64> {
    chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp().div_euclid(86_400))
}

#[async_trait::async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snap = self.store.snapshot();
        let mut plans: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        let buffered = snap.buffered(self.table).to_vec();
        let mem = MemTable::try_new(self.schema.clone(), vec![buffered])?;
        plans.push(mem.scan(state, projection, filters, limit).await?);
        let (lo, hi) = day_bounds(filters, self.table.time_column());
        let mut urls = Vec::new();
        for f in snap.files.iter().filter(|f| f.table == self.table) {
            let d = date_to_day(&f.date);
            if d.is_some_and(|d| lo.is_some_and(|l| d < l) || hi.is_some_and(|h| d > h)) {
                continue; // the day partition is outside the filter
            }
            urls.push(ListingTableUrl::parse(format!("{TABLES_URL}{}", f.path))?);
        }
        if !urls.is_empty() {
            let opts = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet");
            let cfg = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(opts)
                .with_schema(self.schema.clone());
            let lt = ListingTable::try_new(cfg)?;
            plans.push(lt.scan(state, projection, filters, limit).await?);
        }
        UnionExec::try_new(plans)
    }
}

/// `devices` and `care_teams`, computed from the registry at each scan.
#[derive(Debug)]
pub struct RegistryTable {
    registry: Arc<Registry>,
    kind: RegistryKind,
    schema: SchemaRef,
}

/// Which registry table.
#[derive(Debug, Clone, Copy)]
pub enum RegistryKind {
    /// One row per device assignment (with the device's last sighting).
    Devices,
    /// One row per patient with a care team.
    CareTeams,
}

impl RegistryTable {
    /// A provider for a registry table.
    pub fn new(registry: Arc<Registry>, kind: RegistryKind) -> Self {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = match kind {
            RegistryKind::Devices => Schema::new(vec![
                Field::new("device_id", DataType::Utf8, false),
                Field::new("patient_id", DataType::Utf8, true),
                Field::new("valid_from", ts.clone(), true),
                Field::new("valid_to", ts.clone(), true),
                Field::new("revoked_at", ts.clone(), true),
                // When the device's readings were last stored (written to the registry at
                // most once a minute; exact while the server runs).
                Field::new("last_seen", ts, true),
            ]),
            RegistryKind::CareTeams => Schema::new(vec![
                Field::new("patient_id", DataType::Utf8, false),
                Field::new("care_team", DataType::Utf8, false),
            ]),
        };
        RegistryTable {
            registry,
            kind,
            schema: Arc::new(schema),
        }
    }

    fn batch(&self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = match self.kind {
            RegistryKind::Devices => {
                let (mut d, mut p) = (StringBuilder::new(), StringBuilder::new());
                let ts = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
                let (mut f, mut t, mut r, mut l) = (ts(), ts(), ts(), ts());
                for dev in self.registry.devices() {
                    if dev.assignments.is_empty() {
                        d.append_value(&dev.device_id);
                        p.append_null();
                        f.append_null();
                        t.append_null();
                        r.append_option(dev.revoked_us);
                        l.append_option(dev.last_seen_us);
                    }
                    for a in &dev.assignments {
                        d.append_value(&dev.device_id);
                        p.append_value(&a.patient_id);
                        f.append_value(a.valid_from_us);
                        t.append_option(a.valid_to_us);
                        r.append_option(dev.revoked_us);
                        l.append_option(dev.last_seen_us);
                    }
                }
                vec![
                    Arc::new(d.finish()),
                    Arc::new(p.finish()),
                    Arc::new(f.finish()),
                    Arc::new(t.finish()),
                    Arc::new(r.finish()),
                    Arc::new(l.finish()),
                ]
            }
            RegistryKind::CareTeams => {
                let (mut p, mut t) = (StringBuilder::new(), StringBuilder::new());
                for (pat, team) in self.registry.care_teams() {
                    p.append_value(pat);
                    t.append_value(team);
                }
                vec![Arc::new(p.finish()), Arc::new(t.finish())]
            }
        };
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

impl BatchSource for RegistryTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn batch(&self) -> Result<RecordBatch> {
        RegistryTable::batch(self)
    }
}

/// A small table computed in full at each scan (registry, audit log).
pub trait BatchSource: std::fmt::Debug + Send + Sync {
    /// The table's schema.
    fn schema(&self) -> SchemaRef;
    /// All its rows, now.
    fn batch(&self) -> Result<RecordBatch>;
}

/// The table provider for any [`BatchSource`].
#[derive(Debug)]
pub struct ComputedTable<S>(pub S);

#[async_trait::async_trait]
impl<S: BatchSource + 'static> TableProvider for ComputedTable<S> {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mem = MemTable::try_new(self.0.schema(), vec![vec![self.0.batch()?]])?;
        mem.scan(state, projection, filters, limit).await
    }
}
