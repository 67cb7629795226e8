//! Learning baselines: one SQL query gives every rest minute (per patient, vital and minute, the
//! mean value) in the windows of the days asked for; the medians per day are taken here, each
//! from the minutes strictly before its day.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow_array::{Array, Float64Array, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, TimeUnit};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use carewatch_query::table::{StoreTable, TABLES_URL};
use carewatch_store::{Store, Table};

use super::{BaselineConfig, DAY, Days, Learned, VITALS};
use crate::engine::scope_sql;

/// The session baselines are learned on: `observations` only, its own memory pool.
pub fn context(store: &Store) -> Result<SessionContext, String> {
    let config = SessionConfig::new()
        .with_information_schema(false)
        .with_default_catalog_and_schema("carewatch", "public");
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(GreedyMemoryPool::new(256 << 20)))
        .build_arc()
        .map_err(|e| format!("baselines runtime: {e}"))?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let url = url::Url::parse(TABLES_URL).map_err(|e| e.to_string())?;
    ctx.register_object_store(&url, store.objects());
    ctx.register_table(
        "observations",
        Arc::new(StoreTable::new(store.clone(), Table::Observations)),
    )
    .map_err(|e| format!("baselines table: {e}"))?;
    Ok(ctx)
}

/// Groups days so that one query serves days whose windows overlap.
pub fn clusters(days: &BTreeSet<i64>, window_us: i64) -> Vec<Vec<i64>> {
    let mut out: Vec<Vec<i64>> = Vec::new();
    for &d in days {
        match out.last_mut() {
            Some(c) if c.last().is_some_and(|l| d - l <= window_us) => c.push(d),
            _ => out.push(vec![d]),
        }
    }
    out
}

/// The rest minutes of `[from_us, to_us)`: `(patient, code, minute start, mean value)`.
fn rest_minutes_sql(
    cfg: &BaselineConfig,
    from_us: i64,
    to_us: i64,
    who: Option<&[&str]>,
) -> String {
    let scope = scope_sql(from_us, to_us, who);
    let codes: Vec<String> = VITALS.iter().map(|v| format!("'{}'", v.code)).collect();
    let strict: Vec<String> = VITALS
        .iter()
        .filter(|v| v.needs_steps)
        .map(|v| format!("'{}'", v.code))
        .collect();
    let max = format!("{:?}", cfg.max_steps);
    format!(
        "WITH m AS (
           SELECT patient_id, code, date_bin(INTERVAL '60 seconds', effective_time) AS t, avg(value) AS v
           FROM observations WHERE code IN ({codes}) AND ({scope}) GROUP BY 1, 2, 3
         ), st AS (
           SELECT patient_id, date_bin(INTERVAL '60 seconds', effective_time) AS t, sum(value) AS steps
           FROM observations WHERE code = '55423-8' AND ({scope}) GROUP BY 1, 2
         )
         SELECT m.patient_id, m.code, m.t, m.v FROM m LEFT JOIN st
           ON m.patient_id = st.patient_id AND m.t = st.t
         WHERE CASE WHEN m.code IN ({strict}) THEN coalesce(st.steps <= {max}, false)
                    ELSE coalesce(st.steps, 0) <= {max} END",
        codes = codes.join(", "),
        strict = if strict.is_empty() {
            "''".to_owned()
        } else {
            strict.join(", ")
        },
    )
}

