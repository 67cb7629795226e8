//! The template engine's loader: arbitrary device mapping and FHIR destination mapping
//! documents (expressions compiled, Json.NET's JSONPath dialect translated), then applied to a
//! message. Input: `device mapping 0xFF fhir mapping 0xFF message` (0xFF never occurs in UTF-8;
//! an empty FHIR mapping is none; without a message, MedTech's sample heart-rate message).
//! A mapping that loads must apply without panicking, and what it accepts is checked as in
//! `carewatch_fuzz`.
#![no_main]

use carewatch_transform::Format;
use carewatch_transform::template::Templates;
use libfuzzer_sys::fuzz_target;

carewatch_fuzz::capped_allocator!();

const SAMPLE: &[u8] = include_bytes!("../../fixtures/payloads/medtech-sample-hr.json");

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0xff);
    let Ok(dm) = std::str::from_utf8(parts.next().unwrap_or_default()) else {
        return;
    };
    let fm = match parts.next().map(std::str::from_utf8) {
        Some(Ok("")) | None => None,
        Some(Ok(fm)) => Some(fm),
        Some(Err(_)) => return,
    };
    let message = parts.next().unwrap_or(SAMPLE);
    let Ok(t) = Templates::load(dm, fm) else {
        return;
    };
    let mut ctx = carewatch_fuzz::context(1, Some(Format::Template));
    ctx.templates = Some(&t);
    carewatch_fuzz::normalise_and_check(message, &ctx);
});
