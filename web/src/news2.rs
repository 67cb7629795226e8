//! NEWS2 (Royal College of Physicians 2017, chart 1) from a patient's latest vitals: pure
//! scoring, no I/O.
//!
//! A wearable measures at most five of NEWS2's seven parameters: respiration rate, SpO2 (scored
//! on scale 1), systolic blood pressure, pulse and temperature. Consciousness and supplemental
//! oxygen are never measured here: they score 0 as if the patient were alert and on air, and the
//! answer says so (`assumed`). Of the five, only those present are scored; the others are listed
//! in `missing` and the score is `partial`. Values are rounded as a chart records them (whole
//! numbers; temperature to 0.1 °C) before the bands apply, so 90.4 /min is 90 (0 points), as a
//! nurse would write it.

use serde::Serialize;

/// One scored parameter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Part {
    /// The parameter (our vital key: `respiratory_rate`, `spo2`, `systolic`, `heart_rate`,
    /// `body_temperature`).
    pub vital: &'static str,
    /// The value scored (rounded as charted).
    pub value: f64,
    /// Its points (0 to 3).
    pub points: u32,
}

/// A NEWS2 score from the parameters we have.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct News2 {
    /// Sum of the points of the parameters present.
    pub score: u32,
    /// The clinical response band: `low` (0–4), `low-medium` (a single parameter scoring 3),
    /// `medium` (5–6), `high` (7 or more).
    pub band: &'static str,
    /// Some measured parameter is missing.
    pub partial: bool,
    /// The measured parameters without a recent value.
    pub missing: Vec<&'static str>,
    /// What was assumed for the parameters a wearable never measures.
    pub assumed: [&'static str; 2],
    /// Each parameter scored.
    pub parts: Vec<Part>,
}

/// The scored parameters: (vital key, LOINC code), in chart order.
pub const PARAMETERS: [(&str, &str); 5] = [
    ("respiratory_rate", "9279-1"),
    ("spo2", "2708-6"),
    ("systolic", "8480-6"),
    ("heart_rate", "8867-4"),
    ("body_temperature", "8310-5"),
];

/// Points for a respiration rate (/min).
pub fn respiration(rr: f64) -> u32 {
    match rr.round() {
        r if r <= 8.0 => 3,
        r if r <= 11.0 => 1,
        r if r <= 20.0 => 0,
        r if r <= 24.0 => 2,
        _ => 3,
    }
}

/// Points for SpO2 (%), scale 1.
pub fn spo2(s: f64) -> u32 {
    match s.round() {
        s if s <= 91.0 => 3,
        s if s <= 93.0 => 2,
        s if s <= 95.0 => 1,
        _ => 0,
    }
}

/// Points for systolic blood pressure (mmHg).
pub fn systolic(bp: f64) -> u32 {
    match bp.round() {
        b if b <= 90.0 => 3,
        b if b <= 100.0 => 2,
        b if b <= 110.0 => 1,
        b if b <= 219.0 => 0,
        _ => 3,
    }
}

/// Points for pulse (/min).
pub fn pulse(hr: f64) -> u32 {
    match hr.round() {
        h if h <= 40.0 => 3,
        h if h <= 50.0 => 1,
        h if h <= 90.0 => 0,
        h if h <= 110.0 => 1,
        h if h <= 130.0 => 2,
        _ => 3,
    }
}

/// Points for temperature (°C).
pub fn temperature(t: f64) -> u32 {
    match (t * 10.0).round() / 10.0 {
        t if t <= 35.0 => 3,
        t if t <= 36.0 => 1,
        t if t <= 38.0 => 0,
        t if t <= 39.0 => 1,
        _ => 2,
    }
}

fn charted(vital: &str, v: f64) -> (f64, u32) {
    match vital {
        "respiratory_rate" => (v.round(), respiration(v)),
        "spo2" => (v.round(), spo2(v)),
        "systolic" => (v.round(), systolic(v)),
        "heart_rate" => (v.round(), pulse(v)),
        _ => ((v * 10.0).round() / 10.0, temperature(v)),
    }
}

/// The response band of a score.
pub fn band(score: u32, any_three: bool) -> &'static str {
    match score {
        7.. => "high",
        5..=6 => "medium",
        _ if any_three => "low-medium",
        _ => "low",
    }
}

