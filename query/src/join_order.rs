//! The build side of a hash join: a small table whose size is known beats an estimate.
//!
//! DataFusion's `join_selection` picks the side with fewer estimated rows as a hash join's build
//! side. A join's output is estimated with each key's distinct count, and without one (Parquet
//! files do not record it) the key is taken to be unique: `observations ⋈ devices` — every one
//! of 86.4 million readings matching one of 1,000 devices — is estimated at 1,000 rows. The next
//! join, with `care_teams` (1,000 rows, known exactly), then built its hash table from the 86.4
//! million rows of the first join's output (1 GB, most of the 6.9 s the question took against
//! DuckDB's 1.5 s; BENCHMARKS.md, "Analyst queries").
//!
//! [`KnownSmallBuildSide`] runs right after `join_selection` (before distribution is enforced,
//! as `HashJoinExec::swap_inputs` requires) and swaps a collect-left join whose build side's
//! size is only an estimate when its probe side is a small input whose row count is exact —
//! the registry's tables, a buffer, a `VALUES` list: building on the side that is known to be
//! small never costs more than a hash table of its rows, while building on an estimate can
//! cost the whole other input.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};

/// The rows `plan` yields, as DataFusion's `join_selection` estimates them.
fn rows(plan: &Arc<dyn ExecutionPlan>) -> Result<Precision<usize>> {
    let stats = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new())?;
    Ok(stats.num_rows)
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct KnownSmallBuildSide;

impl KnownSmallBuildSide {
    fn swap(join: &HashJoinExec, config: &ConfigOptions) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        if *join.partition_mode() != PartitionMode::CollectLeft
            || !join.join_type().supports_swap()
            || join.null_aware
            || !config.optimizer.join_reordering
        {
            return Ok(None);
        }
        let (left, right) = (rows(join.left())?, rows(join.right())?);
        let small = config.optimizer.hash_join_single_partition_threshold_rows;
        let swap = match (left, right) {
            (Precision::Exact(_), _) => false,
            (_, Precision::Exact(r)) => r < small,
            _ => false,
        };
        if !swap {
            return Ok(None);
        }
        join.swap_inputs(PartitionMode::CollectLeft).map(Some)
    }
}

impl PhysicalOptimizerRule for KnownSmallBuildSide {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|p| {
            let Some(join) = p.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(p));
            };
            Ok(match Self::swap(join, config)? {
                Some(swapped) => Transformed::yes(swapped),
                None => Transformed::no(p),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "known_small_build_side"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// DataFusion's physical optimizer rules with [`KnownSmallBuildSide`] right after
/// `join_selection`.
pub fn physical_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == "join_selection")
        .map_or(rules.len(), |i| i + 1);
    rules.insert(at, Arc::new(KnownSmallBuildSide));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    const QUERY: &str = "SELECT ct.care_team, count(*) AS n, avg(o.value) AS mean \
        FROM observations o JOIN devices d ON o.device_id = d.device_id \
        JOIN care_teams ct ON ct.patient_id = d.patient_id GROUP BY ct.care_team ORDER BY 1";

    fn table(cols: &[(&str, Vec<String>)], values: Option<Vec<f64>>) -> Arc<MemTable> {
        let mut fields: Vec<Field> = cols
            .iter()
            .map(|(n, _)| Field::new(*n, DataType::Utf8, false))
            .collect();
        let mut arrays: Vec<Arc<dyn datafusion::arrow::array::Array>> = cols
            .iter()
            .map(|(_, v)| Arc::new(StringArray::from(v.clone())) as _)
            .collect();
        if let Some(v) = values {
            fields.push(Field::new("value", DataType::Float64, false));
            arrays.push(Arc::new(Float64Array::from(v)));
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    }

    /// 20,000 readings of 10 devices, the registry's devices and care teams (10 rows each).
    fn context(rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>) -> SessionContext {
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        let dev = |i: usize| format!("device-{}", i % 10);
        let n = 20_000;
        let obs = table(
            &[("device_id", (0..n).map(dev).collect())],
            Some((0..n).map(|i| (i % 7) as f64).collect()),
        );
        let devices = table(
            &[
                ("device_id", (0..10).map(dev).collect()),
                (
                    "patient_id",
                    (0..10).map(|i| format!("patient-{i}")).collect(),
                ),
            ],
            None,
        );
        let teams = table(
            &[
                (
                    "patient_id",
                    (0..10).map(|i| format!("patient-{i}")).collect(),
                ),
                (
                    "care_team",
                    (0..10).map(|i| format!("team-{}", i % 3)).collect(),
                ),
            ],
            None,
        );
        ctx.register_table("observations", obs).unwrap();
        ctx.register_table("devices", devices).unwrap();
        ctx.register_table("care_teams", teams).unwrap();
        ctx
    }

    /// The rows each hash join builds its table from.
    fn build_rows(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<Precision<usize>>) {
        if let Some(j) = plan.downcast_ref::<HashJoinExec>() {
            out.push(rows(j.left()).unwrap());
        }
        for c in plan.children() {
            build_rows(c, out);
        }
    }

    async fn plan_and_answer(ctx: &SessionContext) -> (Vec<Precision<usize>>, Vec<RecordBatch>) {
        let df = ctx.sql(QUERY).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let mut rows = Vec::new();
        build_rows(&plan, &mut rows);
        (rows, df.collect().await.unwrap())
    }

    #[tokio::test]
    async fn every_hash_join_builds_on_a_table_whose_size_is_known() {
        let (ours, answer) = plan_and_answer(&context(physical_rules())).await;
        assert_eq!(ours.len(), 2, "two hash joins: {ours:?}");
        assert!(
            ours.iter().all(|r| *r == Precision::Exact(10)),
            "each join builds on the registry's 10 rows: {ours:?}"
        );
        // DataFusion's rules alone build the second join on the first one's 20,000 rows
        // (estimated at 10): what this rule is for.
        let default = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
        let (theirs, same) = plan_and_answer(&context(default)).await;
        assert!(
            theirs.iter().any(|r| !r.is_exact().unwrap_or(false)),
            "DataFusion alone now builds on exact sizes too: {theirs:?} (is this rule still needed?)"
        );
        assert_eq!(
            datafusion::arrow::util::pretty::pretty_format_batches(&answer)
                .unwrap()
                .to_string(),
            datafusion::arrow::util::pretty::pretty_format_batches(&same)
                .unwrap()
                .to_string()
        );
    }
}
