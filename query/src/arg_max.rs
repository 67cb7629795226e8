//! `arg_max(arg, val)` and `arg_min(arg, val)` (DuckDB's names, with its aliases `max_by` /
//! `min_by` and `argmax` / `argmin`): the value of `arg` at the row where `val` is greatest
//! (least). "The latest value per patient" is `arg_max(value, effective_time)`.
//!
//! DataFusion 55 registers none of these names (a test checks it, so an upgrade that adds them
//! is noticed). Its `last_value(value ORDER BY effective_time)` answers the same question but
//! compares rows with a lexicographical comparator row by row (1.185 s against DuckDB's 0.975 s
//! over 86.4 M rows). Here `val` becomes an `i64` key that orders as `val` does, and a group
//! keeps one `(key, arg)` slot: one integer comparison per row.
//!
//! Semantics (DuckDB's `arg_max`): rows where `arg` or `val` is NULL, or that `FILTER` drops,
//! are ignored; a group without any other row gives NULL. **Ties**: among rows of equal `val`,
//! `arg_max` gives the greatest `arg` and `arg_min` the least (floats in IEEE total order), i.e.
//! the row greatest (least) in `(val, arg)` order. That order is total, so the answer does not
//! depend on how the rows are split over partitions and batches. (DuckDB leaves ties to the
//! order it reads the rows in.)
//!
//! Types: `arg` is a number, date or timestamp (integers narrower than 64 bits are widened to
//! BIGINT, floats to DOUBLE); `val` is an integer, float, date, time, timestamp or duration.
//! Anything else (strings, say) is a plan error. The partial state is `(arg, val key)`.

use std::sync::Arc;

use arrow_array::types::{Float64Type, Int32Type, Int64Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, ArrowNativeTypeOp, ArrowPrimitiveType, BooleanArray, Int64Array,
    PrimitiveArray, make_array,
};
use arrow_schema::{DataType, Field, FieldRef};
use datafusion::arrow::buffer::{BooleanBuffer, NullBuffer, ScalarBuffer};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Registers `arg_max` and `arg_min` (and their aliases) in `ctx`. DataFusion has no function
/// of these names, so a state derived from the session keeps them (no `reregister` needed, as
/// `quantile_cont` needs against DataFusion's alias of the same name).
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(udaf(true));
    ctx.register_udaf(udaf(false));
}

