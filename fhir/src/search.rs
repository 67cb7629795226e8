//! The search parameters of `GET /fhir/Observation?…`: a query string parsed into filters, a
//! page size and an offset, and the query string of the paging links. Pure: `query` turns a
//! [`Search`] into DataFusion filters.
//!
//! Supported: `patient`/`subject` (`Patient/` prefix optional), `code` (comma-separated, each
//! optionally `system|code`), `device`, `date` (a FHIR dateTime with an optional
//! `ge`/`gt`/`le`/`lt`/`eq` prefix, repeatable), `category` (observation-category codes,
//! comma-separated), `_lastUpdated` (when carewatch received it; prefixes as `date`), `_sort`
//! (`date`, `-date`, `_lastUpdated`, `-_lastUpdated`), `_summary` (`count`: the total only, or
//! `false`), `_count` (1–1000, default 50), `_offset`. [`parse_lastn`] adds `max` for
//! `Observation/$lastn`.

use carewatch_transform::time::{ZonePolicy, parse_str};

/// Page size when `_count` is absent or not a number.
pub const DEFAULT_COUNT: usize = 50;
/// The largest page.
pub const MAX_COUNT: usize = 1000;

/// How a `date` parameter compares with the effective time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateCmp {
    /// `ge`
    Ge,
    /// `gt`
    Gt,
    /// `le`
    Le,
    /// `lt`
    Lt,
    /// `eq` or no prefix.
    Eq,
}

/// One filter of a search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `patient_id` equals.
    Patient(String),
    /// `code` or `panel_code` is one of these.
    Codes(Vec<String>),
    /// `device_id` equals.
    Device(String),
    /// `effective_time` compared with UTC microseconds.
    Date(DateCmp, i64),
    /// The Observation's category is one of these (observation-category codes).
    Category(Vec<String>),
    /// `received_time` (the Observation's `meta.lastUpdated`) compared with UTC microseconds.
    LastUpdated(DateCmp, i64),
}

/// The order of a searchset (`_sort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// `date`: effective time, oldest first (the default).
    #[default]
    Date,
    /// `-date`: newest first.
    DateDesc,
    /// `_lastUpdated`: received time, oldest first.
    LastUpdated,
    /// `-_lastUpdated`: most recently received first.
    LastUpdatedDesc,
}

/// The `_sort` values accepted, in [`Sort`] order.
pub const SORTS: [&str; 4] = ["date", "-date", "_lastUpdated", "-_lastUpdated"];

/// A parsed search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    /// Every parameter as decoded, in order (what the audit line records).
    pub params: Vec<(String, String)>,
    /// The filters, in the order given.
    pub filters: Vec<Filter>,
    /// The parameters the filters came from (decoded), repeated in the paging links.
    pub echo: Vec<(String, String)>,
    /// Page size, 1 to [`MAX_COUNT`].
    pub count: usize,
    /// Observations to skip.
    pub offset: usize,
    /// The order.
    pub sort: Sort,
    /// `_summary=count`: answer the total only.
    pub count_only: bool,
}

/// A search the server refuses (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// A `date` that is not a FHIR dateTime.
    #[error("date must be a FHIR dateTime with an optional ge/gt/le/lt prefix")]
    BadDate,
    /// A parameter this server does not support.
    #[error("search parameter {0:?} is not supported")]
    NotSupported(String),
    /// A `_lastUpdated` that is not a FHIR dateTime.
    #[error("_lastUpdated must be a FHIR dateTime with an optional ge/gt/le/lt prefix")]
    BadLastUpdated,
    /// A `_sort` other than those in [`SORTS`].
    #[error("_sort must be one of date, -date, _lastUpdated, -_lastUpdated")]
    BadSort,
    /// A `_summary` other than `count` or `false`.
    #[error("_summary must be count or false")]
    BadSummary,
    /// `$lastn` without a patient, or with a `max` that is not a positive number.
    #[error("$lastn needs patient (or subject) and an optional max from 1 to 1000")]
    BadLastn,
}

