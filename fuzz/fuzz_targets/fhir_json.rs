//! The Fhir payload parser alone (the format fixed, as for a device configured for it): the
//! first byte picks the context, the rest is the payload. See `carewatch_fuzz` for what is checked.
#![no_main]

use carewatch_transform::Format;
use libfuzzer_sys::fuzz_target;

carewatch_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let ctx = carewatch_fuzz::context(selector, Some(Format::Fhir));
    carewatch_fuzz::normalise_and_check(payload, &ctx);
});
