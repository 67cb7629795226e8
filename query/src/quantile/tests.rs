use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use std::sync::Arc;

/// The quantile by the definition: sort, take rank p·(n−1), interpolate.
fn by_sorting(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = p * (v.len() - 1) as f64;
    let (lo, hi) = (v[i.floor() as usize], v[i.ceil() as usize]);
    lo + (hi - lo) * (i - i.floor())
}

/// Groups of heart-rate-like values (many repeats), of decimals (all distinct), one of a
/// single value, one of two; a NULL value that must not count; split over batches so that
/// partial states are merged.
fn data() -> Vec<(i64, Option<f64>)> {
    let mut seed = 42u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut rows = Vec::new();
    for i in 0..5000 {
        rows.push((1, Some((60.0 + next() * 50.0).round())));
        rows.push((2, Some(35.0 + next() * 4.0)));
        if i % 1000 == 0 {
            rows.push((1, None));
        }
    }
    rows.push((3, Some(7.5)));
    rows.extend([(4, Some(1.0)), (4, Some(2.0))]);
    rows
}

async fn ctx() -> SessionContext {
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(700),
    );
    super::register(&ctx);
    let schema = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("v", DataType::Float64, true),
    ]));
    let rows = data();
    let batches: Vec<RecordBatch> = rows
        .chunks(3000)
        .map(|c| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(c.iter().map(|r| r.0))),
                    Arc::new(Float64Array::from_iter(c.iter().map(|r| r.1))),
                ],
            )
            .unwrap()
        })
        .collect();
    let half = batches.len() / 2;
    let table = datafusion::datasource::MemTable::try_new(
        schema,
        vec![batches[..half].to_vec(), batches[half..].to_vec()],
    )
    .unwrap();
    ctx.register_table("t", Arc::new(table)).unwrap();
    ctx
}

fn expected(g: i64, p: f64) -> f64 {
    let v: Vec<f64> = data()
        .into_iter()
        .filter(|r| r.0 == g)
        .filter_map(|r| r.1)
        .collect();
    by_sorting(v, p)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

#[tokio::test]
async fn a_list_of_fractions_per_group_matches_the_definition() {
    let ctx = ctx().await;
    let df = ctx
        .sql("SELECT g, q[1] AS p5, q[2] AS p50, q[3] AS p95, q[4] AS p100 FROM \
              (SELECT g, quantile_cont(v, [0.05, 0.5, 0.95, 1.0]) AS q FROM t GROUP BY g) ORDER BY g")
        .await
        .unwrap();
    let out = df.collect().await.unwrap();
    let mut seen = 0;
    for b in &out {
        let g = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        for row in 0..b.num_rows() {
            for (col, p) in [(1, 0.05), (2, 0.5), (3, 0.95), (4, 1.0)] {
                let got = b
                    .column(col)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .unwrap()
                    .value(row);
                let want = expected(g.value(row), p);
                assert!(
                    close(got, want),
                    "group {} p{p}: {got} != {want}",
                    g.value(row)
                );
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 4);
}

#[tokio::test]
async fn one_fraction_without_group_by_and_percentile_cont_agree() {
    let ctx = ctx().await;
    let out = ctx
        .sql("SELECT quantile_cont(v, 0.5), percentile_cont(0.5) WITHIN GROUP (ORDER BY v) FROM t WHERE g = 2")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let col = |i: usize| {
        out[0]
            .column(i)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .value(0)
    };
    assert!(
        close(col(0), expected(2, 0.5)),
        "{} vs {}",
        col(0),
        expected(2, 0.5)
    );
    // DataFusion rounds its interpolation weight to 1e-6.
    assert!((col(0) - col(1)).abs() < 1e-5, "{} vs {}", col(0), col(1));
}

#[tokio::test]
async fn no_values_give_null_and_bad_fractions_an_error() {
    let ctx = ctx().await;
    let out = ctx
        .sql("SELECT quantile_cont(v, [0.5]) AS q, quantile_cont(v, 0.5) AS m FROM t WHERE g = 99")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert!(out[0].column(0).is_null(0) && out[0].column(1).is_null(0));
    for bad in [
        "quantile_cont(v, 1.5)",
        "quantile_cont(v, [0.5, -0.1])",
        "quantile_cont(v, v)",
    ] {
        let r = match ctx.sql(&format!("SELECT {bad} FROM t")).await {
            Ok(df) => df.collect().await.map(|_| ()),
            Err(e) => Err(e),
        };
        let e = r.expect_err(bad).to_string();
        assert!(e.contains("quantile_cont"), "{bad}: {e}");
    }
}

/// A per-query state derived from the base (as `run::query_state` makes one) must call ours:
/// the builder re-registers functions in hash order, where DataFusion's `percentile_cont`
/// (whose alias is `quantile_cont`) came last about every other time, refusing the list form.
#[tokio::test]
async fn a_derived_state_keeps_this_quantile_cont() {
    let base = ctx().await;
    for _ in 0..40 {
        let mut state =
            datafusion::execution::SessionStateBuilder::new_from_existing(base.state()).build();
        super::reregister(&mut state);
        let derived = SessionContext::new_with_state(state);
        let r = derived
            .sql("SELECT quantile_cont(v, [0.5]) FROM t WHERE g = 4")
            .await
            .and_then(|df| {
                df.logical_plan()
                    .schema()
                    .field(0)
                    .data_type()
                    .is_nested()
                    .then_some(())
                    .ok_or_else(|| datafusion::error::DataFusionError::Plan("not a list".into()))
            });
        assert!(r.is_ok(), "{r:?}");
    }
}