/// `arg_max` (`max` true) or `arg_min`.
pub fn udaf(max: bool) -> AggregateUDF {
    let aliases = if max {
        ["max_by", "argmax"]
    } else {
        ["min_by", "argmin"]
    };
    AggregateUDF::from(ArgMax {
        max,
        signature: Signature::user_defined(Volatility::Immutable),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ArgMax {
    max: bool,
    signature: Signature,
    aliases: Vec<String>,
}

/// The type `arg` is taken as (`None`: not supported).
fn arg_type(t: &DataType) -> Option<DataType> {
    use DataType::*;
    match t {
        Null | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 => Some(Int64),
        Float16 | Float32 | Float64 => Some(Float64),
        UInt64 | Date32 | Date64 | Timestamp(..) | Duration(_) => Some(t.clone()),
        _ => None,
    }
}

/// The type `val` is taken as (`None`: not supported); [`keys`] orders each of these.
fn val_type(t: &DataType) -> Option<DataType> {
    use DataType::*;
    match t {
        Null | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 => Some(Int64),
        Float16 | Float32 | Float64 => Some(Float64),
        UInt64 | Date32 | Date64 | Time32(_) | Time64(_) | Timestamp(..) | Duration(_) => {
            Some(t.clone())
        }
        _ => None,
    }
}

impl AggregateUDFImpl for ArgMax {
    fn name(&self) -> &str {
        if self.max { "arg_max" } else { "arg_min" }
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.name();
        let [arg, val] = args else {
            return plan_err!("{name}(arg, val) takes two arguments, not {}", args.len());
        };
        let Some(arg) = arg_type(arg) else {
            return plan_err!("{name}: arg must be a number, date or timestamp, not {arg}");
        };
        let Some(val) = val_type(val) else {
            return plan_err!(
                "{name}: val must be a number, date, time, timestamp or duration, not {val}"
            );
        };
        Ok(vec![arg, val])
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args.first() {
            Some(t) => Ok(t.clone()),
            None => plan_err!("{}(arg, val) takes two arguments", self.name()),
        }
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let out = args.return_field.data_type().clone();
        Ok(vec![
            Arc::new(Field::new(format!("{}[arg]", args.name), out, true)),
            Arc::new(Field::new(
                format!("{}[val]", args.name),
                DataType::Int64,
                true,
            )),
        ])
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        AggregateOrderSensitivity::Insensitive
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let out = args.return_field.data_type().clone();
        macro_rules! one {
            ($t:ty) => {
                if self.max {
                    Box::new(One::<$t, true>::new(out)) as Box<dyn Accumulator>
                } else {
                    Box::new(One::<$t, false>::new(out))
                }
            };
        }
        Ok(match storage(&out)? {
            Storage::F64 => one!(Float64Type),
            Storage::I64 => one!(Int64Type),
            Storage::I32 => one!(Int32Type),
            Storage::U64 => one!(UInt64Type),
        })
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let out = args.return_field.data_type().clone();
        macro_rules! groups {
            ($t:ty) => {
                if self.max {
                    Box::new(Groups::<$t, true>::new(out)) as Box<dyn GroupsAccumulator>
                } else {
                    Box::new(Groups::<$t, false>::new(out))
                }
            };
        }
        Ok(match storage(&out)? {
            Storage::F64 => groups!(Float64Type),
            Storage::I64 => groups!(Int64Type),
            Storage::I32 => groups!(Int32Type),
            Storage::U64 => groups!(UInt64Type),
        })
    }
}

/// How an `arg` type is held: its native values, compared as numbers of that kind.
enum Storage {
    F64,
    I64,
    I32,
    U64,
}

fn storage(t: &DataType) -> Result<Storage> {
    use DataType::*;
    match t {
        Float64 => Ok(Storage::F64),
        UInt64 => Ok(Storage::U64),
        Date32 => Ok(Storage::I32),
        Int64 | Date64 | Timestamp(..) | Duration(_) => Ok(Storage::I64),
        _ => exec_err!("arg_max: unexpected arg type {t}"),
    }
}

/// `a`'s values as `T`'s natives (same width, no copy), with `a`'s nulls.
fn reinterpret<T: ArrowPrimitiveType>(a: &dyn Array) -> PrimitiveArray<T> {
    let d = a.to_data();
    let values = ScalarBuffer::new(d.buffers()[0].clone(), d.offset(), d.len());
    PrimitiveArray::new(values, d.nulls().cloned())
}

/// `a` as type `t` (same native width).
fn typed<T: ArrowPrimitiveType>(a: PrimitiveArray<T>, t: &DataType) -> Result<ArrayRef> {
    if a.data_type() == t {
        return Ok(Arc::new(a));
    }
    Ok(make_array(
        a.into_data().into_builder().data_type(t.clone()).build()?,
    ))
}

/// The key of `f`: an `i64` ordered as `f64::total_cmp` orders `f`.
fn float_key(f: f64) -> i64 {
    let b = f.to_bits() as i64;
    b ^ ((((b >> 63) as u64) >> 1) as i64)
}

/// `val` as `i64` keys ordered as `val` is (no copy for 64-bit signed types), with its nulls.
fn keys(val: &dyn Array) -> Result<Int64Array> {
    use DataType::*;
    Ok(match val.data_type() {
        Float64 => reinterpret::<Float64Type>(val).unary(float_key),
        UInt64 => reinterpret::<UInt64Type>(val).unary(|u| (u ^ (1 << 63)) as i64),
        Date32 | Time32(_) => reinterpret::<Int32Type>(val).unary(i64::from),
        Int64 | Date64 | Time64(_) | Timestamp(..) | Duration(_) => reinterpret::<Int64Type>(val),
        t => return exec_err!("arg_max: unexpected val type {t}"),
    })
}

/// `n` if it has a NULL.
fn some_null(n: Option<&NullBuffer>) -> Option<&NullBuffer> {
    n.filter(|n| n.null_count() > 0)
}

/// The rows that count: `arg` and `val` not NULL, the filter true (`None`: all of them).
fn rows(
    arg: Option<&NullBuffer>,
    val: Option<&NullBuffer>,
    filter: Option<&BooleanArray>,
) -> Option<BooleanBuffer> {
    let (arg, val) = (some_null(arg), some_null(val));
    let valid = NullBuffer::union(arg, val).map(NullBuffer::into_inner);
    let Some(f) = filter else {
        return valid;
    };
    let f = match f.nulls() {
        Some(n) => f.values() & n.inner(),
        None => f.values().clone(),
    };
    Some(match valid {
        Some(v) => &v & &f,
        None => f,
    })
}

/// A group's best row so far.
#[derive(Debug, Clone, Copy, Default)]
struct Slot<N> {
    key: i64,
    arg: N,
    seen: bool,
}

/// The best row of each group.
#[derive(Debug)]
struct Best<T: ArrowPrimitiveType, const MAX: bool> {
    slots: Vec<Slot<T::Native>>,
}

impl<T: ArrowPrimitiveType, const MAX: bool> Best<T, MAX> {
    /// Offers the row `(key, arg)` to group `g`.
    #[inline(always)]
    fn offer(&mut self, g: usize, key: i64, arg: T::Native) {
        let s = &mut self.slots[g];
        let better = if MAX {
            key > s.key || (key == s.key && arg.is_gt(s.arg))
        } else {
            key < s.key || (key == s.key && arg.is_lt(s.arg))
        };
        if better || !s.seen {
            *s = Slot {
                key,
                arg,
                seen: true,
            };
        }
    }

    /// Offers each row that counts (`args` a column of `arg` or of the state's `arg`, `keys`
    /// of `val` keys) to its group, `group(row)`.
    fn fold(
        &mut self,
        args: &PrimitiveArray<T>,
        keys: &Int64Array,
        filter: Option<&BooleanArray>,
        group: impl Fn(usize) -> usize,
    ) {
        let (a, k) = (args.values(), keys.values());
        match rows(args.nulls(), keys.nulls(), filter) {
            None => {
                for (i, (&key, &arg)) in k.iter().zip(a.iter()).enumerate() {
                    self.offer(group(i), key, arg);
                }
            }
            Some(valid) => {
                for i in valid.set_indices() {
                    self.offer(group(i), k[i], a[i]);
                }
            }
        }
    }

    /// The `(arg, val key)` columns of the groups `emit_to` takes, NULL where a group saw no
    /// row; `out` is the type of `arg`.
    fn emit(&mut self, emit_to: EmitTo, out: &DataType) -> Result<(ArrayRef, ArrayRef)> {
        let slots = emit_to.take_needed(&mut self.slots);
        let nulls = NullBuffer::from_iter(slots.iter().map(|s| s.seen));
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        let args: ScalarBuffer<T::Native> = slots.iter().map(|s| s.arg).collect();
        let keys: ScalarBuffer<i64> = slots.iter().map(|s| s.key).collect();
        Ok((
            typed(PrimitiveArray::<T>::new(args, nulls.clone()), out)?,
            Arc::new(Int64Array::new(keys, nulls)),
        ))
    }

    fn size(&self) -> usize {
        self.slots.capacity() * size_of::<Slot<T::Native>>()
    }
}

/// Per group (the aggregation with `GROUP BY`).
#[derive(Debug)]
struct Groups<T: ArrowPrimitiveType, const MAX: bool> {
    /// The type of `arg` (and of the answer).
    out: DataType,
    best: Best<T, MAX>,
}

impl<T: ArrowPrimitiveType, const MAX: bool> Groups<T, MAX> {
    fn new(out: DataType) -> Self {
        Groups {
            out,
            best: Best { slots: Vec::new() },
        }
    }
}

impl<T: ArrowPrimitiveType, const MAX: bool> GroupsAccumulator for Groups<T, MAX> {
    /// `values`: `(arg, val)`, or the state `(arg, val key)` from `merge_batch`.
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        groups: &[usize],
        filter: Option<&BooleanArray>,
        total: usize,
    ) -> Result<()> {
        self.best.slots.resize(total, Slot::default());
        let args = reinterpret::<T>(values[0].as_ref());
        let keys = keys(values[1].as_ref())?;
        assert_eq!(groups.len(), args.len());
        self.best.fold(&args, &keys, filter, |i| groups[i]);
        Ok(())
    }

    fn merge_batch(&mut self, values: &[ArrayRef], groups: &[usize], total: usize) -> Result<()> {
        self.update_batch(values, groups, None, total)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(self.best.emit(emit_to, &self.out)?.0)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (args, keys) = self.best.emit(emit_to, &self.out)?;
        Ok(vec![args, keys])
    }

    /// Each row as a group of its own: its `(arg, val key)`, NULL where the row does not count.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let args = reinterpret::<T>(values[0].as_ref());
        let keys = keys(values[1].as_ref())?;
        let nulls = rows(args.nulls(), keys.nulls(), filter).map(NullBuffer::new);
        let args = PrimitiveArray::<T>::new(args.values().clone(), nulls.clone());
        let keys = Int64Array::new(keys.values().clone(), nulls);
        Ok(vec![typed(args, &self.out)?, Arc::new(keys)])
    }

    fn size(&self) -> usize {
        self.best.size()
    }
}

/// One group (the aggregation without `GROUP BY`, and windows).
#[derive(Debug)]
struct One<T: ArrowPrimitiveType, const MAX: bool> {
    out: DataType,
    best: Best<T, MAX>,
}

impl<T: ArrowPrimitiveType, const MAX: bool> One<T, MAX> {
    fn new(out: DataType) -> Self {
        One {
            out,
            best: Best {
                slots: vec![Slot::default()],
            },
        }
    }

    /// The `(arg, val key)` of the group as one-row columns (the state kept).
    fn columns(&self) -> Result<(ArrayRef, ArrayRef)> {
        let mut copy = Best::<T, MAX> {
            slots: self.best.slots.clone(),
        };
        copy.emit(EmitTo::All, &self.out)
    }
}

impl<T: ArrowPrimitiveType + std::fmt::Debug, const MAX: bool> Accumulator for One<T, MAX> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let args = reinterpret::<T>(values[0].as_ref());
        let keys = keys(values[1].as_ref())?;
        self.best.fold(&args, &keys, None, |_| 0);
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let (args, keys) = self.columns()?;
        Ok(vec![
            ScalarValue::try_from_array(&args, 0)?,
            ScalarValue::try_from_array(&keys, 0)?,
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        ScalarValue::try_from_array(&self.columns()?.0, 0)
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.best.size()
    }
}

#[cfg(test)]
mod tests;
