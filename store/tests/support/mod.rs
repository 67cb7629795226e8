//! Readings for the shared-table tests: one heart rate a minute per device.
#![allow(dead_code)]

use carewatch_store::Row;
use carewatch_transform::catalogue;
use carewatch_transform::{Format, Reading, Source};

pub const T0: i64 = 1_700_000_000_000_000; // 2023-11-14T22:13:20Z
pub const MIN: i64 = 60_000_000;

/// `n` heart-rate readings of `device` (patient `p-<device>`), one a minute from `T0 + from_min`.
pub fn rows(device: &str, from_min: i64, n: i64) -> Vec<Row> {
    (from_min..from_min + n)
        .map(|i| Row {
            reading: Reading {
                device_id: device.to_owned(),
                patient_id: Some(format!("p-{device}")),
                vital: catalogue::by_key("heart_rate").expect("vital"),
                value: 70.0,
                effective_us: T0 + i * MIN,
                effective_end_us: None,
                offset_min: Some(60),
                extra: None,
            },
            received_us: T0,
            source: Source::Http,
            format: Format::Carewatch,
        })
        .collect()
}

/// Two devices' days of heart rate (`d1`, `d2`, 80,000 readings each, ~1 s apart from `day`),
/// each reading with 64 random bytes (as hex) in `extra`: two persisted files that merge into
/// one of ~11 MB, past one 8 MiB upload part.
pub fn bulky_days(day: i64, seed: &mut u64) -> Vec<Vec<Row>> {
    let mut next = || {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed
    };
    ["d1", "d2"]
        .into_iter()
        .map(|device| {
            let mut out = rows(device, 0, 80_000);
            for (i, r) in (0..).zip(out.iter_mut()) {
                r.reading.effective_us = day + i * 1_000_003;
                r.reading.value = 40.0 + (next() % 100) as f64;
                let hex: String = (0..8).map(|_| format!("{:016x}", next())).collect();
                r.reading.extra = Some(format!("{{\"n\":\"{hex}\"}}"));
            }
            out
        })
        .collect()
}
