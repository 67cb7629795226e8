//! From per-bucket condition samples to episodes: the one function live evaluation and the
//! backtest share, so both find the same episodes in the same data.
//!
//! A rule's SQL gives, per patient and time bucket (event time), whether the condition held
//! (`hit`) and a value. In a contiguous rule only *closed* buckets count: a bucket is closed
//! once the patient has data at or beyond its end (live) or the backtest's range ends after it;
//! in a spot-reading rule (fever, blood pressure) a bucket counts once it has data. Then:
//!
//! - a run is a sequence of hit buckets; in a `contiguous` rule a missing bucket (no data)
//!   breaks it, so gaps in the data never fake a sustained episode; any closed non-hit bucket
//!   breaks it in every rule;
//! - a run becomes an episode (qualifies) once it spans `for` (first hit bucket start to last
//!   hit bucket end); until then it is pending;
//! - hysteresis: a qualified episode absorbs hits that come back within `clear` of its last
//!   hit; it resolves when a closed non-hit (or, in a contiguous rule, missing) stretch of
//!   more than `clear` follows its last hit — with `clear = 0`, at the first such bucket;
//! - an `absence` rule (device silent) turns gaps between data buckets of at least `for`
//!   into episodes; the gap open at `now` is an unresolved one.

use std::borrow::Borrow;

/// One bucket's condition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The condition held in this bucket.
    pub hit: bool,
    /// The bucket's value (mean heart rate, lowest SpO2…), if any.
    pub value: Option<f64>,
}

/// How samples become episodes (all times UTC microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Bucket length.
    pub bucket_us: i64,
    /// Minimum span of a run to become an episode (0 = the first hit bucket).
    pub for_us: i64,
    /// Hysteresis: how long the condition must stay clear before the episode resolves.
    pub clear_us: i64,
    /// A bucket with no data breaks a run.
    pub contiguous: bool,
    /// Episodes are gaps in the data (device silent).
    pub absence: bool,
    /// The episode's value is the lowest bucket value (low heart rate, SpO2), else the highest.
    pub lowest: bool,
}

/// An episode (or a pending run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Episode {
    /// Start of the first hit bucket.
    pub start_us: i64,
    /// End of the last hit bucket (exclusive).
    pub end_us: i64,
    /// The worst value seen.
    pub value: Option<f64>,
    /// Spans `for`: an alert. A pending run otherwise.
    pub qualified: bool,
    /// The condition has cleared (for `clear`) after it.
    pub resolved: bool,
}

impl Episode {
    /// Minutes covered.
    pub fn minutes(&self) -> i64 {
        (self.end_us - self.start_us) / 60_000_000
    }
}

