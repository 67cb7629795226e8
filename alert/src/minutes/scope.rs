//! Patient scopes too large for an `IN` list in a rule's SQL (a run's dirty patients at 100,000
//! monitored: tens of thousands). The engine opens a [`Scope`] on the live bins for the length
//! of one rule query and renders `{scope}` with `rule_scope(patient_id, <id>)`; `vital_minutes`
//! takes that filter as exact (it reads only the scope's patients, from memory and from
//! history alike), and any other table a rule reads evaluates the function per row.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow_array::{Array, BooleanArray, Int64Array, StringArray};
use arrow_schema::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, Expr, Volatility, create_udf};
use foldhash::{HashSet, HashSetExt};

use super::MinuteBins;
use super::bins::{SHARDS, lock, shard_of};

/// The filter function's name.
pub const UDF: &str = "rule_scope";

/// A set of patients, also split by the bins' shards.
#[derive(Debug)]
pub struct Scope {
    set: HashSet<Arc<str>>,
    by_shard: Vec<Vec<Arc<str>>>,
}

impl Scope {
    /// The scope of `names` (duplicates collapse).
    pub fn new(names: impl IntoIterator<Item = Arc<str>>) -> Scope {
        let names = names.into_iter();
        let mut s = Scope {
            set: HashSet::with_capacity(names.size_hint().0),
            by_shard: vec![Vec::new(); SHARDS],
        };
        for n in names {
            if s.set.insert(n.clone()) {
                s.by_shard[shard_of(&n)].push(n);
            }
        }
        s
    }

    /// Is `p` in scope?
    pub fn contains(&self, p: &str) -> bool {
        self.set.contains(p)
    }

    /// The scope's patients in shard `k`.
    pub(super) fn in_shard(&self, k: usize) -> &[Arc<str>] {
        &self.by_shard[k]
    }

    /// Patients in scope.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// No patient in scope.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The patients in both.
    pub(super) fn intersect(&self, other: &Scope) -> Scope {
        Scope::new(self.set.iter().filter(|p| other.contains(p)).cloned())
    }
}

/// An open scope: its `{scope}` filter is valid until the guard is dropped.
#[derive(Debug)]
pub struct ScopeGuard {
    bins: Arc<MinuteBins>,
    id: u64,
}

impl ScopeGuard {
    /// The SQL filter naming the scope.
    pub fn sql(&self) -> String {
        format!("{UDF}(patient_id, {})", self.id)
    }
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        lock(&self.bins.scopes).remove(&self.id);
    }
}

impl MinuteBins {
    /// Opens `scope` for the rules' queries until the guard is dropped.
    pub fn open_scope(self: &Arc<Self>, scope: Scope) -> ScopeGuard {
        self.open_shared_scope(Arc::new(scope))
    }

    /// [`MinuteBins::open_scope`] for a scope shared by several queries.
    pub fn open_shared_scope(self: &Arc<Self>, scope: Arc<Scope>) -> ScopeGuard {
        let id = self.next_scope.fetch_add(1, Ordering::Relaxed);
        lock(&self.scopes).insert(id, scope);
        ScopeGuard {
            bins: self.clone(),
            id,
        }
    }

    /// The open scope `id`.
    pub fn scope(&self, id: u64) -> Option<Arc<Scope>> {
        lock(&self.scopes).get(&id).cloned()
    }
}

/// The scope id `e` filters on, when it is `rule_scope(<column>, <integer>)`.
pub(crate) fn scope_id(e: &Expr) -> Option<u64> {
    let Expr::ScalarFunction(f) = e else {
        return None;
    };
    if f.name() != UDF || f.args.len() != 2 {
        return None;
    }
    match &f.args[1] {
        Expr::Literal(ScalarValue::Int64(Some(i)), _) => u64::try_from(*i).ok(),
        _ => None,
    }
}

/// Registers `rule_scope(patient_id, id)` with a session, over `bins`' open scopes.
pub fn register_udf(ctx: &datafusion::prelude::SessionContext, bins: &Arc<MinuteBins>) {
    let bins = bins.clone();
    let f = create_udf(
        UDF,
        vec![DataType::Utf8, DataType::Int64],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let p = arrays[0].as_any().downcast_ref::<StringArray>();
            let id = arrays[1].as_any().downcast_ref::<Int64Array>();
            let (Some(p), Some(id)) = (p, id) else {
                return Err(DataFusionError::Plan(format!("{UDF}(text, bigint)")));
            };
            let mut scope: Option<(i64, Arc<super::scope::Scope>)> = None;
            let mut out = Vec::with_capacity(p.len());
            for i in 0..p.len() {
                if p.is_null(i) || id.is_null(i) {
                    out.push(Some(false));
                    continue;
                }
                let want = id.value(i);
                if scope.as_ref().is_none_or(|(k, _)| *k != want) {
                    let s = u64::try_from(want).ok().and_then(|k| bins.scope(k));
                    let Some(s) = s else {
                        return Err(DataFusionError::Execution(format!(
                            "{UDF}: no open scope {want}"
                        )));
                    };
                    scope = Some((want, s));
                }
                out.push(scope.as_ref().map(|(_, s)| s.contains(p.value(i))));
            }
            Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(out))))
        }),
    );
    ctx.register_udf(f);
}