/// Parses a raw query string (without `?`; `None` when the URL has none).
pub fn parse(raw: Option<&str>) -> Result<Search, SearchError> {
    let params = pairs(raw.unwrap_or_default());
    let mut s = Search {
        params: Vec::new(),
        filters: Vec::new(),
        echo: Vec::new(),
        count: DEFAULT_COUNT,
        offset: 0,
        sort: Sort::Date,
        count_only: false,
    };
    for (k, v) in &params {
        let f = match k.as_str() {
            "patient" | "subject" => Filter::Patient(last_segment(v)),
            "code" => Filter::Codes(tokens(v)),
            "category" => Filter::Category(tokens(v)),
            "device" => Filter::Device(last_segment(v)),
            "date" => {
                let (cmp, at) = prefixed_date(v).ok_or(SearchError::BadDate)?;
                Filter::Date(cmp, at)
            }
            "_lastUpdated" => {
                let (cmp, at) = prefixed_date(v).ok_or(SearchError::BadLastUpdated)?;
                Filter::LastUpdated(cmp, at)
            }
            "_sort" => {
                s.sort = match SORTS.iter().position(|x| x == v) {
                    Some(0) => Sort::Date,
                    Some(1) => Sort::DateDesc,
                    Some(2) => Sort::LastUpdated,
                    Some(3) => Sort::LastUpdatedDesc,
                    _ => return Err(SearchError::BadSort),
                };
                s.echo.push((k.clone(), v.clone()));
                continue;
            }
            "_summary" => {
                s.count_only = match v.as_str() {
                    "count" => true,
                    "false" => false,
                    _ => return Err(SearchError::BadSummary),
                };
                s.echo.push((k.clone(), v.clone()));
                continue;
            }
            "_count" => {
                s.count = v.parse().unwrap_or(DEFAULT_COUNT).clamp(1, MAX_COUNT);
                continue;
            }
            "_offset" => {
                s.offset = v.parse().unwrap_or(0);
                continue;
            }
            _ => return Err(SearchError::NotSupported(k.clone())),
        };
        s.filters.push(f);
        s.echo.push((k.clone(), v.clone()));
    }
    s.params = params;
    Ok(s)
}

impl Search {
    /// The offset of the next page (saturating: an offset past every row is an empty page).
    pub fn next_offset(&self) -> usize {
        self.offset.saturating_add(self.count)
    }

    /// Rows to fetch for this page (one Observation is at most two rows), plus one
    /// Observation to tell whether there is a next page.
    pub fn fetch_rows(&self) -> usize {
        self.next_offset().saturating_add(1).saturating_mul(2)
    }

    /// The query string of a paging link at `offset`: the filters as given (percent-encoded
    /// again, so the link means the same search), then `_count` and `_offset`.
    pub fn link_query(&self, offset: usize) -> String {
        let q = self
            .echo
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        format!(
            "{q}{}_count={}&_offset={offset}",
            if q.is_empty() { "" } else { "&" },
            self.count
        )
    }
}

/// The largest `max` of `$lastn`.
pub const MAX_LASTN: usize = 1000;

/// The parameters of `GET /fhir/Observation/$lastn`: those of [`parse`] plus `max` (how many
/// Observations per code, default 1). A patient is required (FHIR's `$lastn` is per subject).
pub fn parse_lastn(raw: Option<&str>) -> Result<(Search, usize), SearchError> {
    let mut max = 1;
    let mut rest = Vec::new();
    for kv in raw
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
    {
        match kv.split_once('=') {
            Some(("max", v)) => {
                max = decode(v)
                    .parse::<usize>()
                    .ok()
                    .filter(|m| (1..=MAX_LASTN).contains(m))
                    .ok_or(SearchError::BadLastn)?;
            }
            _ => rest.push(kv),
        }
    }
    let s = parse(Some(&rest.join("&")))?;
    if !s.filters.iter().any(|f| matches!(f, Filter::Patient(_))) {
        return Err(SearchError::BadLastn);
    }
    Ok((s, max))
}

fn last_segment(v: &str) -> String {
    v.rsplit('/').next().unwrap_or(v).to_owned()
}

/// Comma-separated tokens, each optionally `system|code` (the code is kept).
fn tokens(v: &str) -> Vec<String> {
    v.split(',')
        .map(|c| c.rsplit('|').next().unwrap_or(c).to_owned())
        .collect()
}

/// A date parameter's value: an optional `eq`/`ge`/`gt`/`le`/`lt` prefix and a FHIR dateTime
/// (UTC when it has no offset), as UTC microseconds.
pub fn prefixed_date(v: &str) -> Option<(DateCmp, i64)> {
    let (cmp, t) = match v.get(..2) {
        Some("ge") => (DateCmp::Ge, &v[2..]),
        Some("gt") => (DateCmp::Gt, &v[2..]),
        Some("le") => (DateCmp::Le, &v[2..]),
        Some("lt") => (DateCmp::Lt, &v[2..]),
        Some("eq") => (DateCmp::Eq, &v[2..]),
        _ => (DateCmp::Eq, v),
    };
    let at = parse_str(t, "date", ZonePolicy::utc()).ok()?;
    Some((cmp, at.utc_us))
}

