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

/// 300 patients, three vitals, 20 minutes; patient `i` has a temperature only when `i % 50 == 0`.
fn many() -> (
    MinuteBins,
    std::collections::BTreeMap<(String, String, i64), Bin>,
) {
    let bins = MinuteBins::new(Duration::from_secs(3600), i64::MIN);
    let mut want = std::collections::BTreeMap::new();
    for m in 0..20 {
        let mut rows = Vec::new();
        for i in 0..300_i64 {
            let p = format!("p{i}");
            let t = T + m * MINUTE_US + (i % 60) * 1_000_000;
            rows.push((p.clone(), "8867-4", t, 60.0 + ((i + m) % 40) as f64));
            rows.push((p.clone(), "59408-5", t + 500, 90.0 + (i % 9) as f64));
            if i % 50 == 0 {
                rows.push((p, "8310-5", t + 900, 37.0 + (m % 3) as f64));
            }
        }
        let refs: Vec<(&str, &'static str, i64, f64)> = rows
            .iter()
            .map(|(p, c, t, v)| (p.as_str(), *c, *t, *v))
            .collect();
        bins.add(&append(&refs));
        for (p, c, t, v) in &refs {
            fold(&mut want, p, c, *t, *v);
        }
    }
    (bins, want)
}

fn sorted(mut rows: Vec<BinRow>) -> Vec<BinRow> {
    rows.sort_by(|x, y| (&x.0, &x.1, x.2).cmp(&(&y.0, &y.1, y.2)));
    rows
}

#[test]
fn a_read_of_some_codes_minutes_and_patients_returns_exactly_those_bins() {
    let (bins, all) = many();
    let who: Vec<String> = (0..300).step_by(3).map(|i| format!("p{i}")).collect();
    let cases: [(Option<&[String]>, Option<Vec<String>>, i64, i64); 5] = [
        (None, None, i64::MIN, i64::MAX),
        (
            None,
            Some(vec!["8310-5".into()]),
            T + 5 * MINUTE_US,
            T + 7 * MINUTE_US,
        ),
        (
            Some(&who),
            Some(vec!["8867-4".into(), "59408-5".into()]),
            T + 19 * MINUTE_US,
            T + 20 * MINUTE_US,
        ),
        // Not on a minute start: minutes starting in [from, to).
        (
            Some(&who[..3]),
            None,
            T + 3 * MINUTE_US + 1,
            T + 6 * MINUTE_US - 1,
        ),
        (None, Some(vec!["no-such-code".into()]), i64::MIN, i64::MAX),
    ];
    for (patients, codes, from, to) in cases {
        let want: Vec<BinRow> = all
            .iter()
            .filter(|((p, c, t), _)| {
                patients.is_none_or(|ps| ps.contains(p))
                    && codes.as_ref().is_none_or(|cs| cs.contains(c))
                    && (from..to).contains(t)
            })
            .map(|((p, c, t), b)| (p.clone(), c.clone(), *t, *b))
            .collect();
        let got = sorted(bins.read(patients, codes.as_deref(), from, to));
        assert_eq!(got, want, "{patients:?} {codes:?} {from} {to}");
    }
    assert_eq!(bins.size(), (300, 300 * 20 * 2 + 6 * 20));
}

#[tokio::test]
async fn an_open_scope_reads_the_same_rows_as_the_in_list_and_ends_with_its_guard() {
    use arrow_array::RecordBatch;
    use datafusion::datasource::MemTable;
    let (bins, _) = many();
    let bins = std::sync::Arc::new(bins);
    let ctx = datafusion::prelude::SessionContext::new();
    let obs = MemTable::try_new(
        std::sync::Arc::new(arrow_schema::Schema::new(
            table::schema()
                .fields()
                .iter()
                .take(3)
                .cloned()
                .chain([std::sync::Arc::new(arrow_schema::Field::new(
                    "value",
                    arrow_schema::DataType::Float64,
                    true,
                ))])
                .collect::<Vec<_>>(),
        )),
        vec![vec![]],
    )
    .expect("observations");
    ctx.register_table(
        TABLE,
        std::sync::Arc::new(table::VitalMinutes::new(
            std::sync::Arc::new(obs),
            Some(bins.clone()),
        )),
    )
    .expect("register");
    scope::register_udf(&ctx, &bins);
    let who: Vec<String> = (0..300).step_by(2).map(|i| format!("p{i}")).collect();
    let rows = |filter: String| {
        let ctx = ctx.clone();
        async move {
            let sql = format!(
                "SELECT patient_id, code, effective_time, value_count, value_sum FROM {TABLE} \
                 WHERE {filter} AND code IN ('8867-4', '8310-5') ORDER BY 1, 2, 3"
            );
            let b: Vec<RecordBatch> = ctx
                .sql(&sql)
                .await
                .expect("plan")
                .collect()
                .await
                .expect("run");
            arrow_cast::pretty::pretty_format_batches(&b)
                .expect("format")
                .to_string()
        }
    };
    let list = who
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let by_list = rows(format!("patient_id IN ({list})")).await;
    let guard = bins.open_scope(Scope::new(
        who.iter().map(|p| std::sync::Arc::from(p.as_str())),
    ));
    let by_scope = rows(guard.sql()).await;
    assert_eq!(by_scope, by_list);
    assert_eq!(
        by_list.lines().count(),
        4 + 150 * 20 + 6 * 20,
        "{}",
        &by_list[..200]
    );
    let sql = guard.sql();
    drop(guard);
    let after = ctx
        .sql(&format!("SELECT count(*) FROM {TABLE} WHERE {sql}"))
        .await;
    let err = match after {
        Ok(df) => df
            .collect()
            .await
            .expect_err("a closed scope is an error")
            .to_string(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no open rule scope"), "{err}");
}

#[test]
fn a_ring_grows_to_its_window_and_no_further() {
    // 67 minutes (the shipped rules' window): a patient's heart rate at 1 Hz for 3 hours.
    let bins = MinuteBins::new(Duration::from_secs(67 * 60), i64::MIN);
    for s in 0..3 * 3600 {
        let t = T + s * 1_000_000;
        bins.add(&append(&[("a", "8867-4", t, 60.0)]));
        if s % 60 == 59 {
            bins.advance(t);
        }
    }
    let (patients, held, bytes) = bins.footprint();
    assert_eq!((patients, held), (1, 68));
    // At most window + 6 slots (a plain doubling ring would hold 128), narrow ones.
    assert!(
        bytes <= 73 * crate::minutes::NARROW_SLOT_BYTES,
        "{bytes} B allocated"
    );
    assert_eq!(SLOT_BYTES, 32);
    // A window set later (a rule reload) bounds the ring from then on.
    bins.set_window(Duration::from_secs(20 * 60));
    bins.advance(T + 3 * 3600 * 1_000_000);
    assert_eq!(bins.size(), (1, 20));
}

#[test]
fn the_default_window_is_the_rules_longest_look_back_and_a_late_margin() {
    let rules = crate::rules::load(None).expect("shipped rules");
    // device silent (60 min), fever and blood pressure (clear after 60 min): 60 + 2 buckets,
    // and 15 minutes of lateness.
    assert_eq!(
        crate::engine::bins_window_for(&rules),
        Duration::from_secs(77 * 60)
    );
    let short: Vec<_> = rules.into_iter().filter(|r| r.id == "hr_low").collect();
    // hr_low: 10 + 5 + 2 minutes, + 15.
    assert_eq!(
        crate::engine::bins_window_for(&short),
        Duration::from_secs(32 * 60)
    );
    assert_eq!(
        crate::engine::bins_window_for(&[]),
        Duration::from_secs(15 * 60)
    );
}

#[test]
fn integer_vitals_take_narrow_slots_and_every_bin_reads_back_exactly() {
    use crate::minutes::NARROW_SLOT_BYTES;
    assert_eq!(NARROW_SLOT_BYTES, 20);
    let bins = MinuteBins::new(Duration::from_secs(60 * 60), i64::MIN);
    let m = |k: i64, s: i64| T + k * MINUTE_US + s * 1_000_000;
    // Heart rate: integers, narrow slots for good.
    let hr = [(m(0, 0), 61.0), (m(0, 30), 64.0), (m(1, 0), 70.0)];
    // Temperature: 36.6 is not an f32; the ring turns wide at its second minute, and the first
    // minute (exact so far) must read back the same.
    let temp = [
        (m(0, 5), 37.0),
        (m(0, 50), 37.5),
        (m(1, 5), 36.6),
        (m(1, 9), 1e40),
    ];
    for &(t, v) in &hr {
        bins.add(&append(&[("a", "8867-4", t, v)]));
    }
    let (_, held, bytes) = bins.footprint();
    assert_eq!(held, 2);
    assert_eq!(
        bytes % NARROW_SLOT_BYTES,
        0,
        "heart rate in narrow slots: {bytes} B"
    );
    assert!(
        bytes < 4 * SLOT_BYTES,
        "heart rate in narrow slots: {bytes} B"
    );
    for &(t, v) in &temp {
        bins.add(&append(&[("a", "8310-5", t, v)]));
    }
    let mut want: Vec<(String, i64, Bin)> = Vec::new();
    for &(code, series) in &[("8867-4", &hr[..]), ("8310-5", &temp[..])] {
        for &(t, v) in series {
            let minute = minute_of(t);
            match want
                .iter_mut()
                .find(|(c, mm, _)| c == code && *mm == minute)
            {
                Some((_, _, b)) => b.add(v),
                None => want.push((code.to_owned(), minute, Bin::of(v))),
            }
        }
    }
    let mut got: Vec<(String, i64, Bin)> = bins
        .read(None, None, T, T + 10 * MINUTE_US)
        .into_iter()
        .map(|(_, c, t, b)| (c, t, b))
        .collect();
    let key = |x: &(String, i64, Bin)| (x.0.clone(), x.1);
    got.sort_by_key(key);
    want.sort_by_key(key);
    // Bit for bit: the same f64 sums, minima and maxima as an f64 fold.
    let bits = |v: &[(String, i64, Bin)]| {
        v.iter()
            .map(|(c, t, b)| {
                (
                    c.clone(),
                    *t,
                    b.count,
                    b.sum.to_bits(),
                    b.min.to_bits(),
                    b.max.to_bits(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&got), bits(&want));
    let (_, held, bytes) = bins.footprint();
    assert_eq!(held, 4);
    assert!(bytes >= 2 * SLOT_BYTES + 2 * NARROW_SLOT_BYTES, "{bytes} B");
}
