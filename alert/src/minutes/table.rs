//! `vital_minutes(patient_id, code, effective_time, value_count, value_sum, value_min,
//! value_max)`: one row per (patient, code, minute) with readings; `effective_time` is the
//! minute's start. Minutes from the live bins' horizon on come from memory; earlier minutes (all
//! of them without live bins: the backtest, `rules check`) are folded at scan time from
//! `observations` with the same [`super::fold`]. Filters on `effective_time`, `patient_id` and
//! `code` are used to read only what is asked for (and re-applied by DataFusion).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown, col, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use super::{Bin, MINUTE_US, MinuteBins, Scope, TABLE, fold, minute_of};

/// The `vital_minutes` provider: live bins (if any) over a scan-time fold of `observations`.
#[derive(Debug)]
pub struct VitalMinutes {
    observations: Arc<dyn TableProvider>,
    live: Option<Arc<MinuteBins>>,
    schema: SchemaRef,
}

/// The table's schema.
pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("code", DataType::Utf8, false),
        Field::new("effective_time", ts, false),
        Field::new("value_count", DataType::Int64, false),
        Field::new("value_sum", DataType::Float64, false),
        Field::new("value_min", DataType::Float64, false),
        Field::new("value_max", DataType::Float64, false),
    ]))
}

impl VitalMinutes {
    /// Over `observations`, with `live` bins for the minutes from their horizon on.
    pub fn new(observations: Arc<dyn TableProvider>, live: Option<Arc<MinuteBins>>) -> Self {
        VitalMinutes {
            observations,
            live,
            schema: schema(),
        }
    }
}

/// Registers `vital_minutes` computed from the session's own `observations` (history only), unless
/// the session has one already (the live engine's).
pub async fn ensure_registered(ctx: &SessionContext) -> std::result::Result<(), String> {
    if ctx.table_exist(TABLE).map_err(|e| e.to_string())? {
        return Ok(());
    }
    let obs = ctx
        .table_provider("observations")
        .await
        .map_err(|e| format!("{TABLE}: {e}"))?;
    ctx.register_table(TABLE, Arc::new(VitalMinutes::new(obs, None)))
        .map_err(|e| format!("{TABLE}: {e}"))?;
    Ok(())
}

/// What the filters ask for: `[lo, hi)` of `effective_time` and the patients and codes named.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Wanted {
    pub(crate) lo: Option<i64>,
    pub(crate) hi: Option<i64>,
    pub(crate) patients: Option<Vec<String>>,
    pub(crate) codes: Option<Vec<String>>,
    /// An open [`super::Scope`] (`rule_scope(patient_id, id)`).
    pub(crate) scope: Option<u64>,
}

fn micros(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampMicrosecond(Some(x), _) => Some(*x),
        ScalarValue::TimestampMillisecond(Some(x), _) => x.checked_mul(1000),
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1_000_000),
        ScalarValue::TimestampNanosecond(Some(x), _) => Some(x.div_euclid(1000)),
        _ => None,
    }
}

fn string(v: &Expr) -> Option<String> {
    match v {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => Some(s.clone()),
        _ => None,
    }
}

fn column_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(&c.name),
        Expr::Cast(c) => column_name(&c.expr),
        Expr::TryCast(c) => column_name(&c.expr),
        _ => None,
    }
}

/// The strings `e` restricts `column` to (`=`, `IN`, `OR` of those), if it does.
fn string_set(e: &Expr, column: &str) -> Option<Vec<String>> {
    match e {
        Expr::BinaryExpr(b) if b.op == Operator::Eq => {
            let (c, v) = match column_name(&b.left) {
                Some(c) => (c, &*b.right),
                None => (column_name(&b.right)?, &*b.left),
            };
            (c == column).then(|| string(v)).flatten().map(|s| vec![s])
        }
        Expr::BinaryExpr(b) if b.op == Operator::Or => {
            let mut l = string_set(&b.left, column)?;
            l.extend(string_set(&b.right, column)?);
            Some(l)
        }
        Expr::InList(l) if !l.negated && column_name(&l.expr) == Some(column) => {
            l.list.iter().map(string).collect()
        }
        _ => None,
    }
}

fn conjuncts<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryExpr(b) if b.op == Operator::And => {
            conjuncts(&b.left, out);
            conjuncts(&b.right, out);
        }
        _ => out.push(e),
    }
}

