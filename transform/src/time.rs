//! Timestamps with their offsets understood.
//!
//! Accepted forms: RFC 3339 with an offset (kept as `offset_min`), epoch milliseconds (a JSON
//! number or a string of digits), and — only when a [`ZonePolicy`] says how to read them —
//! date-times without an offset. A zone-less time is never silently taken as UTC: the default
//! policy rejects it with reason `zoneless_time`; `--assume-tz UTC` (or any IANA zone or fixed
//! offset) is the explicit choice.

use chrono::{DateTime, FixedOffset, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};

use crate::reject::{Reason, Rejection, clip, describe};

/// How to read a date-time that carries no offset.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ZonePolicy {
    /// Reject it (`zoneless_time`). The default.
    #[default]
    Reject,
    /// Read it in a fixed offset (UTC is `Fixed(+00:00)`).
    Fixed(FixedOffset),
    /// Read it as local time in an IANA zone (DST-aware; times in a DST gap are rejected).
    Named(chrono_tz::Tz),
}

impl ZonePolicy {
    /// UTC, chosen explicitly.
    pub fn utc() -> Self {
        ZonePolicy::Fixed(Utc.fix())
    }

    /// Parses `UTC`, `Z`, `+02:00`, `-0500` or an IANA name such as `America/New_York`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("utc") || t == "Z" {
            return Ok(ZonePolicy::utc());
        }
        if t.starts_with('+') || t.starts_with('-') {
            let probe = format!("2000-01-01T00:00:00{t}");
            if let Ok(dt) = DateTime::parse_from_rfc3339(&probe)
                .or_else(|_| DateTime::parse_from_str(&probe, "%Y-%m-%dT%H:%M:%S%z"))
            {
                return Ok(ZonePolicy::Fixed(*dt.offset()));
            }
            return Err(format!("invalid offset {t:?}: expected +HH:MM"));
        }
        t.parse::<chrono_tz::Tz>()
            .map(ZonePolicy::Named)
            .map_err(|_| format!("unknown time zone {t:?}: expected UTC, +HH:MM or an IANA name"))
    }
}

/// A parsed instant: UTC microseconds plus the offset the sender used, when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instant {
    /// Microseconds since the Unix epoch, UTC.
    pub utc_us: i64,
    /// The sender's UTC offset in minutes (None for epoch input).
    pub offset_min: Option<i16>,
}

impl Instant {
    /// From UTC microseconds with no offset.
    pub fn from_utc_us(utc_us: i64) -> Self {
        Instant {
            utc_us,
            offset_min: None,
        }
    }

    /// As a chrono UTC time.
    pub fn to_utc(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.utc_us).unwrap_or_default()
    }
}

/// Formats UTC microseconds as RFC 3339 in the given offset (minutes), with the shortest
/// fractional part that keeps the value (none, milliseconds or microseconds).
pub fn format_rfc3339(utc_us: i64, offset_min: Option<i16>) -> String {
    let utc = DateTime::from_timestamp_micros(utc_us).unwrap_or_default();
    let fmt = if utc_us % 1_000_000 == 0 {
        "%Y-%m-%dT%H:%M:%S"
    } else if utc_us % 1_000 == 0 {
        "%Y-%m-%dT%H:%M:%S%.3f"
    } else {
        "%Y-%m-%dT%H:%M:%S%.6f"
    };
    match offset_min.and_then(|m| FixedOffset::east_opt(i32::from(m) * 60)) {
        Some(off) if off.local_minus_utc() != 0 => {
            let local = utc.with_timezone(&off);
            format!("{}{}", local.format(fmt), local.format("%:z"))
        }
        _ => format!("{}Z", utc.format(fmt)),
    }
}

/// Earliest instant we accept (1970) and latest (2200): anything else is a unit mistake.
const MIN_MS: i64 = 0;
const MAX_MS: i64 = 7_258_118_400_000;
/// Epoch values below this are almost certainly seconds, not milliseconds (before 1973-03).
const SECONDS_SUSPICION_MS: i64 = 100_000_000_000;

/// Parses epoch milliseconds.
pub fn from_epoch_ms(ms: f64, field: &str) -> Result<Instant, Rejection> {
    if !ms.is_finite() || ms < MIN_MS as f64 || ms > MAX_MS as f64 {
        return Err(Rejection::new(
            Reason::UnparseableTime,
            format!("field `{field}`: epoch milliseconds {ms} is outside 1970..2200"),
        ));
    }
    if ms < SECONDS_SUSPICION_MS as f64 {
        return Err(Rejection::new(
            Reason::UnparseableTime,
            format!(
                "field `{field}`: {ms} looks like epoch seconds; send epoch milliseconds or RFC 3339"
            ),
        ));
    }
    Ok(Instant::from_utc_us((ms * 1000.0).round() as i64))
}

/// Parses a JSON time value (string or number) under a zone policy.
pub fn parse_value(
    v: &serde_json::Value,
    field: &str,
    tz: ZonePolicy,
) -> Result<Instant, Rejection> {
    match v {
        serde_json::Value::String(s) => parse_str(s, field, tz),
        serde_json::Value::Number(n) => from_epoch_ms(n.as_f64().unwrap_or(f64::NAN), field),
        other => Err(Rejection::new(
            Reason::WrongType,
            format!(
                "field `{field}` must be an RFC 3339 string or epoch milliseconds, got {}",
                describe(other)
            ),
        )),
    }
}

