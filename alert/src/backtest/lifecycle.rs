//! What the replayed alert lifecycle did, per rule: alerts raised, how many of them people were
//! told of (at once, or when a hold ended), how often they were told again (repeats,
//! escalations), and how many were held and never told (too soon after the last episode,
//! expected for the patient, or over before a quiet period ended). Also the reading times the
//! replay's clock needs.

use std::collections::{BTreeMap, HashMap};

use arrow_array::{Array, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, TimeUnit};
use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::engine::scope_sql;
use crate::history::{Event, Transition};
use crate::rules::Rule;

/// One rule's lifecycle in a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Lifecycle {
    /// Rule id.
    pub rule: String,
    /// Alerts raised (`firing`).
    pub raised: usize,
    /// Alerts people were told of: raised unheld, or released when their hold ended.
    pub told: usize,
    /// `repeated` transitions (told again at the level's interval).
    pub repeated: usize,
    /// `escalated` transitions.
    pub escalated: usize,
    /// Raised held because too soon after the last resolved episode, and never told.
    pub suppressed_realert_gap: usize,
    /// Raised held in a quiet period, and over before it ended (never told).
    pub suppressed_quiet: usize,
    /// Raised as expected for the patient (recorded at level info, never told).
    pub expected: usize,
}

impl Lifecycle {
    /// Counts per rule (every rule, in order).
    pub fn of(rules: &[Rule], ts: &[Transition]) -> Vec<Lifecycle> {
        let mut by: BTreeMap<&str, Lifecycle> = BTreeMap::new();
        // Per alert: why its firing was held, and whether it was released.
        let mut held: HashMap<&str, (&str, &str, bool)> = HashMap::new();
        for t in ts {
            let l = by.entry(t.rule.as_str()).or_default();
            match t.event {
                Event::Firing => {
                    l.raised += 1;
                    match t.held.as_deref() {
                        None => l.told += 1,
                        Some(why) => {
                            held.insert(&t.alert_id, (&t.rule, why, false));
                        }
                    }
                }
                Event::Released => {
                    l.told += 1;
                    if let Some(h) = held.get_mut(t.alert_id.as_str()) {
                        h.2 = true;
                    }
                }
                Event::Repeated => l.repeated += 1,
                Event::Escalated => l.escalated += 1,
                _ => {}
            }
        }
        for (rule, why, released) in held.into_values() {
            let l = by.entry(rule).or_default();
            match (why, released) {
                ("expected", _) => l.expected += 1,
                ("realert_gap", false) => l.suppressed_realert_gap += 1,
                ("quiet", false) => l.suppressed_quiet += 1,
                _ => {}
            }
        }
        rules
            .iter()
            .map(|r| Lifecycle {
                rule: r.id.clone(),
                ..by.remove(r.id.as_str()).unwrap_or_default()
            })
            .collect()
    }
}

/// Adds one day's readings to `into`: per patient, minute start → newest reading time in it.
pub(crate) async fn reading_minutes(
    ctx: &SessionContext,
    (a, z): (i64, i64),
    into: &mut HashMap<String, BTreeMap<i64, i64>>,
) -> Result<(), String> {
    let sql = format!(
        "SELECT patient_id, date_bin(INTERVAL '60 seconds', effective_time) AS m, \
         max(effective_time) AS last FROM observations WHERE {} GROUP BY 1, 2",
        scope_sql(a, z, None)
    );
    let df = ctx
        .sql_with_options(&sql, carewatch_query::QueryEngine::options())
        .await
        .map_err(|e| format!("reading times: {e}"))?;
    let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
    for b in df
        .collect()
        .await
        .map_err(|e| format!("reading times: {e}"))?
    {
        let cast = |i: usize, dt: &DataType| arrow_cast::cast(b.column(i), dt);
        let (Ok(p), Ok(m), Ok(l)) = (cast(0, &DataType::Utf8), cast(1, &ts), cast(2, &ts)) else {
            return Err("reading times: unexpected column types".into());
        };
        let (Some(p), Some(m), Some(l)) = (
            p.as_any().downcast_ref::<StringArray>(),
            m.as_any().downcast_ref::<TimestampMicrosecondArray>(),
            l.as_any().downcast_ref::<TimestampMicrosecondArray>(),
        ) else {
            return Err("reading times: unexpected column types".into());
        };
        for i in (0..b.num_rows()).filter(|i| p.is_valid(*i) && m.is_valid(*i)) {
            into.entry(p.value(i).to_owned())
                .or_default()
                .insert(m.value(i), l.value(i));
        }
    }
    Ok(())
}