fn narrow(into: &mut Option<Vec<String>>, set: Vec<String>) {
    *into = Some(match into.take() {
        Some(old) => old.into_iter().filter(|x| set.contains(x)).collect(),
        None => set,
    });
}

pub(crate) fn wanted(filters: &[Expr]) -> Wanted {
    let mut w = Wanted::default();
    let mut conj = Vec::new();
    for f in filters {
        conjuncts(f, &mut conj);
    }
    for e in conj {
        if let Some(id) = super::scope::scope_id(e) {
            w.scope = Some(id);
            continue;
        }
        if let Some(s) = string_set(e, "patient_id") {
            narrow(&mut w.patients, s);
            continue;
        }
        if let Some(s) = string_set(e, "code") {
            narrow(&mut w.codes, s);
            continue;
        }
        let Expr::BinaryExpr(b) = e else { continue };
        let (c, v, op) = match (
            column_name(&b.left),
            &*b.right,
            column_name(&b.right),
            &*b.left,
        ) {
            (Some(c), Expr::Literal(v, _), _, _) => (c, v, b.op),
            (None, _, Some(c), Expr::Literal(v, _)) => match b.op.swap() {
                Some(op) => (c, v, op),
                None => continue,
            },
            _ => continue,
        };
        let Some(t) = micros(v).filter(|_| c == "effective_time") else {
            continue;
        };
        let (lo, hi) = match op {
            Operator::Gt => (t.checked_add(1), None),
            Operator::GtEq => (Some(t), None),
            Operator::Lt => (None, Some(t)),
            Operator::LtEq => (None, t.checked_add(1)),
            Operator::Eq => (Some(t), t.checked_add(1)),
            _ => (None, None),
        };
        if let Some(lo) = lo {
            w.lo = Some(w.lo.map_or(lo, |l| l.max(lo)));
        }
        if let Some(hi) = hi {
            w.hi = Some(w.hi.map_or(hi, |h| h.min(hi)));
        }
    }
    w
}

/// The first minute start at or after `t`.
fn ceil_minute(t: i64) -> i64 {
    let m = minute_of(t);
    if m == t {
        t
    } else {
        m.saturating_add(MINUTE_US)
    }
}

impl VitalMinutes {
    /// Bins of minutes in `[lo, hi)` folded from `observations` (minute starts; `lo`, `hi` are
    /// minute starts).
    async fn from_history(
        &self,
        state: &dyn Session,
        (w, who): (&Wanted, Option<&Scope>),
        lo: i64,
        hi: i64,
    ) -> Result<BTreeMap<(String, String, i64), Bin>> {
        let ts = |t: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(t),
                Some("UTC".into()),
            ))
        };
        let mut filters = Vec::new();
        if lo > i64::MIN {
            filters.push(col("effective_time").gt_eq(ts(lo)));
        }
        if hi < i64::MAX {
            filters.push(col("effective_time").lt(ts(hi)));
        }
        if let Some(ps) = &w.patients {
            filters.push(
                col("patient_id").in_list(ps.iter().map(|p| lit(p.as_str())).collect(), false),
            );
        }
        if let Some(cs) = &w.codes {
            filters.push(col("code").in_list(cs.iter().map(|c| lit(c.as_str())).collect(), false));
        }
        let s = self.observations.schema();
        let projection: Vec<usize> = ["patient_id", "code", "effective_time", "value"]
            .iter()
            .map(|n| s.index_of(n))
            .collect::<std::result::Result<_, _>>()?;
        let plan = self
            .observations
            .scan(state, Some(&projection), &filters, None)
            .await?;
        let mut stream = datafusion::physical_plan::execute_stream(plan, state.task_ctx())?;
        let mut bins = BTreeMap::new();
        while let Some(batch) = stream.next().await {
            let b = batch?;
            let get = |i: usize, dt: &DataType| arrow_cast::cast(b.column(i), dt);
            let p = get(0, &DataType::Utf8)?;
            let c = get(1, &DataType::Utf8)?;
            let t = get(
                2,
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            )?;
            let v = get(3, &DataType::Float64)?;
            let (Some(p), Some(c), Some(t), Some(v)) = (
                p.as_any().downcast_ref::<StringArray>(),
                c.as_any().downcast_ref::<StringArray>(),
                t.as_any().downcast_ref::<TimestampMicrosecondArray>(),
                v.as_any().downcast_ref::<Float64Array>(),
            ) else {
                return Err(DataFusionError::Internal("observations columns".into()));
            };
            for i in 0..b.num_rows() {
                if p.is_null(i) || c.is_null(i) || t.is_null(i) || v.is_null(i) {
                    continue;
                }
                let (pi, ci, ti) = (p.value(i), c.value(i), t.value(i));
                if ti < lo
                    || ti >= hi
                    || who.is_some_and(|s| !s.contains(pi))
                    || w.codes
                        .as_ref()
                        .is_some_and(|cs| !cs.iter().any(|x| x == ci))
                {
                    continue;
                }
                fold(&mut bins, pi, ci, ti, v.value(i));
            }
        }
        Ok(bins)
    }
}

