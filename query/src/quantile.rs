//! `quantile_cont(value, fraction)` and `quantile_cont(value, [fractions])`: exact continuous
//! quantiles (linear interpolation between the closest ranks, as PostgreSQL's `percentile_cont`
//! and DuckDB's `quantile_cont`), any number of them from one pass over the values: DuckDB's
//! list form, which analysts bring with them. It takes the name DataFusion gives as an alias of
//! its `percentile_cont` (which stays, with `WITHIN GROUP`).
//!
//! DataFusion's `percentile_cont` keeps every value of a group, once per percentile asked, and
//! ships them all from the partial to the final aggregation: p5/p50/p95 per patient over a day
//! of 1 Hz heart rate took 4.1× DuckDB (BENCHMARKS.md). Here a group keeps a map from value to
//! its count: vital signs repeat (a day of heart rate has some hundreds of distinct values in
//! 86,400), so the state is small, and a group's distinct values are sorted once for all the
//! fractions. Values all distinct cost a map entry each instead of a vector slot.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, ListArray, UInt64Array};
use arrow_schema::{DataType, Field, FieldRef};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use datafusion::prelude::SessionContext;

/// Registers `quantile_cont` in `ctx` (replacing DataFusion's alias of `percentile_cont`).
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(udaf());
}

/// Registers it again in a state derived from a session's (`SessionStateBuilder::
/// new_from_existing` re-registers the functions in hash order, so DataFusion's alias of the
/// same name would win about half the time).
pub fn reregister(state: &mut SessionState) {
    let _ = state.register_udaf(Arc::new(udaf()));
}

fn udaf() -> AggregateUDF {
    AggregateUDF::from(QuantileCont {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct QuantileCont {
    signature: Signature,
}

fn float_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)))
}

fn is_list(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)
    )
}

impl AggregateUDFImpl for QuantileCont {
    fn name(&self) -> &str {
        "quantile_cont"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let [value, fractions] = args else {
            return plan_err!("quantile_cont takes a value and a fraction or a list of them");
        };
        if !(value.is_numeric() || value.is_null()) {
            return plan_err!("quantile_cont: the value must be a number, not {value}");
        }
        let fractions = if is_list(fractions) {
            float_list()
        } else if fractions.is_numeric() {
            DataType::Float64
        } else {
            return plan_err!("quantile_cont: the fraction must be a number or a list of numbers");
        };
        Ok(vec![DataType::Float64, fractions])
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(match args.get(1) {
            Some(t) if is_list(t) => float_list(),
            _ => DataType::Float64,
        })
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let list = |name: &str, t: DataType| {
            Arc::new(Field::new(
                format!("{}[{name}]", args.name),
                DataType::List(Arc::new(Field::new_list_field(t, true))),
                true,
            ))
        };
        Ok(vec![
            list("values", DataType::Float64),
            list("counts", DataType::UInt64),
        ])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(One {
            asked: Asked::of(&args)?,
            counts: Counts::default(),
        }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups {
            asked: Asked::of(&args)?,
            counts: Vec::new(),
        }))
    }
}

/// The fractions asked for, and whether as a list.
#[derive(Debug, Clone)]
struct Asked {
    fractions: Vec<f64>,
    list: bool,
}

impl Asked {
    fn of(args: &AccumulatorArgs) -> Result<Asked> {
        let bad = || exec_err!("quantile_cont: the fractions must be constants between 0 and 1");
        let Some(lit) = args.exprs.get(1).and_then(|e| e.downcast_ref::<Literal>()) else {
            return bad();
        };
        let (fractions, list) = match lit.value() {
            ScalarValue::Float64(Some(p)) => (vec![*p], false),
            ScalarValue::List(l) if l.len() == 1 && !l.is_null(0) => {
                let v = l.value(0);
                let Some(f) = v.as_primitive_opt::<Float64Type>() else {
                    return bad();
                };
                if f.null_count() > 0 {
                    return bad();
                }
                (f.values().to_vec(), true)
            }
            _ => return bad(),
        };
        if fractions.is_empty() || !fractions.iter().all(|p| (0.0..=1.0).contains(p)) {
            return bad();
        }
        Ok(Asked { fractions, list })
    }

    /// The group's answer: NULL for a group without values.
    fn answer(&self, counts: &Counts) -> ScalarValue {
        let q = quantiles(counts, &self.fractions);
        if !self.list {
            return ScalarValue::Float64(q.and_then(|v| v.first().copied()));
        }
        match q {
            Some(v) => ScalarValue::List(Arc::new(ListArray::new(
                Arc::new(Field::new_list_field(DataType::Float64, true)),
                OffsetBuffer::<i32>::from_lengths([v.len()]),
                Arc::new(Float64Array::from(v)),
                None,
            ))),
            None => ScalarValue::try_from(&float_list()).unwrap_or(ScalarValue::Null),
        }
    }
}

/// A group's values: bit pattern → how many times it was seen.
type Counts = foldhash::HashMap<u64, u64>;

fn bytes_of(c: &Counts) -> usize {
    c.capacity() * (2 * size_of::<u64>() + 1)
}

