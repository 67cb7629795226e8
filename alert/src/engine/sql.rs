//! The rules' SQL: the `{scope}` filter a rule's query is rendered with, and running a rule's
//! query to its `(patient, bucket start, sample)` rows.

use std::sync::Arc;

use arrow_array::{
    Array, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, TimeUnit};
use datafusion::prelude::SessionContext;

use crate::episodes::Sample;

/// SQL literal for a UTC instant.
pub fn ts_sql(us: i64) -> String {
    format!("to_timestamp_micros({us})")
}

/// The `{scope}` filter for a time range and, optionally, a set of patients.
pub fn scope_sql(from_us: i64, to_us: i64, patients: Option<&[&str]>) -> String {
    let mut s = format!(
        "effective_time >= {} AND effective_time < {}",
        ts_sql(from_us),
        ts_sql(to_us)
    );
    if let Some(ps) = patients {
        s.push_str(" AND patient_id IN (");
        for (i, p) in ps.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            s.push('\'');
            s.push_str(&p.replace('\'', "''"));
            s.push('\'');
        }
        s.push(')');
    }
    s
}

/// Runs a rule's SQL and returns `(patient, bucket start, sample)` rows.
pub async fn run_rule_sql(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Vec<(String, i64, Sample)>, String> {
    let batches = rule_batches(ctx, sql).await?;
    let mut out = Vec::new();
    for_each_row(&batches, |p, t, s| out.push((p.to_owned(), t, s)))?;
    Ok(out)
}

/// Runs a rule's SQL to its record batches.
pub(crate) async fn rule_batches(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Vec<RecordBatch>, String> {
    let df = ctx
        .sql_with_options(sql, carewatch_query::QueryEngine::options())
        .await
        .map_err(|e| e.to_string())?;
    df.collect().await.map_err(|e| e.to_string())
}

/// Calls `f(patient, bucket start, sample)` for each row of a rule's result (rows without a
/// patient or a bucket are skipped).
pub(crate) fn for_each_row(
    batches: &[RecordBatch],
    mut f: impl FnMut(&str, i64, Sample),
) -> Result<(), String> {
    for b in batches {
        let col = |name: &str, dt: &DataType| -> Result<Arc<dyn Array>, String> {
            let c = b
                .column_by_name(name)
                .ok_or_else(|| format!("rule result has no column {name}"))?;
            arrow_cast::cast(c, dt).map_err(|e| e.to_string())
        };
        let p = col("patient_id", &DataType::Utf8)?;
        let t = col("t", &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let h = col("hit", &DataType::Boolean)?;
        let v = col("value", &DataType::Float64)?;
        let (Some(p), Some(t), Some(h), Some(v)) = (
            p.as_any().downcast_ref::<StringArray>(),
            t.as_any().downcast_ref::<TimestampMicrosecondArray>(),
            h.as_any().downcast_ref::<BooleanArray>(),
            v.as_any().downcast_ref::<Float64Array>(),
        ) else {
            return Err("rule result columns have unexpected types".into());
        };
        for i in 0..b.num_rows() {
            if p.is_null(i) || t.is_null(i) {
                continue;
            }
            let sample = Sample {
                hit: h.is_valid(i) && h.value(i),
                value: v.is_valid(i).then(|| v.value(i)),
            };
            f(p.value(i), t.value(i), sample);
        }
    }
    Ok(())
}
