//! The analyst queries of the query bench, each written in the forms an engine's user would try,
//! per engine. Every form of a query must return the same single row of numbers; the bench runs
//! every form on its engine and reports each engine's best (fastest) form, so neither engine is
//! held to a form that suits only the other.
//!
//! Why forms at all: DuckDB's `date_trunc` costs some 300 ns a row (ICU on TIMESTAMPTZ, and still
//! slow on TIMESTAMP), which was most of its 21.6 s on the gaps-and-islands query; binning on the
//! integer epoch is an order of magnitude faster there. DataFusion has its own fast and slow forms.

/// One analyst question.
pub struct Query {
    pub name: &'static str,
    /// carewatch (DataFusion SQL) forms, the first being the plain one.
    pub carewatch: Vec<String>,
    /// DuckDB forms.
    pub duckdb: Vec<String>,
}

/// Minute / hour bins: the forms each engine accepts.
fn bins(unit: &str, micros: i64) -> (Vec<String>, Vec<String>) {
    let cw = vec![
        format!("date_trunc('{unit}', effective_time)"),
        format!("date_bin(INTERVAL '1 {unit}', effective_time)"),
        format!("CAST(effective_time AS BIGINT) / {micros}"),
    ];
    let duck = vec![
        format!("date_trunc('{unit}', effective_time)"),
        format!("time_bucket(INTERVAL 1 {unit}, effective_time)"),
        format!("epoch_us(effective_time) // {micros}"),
    ];
    (cw, duck)
}

fn episodes(bin: &str) -> String {
    format!(
        "WITH m AS (SELECT patient_id, {bin} AS minute, avg(value) AS hr \
           FROM observations WHERE code = '8867-4' GROUP BY 1, 2), \
         f AS (SELECT patient_id, minute, hr > 100 AS high, \
           row_number() OVER (PARTITION BY patient_id ORDER BY minute) \
           - row_number() OVER (PARTITION BY patient_id, hr > 100 ORDER BY minute) AS grp FROM m) \
         SELECT count(*) AS episodes, sum(minutes) AS minutes FROM ( \
           SELECT patient_id, grp, count(*) AS minutes FROM f WHERE high GROUP BY patient_id, grp \
           HAVING count(*) >= 10) e"
    )
}

fn hourly(bin: &str) -> String {
    format!(
        "SELECT count(*) AS groups, sum(n) AS n, sum(mean) AS means, sum(lo) AS los, sum(hi) AS his \
         FROM (SELECT patient_id, {bin} AS h, count(*) AS n, avg(value) AS mean, min(value) AS lo, \
           max(value) AS hi FROM observations WHERE code = '8867-4' GROUP BY 1, 2) r"
    )
}

/// The queries over a data set; the one patient-day is `patient`'s `day` (`YYYY-MM-DD`).
pub fn queries(patient: &str, day: &str, next: &str) -> Vec<Query> {
    let one_day = format!(
        "SELECT count(*) AS n, avg(value) AS mean, min(value) AS lo, max(value) AS hi \
         FROM observations WHERE patient_id = '{patient}' AND code = '8867-4' \
         AND effective_time >= TIMESTAMP '{day}T00:00:00Z' AND effective_time < TIMESTAMP '{next}T00:00:00Z'"
    );
    let (min_cw, min_duck) = bins("minute", 60_000_000);
    let (hour_cw, hour_duck) = bins("hour", 3_600_000_000);
    let pct_within =
        "SELECT count(*) AS patients, sum(p5) AS p5, sum(p50) AS p50, sum(p95) AS p95 FROM ( \
         SELECT patient_id, percentile_cont(0.05) WITHIN GROUP (ORDER BY value) AS p5, \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY value) AS p50, \
           percentile_cont(0.95) WITHIN GROUP (ORDER BY value) AS p95 \
         FROM observations WHERE code = '8867-4' GROUP BY patient_id) q"
            .to_owned();
    let pct_list =
        "SELECT count(*) AS patients, sum(q[1]) AS p5, sum(q[2]) AS p50, sum(q[3]) AS p95 FROM ( \
         SELECT patient_id, quantile_cont(value, [0.05, 0.5, 0.95]) AS q \
         FROM observations WHERE code = '8867-4' GROUP BY patient_id) q"
            .to_owned();
    let latest = |agg: &str| {
        format!(
            "SELECT count(*) AS patients, sum(v) AS values FROM ( \
             SELECT patient_id, {agg} AS v FROM observations WHERE code = '8867-4' GROUP BY patient_id) l"
        )
    };
    let latest_window = "SELECT count(*) AS patients, sum(value) AS values FROM ( \
         SELECT patient_id, value, row_number() OVER (PARTITION BY patient_id ORDER BY effective_time DESC) AS r \
         FROM observations WHERE code = '8867-4') l WHERE r = 1"
        .to_owned();
    let joined = |filter_first: bool| {
        let obs = if filter_first {
            "(SELECT device_id, value FROM observations WHERE code = '8867-4')"
        } else {
            "observations"
        };
        format!(
            "SELECT count(*) AS teams, sum(n) AS n, sum(mean) AS means FROM ( \
             SELECT ct.care_team, count(*) AS n, avg(o.value) AS mean FROM {obs} o \
             JOIN devices d ON o.device_id = d.device_id \
             JOIN care_teams ct ON ct.patient_id = d.patient_id GROUP BY ct.care_team) t"
        )
    };
    // Readings counted and summed per device first (1,000 rows), then joined: how an analyst
    // aggregates a fact table before joining small dimension tables.
    let joined_late = "SELECT count(*) AS teams, sum(n) AS n, sum(mean) AS means FROM ( \
         SELECT ct.care_team, sum(o.n) AS n, sum(o.s) / sum(o.n) AS mean FROM ( \
           SELECT device_id, count(*) AS n, sum(value) AS s FROM observations \
           WHERE code = '8867-4' GROUP BY device_id) o \
         JOIN devices d ON o.device_id = d.device_id \
         JOIN care_teams ct ON ct.patient_id = d.patient_id GROUP BY ct.care_team) t"
        .to_owned();
    vec![
        Query {
            name: "one patient, one day",
            carewatch: vec![one_day.clone()],
            duckdb: vec![one_day],
        },
        Query {
            name: "sustained HR > 100 for ≥ 10 min (gaps and islands on 1-min bins)",
            carewatch: min_cw.iter().map(|b| episodes(b)).collect(),
            duckdb: min_duck.iter().map(|b| episodes(b)).collect(),
        },
        Query {
            name: "hourly rollup per patient (count, mean, min, max)",
            carewatch: hour_cw.iter().map(|b| hourly(b)).collect(),
            duckdb: hour_duck.iter().map(|b| hourly(b)).collect(),
        },
        Query {
            name: "p5 / p50 / p95 per patient (exact)",
            carewatch: vec![pct_within.clone(), pct_list.clone()],
            duckdb: vec![pct_within, pct_list],
        },
        Query {
            name: "latest value per patient",
            carewatch: vec![
                latest("arg_max(value, effective_time)"),
                latest("last_value(value ORDER BY effective_time)"),
                latest_window.clone(),
            ],
            duckdb: vec![
                latest("arg_max(value, effective_time)"),
                latest("last(value ORDER BY effective_time)"),
                latest_window,
            ],
        },
        Query {
            name: "readings per care team (joined with the device registry)",
            carewatch: vec![joined(false), joined(true), joined_late.clone()],
            duckdb: vec![joined(false), joined(true), joined_late],
        },
    ]
}
