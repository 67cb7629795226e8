//! The `baselines` table, for rules and analysts: one row per (patient, vital, UTC day) known.
//! Each scan first computes the days asked for and not known yet ([`Baselines::ensure`]); an
//! offline session that was asked for nothing (`carewatch sql --data-dir`) shows every day of
//! its data.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `patient_id` | Utf8 | |
//! | `vital`, `code` | Utf8 | `heart_rate` / `8867-4`, `spo2` / `2708-6`, `body_temperature` / `8310-5` |
//! | `day` | Timestamp(µs, UTC) | the UTC day it applies to (learned from the days before) |
//! | `baseline` | Float64 | what rules use: the override, else the learned value (null: neither) |
//! | `learned` | Float64 | the median of the rest minutes in the window |
//! | `override_value` | Float64 | the clinician's value |
//! | `rest_minutes` | Int64 | rest minutes in the window |
//! | `window_days` | Int64 | |
//! | `source` | Utf8 | `override`, `learned` or `insufficient` |

use std::sync::Arc;

use arrow_array::TimestampMicrosecondArray;
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use super::Baselines;

/// The table provider.
#[derive(Debug, Clone)]
pub struct BaselineTable {
    /// The baselines it shows.
    pub baselines: Baselines,
    schema: SchemaRef,
}

/// Registers `baselines` as the table `baselines` in `ctx`.
pub fn register(ctx: &SessionContext, baselines: &Baselines) -> Result<(), String> {
    ctx.register_table(
        "baselines",
        Arc::new(BaselineTable {
            baselines: baselines.clone(),
            schema: schema(),
        }),
    )
    .map(|_| ())
    .map_err(|e| format!("baselines table: {e}"))
}

/// The baselines behind `ctx`'s `baselines` table, if it has one.
pub async fn of(ctx: &SessionContext) -> Option<Baselines> {
    let t = ctx.table_provider("baselines").await.ok()?;
    t.downcast_ref::<BaselineTable>()
        .map(|t| t.baselines.clone())
}

fn schema() -> SchemaRef {
    let utf8 = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    let f64 = |n: &str| Field::new(n, DataType::Float64, true);
    Arc::new(Schema::new(vec![
        utf8("patient_id", false),
        utf8("vital", false),
        utf8("code", false),
        Field::new(
            "day",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        f64("baseline"),
        f64("learned"),
        f64("override_value"),
        Field::new("rest_minutes", DataType::Int64, false),
        Field::new("window_days", DataType::Int64, false),
        utf8("source", false),
    ]))
}

impl BaselineTable {
    fn batch(&self) -> Result<RecordBatch> {
        let rows = self.baselines.rows();
        let window = i64::from(self.baselines.config().window_days);
        let s = |f: &dyn Fn(&super::Baseline) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
        };
        let x = |f: &dyn Fn(&super::Baseline) -> Option<f64>| -> ArrayRef {
            Arc::new(Float64Array::from_iter(rows.iter().map(f)))
        };
        let cols: Vec<ArrayRef> = vec![
            s(&|r| r.patient_id.clone()),
            s(&|r| r.vital.to_owned()),
            s(&|r| r.code.to_owned()),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.day_us))
                    .with_timezone("UTC"),
            ),
            x(&|r| r.baseline),
            x(&|r| r.learned),
            x(&|r| r.override_value),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.rest_minutes as i64),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|_| window))),
            s(&|r| r.source.to_owned()),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), cols)?)
    }
}

#[async_trait::async_trait]
impl TableProvider for BaselineTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
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
        let b = &self.baselines;
        if b.idle() {
            let range = super::compute::data_days(&b.inner.ctx)
                .await
                .map_err(DataFusionError::Execution)?;
            if let Some((a, z)) = range {
                b.prepare(a, z);
            }
        }
        b.ensure().await.map_err(DataFusionError::Execution)?;
        let mem = MemTable::try_new(self.schema.clone(), vec![vec![self.batch()?]])?;
        mem.scan(state, projection, filters, limit).await
    }
}
