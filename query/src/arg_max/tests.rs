use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::prelude::{SessionConfig, SessionContext};
use std::sync::Arc;

type Row = (i64, Option<f64>, Option<i64>);

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("a", DataType::Float64, true),
        Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]))
}

fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.1))),
            Arc::new(
                TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.2)).with_timezone("UTC"),
            ),
        ],
    )
    .unwrap()
}

/// A session with ours registered and `t` made of `parts` (each a list of batches).
fn ctx_with(config: SessionConfig, parts: Vec<Vec<Vec<Row>>>) -> SessionContext {
    let ctx = SessionContext::new_with_config(config);
    super::register(&ctx);
    let parts = parts
        .iter()
        .map(|p| p.iter().map(|b| batch(b)).collect())
        .collect();
    let table = MemTable::try_new(schema(), parts).unwrap();
    ctx.register_table("t", Arc::new(table)).unwrap();
    ctx
}

/// Group 1: the latest row's `a` is NULL (ignored); 2: a NULL time (ignored); 3: only a NULL
/// time (NULL); 4 and 5: ties on time, spread over partitions in both orders.
fn small() -> SessionContext {
    let p1 = vec![
        vec![(1, Some(10.0), Some(1)), (1, Some(20.0), Some(3))],
        vec![
            (1, Some(30.0), Some(2)),
            (1, None, Some(4)),
            (2, Some(5.0), None),
        ],
        vec![(4, Some(1.0), Some(5)), (5, Some(4.0), Some(1))],
    ];
    let p2 = vec![
        vec![(2, Some(6.0), Some(1)), (3, Some(7.0), None)],
        vec![
            (4, Some(3.0), Some(5)),
            (4, Some(0.5), Some(1)),
            (5, Some(9.0), Some(2)),
        ],
    ];
    let p3 = vec![vec![(4, Some(2.0), Some(5)), (5, Some(2.0), Some(1))]];
    let config = SessionConfig::new().with_target_partitions(4);
    ctx_with(config, vec![p1, p2, p3])
}