/// The quantiles of the values counted in `c` (`None` when there are none): the value at rank
/// `p·(n−1)`, interpolated linearly between the two closest ranks.
fn quantiles(c: &Counts, fractions: &[f64]) -> Option<Vec<f64>> {
    let mut distinct: Vec<(f64, u64)> = c.iter().map(|(&b, &n)| (f64::from_bits(b), n)).collect();
    if distinct.is_empty() {
        return None;
    }
    distinct.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    // ends[i]: the values up to and including the i-th distinct one.
    let ends: Vec<u64> = distinct
        .iter()
        .scan(0u64, |n, d| {
            *n += d.1;
            Some(*n)
        })
        .collect();
    let n = ends[ends.len() - 1];
    let at = |rank: u64| distinct[ends.partition_point(|&e| e <= rank)].0;
    Some(
        fractions
            .iter()
            .map(|p| {
                let index = p * (n - 1) as f64;
                let (lo, hi) = (index.floor(), index.ceil());
                let (a, b) = (at(lo as u64), at(hi as u64));
                if a == b {
                    a
                } else {
                    a + (b - a) * (index - lo)
                }
            })
            .collect(),
    )
}

/// Adds the lists of a state row (values, counts) to `into`.
fn merge_row(into: &mut Counts, values: &ListArray, counts: &ListArray, row: usize) {
    if values.is_null(row) || counts.is_null(row) {
        return;
    }
    let (v, n) = (values.value(row), counts.value(row));
    let (v, n) = (
        v.as_primitive::<Float64Type>(),
        n.as_primitive::<UInt64Type>(),
    );
    for (x, k) in v.values().iter().zip(n.values()) {
        *into.entry(x.to_bits()).or_insert(0) += k;
    }
}

/// The state of several groups: a list of distinct values and one of their counts per group.
fn state_of(groups: &[Counts]) -> Vec<ArrayRef> {
    let total: usize = groups.iter().map(|c| c.len()).sum();
    let (mut values, mut counts) = (Vec::with_capacity(total), Vec::with_capacity(total));
    for c in groups {
        for (&b, &n) in c {
            values.push(f64::from_bits(b));
            counts.push(n);
        }
    }
    let offsets = OffsetBuffer::<i32>::from_lengths(groups.iter().map(|c| c.len()));
    let list = |a: ArrayRef, t: DataType| -> ArrayRef {
        Arc::new(ListArray::new(
            Arc::new(Field::new_list_field(t, true)),
            offsets.clone(),
            a,
            None,
        ))
    };
    vec![
        list(Arc::new(Float64Array::from(values)), DataType::Float64),
        list(Arc::new(UInt64Array::from(counts)), DataType::UInt64),
    ]
}

/// Per group (the aggregation with `GROUP BY`).
#[derive(Debug)]
struct Groups {
    asked: Asked,
    counts: Vec<Counts>,
}

impl GroupsAccumulator for Groups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        groups: &[usize],
        filter: Option<&BooleanArray>,
        total: usize,
    ) -> Result<()> {
        self.counts.resize_with(total, Counts::default);
        let v = values[0].as_primitive::<Float64Type>();
        let keep = |i: usize| v.is_valid(i) && filter.is_none_or(|f| f.is_valid(i) && f.value(i));
        let all = v.null_count() == 0 && filter.is_none();
        for (i, (&g, x)) in groups.iter().zip(v.values()).enumerate() {
            if all || keep(i) {
                *self.counts[g].entry(x.to_bits()).or_insert(0) += 1;
            }
        }
        Ok(())
    }

    fn merge_batch(&mut self, values: &[ArrayRef], groups: &[usize], total: usize) -> Result<()> {
        self.counts.resize_with(total, Counts::default);
        let (v, n) = (values[0].as_list::<i32>(), values[1].as_list::<i32>());
        for (row, &g) in groups.iter().enumerate() {
            merge_row(&mut self.counts[g], v, n, row);
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let groups = emit_to.take_needed(&mut self.counts);
        let answers: Vec<ScalarValue> = groups.iter().map(|c| self.asked.answer(c)).collect();
        if answers.is_empty() {
            let t = if self.asked.list {
                float_list()
            } else {
                DataType::Float64
            };
            return Ok(arrow_array::new_empty_array(&t));
        }
        ScalarValue::iter_to_array(answers)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(state_of(&emit_to.take_needed(&mut self.counts)))
    }

    /// Each row as a group of its own (the partial aggregation skipped): a list of its value
    /// and one of the count 1 (empty lists for a NULL or filtered row).
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let v = values[0].as_primitive::<Float64Type>();
        let keep: Vec<Counts> = (0..v.len())
            .map(|i| {
                let mut c = Counts::default();
                if v.is_valid(i) && filter.is_none_or(|f| f.is_valid(i) && f.value(i)) {
                    c.insert(v.value(i).to_bits(), 1);
                }
                c
            })
            .collect();
        Ok(state_of(&keep))
    }

    fn size(&self) -> usize {
        self.counts.iter().map(bytes_of).sum::<usize>()
            + self.counts.capacity() * size_of::<Counts>()
    }
}

/// One group (the aggregation without `GROUP BY`, and windows).
#[derive(Debug)]
struct One {
    asked: Asked,
    counts: Counts,
}

impl Accumulator for One {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let v = values[0].as_primitive::<Float64Type>();
        for x in v.iter().flatten() {
            *self.counts.entry(x.to_bits()).or_insert(0) += 1;
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (v, n) = (states[0].as_list::<i32>(), states[1].as_list::<i32>());
        for row in 0..v.len() {
            merge_row(&mut self.counts, v, n, row);
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        state_of(std::slice::from_ref(&self.counts))
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.asked.answer(&self.counts))
    }

    fn size(&self) -> usize {
        size_of::<Self>() + bytes_of(&self.counts) + 8 * self.asked.fractions.len()
    }
}

#[cfg(test)]
mod tests;