/// The table's columns being built.
struct Rows {
    p: StringBuilder,
    c: StringBuilder,
    t: TimestampMicrosecondBuilder,
    n: Int64Builder,
    s: Float64Builder,
    lo: Float64Builder,
    hi: Float64Builder,
}

impl Rows {
    fn new() -> Rows {
        Rows {
            p: StringBuilder::new(),
            c: StringBuilder::new(),
            t: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            n: Int64Builder::new(),
            s: Float64Builder::new(),
            lo: Float64Builder::new(),
            hi: Float64Builder::new(),
        }
    }

    fn push(&mut self, p: &str, c: &str, t: i64, b: Bin) {
        self.p.append_value(p);
        self.c.append_value(c);
        self.t.append_value(t);
        self.n.append_value(i64::from(b.count));
        self.s.append_value(b.sum);
        self.lo.append_value(b.min);
        self.hi.append_value(b.max);
    }

    fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(self.p.finish()),
                Arc::new(self.c.finish()),
                Arc::new(self.t.finish()),
                Arc::new(self.n.finish()),
                Arc::new(self.s.finish()),
                Arc::new(self.lo.finish()),
                Arc::new(self.hi.finish()),
            ],
        )?)
    }
}

/// The patients a scan is restricted to: the `IN` list, the open scope, or both.
fn who(w: &Wanted, live: Option<&Arc<MinuteBins>>) -> Result<Option<Arc<Scope>>> {
    let open = match w.scope {
        Some(id) => Some(live.and_then(|l| l.scope(id)).ok_or_else(|| {
            DataFusionError::Execution(format!("{TABLE}: no open rule scope {id}"))
        })?),
        None => None,
    };
    let listed = w
        .patients
        .as_ref()
        .map(|ps| Scope::new(ps.iter().map(|p| Arc::from(p.as_str()))));
    Ok(match (listed, open) {
        (Some(l), Some(o)) => Some(Arc::new(l.intersect(&o))),
        (Some(l), None) => Some(Arc::new(l)),
        (None, o) => o,
    })
}

#[async_trait::async_trait]
impl TableProvider for VitalMinutes {
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
        // The scope filter is applied whole here (from memory and from history); the others
        // only narrow the read and are applied again by DataFusion.
        Ok(filters
            .iter()
            .map(|f| match super::scope::scope_id(f) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Inexact,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let w = wanted(filters);
        let lo = w.lo.map_or(i64::MIN, ceil_minute);
        let hi = w.hi.map_or(i64::MAX, ceil_minute);
        let horizon = self.live.as_ref().map_or(i64::MAX, |l| l.horizon());
        let who = who(&w, self.live.as_ref())?;
        let mut rows = Rows::new();
        if lo < hi.min(horizon) {
            let old = self
                .from_history(state, (&w, who.as_deref()), lo, hi.min(horizon))
                .await?;
            for ((p, c, t), b) in old {
                rows.push(&p, &c, t, b);
            }
        }
        if let Some(live) = &self.live
            && hi > horizon
        {
            live.read_with(
                who.as_deref(),
                w.codes.as_deref(),
                (lo.max(horizon), hi),
                |p, c, t, b| rows.push(p, c, t, b),
            );
        }
        let b = rows.finish(&self.schema)?;
        let exec =
            MemorySourceConfig::try_new_exec(&[vec![b]], self.schema.clone(), projection.cloned())?;
        Ok(exec)
    }
}