/// Parses a time string under a zone policy.
pub fn parse_str(s: &str, field: &str, tz: ZonePolicy) -> Result<Instant, Rejection> {
    let t = s.trim();
    if !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit()) {
        let ms: f64 = t.parse().unwrap_or(f64::NAN);
        return from_epoch_ms(ms, field);
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(from_fixed(dt));
    }
    // RFC 3339 variants without the colon in the offset (+0200) or with a space separator.
    for f in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(dt) = DateTime::parse_from_str(t, f) {
            return Ok(from_fixed(dt));
        }
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
    // A date alone (FHIR allows day precision) is its midnight, read under the policy.
    .or_else(|| {
        chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    });
    let Some(naive) = naive else {
        return Err(Rejection::new(
            Reason::UnparseableTime,
            format!(
                "field `{field}`: {} is not an RFC 3339 date-time or epoch milliseconds",
                clip(s)
            ),
        ));
    };
    match tz {
        ZonePolicy::Reject => Err(Rejection::new(
            Reason::ZonelessTime,
            format!(
                "field `{field}`: {} has no UTC offset; send an offset or configure a zone (--assume-tz)",
                clip(s)
            ),
        )),
        ZonePolicy::Fixed(off) => match off.from_local_datetime(&naive) {
            LocalResult::Single(dt) => Ok(from_fixed(dt)),
            _ => Err(Rejection::new(
                Reason::UnparseableTime,
                format!("field `{field}`: {} out of range", clip(s)),
            )),
        },
        ZonePolicy::Named(zone) => match zone.from_local_datetime(&naive) {
            LocalResult::Single(dt) | LocalResult::Ambiguous(dt, _) => {
                Ok(from_fixed(dt.with_timezone(&dt.offset().fix())))
            }
            LocalResult::None => Err(Rejection::new(
                Reason::UnparseableTime,
                format!(
                    "field `{field}`: {} does not exist in {zone} (DST gap)",
                    clip(s)
                ),
            )),
        },
    }
}

fn from_fixed(dt: DateTime<FixedOffset>) -> Instant {
    let secs = dt.offset().local_minus_utc();
    Instant {
        utc_us: dt.timestamp_micros(),
        offset_min: Some((secs / 60) as i16),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc3339_keeps_offset() {
        let i = parse_str("2024-03-01T10:00:00+02:00", "time", ZonePolicy::Reject).expect("ok");
        assert_eq!(i.offset_min, Some(120));
        assert_eq!(format_rfc3339(i.utc_us, None), "2024-03-01T08:00:00Z");
        assert_eq!(
            format_rfc3339(i.utc_us, i.offset_min),
            "2024-03-01T10:00:00+02:00"
        );
    }

    #[test]
    fn seven_fraction_digits_and_epoch() {
        let i = parse_str("2019-02-01T22:46:01.8750000Z", "t", ZonePolicy::Reject).expect("ok");
        assert_eq!(format_rfc3339(i.utc_us, None), "2019-02-01T22:46:01.875Z");
        let e = parse_value(&json!(1_700_000_000_123_i64), "t", ZonePolicy::Reject).expect("ok");
        assert_eq!(format_rfc3339(e.utc_us, None), "2023-11-14T22:13:20.123Z");
        assert_eq!(e.offset_min, None);
        let s = parse_value(&json!(1_700_000_000), "t", ZonePolicy::Reject).unwrap_err();
        assert!(s.message.contains("epoch seconds"), "{}", s.message);
    }

    #[test]
    fn zoneless_is_an_explicit_choice() {
        let e = parse_str("2023-03-13T22:46:01.875", "endDate", ZonePolicy::Reject).unwrap_err();
        assert_eq!(e.reason, Reason::ZonelessTime);
        assert!(e.message.contains("endDate"));
        let u = parse_str("2023-03-13T22:46:01.875", "t", ZonePolicy::utc()).expect("utc");
        assert_eq!(format_rfc3339(u.utc_us, None), "2023-03-13T22:46:01.875Z");
        let ny = ZonePolicy::parse("America/New_York").expect("tz");
        let n = parse_str("2016-04-12 07:00:00", "t", ny).expect("ny");
        assert_eq!(format_rfc3339(n.utc_us, None), "2016-04-12T11:00:00Z");
        assert_eq!(n.offset_min, Some(-240));
        let gap = parse_str("2016-03-13T02:30:00", "t", ny).unwrap_err();
        assert_eq!(gap.reason, Reason::UnparseableTime);
        assert!(ZonePolicy::parse("Mars/Olympus").is_err());
        assert_eq!(ZonePolicy::parse("+05:30").map(|_| ()), Ok(()));
    }

    #[test]
    fn garbage_is_unparseable() {
        let e = parse_value(&json!("yesterday"), "time", ZonePolicy::utc()).unwrap_err();
        assert_eq!(e.reason, Reason::UnparseableTime);
        assert_eq!(
            e.message,
            "field `time`: \"yesterday\" is not an RFC 3339 date-time or epoch milliseconds"
        );
        let e = parse_value(&json!(true), "time", ZonePolicy::utc()).unwrap_err();
        assert_eq!(e.reason, Reason::WrongType);
    }
}
