//! What every carewatch fuzz target shares: a context chosen from the input, the properties an
//! accepted reading must have, and an allocator that turns one huge allocation into a crash.
//!
//! Properties checked for every outcome of [`carewatch_transform::normalise`]:
//! - every item is accounted for (a reading or a rejection);
//! - an accepted reading has a catalogue vital, a finite value in its plausible range, a
//!   device (the transport's when one vouches), an interval that does not end before it starts;
//! - it round-trips through the WAL codec (`store::codec`: what replay rebuilds is the row that
//!   was acknowledged) and through the Arrow batch persist writes (`transform::schema`);
//! - a FHIR-native reading, served by the FHIR view (`fhir::observation_json`) and ingested
//!   again, is the same reading (FHIR read-back output is FHIR input).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

use carewatch_transform::schema::{ObservationBatchBuilder, readings_from_batch};
use carewatch_transform::{Context, Format, Outcome, Reading, Source, ZonePolicy, normalise};
use carewatch_wal::Row;
use carewatch_wal::codec::{Record, decode, encode_rows};

/// No single allocation may exceed this: fuzz inputs are a few KiB, so a larger one can only
/// come from a length or count field believed without checking (an OOM waiting for a crafted
/// payload). libFuzzer's `-malloc_limit_mb` needs a sanitizer's malloc hooks, which
/// `--sanitizer none` does not have; this works with every sanitizer.
pub const MAX_ALLOC: usize = 64 << 20;

/// The system allocator, aborting (a crash libFuzzer saves) on an allocation over [`MAX_ALLOC`].
#[derive(Debug)]
pub struct CappedAlloc;

// SAFETY: every call is forwarded unchanged to `System`; only the size is inspected first.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > MAX_ALLOC {
        // No allocation here: write a fixed message and abort.
        let _ = std::io::stderr().write_all(b"carewatch-fuzz: allocation over MAX_ALLOC\n");
        std::process::abort();
    }
}

/// Installs [`CappedAlloc`] in a fuzz target binary.
#[macro_export]
macro_rules! capped_allocator {
    () => {
        #[global_allocator]
        static ALLOC: $crate::CappedAlloc = $crate::CappedAlloc;
    };
}

/// The device the transport vouches for in contexts that have one.
pub const DEVICE: &str = "dev-1";

/// A context chosen by one input byte: zone policy, a vouching device or none, and the format
/// (`None` detects per item).
pub fn context(selector: u8, format: Option<Format>) -> Context<'static> {
    let tz = match selector & 3 {
        0 => ZonePolicy::Reject,
        1 => ZonePolicy::utc(),
        2 => ZonePolicy::parse("+05:30").unwrap_or_default(),
        _ => ZonePolicy::parse("Europe/Berlin").unwrap_or_default(),
    };
    Context {
        tz,
        device: (selector & 4 != 0).then_some(DEVICE),
        format,
        templates: None,
        max_bytes: 1 << 20,
    }
}

/// Normalises `bytes` and checks every property above.
pub fn normalise_and_check(bytes: &[u8], ctx: &Context<'_>) -> Outcome {
    let out = normalise(bytes, ctx);
    check_outcome(&out, ctx);
    out
}

/// The properties of one outcome (see the crate docs).
pub fn check_outcome(out: &Outcome, ctx: &Context<'_>) {
    assert!(
        !out.readings.is_empty() || !out.rejections.is_empty(),
        "an item was neither accepted nor rejected"
    );
    for r in &out.readings {
        check_reading(r, ctx);
    }
    let format = out.formats.first().copied().unwrap_or(Format::Carewatch);
    wal_round_trip(&out.readings, format);
    arrow_round_trip(&out.readings, format);
    if out.formats == [Format::Fhir] && ctx.templates.is_none() {
        fhir_round_trip(&out.readings, ctx);
    }
}

