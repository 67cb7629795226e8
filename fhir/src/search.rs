//! The search parameters of `GET /fhir/Observation?…`: a query string parsed into filters, a
//! page size and an offset, and the query string of the paging links. Pure: `query` turns a
//! [`Search`] into DataFusion filters.
//!
//! Supported: `patient`/`subject` (`Patient/` prefix optional), `code` (comma-separated, each
//! optionally `system|code`), `device`, `date` (a FHIR dateTime with an optional
//! `ge`/`gt`/`le`/`lt`/`eq` prefix, repeatable), `_count` (1–1000, default 50), `_offset`.

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
}

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
    };
    for (k, v) in &params {
        let f = match k.as_str() {
            "patient" | "subject" => Filter::Patient(last_segment(v)),
            "code" => Filter::Codes(
                v.split(',')
                    .map(|c| c.rsplit('|').next().unwrap_or(c).to_owned())
                    .collect(),
            ),
            "device" => Filter::Device(last_segment(v)),
            "date" => date(v)?,
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

fn last_segment(v: &str) -> String {
    v.rsplit('/').next().unwrap_or(v).to_owned()
}

fn date(v: &str) -> Result<Filter, SearchError> {
    let (cmp, t) = match v.get(..2) {
        Some("ge") => (DateCmp::Ge, &v[2..]),
        Some("gt") => (DateCmp::Gt, &v[2..]),
        Some("le") => (DateCmp::Le, &v[2..]),
        Some("lt") => (DateCmp::Lt, &v[2..]),
        Some("eq") => (DateCmp::Eq, &v[2..]),
        _ => (DateCmp::Eq, v),
    };
    let at = parse_str(t, "date", ZonePolicy::utc()).map_err(|_| SearchError::BadDate)?;
    Ok(Filter::Date(cmp, at.utc_us))
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