/// Rest minutes per (patient, code), each sorted by time.
type Minutes = HashMap<(String, &'static str), Vec<(i64, f64)>>;

async fn rest_minutes(ctx: &SessionContext, sql: &str) -> Result<Minutes, String> {
    let df = ctx
        .sql_with_options(sql, carewatch_query::QueryEngine::options())
        .await
        .map_err(|e| format!("baselines: {e}"))?;
    let batches = df.collect().await.map_err(|e| format!("baselines: {e}"))?;
    let mut out: Minutes = HashMap::new();
    for b in batches {
        let cast = |i: usize, dt: &DataType| arrow_cast::cast(b.column(i), dt);
        let cols = (
            cast(0, &DataType::Utf8),
            cast(1, &DataType::Utf8),
            cast(2, &DataType::Timestamp(TimeUnit::Microsecond, None)),
            cast(3, &DataType::Float64),
        );
        let (Ok(p), Ok(c), Ok(t), Ok(v)) = cols else {
            return Err("baselines: unexpected column types".into());
        };
        let (Some(p), Some(c), Some(t), Some(v)) = (
            p.as_any().downcast_ref::<StringArray>(),
            c.as_any().downcast_ref::<StringArray>(),
            t.as_any().downcast_ref::<TimestampMicrosecondArray>(),
            v.as_any().downcast_ref::<Float64Array>(),
        ) else {
            return Err("baselines: unexpected column types".into());
        };
        for i in 0..b.num_rows() {
            if p.is_null(i) || c.is_null(i) || t.is_null(i) || v.is_null(i) {
                continue;
            }
            let Some(vital) = VITALS.iter().find(|x| x.code == c.value(i)) else {
                continue;
            };
            out.entry((p.value(i).to_owned(), vital.code))
                .or_default()
                .push((t.value(i), v.value(i)));
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|x| x.0);
    }
    Ok(out)
}

/// The median (the mean of the two middle values for an even count).
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// Learns the baselines of `days` (sorted), for `who` (all patients when `None`).
pub async fn learn(
    ctx: &SessionContext,
    cfg: &BaselineConfig,
    days: &[i64],
    who: Option<&[&str]>,
) -> Result<Days, String> {
    let (Some(first), Some(last)) = (days.first(), days.last()) else {
        return Ok(Days::new());
    };
    let w = cfg.window_us();
    let sql = rest_minutes_sql(cfg, first - w, *last, who);
    let minutes = rest_minutes(ctx, &sql).await?;
    let mut out = Days::new();
    for &d in days {
        let day = out.entry(d).or_default();
        for ((p, code), series) in &minutes {
            let a = series.partition_point(|x| x.0 < d - w);
            let z = series.partition_point(|x| x.0 < d);
            if a == z {
                continue;
            }
            let mut values: Vec<f64> = series[a..z].iter().map(|x| x.1).collect();
            let need = VITALS
                .iter()
                .find(|v| v.code == *code)
                .map_or(1, |v| v.min_minutes);
            let n = values.len();
            let value = if n >= need { median(&mut values) } else { None };
            day.insert((p.clone(), *code), Learned { value, minutes: n });
        }
    }
    Ok(out)
}

/// The first and last UTC day with observations (offline use: what to show when nothing was
/// asked for).
pub async fn data_days(ctx: &SessionContext) -> Result<Option<(i64, i64)>, String> {
    let sql = "SELECT min(effective_time) AS a, max(effective_time) AS z FROM observations";
    let df = ctx
        .sql_with_options(sql, carewatch_query::QueryEngine::options())
        .await
        .map_err(|e| format!("baselines: {e}"))?;
    let batches = df.collect().await.map_err(|e| format!("baselines: {e}"))?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
    let a = arrow_cast::cast(b.column(0), &ts).map_err(|e| e.to_string())?;
    let z = arrow_cast::cast(b.column(1), &ts).map_err(|e| e.to_string())?;
    let (Some(a), Some(z)) = (
        a.as_any().downcast_ref::<TimestampMicrosecondArray>(),
        z.as_any().downcast_ref::<TimestampMicrosecondArray>(),
    ) else {
        return Ok(None);
    };
    if a.is_null(0) || z.is_null(0) {
        return Ok(None);
    }
    Ok(Some((
        super::day_of(a.value(0)),
        super::day_of(z.value(0)) + DAY,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [70.0, 60.0, 80.0]), Some(70.0));
        assert_eq!(median(&mut [60.0, 80.0, 70.0, 90.0]), Some(75.0));
    }

    #[test]
    fn days_whose_windows_overlap_share_a_query() {
        let w = 14 * DAY;
        let days: BTreeSet<i64> = [0, DAY, 2 * DAY, 40 * DAY, 41 * DAY].into();
        assert_eq!(
            clusters(&days, w),
            vec![vec![0, DAY, 2 * DAY], vec![40 * DAY, 41 * DAY]]
        );
    }

    #[test]
    fn rest_minutes_need_known_zero_steps_for_heart_rate_only() {
        let sql = rest_minutes_sql(&BaselineConfig::default(), 0, DAY, Some(&["p'1"]));
        assert!(sql.contains("WHEN m.code IN ('8867-4') THEN coalesce(st.steps <= 0.0, false)"));
        assert!(sql.contains("ELSE coalesce(st.steps, 0) <= 0.0"));
        assert!(sql.contains("patient_id IN ('p''1')"), "{sql}");
    }
}