fn check_reading(r: &Reading, ctx: &Context<'_>) {
    let (lo, hi) = r.vital.range;
    assert!(r.value.is_finite(), "{r:?}");
    assert!(r.value >= lo && r.value <= hi, "out of range: {r:?}");
    assert!(
        carewatch_transform::catalogue::by_code(r.code()).is_some_and(|v| std::ptr::eq(v, r.vital)),
        "not a catalogue vital: {r:?}"
    );
    assert!(!r.device_id.trim().is_empty(), "no device: {r:?}");
    if let Some(d) = ctx.device {
        assert_eq!(
            r.device_id, d,
            "a reading of another device than the transport's"
        );
    }
    if let Some(end) = r.effective_end_us {
        assert!(
            end >= r.effective_us,
            "interval ends before it starts: {r:?}"
        );
    }
}

/// Rows as the edge stores them.
pub fn rows(readings: &[Reading], format: Format) -> Vec<Row> {
    readings
        .iter()
        .map(|r| Row {
            reading: r.clone(),
            received_us: 1_714_550_400_000_000,
            source: Source::Http,
            format,
        })
        .collect()
}

/// Encoding then decoding the rows gives them back exactly.
pub fn wal_round_trip(readings: &[Reading], format: Format) {
    let rows = rows(readings, format);
    let mut b = Vec::new();
    encode_rows(&mut b, &rows);
    match decode(&b).as_deref() {
        Ok([Record::Rows(back)]) => assert_eq!(back, &rows, "WAL round trip"),
        other => panic!("WAL round trip of {} rows: {other:?}", rows.len()),
    }
}

/// The Arrow batch persist writes reads back to the same rows.
pub fn arrow_round_trip(readings: &[Reading], format: Format) {
    let rows = rows(readings, format);
    let mut b = ObservationBatchBuilder::new(rows.len());
    for r in &rows {
        b.push(&r.reading, r.received_us, r.source, r.format);
    }
    let back = readings_from_batch(&b.finish()).expect("a batch we built reads back");
    assert_eq!(back.len(), rows.len());
    for (row, s) in rows.iter().zip(&back) {
        let r = &row.reading;
        assert_eq!(s.device_id, r.device_id);
        assert_eq!(s.patient_id, r.patient_id);
        assert_eq!(s.code, r.code());
        assert_eq!(s.panel_code.as_deref(), r.panel());
        assert_eq!(s.unit, r.unit());
        assert_eq!(s.value.to_bits(), r.value.to_bits());
        assert_eq!(s.effective_us, r.effective_us);
        assert_eq!(s.effective_end_us, r.effective_end_us);
        assert_eq!(s.tz_offset_min, r.offset_min);
        assert_eq!(s.received_us, row.received_us);
        assert_eq!(s.source, row.source.as_str());
        assert_eq!(s.format, row.format.as_str());
        assert_eq!(s.extra, r.extra);
    }
}

/// FHIR-native readings served by the FHIR view and ingested again are the same readings.
/// Readings without a patient get one first, as the edge attributes every stored reading.
pub fn fhir_round_trip(readings: &[Reading], ctx: &Context<'_>) {
    let readings: Vec<Reading> = readings
        .iter()
        .map(|r| Reading {
            patient_id: r.patient_id.clone().or_else(|| Some("p-1".to_owned())),
            ..r.clone()
        })
        .collect();
    for group in carewatch_fhir::group(&readings) {
        let Ok(o) = carewatch_fhir::observation_json(&group, None) else {
            panic!("the FHIR view failed on accepted readings {group:?}");
        };
        let ctx = Context {
            format: Some(Format::Fhir),
            ..*ctx
        };
        let again = normalise(o.to_string().as_bytes(), &ctx);
        let key = |r: &Reading| {
            (
                r.device_id.clone(),
                r.patient_id.clone(),
                r.code(),
                (r.value + 0.0).to_bits(), // -0 is 0
                r.effective_us,
                r.effective_end_us,
                r.offset_min,
            )
        };
        // The view keeps the first of duplicate rows (one Observation per code), as the store
        // keeps one row per natural key.
        let mut want: Vec<_> = Vec::new();
        for r in &group {
            if !want.iter().any(
                |w: &(
                    String,
                    Option<String>,
                    &str,
                    u64,
                    i64,
                    Option<i64>,
                    Option<i16>,
                )| w.2 == r.code(),
            ) {
                want.push(key(r));
            }
        }
        let got: Vec<_> = again.readings.iter().map(key).collect();
        assert_eq!(got, want, "FHIR view re-ingested: {o}");
    }
}
