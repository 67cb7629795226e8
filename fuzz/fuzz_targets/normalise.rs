//! Every payload an edge accepts (HTTP, MQTT, replay): one JSON value, a batch array or NDJSON,
//! each item's format detected from its shape. The first byte picks the context (zone policy,
//! a vouching device or none), the rest is the payload. See `carewatch_fuzz` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

carewatch_fuzz::capped_allocator!();

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let ctx = carewatch_fuzz::context(selector, None);
    carewatch_fuzz::normalise_and_check(payload, &ctx);
});