/// Splits a query string into decoded `(key, value)` pairs (`+` is a space, `%XX` a byte).
pub fn pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-encodes one query component: everything but unreserved characters and `:/|,`
/// (which mean nothing to [`pairs`]) becomes `%XX`, so [`decode`] gives `s` back.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/|,".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decodes one component; invalid UTF-8 becomes U+FFFD.
pub fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_means_the_same_search(raw: &str) {
        let s = parse(Some(raw)).expect("search");
        for off in [s.offset, s.next_offset()] {
            let link = s.link_query(off);
            let again = parse(Some(&link)).unwrap_or_else(|e| panic!("link {link:?}: {e}"));
            assert_eq!(again.filters, s.filters, "link {link:?}");
            assert_eq!((again.count, again.offset), (s.count, off), "link {link:?}");
        }
    }

    #[test]
    fn parses_every_parameter() {
        let s = parse(Some(
            "patient=Patient/p1&code=http://loinc.org|8867-4,8480-6&device=w%201&date=ge2024-05-01&date=2024-05-02T00:00:00Z&_count=5000&_offset=x",
        ))
        .expect("search");
        assert_eq!(
            s.filters,
            [
                Filter::Patient("p1".into()),
                Filter::Codes(vec!["8867-4".into(), "8480-6".into()]),
                Filter::Device("w 1".into()),
                Filter::Date(DateCmp::Ge, 1_714_521_600_000_000),
                Filter::Date(DateCmp::Eq, 1_714_608_000_000_000),
            ]
        );
        assert_eq!((s.count, s.offset), (MAX_COUNT, 0));
        assert_eq!(s.params.len(), 7);
        assert_eq!(parse(Some("_count=0")).expect("search").count, 1);
        assert_eq!(parse(None).expect("search").count, DEFAULT_COUNT);
        assert_eq!(parse(Some("date=May")), Err(SearchError::BadDate));
        assert_eq!(
            parse(Some("name=x")),
            Err(SearchError::NotSupported("name".into()))
        );
    }

    /// Found by the `fhir_search` fuzz target: a value sent percent-encoded was repeated
    /// decoded in the paging links, so `%2B02:00` came back as `+02:00` (a space) and the next
    /// page was a 400.
    #[test]
    fn paging_links_repeat_the_search_exactly() {
        link_means_the_same_search("date=ge2024-05-01T08:00:00%2B02:00");
        link_means_the_same_search("patient=a%26b&device=c%3Dd&code=x%2Cy");
        link_means_the_same_search("patient=a%2Bb%20c%25d&_count=7&_offset=14");
    }

    #[test]
    fn category_last_updated_sort_and_summary() {
        let s = parse(Some(
            "category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs,activity&_lastUpdated=gt2024-05-01&_sort=-date&_summary=count",
        ))
        .expect("search");
        assert_eq!(
            s.filters,
            [
                Filter::Category(vec!["vital-signs".into(), "activity".into()]),
                Filter::LastUpdated(DateCmp::Gt, 1_714_521_600_000_000),
            ]
        );
        assert_eq!((s.sort, s.count_only), (Sort::DateDesc, true));
        assert_eq!(parse(Some("_sort=value")), Err(SearchError::BadSort));
        assert_eq!(parse(Some("_summary=text")), Err(SearchError::BadSummary));
        assert_eq!(
            parse(Some("_lastUpdated=yesterday")),
            Err(SearchError::BadLastUpdated)
        );
        for (i, v) in SORTS.iter().enumerate() {
            let s = parse(Some(&format!("_sort={}", encode(v)))).expect("sort");
            assert_eq!(SORTS[i], *v);
            link_means_the_same_search(&format!("_sort={v}&patient=p"));
            assert_ne!(s.sort == Sort::Date, i != 0);
        }
        link_means_the_same_search("_summary=count&category=vital-signs");
    }

    #[test]
    fn lastn_needs_a_patient_and_a_sane_max() {
        let (s, max) = parse_lastn(Some("patient=p1&max=3&code=8867-4")).expect("lastn");
        assert_eq!(max, 3);
        assert_eq!(
            s.filters,
            [
                Filter::Patient("p1".into()),
                Filter::Codes(vec!["8867-4".into()])
            ]
        );
        assert_eq!(parse_lastn(Some("subject=Patient/p1")).expect("lastn").1, 1);
        for bad in [
            "code=8867-4",
            "patient=p&max=0",
            "patient=p&max=x",
            "patient=p&max=1001",
        ] {
            assert_eq!(parse_lastn(Some(bad)), Err(SearchError::BadLastn), "{bad}");
        }
        assert_eq!(
            parse_lastn(Some("patient=p&name=x")),
            Err(SearchError::NotSupported("name".into()))
        );
    }

    /// Found reading the code the fuzz target checks: `_offset=18446744073709551615` made the
    /// page arithmetic overflow (a panic in debug builds, a wrapped row limit in release).
    #[test]
    fn a_huge_offset_is_an_empty_page_not_an_overflow() {
        let s = parse(Some("_offset=18446744073709551615&_count=1000")).expect("search");
        assert_eq!(s.offset, usize::MAX);
        assert_eq!(s.next_offset(), usize::MAX);
        assert_eq!(s.fetch_rows(), usize::MAX);
        link_means_the_same_search("_offset=18446744073709551615");
    }
}