fn worse(shape: &Shape, a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if shape.lowest { x.min(y) } else { x.max(y) }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Every episode and the trailing pending run (if any) in `samples` (by bucket start, in
/// order: a `&BTreeMap<i64, Sample>` or the live engine's packed samples), looking only at
/// buckets that end at or before `closed_until` (for `absence`, `closed_until` is "now").
pub fn episodes<T: Borrow<i64>, S: Borrow<Sample>>(
    samples: impl IntoIterator<Item = (T, S)>,
    shape: &Shape,
    closed_until: i64,
) -> Vec<Episode> {
    if shape.absence {
        return absences(samples, shape, closed_until);
    }
    let b = shape.bucket_us.max(1);
    let mut out = Vec::new();
    // The run being followed, and whether a closed non-hit bucket came after its last hit.
    let mut cur: Option<(Episode, Option<i64>)> = None;
    let qualifies = |e: &Episode| e.end_us - e.start_us >= shape.for_us;
    // A contiguous rule waits for a bucket to close; in a spot-reading rule a bucket with a
    // reading counts at once (a single fever reading must not wait for the next one).
    let last = if shape.contiguous {
        closed_until - b
    } else {
        closed_until
    };
    let samples = samples.into_iter().map(|(t, s)| (*t.borrow(), *s.borrow()));
    for (t, s) in samples.take_while(|(t, _)| *t <= last) {
        if s.hit {
            if let Some((mut e, nonhit)) = cur.take() {
                let gap = t - e.end_us; // time without a hit since the run's last hit bucket
                let interrupted = nonhit.is_some() || (shape.contiguous && gap > 0);
                if !interrupted || (e.qualified && gap <= shape.clear_us) {
                    e.end_us = t + b;
                    e.value = worse(shape, e.value, s.value);
                    e.qualified = e.qualified || qualifies(&e);
                    cur = Some((e, None));
                    continue;
                }
                if e.qualified {
                    e.resolved = true;
                    out.push(e);
                }
            }
            let mut e = Episode {
                start_us: t,
                end_us: t + b,
                value: s.value,
                qualified: false,
                resolved: false,
            };
            e.qualified = qualifies(&e);
            cur = Some((e, None));
        } else if let Some((e, nonhit)) = cur.take() {
            if !e.qualified {
                continue; // a pending run broken before it qualified: nothing happened
            }
            let nonhit = nonhit.or(Some(t));
            if t + b - e.end_us > shape.clear_us {
                out.push(Episode {
                    resolved: true,
                    ..e
                });
            } else {
                cur = Some((e, nonhit));
            }
        }
    }
    if let Some((mut e, _)) = cur {
        // In a contiguous rule, buckets without data after the last hit clear the condition
        // once they are closed (the patient sent later data) and longer than `clear`.
        if e.qualified
            && shape.contiguous
            && closed_until - e.end_us > shape.clear_us
            && closed_until >= e.end_us + b
        {
            e.resolved = true;
        }
        out.push(e);
    }
    out
}

fn absences<T: Borrow<i64>, S>(
    samples: impl IntoIterator<Item = (T, S)>,
    shape: &Shape,
    now: i64,
) -> Vec<Episode> {
    let b = shape.bucket_us.max(1);
    let mut out = Vec::new();
    let mut prev: Option<i64> = None;
    let starts = samples.into_iter().map(|(t, _)| *t.borrow());
    for t in starts.take_while(|t| *t < now) {
        if let Some(p) = prev
            && t - (p + b) >= shape.for_us.max(1)
        {
            out.push(Episode {
                start_us: p + b,
                end_us: t,
                value: None,
                qualified: true,
                resolved: true,
            });
        }
        prev = Some(t);
    }
    if let Some(p) = prev
        && now - (p + b) >= shape.for_us.max(1)
    {
        out.push(Episode {
            start_us: p + b,
            end_us: now,
            value: None,
            qualified: true,
            resolved: false,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const M: i64 = 60_000_000;

    fn shape(for_min: i64, clear_min: i64) -> Shape {
        Shape {
            bucket_us: M,
            for_us: for_min * M,
            clear_us: clear_min * M,
            contiguous: true,
            absence: false,
            lowest: false,
        }
    }

    /// `pattern`: one char per minute from minute 0: `x` hit, `.` non-hit, ` ` no data.
    fn series(pattern: &str) -> BTreeMap<i64, Sample> {
        pattern
            .chars()
            .enumerate()
            .filter(|(_, c)| *c != ' ')
            .map(|(i, c)| {
                (
                    i as i64 * M,
                    Sample {
                        hit: c == 'x',
                        value: Some(i as f64),
                    },
                )
            })
            .collect()
    }

    fn spans(p: &str, s: &Shape, closed: i64) -> Vec<(i64, i64, bool, bool)> {
        episodes(&series(p), s, closed * M)
            .into_iter()
            .map(|e| (e.start_us / M, e.end_us / M, e.qualified, e.resolved))
            .collect()
    }

    #[test]
    fn ten_minutes_qualify_nine_do_not() {
        let s = shape(10, 0);
        assert_eq!(spans(".xxxxxxxxx.", &s, 11), vec![]);
        assert_eq!(
            spans(".xxxxxxxxxx.", &s, 12),
            vec![(1, 11, true, true)],
            "exactly ten minutes"
        );
    }

    #[test]
    fn missing_minute_breaks_a_contiguous_run() {
        let s = shape(10, 0);
        assert_eq!(spans("xxxxx xxxxxx.", &s, 13), vec![]);
        let mut loose = s;
        loose.contiguous = false;
        assert_eq!(
            spans("xxxxx xxxxxx.", &loose, 13),
            vec![(0, 12, true, true)]
        );
    }

    #[test]
    fn open_buckets_are_not_used() {
        let s = shape(10, 0);
        // Ten hits but the tenth is not closed yet: pending.
        assert_eq!(spans("xxxxxxxxxx", &s, 9), vec![(0, 9, false, false)]);
        assert_eq!(spans("xxxxxxxxxx", &s, 10), vec![(0, 10, true, false)]);
    }

    #[test]
    fn hysteresis_merges_short_dips_and_resolves_after_clear() {
        let s = shape(3, 2);
        assert_eq!(spans("xxx..xx...", &s, 10), vec![(0, 7, true, true)]);
        assert_eq!(spans("xxx...xx..", &s, 10), vec![(0, 3, true, true)]);
        // Not resolved while the clear stretch is still short.
        assert_eq!(spans("xxx..", &s, 5), vec![(0, 3, true, false)]);
        // A pending run is never merged.
        assert_eq!(spans("xx.xx.", &s, 6), vec![]);
    }

    #[test]
    fn late_data_extends_backwards() {
        let s = shape(10, 0);
        assert_eq!(spans("     xxxxxxx.", &s, 13), vec![]);
        assert_eq!(spans("...xxxxxxxxxx.", &s, 14), vec![(3, 13, true, true)]);
    }

    #[test]
    fn point_rules_fire_on_the_first_hit() {
        let mut s = shape(0, 0);
        s.contiguous = false;
        assert_eq!(
            spans("..x..x", &s, 6),
            vec![(2, 3, true, true), (5, 6, true, false)]
        );
        s.clear_us = 60 * M;
        assert_eq!(spans("..x..x", &s, 6), vec![(2, 6, true, false)]);
    }

    #[test]
    fn absence_is_a_gap_of_at_least_for() {
        let s = Shape {
            absence: true,
            ..shape(30, 0)
        };
        let mut m = BTreeMap::new();
        for t in [0, 1, 2, 40, 41] {
            m.insert(
                t * M,
                Sample {
                    hit: false,
                    value: None,
                },
            );
        }
        let e = episodes(&m, &s, 100 * M);
        let got: Vec<_> = e
            .iter()
            .map(|e| (e.start_us / M, e.end_us / M, e.resolved))
            .collect();
        assert_eq!(got, vec![(3, 40, true), (42, 100, false)]);
        assert!(
            episodes(&m, &s, 60 * M).len() == 1,
            "18 silent minutes are not enough"
        );
    }
}
