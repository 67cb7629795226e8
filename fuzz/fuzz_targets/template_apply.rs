//! The template engine applied to device messages: MedTech/iomt-fhir device mappings (JSONPath
//! and JMESPath expressions, the FHIR destination mapping) over an arbitrary message. The
//! mappings are the fixtures' (`fixtures/templates/`); the first byte picks the mapping and the
//! context, the rest is the message. See `carewatch_fuzz` for what is checked.
#![no_main]

use std::sync::OnceLock;

use carewatch_transform::Format;
use carewatch_transform::template::Templates;
use libfuzzer_sys::fuzz_target;

carewatch_fuzz::capped_allocator!();

fn mappings() -> &'static [Templates; 2] {
    static T: OnceLock<[Templates; 2]> = OnceLock::new();
    T.get_or_init(|| {
        let load = |dm: &str, fm: Option<&str>| Templates::load(dm, fm).expect("fixture mapping");
        [
            load(
                include_str!("../../fixtures/templates/medtech-sample.devicemapping.json"),
                Some(include_str!(
                    "../../fixtures/templates/medtech-sample.fhirmapping.json"
                )),
            ),
            load(
                include_str!("../../fixtures/templates/fitbit-intraday.devicemapping.json"),
                None,
            ),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, message)) = data.split_first() else {
        return;
    };
    let format = (selector & 8 != 0).then_some(Format::Template);
    let mut ctx = carewatch_fuzz::context(selector, format);
    ctx.templates = Some(&mappings()[usize::from(selector >> 4) % 2]);
    carewatch_fuzz::normalise_and_check(message, &ctx);
});