/// Scores the parameters `value(code)` has (a finite value); `None` when it has none of them.
pub fn score(value: impl Fn(&str) -> Option<f64>) -> Option<News2> {
    let mut parts = Vec::new();
    let mut missing = Vec::new();
    for (vital, code) in PARAMETERS {
        match value(code).filter(|v| v.is_finite()) {
            Some(v) => {
                let (value, points) = charted(vital, v);
                parts.push(Part {
                    vital,
                    value,
                    points,
                });
            }
            None => missing.push(vital),
        }
    }
    if parts.is_empty() {
        return None;
    }
    let score = parts.iter().map(|p| p.points).sum();
    let any_three = parts.iter().any(|p| p.points == 3);
    Some(News2 {
        score,
        band: band(score, any_three),
        partial: !missing.is_empty(),
        missing,
        assumed: ["consciousness: alert", "breathing air"],
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every band edge of chart 1, both sides.
    #[test]
    fn chart_one_band_edges() {
        let rr = [
            (8.0, 3),
            (9.0, 1),
            (11.0, 1),
            (12.0, 0),
            (20.0, 0),
            (21.0, 2),
        ];
        for (v, p) in rr.into_iter().chain([(24.0, 2), (25.0, 3)]) {
            assert_eq!(respiration(v), p, "rr {v}");
        }
        let sat = [
            (91.0, 3),
            (92.0, 2),
            (93.0, 2),
            (94.0, 1),
            (95.0, 1),
            (96.0, 0),
        ];
        for (v, p) in sat {
            assert_eq!(spo2(v), p, "spo2 {v}");
        }
        let sbp = [(90.0, 3), (91.0, 2), (100.0, 2), (101.0, 1), (110.0, 1)];
        for (v, p) in sbp.into_iter().chain([(111.0, 0), (219.0, 0), (220.0, 3)]) {
            assert_eq!(systolic(v), p, "sbp {v}");
        }
        let hr = [
            (40.0, 3),
            (41.0, 1),
            (50.0, 1),
            (51.0, 0),
            (90.0, 0),
            (91.0, 1),
        ];
        for (v, p) in hr
            .into_iter()
            .chain([(110.0, 1), (111.0, 2), (130.0, 2), (131.0, 3)])
        {
            assert_eq!(pulse(v), p, "pulse {v}");
        }
        let temp = [
            (35.0, 3),
            (35.1, 1),
            (36.0, 1),
            (36.1, 0),
            (38.0, 0),
            (38.1, 1),
        ];
        for (v, p) in temp.into_iter().chain([(39.0, 1), (39.1, 2), (41.0, 2)]) {
            assert_eq!(temperature(v), p, "temp {v}");
        }
    }

    #[test]
    fn values_are_rounded_as_charted() {
        assert_eq!(pulse(90.4), 0);
        assert_eq!(pulse(90.6), 1);
        assert_eq!(temperature(38.04), 0);
        assert_eq!(temperature(38.06), 1);
    }

    fn of(pairs: &[(&str, f64)]) -> Option<News2> {
        let m: std::collections::HashMap<String, f64> =
            pairs.iter().map(|(c, v)| ((*c).to_owned(), *v)).collect();
        score(|c| m.get(c).copied())
    }

    #[test]
    fn a_full_set_scores_every_parameter_and_is_not_partial() {
        // RR 22 (2), SpO2 95 (1), SBP 105 (1), pulse 115 (2), temp 38.5 (1) = 7: high.
        let n = of(&[
            ("9279-1", 22.0),
            ("2708-6", 95.0),
            ("8480-6", 105.0),
            ("8867-4", 115.0),
            ("8310-5", 38.5),
        ])
        .expect("score");
        assert_eq!((n.score, n.band, n.partial), (7, "high", false));
        assert!(n.missing.is_empty());
        assert_eq!(n.parts.len(), 5);
    }

    #[test]
    fn missing_parameters_make_the_score_partial() {
        let n = of(&[("8867-4", 72.0), ("8310-5", 39.4)]).expect("score");
        assert_eq!((n.score, n.band, n.partial), (2, "low", true));
        assert_eq!(n.missing, ["respiratory_rate", "spo2", "systolic"]);
        assert_eq!(of(&[("55423-8", 100.0)]), None, "no NEWS2 parameter at all");
        assert_eq!(of(&[("8867-4", f64::NAN)]), None);
    }

    #[test]
    fn bands_follow_the_rcp_triggers() {
        // A single 3 with a low total is low-medium (urgent ward review).
        let n = of(&[("2708-6", 90.0), ("8867-4", 70.0)]).expect("score");
        assert_eq!((n.score, n.band), (3, "low-medium"));
        assert_eq!(band(0, false), "low");
        assert_eq!(band(4, false), "low");
        assert_eq!(band(5, false), "medium");
        assert_eq!(band(6, true), "medium");
        assert_eq!(band(7, false), "high");
    }
}