async fn collect(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// Column `c` of a one-batch answer as optional floats.
fn floats(out: &[RecordBatch], c: usize) -> Vec<Option<f64>> {
    let b = datafusion::arrow::compute::concat_batches(&out[0].schema(), out).unwrap();
    let col = b.column(c).as_any().downcast_ref::<Float64Array>().unwrap();
    col.iter().collect()
}

#[tokio::test]
async fn per_group_nulls_ties_and_filter() {
    let ctx = small();
    let out = collect(
        &ctx,
        "SELECT g, arg_max(a, t), arg_min(a, t), max_by(a, t), min_by(a, t), \
           arg_max(a, t) FILTER (WHERE t < TIMESTAMP '1970-01-01T00:00:00.000003Z') \
         FROM t GROUP BY g ORDER BY g",
    )
    .await;
    let none = None;
    assert_eq!(
        floats(&out, 1),
        [Some(20.0), Some(6.0), none, Some(3.0), Some(9.0)]
    );
    assert_eq!(
        floats(&out, 2),
        [Some(10.0), Some(6.0), none, Some(0.5), Some(2.0)]
    );
    assert_eq!(floats(&out, 3), floats(&out, 1));
    assert_eq!(floats(&out, 4), floats(&out, 2));
    assert_eq!(
        floats(&out, 5),
        [Some(30.0), Some(6.0), none, Some(0.5), Some(9.0)]
    );
}

#[tokio::test]
async fn without_group_by() {
    let ctx = small();
    let out = collect(
        &ctx,
        "SELECT arg_max(a, t), arg_min(a, t), arg_max(a, t) FILTER (WHERE g = 1), \
           arg_max(a, t) FILTER (WHERE g = 3) FROM t",
    )
    .await;
    // The latest time (5) is a tie of 1.0, 3.0 and 2.0; the earliest (1) of five rows.
    let got: Vec<_> = (0..4).map(|c| floats(&out, c)[0]).collect();
    assert_eq!(got, [Some(3.0), Some(0.5), Some(20.0), None]);
    let out = collect(&ctx, "SELECT arg_max(a, t) FROM t WHERE g = 99").await;
    assert_eq!(floats(&out, 0), [None]);
}

#[tokio::test]
async fn other_types_of_arg_and_val() {
    let ctx = small();
    let out = collect(
        &ctx,
        "SELECT arg_max(x, y), arg_min(x, y), arg_max(x, arrow_cast(z, 'UInt64')), \
           arg_min(x, arrow_cast(z, 'UInt64')), arg_max(x, CAST(d AS DATE)), \
           arg_max(CAST(d AS TIMESTAMP), x) \
         FROM (VALUES (1, -2.5, '1', '2024-05-01'), (2, -0.5, '18446744073709551615', '2024-04-30'), \
           (3, -7.0, '9223372036854775808', '2024-03-01')) v(x, y, z, d)",
    )
    .await;
    let b = &out[0];
    let int = |c: usize| {
        b.column(c)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    };
    assert_eq!([int(0), int(1), int(2), int(3), int(4)], [2, 3, 2, 1, 1]);
    assert!(matches!(b.column(5).data_type(), DataType::Timestamp(..)));
    let ts = datafusion::arrow::compute::cast(b.column(5), &DataType::Utf8).unwrap();
    let ts = ts
        .as_any()
        .downcast_ref::<datafusion::arrow::array::StringArray>()
        .unwrap();
    assert!(ts.value(0).starts_with("2024-03-01"), "{}", ts.value(0));
    // A timestamp arg keeps its type, time zone included.
    let out = collect(&ctx, "SELECT arg_min(t, a) FROM t").await;
    assert_eq!(out[0].column(0).data_type(), schema().field(2).data_type());
    let t = out[0]
        .column(0)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    assert_eq!(t.value(0), 1);
}

#[tokio::test]
async fn unsupported_types_are_plan_errors() {
    let ctx = small();
    for bad in [
        "arg_max('x', t)",
        "arg_min(a, 'x')",
        "max_by(a)",
        "arg_max(a, t, t)",
    ] {
        let r = match ctx.sql(&format!("SELECT {bad} FROM t")).await {
            Ok(df) => df.collect().await.map(|_| ()),
            Err(e) => Err(e),
        };
        let e = r.expect_err(bad).to_string();
        assert!(e.contains("arg_max") || e.contains("arg_min"), "{bad}: {e}");
    }
}

/// Rows of random groups, values and times, the times unique (so there are no ties).
fn random_rows(n: usize, groups: i64) -> Vec<Row> {
    let mut seed = 7u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 11
    };
    let mut times: Vec<i64> = (0..n as i64).map(|i| i * 1_000_000).collect();
    for i in (1..n).rev() {
        times.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    times
        .into_iter()
        .map(|t| {
            let g = (next() % groups as u64) as i64;
            let v = (next() % 200_000) as f64 / 1000.0 - 100.0;
            (g, Some(v), Some(t))
        })
        .collect()
}

/// Over four partitions of several batches, with the partial aggregation done or skipped
/// (`convert_to_state`), ours agrees with `last_value` / `first_value` in time order.
#[tokio::test]
async fn agrees_with_last_value_over_partitions() {
    let rows = random_rows(40_000, 300);
    let parts: Vec<Vec<Vec<Row>>> = rows
        .chunks(10_000)
        .map(|p| p.chunks(1_500).map(<[Row]>::to_vec).collect())
        .collect();
    for skip_partial in [false, true] {
        let mut config = SessionConfig::new()
            .with_target_partitions(4)
            .with_batch_size(1024);
        if skip_partial {
            let o = &mut config.options_mut().execution;
            o.skip_partial_aggregation_probe_rows_threshold = 1;
            o.skip_partial_aggregation_probe_ratio_threshold = 0.0;
        }
        let ctx = ctx_with(config, parts.clone());
        let out = collect(
            &ctx,
            "SELECT g, arg_max(a, t), last_value(a ORDER BY t), arg_min(a, t), \
               first_value(a ORDER BY t), \
               arg_max(a, t) FILTER (WHERE a > 0), last_value(a ORDER BY t) FILTER (WHERE a > 0) \
             FROM t GROUP BY g ORDER BY g",
        )
        .await;
        let ours = floats(&out, 1);
        assert_eq!(ours.len(), 300);
        assert!(ours.iter().all(Option::is_some));
        assert_eq!(ours, floats(&out, 2), "skip_partial {skip_partial}");
        assert_eq!(
            floats(&out, 3),
            floats(&out, 4),
            "skip_partial {skip_partial}"
        );
        assert_eq!(
            floats(&out, 5),
            floats(&out, 6),
            "skip_partial {skip_partial}"
        );
    }
}

/// `EmitTo::First` hands out the first groups and renumbers the rest; `convert_to_state`
/// leaves out rows with a NULL or a filtered row.
#[test]
fn emit_first_and_convert_to_state() {
    use datafusion::arrow::array::BooleanArray;
    use datafusion::arrow::datatypes::Float64Type;
    let mut acc = super::Groups::<Float64Type, true>::new(DataType::Float64);
    let args: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0]));
    let vals: ArrayRef = Arc::new(Int64Array::from(vec![5, 7, 6]));
    acc.update_batch(&[args, vals], &[0, 1, 0], None, 2)
        .unwrap();
    let first = acc.evaluate(EmitTo::First(1)).unwrap();
    assert_eq!(floats_of(&first), [Some(3.0)]);
    let args: ArrayRef = Arc::new(Float64Array::from(vec![9.0, 8.0]));
    let vals: ArrayRef = Arc::new(Int64Array::from(vec![6, 8]));
    let only = BooleanArray::from(vec![true, false]);
    acc.update_batch(&[args, vals], &[0, 1], Some(&only), 2)
        .unwrap();
    // Group 0 is the former group 1 (7 beats 6); group 1 saw only a filtered row.
    assert_eq!(
        floats_of(&acc.evaluate(EmitTo::All).unwrap()),
        [Some(2.0), None]
    );

    let args: ArrayRef = Arc::new(Float64Array::from(vec![
        Some(1.0),
        None,
        Some(3.0),
        Some(4.0),
    ]));
    let vals: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(2), None, Some(9)]));
    let filter = BooleanArray::from(vec![Some(true), Some(true), Some(true), None]);
    let state = acc.convert_to_state(&[args, vals], Some(&filter)).unwrap();
    assert_eq!(floats_of(&state[0]), [Some(1.0), None, None, None]);
    let mut merged = super::Groups::<Float64Type, true>::new(DataType::Float64);
    merged.merge_batch(&state, &[0, 0, 0, 0], 1).unwrap();
    assert_eq!(
        floats_of(&merged.evaluate(EmitTo::All).unwrap()),
        [Some(1.0)]
    );
}

fn floats_of(a: &ArrayRef) -> Vec<Option<f64>> {
    a.as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .iter()
        .collect()
}

/// DataFusion registers none of these names; if an upgrade does, decide which one to keep.
#[test]
fn datafusion_has_none_of_these_names() {
    use datafusion::execution::FunctionRegistry;
    let state = SessionContext::new().state();
    for name in ["arg_max", "arg_min", "max_by", "min_by", "argmax", "argmin"] {
        assert!(state.udaf(name).is_err(), "DataFusion has {name}");
        assert!(state.udf(name).is_err(), "DataFusion has {name}");
    }
}

/// A per-query state derived from the base (as `run::query_state` makes one) keeps them.
#[tokio::test]
async fn a_derived_state_keeps_them() {
    let base = small();
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(base.state()).build();
    let derived = SessionContext::new_with_state(state);
    let out = collect(
        &derived,
        "SELECT max_by(a, t), argmin(a, t) FROM t WHERE g = 1",
    )
    .await;
    assert_eq!(
        [floats(&out, 0)[0], floats(&out, 1)[0]],
        [Some(20.0), Some(10.0)]
    );
}
