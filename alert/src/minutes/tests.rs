use std::time::Duration;

use carewatch_store::AppendSummary;

use super::*;

const T: i64 = 1_767_571_200_000_000;

fn append(rows: &[(&str, &'static str, i64, f64)]) -> AppendSummary {
    let mut s = AppendSummary::default();
    for &(p, c, t, v) in rows {
        let i = match s.patients.iter().position(|x| x.0 == p) {
            Some(i) => i,
            None => {
                s.patients.push((p.to_owned(), t, t));
                s.patients.len() - 1
            }
        };
        s.readings.push((i as u32, c, t, v));
    }
    s
}

#[test]
fn live_bins_fold_like_the_history_fold_and_late_data_joins_its_minute() {
    let bins = MinuteBins::new(Duration::from_secs(3600), i64::MIN);
    let rows = [
        ("a", "8867-4", T + 1_000_000, 70.0),
        ("a", "8867-4", T + 59_000_000, 90.0),
        ("b", "8867-4", T + 61_000_000, 50.0),
        ("a", "55423-8", T + 2_000_000, 12.0),
    ];
    bins.add(&append(&rows));
    // Late: minute 0 of a again, after minute 1 of b.
    bins.add(&append(&[("a", "8867-4", T + 30_000_000, 80.0)]));
    let mut want = std::collections::BTreeMap::new();
    for (p, c, t, v) in rows.iter().chain(&[("a", "8867-4", T + 30_000_000, 80.0)]) {
        fold(&mut want, p, c, *t, *v);
    }
    let mut got = bins.read(None, None, i64::MIN, i64::MAX);
    got.sort_by(|x, y| (&x.0, &x.1, x.2).cmp(&(&y.0, &y.1, y.2)));
    let want: Vec<BinRow> = want
        .into_iter()
        .map(|((p, c, t), b)| (p, c, t, b))
        .collect();
    assert_eq!(got, want);
    let hr = &got[1];
    assert_eq!(
        (hr.3.count, hr.3.sum, hr.3.min, hr.3.max),
        (3, 240.0, 70.0, 90.0)
    );
    let only_b = bins.read(
        Some(&["b".to_owned()]),
        Some(&["8867-4".to_owned()]),
        T,
        T + 120_000_000,
    );
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].2, T + MINUTE_US);
}

#[test]
fn the_horizon_prunes_and_older_appends_are_left_to_the_history() {
    let bins = MinuteBins::new(Duration::from_secs(600), i64::MIN);
    for m in 0..30 {
        bins.add(&append(&[("a", "8867-4", T + m * MINUTE_US, 60.0)]));
    }
    assert_eq!(bins.size(), (1, 30));
    bins.advance(T + 29 * MINUTE_US + 5);
    assert_eq!(bins.horizon(), T + 19 * MINUTE_US);
    assert_eq!(bins.size(), (1, 11));
    // A late reading before the horizon is not kept (the scan folds it from observations).
    bins.add(&append(&[("a", "8867-4", T + 3 * MINUTE_US, 60.0)]));
    assert_eq!(bins.size(), (1, 11));
    // The horizon never goes back.
    bins.advance(T);
    assert_eq!(bins.horizon(), T + 19 * MINUTE_US);
    bins.advance(T + 100 * MINUTE_US);
    assert_eq!(bins.size(), (0, 0));
    // Started on a non-empty store: minutes before the start are never in memory.
    let started = MinuteBins::new(Duration::from_secs(600), T + 90 * 1_000_000);
    assert_eq!(started.horizon(), T + MINUTE_US);
}

#[test]
fn filters_name_the_range_patients_and_codes() {
    use datafusion::logical_expr::{col, lit};
    use datafusion::scalar::ScalarValue;
    let ts = |t: i64| {
        lit(ScalarValue::TimestampMicrosecond(
            Some(t),
            Some("UTC".into()),
        ))
    };
    let f = col("effective_time")
        .gt_eq(ts(T))
        .and(col("effective_time").lt(ts(T + 5 * MINUTE_US)))
        .and(col("patient_id").in_list(vec![lit("a"), lit("b")], false))
        .and(
            col("code")
                .eq(lit("59408-5"))
                .or(col("code").eq(lit("2708-6"))),
        );
    let w = table::wanted(&[f, col("patient_id").eq(lit("b"))]);
    assert_eq!(w.lo, Some(T));
    assert_eq!(w.hi, Some(T + 5 * MINUTE_US));
    assert_eq!(w.patients, Some(vec!["b".to_owned()]));
    assert_eq!(
        w.codes,
        Some(vec!["59408-5".to_owned(), "2708-6".to_owned()])
    );
    assert_eq!(
        table::wanted(&[col("value").gt(lit(3.0))]),
        table::Wanted::default()
    );
}
