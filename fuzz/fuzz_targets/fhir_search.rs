//! The FHIR search parameters of `GET /fhir/Observation?…` (`carewatch_fhir::search`): any
//! query string parses or is refused without panicking; the page size stays within bounds and
//! the page arithmetic the server does cannot overflow; and the query of a paging link the
//! server hands out means the same search again (the same filters and page size).
#![no_main]

use carewatch_fhir::search::{MAX_COUNT, parse};
use libfuzzer_sys::fuzz_target;

carewatch_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(s) = parse(Some(raw)) else {
        return;
    };
    assert!((1..=MAX_COUNT).contains(&s.count));
    let next = s.next_offset();
    let _ = s.fetch_rows();
    for off in [s.offset, next, s.offset.saturating_sub(s.count)] {
        let link = s.link_query(off);
        let again = parse(Some(&link)).unwrap_or_else(|e| panic!("link {link:?}: {e}"));
        assert_eq!(again.filters, s.filters, "link {link:?}");
        assert_eq!(again.count, s.count, "link {link:?}");
        assert_eq!(again.offset, off, "link {link:?}");
    }
});
